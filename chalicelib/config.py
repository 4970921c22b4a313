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


def _non_negative(name: str, default: int) -> int:
    value = _int(name, default)
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, not {value}")
    return value


def _capped(value: int, cap: int) -> int:
    return min(value, cap) if cap > 0 else value


def _days(name: str, default_seconds: int) -> int:
    """A whole number of days (0 or more), as seconds."""
    days = _int(name, default_seconds // 86400)
    if days < 0:
        raise ValueError(f"{name} must be 0 or more days")
    return days * 86400


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
    # Customer-managed KMS key (ARN) encrypting the table; None = DynamoDB's AWS-managed key.
    # Read by `keyfront store init` and `keyfront deploy`, not by a request.
    dynamodb_kms_key: str | None = None

    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = "keyfront"
    pin: str | None = "1234"  # dev default only; prod reads pin_secret_arn
    pin_secret_arn: str | None = None
    kek_label_prefix: str = "keyfront-kek"
    kek_version: int = 1  # which KEK new blobs are wrapped under
    bind_key_label_prefix: str = "keyfront-bind"
    wrap_mechanism: str = "AES_KEY_WRAP_PAD"

    max_plaintext_bytes: int = 64 * 1024
    # HSM differences (CloudHSM: the HSM makes the GCM IV itself and takes at most 16 KiB per
    # AES-GCM call). A maximum caps max_plaintext_bytes too, so a request over it is the
    # client's 400 rather than an HSM failure.
    gcm_iv_from_hsm: bool = False
    hsm_max_gcm_bytes: int = 0  # 0: no limit beyond max_plaintext_bytes
    # Where an RSA signature's hash is computed: "hsm" (SHAxxx_RSA_PKCS[_PSS]) or "host"
    # (the digest signed with CKM_RSA_PKCS[_PSS]), as the wrap mechanism is configuration.
    rsa_sign_hashing: str = "hsm"

    # Serving and the hot path (see README "Serving, caches and the audit log").
    access_log: bool = True  # `keyfront serve` logs one line per request
    # How long a token or key record read from the store is used without reading it again:
    # the bound within which a revocation, rotation or deletion made by another process
    # takes effect (the process that made it sees it at once). 0 = read on every use.
    cache_seconds: float = 1.0
    # Audit partitions per UTC day: 0 = automatic (16 on DynamoDB, whose partitions take about
    # 1,000 writes/s each; 1 on SQLite). Lowering it hides the records of the shards above
    # the new count from the readers of those days.
    audit_shards: int = 0
    audit_batch_max: int = 25  # key-use records written in one store call at most

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
    # Logs and metrics (chalicelib/logs.py): the level of the keyfront loggers, and whether
    # each request is counted as CloudWatch EMF lines (default: when running in Lambda).
    log_level: str = "INFO"
    metrics: bool = False
    # Lifetime of the short-lived tokens a token endpoint issues for a keyfront token (never
    # beyond the lifetime of the token it was issued for).
    access_token_seconds: int = 3600

    # Last use of every key (core/usage.py): a key's usage item is written at most once per
    # key per this period per process (the first use in a process writes at once); also the
    # bound on how late another process's uses reach the store.
    usage_flush_seconds: int = 60
    # A vendor delete of a key used within this many seconds is refused (the admin function
    # forces it); 0 = off, so that vendors' clients that use a key and then delete it work
    # unchanged. Across processes it sees uses up to usage_flush_seconds late.
    delete_guard_seconds: int = 0
    # The KEK roll (core/kek_roll.py): an old KEK version is destroyed only this long after
    # the roll's finished pass and after its retirement (in-flight requests and caches
    # outlive neither; a store restore or old backup from before the pass would need it:
    # 35 days, 3024000, in production, to cover DynamoDB point-in-time recovery).
    kek_destroy_after_seconds: int = 900

    # AI-VAULT: master keys (and pre-shared keys) per domain, as the vendor's --maxMkNum
    aivault_max_mk: int = 10
    aivault_max_psk: int = 10
    # scrypt's n, r, p for keys handed out under a password (OWASP's N=2^15, r=8, p=3); the
    # test suite lowers it to keep its many creations cheap, the file records what was used
    password_wrap_scrypt: tuple[int, int, int] = (2**15, 8, 3)

    # Recoverable deletion: how long a deleted key can still be restored before the purge
    # destroys it (KEYFRONT_DELETION_WINDOW_DAYS, default 7; 0 = destroyed at once).
    deletion_window_seconds: int = 7 * 24 * 3600

    @property
    def audit_partitions(self) -> int:
        """Audit partitions per day, `audit_shards` resolved for the store in use."""
        if self.audit_shards > 0:
            return self.audit_shards
        return 16 if self.store_backend == "dynamodb" else 1

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
            dynamodb_kms_key=os.environ.get("KEYFRONT_DYNAMODB_KMS_KEY") or None,
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
            max_plaintext_bytes=_capped(_int("KEYFRONT_MAX_PLAINTEXT_BYTES",
                                             d.max_plaintext_bytes),
                                        _int("KEYFRONT_HSM_MAX_GCM_BYTES", d.hsm_max_gcm_bytes)),
            gcm_iv_from_hsm=_env("KEYFRONT_GCM_IV_FROM_HSM", "false").lower()
            in ("1", "true", "on", "yes"),
            hsm_max_gcm_bytes=_int("KEYFRONT_HSM_MAX_GCM_BYTES", d.hsm_max_gcm_bytes),
            rsa_sign_hashing=_env("KEYFRONT_RSA_SIGN_HASHING", d.rsa_sign_hashing).lower(),
            access_log=_env("KEYFRONT_ACCESS_LOG", "1") != "0",
            cache_seconds=float(_env("KEYFRONT_CACHE_SECONDS", str(d.cache_seconds))),
            audit_shards=_int("KEYFRONT_AUDIT_SHARDS", d.audit_shards),
            audit_batch_max=_int("KEYFRONT_AUDIT_BATCH_MAX", d.audit_batch_max),
            retry_attempts=_int("KEYFRONT_RETRY_ATTEMPTS", d.retry_attempts),
            max_keys_per_ring=_int("KEYFRONT_MAX_KEYS_PER_RING", d.max_keys_per_ring),
            max_versions_per_key=_int("KEYFRONT_MAX_VERSIONS_PER_KEY", d.max_versions_per_key),
            generation_rate=_int("KEYFRONT_GENERATION_RATE", d.generation_rate),
            generation_window_seconds=_int("KEYFRONT_GENERATION_WINDOW_SECONDS",
                                           d.generation_window_seconds),
            # KEYFRONT_AUTH0_DEFAULT_TENANT is the name earlier releases documented
            log_level=_env("KEYFRONT_LOG_LEVEL", d.log_level).upper(),
            metrics=_env("KEYFRONT_METRICS",
                         "on" if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else "off")
            in ("on", "1", "true"),
            access_token_seconds=_int("KEYFRONT_ACCESS_TOKEN_SECONDS",
                                      d.access_token_seconds),
            default_ring=_env("KEYFRONT_DEFAULT_RING",
                              _env("KEYFRONT_AUTH0_DEFAULT_TENANT", d.default_ring)),
            usage_flush_seconds=_non_negative("KEYFRONT_USAGE_FLUSH_SECONDS",
                                              d.usage_flush_seconds),
            delete_guard_seconds=_non_negative("KEYFRONT_DELETE_GUARD_SECONDS",
                                               d.delete_guard_seconds),
            kek_destroy_after_seconds=_non_negative("KEYFRONT_KEK_DESTROY_AFTER_SECONDS",
                                                    d.kek_destroy_after_seconds),
            aivault_max_mk=_int("KEYFRONT_AIVAULT_MAX_MK", d.aivault_max_mk),
            aivault_max_psk=_int("KEYFRONT_AIVAULT_MAX_PSK", d.aivault_max_psk),
            password_wrap_scrypt=_triple("KEYFRONT_PASSWORD_WRAP_SCRYPT",
                                         d.password_wrap_scrypt),
            deletion_window_seconds=_days("KEYFRONT_DELETION_WINDOW_DAYS",
                                          d.deletion_window_seconds),
        )
