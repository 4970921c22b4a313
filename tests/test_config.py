"""Settings from the environment: the PIN comes from KEYFRONT_PIN, the secret, or dev default."""

from __future__ import annotations

from chalicelib.config import Settings


def test_pin_sources(monkeypatch):
    monkeypatch.delenv("KEYFRONT_PIN", raising=False)
    monkeypatch.delenv("KEYFRONT_PIN_SECRET_ARN", raising=False)
    assert Settings.from_env().pin == "1234"  # the embedded dev default
    monkeypatch.setenv("KEYFRONT_PIN_SECRET_ARN", "arn:aws:secretsmanager:x:1:secret:pin")
    s = Settings.from_env()
    assert s.pin is None and s.pin_secret_arn.endswith(":pin")  # prod: never the dev PIN
    monkeypatch.setenv("KEYFRONT_PIN", "9999")
    assert Settings.from_env().pin == "9999"  # an explicit PIN wins


def test_numbers_and_backends(monkeypatch):
    monkeypatch.setenv("KEYFRONT_STORE", "dynamodb")
    monkeypatch.setenv("KEYFRONT_KEK_VERSION", "3")
    monkeypatch.setenv("KEYFRONT_DYNAMODB_ENDPOINT", "")
    s = Settings.from_env()
    assert (s.store_backend, s.kek_version, s.dynamodb_endpoint) == ("dynamodb", 3, None)
