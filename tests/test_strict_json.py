"""formats.strict_json: what json.loads accepts but the store and strict clients do not."""

from __future__ import annotations

import json

import pytest

from chalicelib.formats.strict_json import MAX_JSON_DEPTH, json_problem


@pytest.mark.parametrize("raw,problem", [
    ('{"a": NaN}', ("a", "Number must be finite")),
    ('{"a": [1, -Infinity]}', ("a.1", "Number must be finite")),
    ('{"a": 1e400}', ("a", "Number must be finite")),
    ('{"a": {"b": "x\\ud800"}}', ("a.b", "String is not valid Unicode")),
    ('{"a": {"\\udfff": 1}}', ("a", "Property name is not valid Unicode")),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
     ("0" + ".0" * (MAX_JSON_DEPTH - 1), f"Nesting is deeper than {MAX_JSON_DEPTH} levels")),
])
def test_problems_are_found_with_their_path(raw, problem):
    assert json_problem(json.loads(raw)) == problem


@pytest.mark.parametrize("raw", ['{}', '{"a": [1, 2.5, "é", "\\ud83d\\ude00", null, true]}',
                                 "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, '{"": 1e308}'])
def test_strict_json_passes(raw):
    assert json_problem(json.loads(raw)) is None
