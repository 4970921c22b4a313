"""KEK labels recorded in blobs: only short canonical versions are ours."""

from __future__ import annotations

import pytest

from chalicelib.config import Settings
from chalicelib.hsm.labels import kek_label, kek_version_of


@pytest.mark.parametrize("label,version", [
    ("keyfront-kek-v1", 1), ("keyfront-kek-v42", 42), ("keyfront-kek-v999999999", 999999999),
    ("keyfront-kek-v01", None), ("keyfront-kek-v", None), ("keyfront-kek-v-1", None),
    ("keyfront-kek-v١", None), ("other-kek-v1", None), ("keyfront-kek-v1234567890", None),
    ("keyfront-kek-v" + "9" * 5000, None),
])
def test_kek_version_of(label, version):
    assert kek_version_of(Settings(), label) == version


def test_label_round_trip():
    s = Settings(kek_version=7)
    assert kek_version_of(s, kek_label(s)) == 7
