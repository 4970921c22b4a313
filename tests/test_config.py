"""Settings from the environment: the PIN comes from KEYFRONT_PIN, the secret, or dev default."""

from __future__ import annotations

import pytest

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


def test_the_deletion_window_is_days_kept_as_seconds(monkeypatch):
    assert Settings.from_env().deletion_window_seconds == 7 * 86400
    monkeypatch.setenv("KEYFRONT_DELETION_WINDOW_DAYS", "30")
    assert Settings.from_env().deletion_window_seconds == 30 * 86400
    monkeypatch.setenv("KEYFRONT_DELETION_WINDOW_DAYS", "0")
    assert Settings.from_env().deletion_window_seconds == 0
    monkeypatch.setenv("KEYFRONT_DELETION_WINDOW_DAYS", "-1")
    with pytest.raises(ValueError, match="KEYFRONT_DELETION_WINDOW_DAYS"):
        Settings.from_env()
