"""Settings read from environment variables (set per stage in .chalice/config.json)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int(name: str, default: int) -> int:
    return int(_env(name, str(default)))


def _triple(name: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    n, r, p = (int(v) for v in _env(name, ",".join(map(str, default))).split(","))
    return n, r, p


@dataclass(frozen=True)
class Settings:
    """Everything configurable; `from_env()` reads it, defaults are the local dev setup."""

    store_backend: str = "sqlite"  # sqlite | dynamodb
    sqlite_path: str = str(REPO_ROOT / "data" / "keyfront.sqlite3")
    dynamodb_table: str = "keyfront"
    dynamodb_endpoint: str | None = None  # moto server in tests; None = AWS
    # Short: a key service should answer "unavailable" fast rather than hang. The tests'
    # moto server (one lock, a shared process) can be slower than DynamoDB under load.
    dynamodb_read_timeout: int = 5
    aws_region: str = "us-east-1"

    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = "keyfront"
    pin: str | None = "1234"  # dev default only; prod reads pin_secret_arn
    pin_secret_arn: str | None = None
    kek_label_prefix: str = "keyfront-kek"
    kek_version: int = 1  # which KEK new blobs are wrapped under
    bind_key_label_prefix: str = "keyfront-bind"
    wrap_mechanism: str = "AES_KEY_WRAP_PAD"

    max_plaintext_bytes: int = 64 * 1024

    # The one bound on optimistic-transaction attempts before a clear "busy, retry" conflict.
    retry_attempts: int = 32
    # Limits a shared service needs beyond any vendor's: per-ring caps and a rate limit on
    # expensive generation (RSA key pairs, certificates) per token, in a fixed window.
    max_keys_per_ring: int = 10_000
    max_versions_per_key: int = 2_000
    generation_rate: int = 60  # expensive generations per token per window
    generation_window_seconds: int = 60
    # The ring an all-rings token works on where a dialect needs exactly one ring.
    default_ring: str = "default"
    # AI-VAULT: master keys (and pre-shared keys) per domain, as the vendor's --maxMkNum
    aivault_max_mk: int = 10
    aivault_max_psk: int = 10
    # scrypt's n, r, p for keys handed out under a password (OWASP's N=2^15, r=8, p=3); the
    # test suite lowers it to keep its many creations cheap, the file records what was used
    password_wrap_scrypt: tuple[int, int, int] = (2**15, 8, 3)

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from KEYFRONT_* environment variables."""
        d = cls()
        pin_secret_arn = os.environ.get("KEYFRONT_PIN_SECRET_ARN") or None
        # the dev PIN applies only when no PIN secret is configured
        pin = os.environ.get("KEYFRONT_PIN") or (None if pin_secret_arn else d.pin)
        return cls(
            store_backend=_env("KEYFRONT_STORE", d.store_backend),
            sqlite_path=_env("KEYFRONT_SQLITE_PATH", d.sqlite_path),
            dynamodb_table=_env("KEYFRONT_DYNAMODB_TABLE", d.dynamodb_table),
            dynamodb_endpoint=os.environ.get("KEYFRONT_DYNAMODB_ENDPOINT") or None,
            dynamodb_read_timeout=_int("KEYFRONT_DYNAMODB_READ_TIMEOUT",
                                       d.dynamodb_read_timeout),
            aws_region=_env("AWS_REGION", _env("AWS_DEFAULT_REGION", d.aws_region)),
            pkcs11_module=_env("KEYFRONT_PKCS11_MODULE", d.pkcs11_module),
            token_label=_env("KEYFRONT_TOKEN_LABEL", d.token_label),
            pin=pin,
            pin_secret_arn=pin_secret_arn,
            kek_label_prefix=_env("KEYFRONT_KEK_LABEL_PREFIX", d.kek_label_prefix),
            kek_version=int(_env("KEYFRONT_KEK_VERSION", str(d.kek_version))),
            bind_key_label_prefix=_env("KEYFRONT_BIND_KEY_LABEL_PREFIX",
                                       d.bind_key_label_prefix),
            wrap_mechanism=_env("KEYFRONT_WRAP_MECHANISM", d.wrap_mechanism),
            max_plaintext_bytes=_int("KEYFRONT_MAX_PLAINTEXT_BYTES", d.max_plaintext_bytes),
            retry_attempts=_int("KEYFRONT_RETRY_ATTEMPTS", d.retry_attempts),
            max_keys_per_ring=_int("KEYFRONT_MAX_KEYS_PER_RING", d.max_keys_per_ring),
            max_versions_per_key=_int("KEYFRONT_MAX_VERSIONS_PER_KEY", d.max_versions_per_key),
            generation_rate=_int("KEYFRONT_GENERATION_RATE", d.generation_rate),
            generation_window_seconds=_int("KEYFRONT_GENERATION_WINDOW_SECONDS",
                                           d.generation_window_seconds),
            # KEYFRONT_AUTH0_DEFAULT_TENANT is the name earlier releases documented
            default_ring=_env("KEYFRONT_DEFAULT_RING",
                              _env("KEYFRONT_AUTH0_DEFAULT_TENANT", d.default_ring)),
            aivault_max_mk=_int("KEYFRONT_AIVAULT_MAX_MK", d.aivault_max_mk),
            aivault_max_psk=_int("KEYFRONT_AIVAULT_MAX_PSK", d.aivault_max_psk),
            password_wrap_scrypt=_triple("KEYFRONT_PASSWORD_WRAP_SCRYPT",
                                         d.password_wrap_scrypt),
        )
