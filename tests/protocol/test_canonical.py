"""Canonical JSON (appendices.md "Canonical JSON") and the v6+ strict value rules."""
import json

import pytest

from protocol.canonical import (
    CanonicalJsonError, check_strict_json, encode_canonical_json, is_strict_json,
)

# The spec's examples, input JSON text -> canonical bytes.
SPEC_EXAMPLES = [
    ("{}", "{}"),
    ('{"one": 1, "two": "Two"}', '{"one":1,"two":"Two"}'),
    ('{"b": "2", "a": "1"}', '{"a":"1","b":"2"}'),
    ('{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {'
     '"display_name": "John Doe", "three_pids": [{"medium": "email", "address": '
     '"john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}',
     '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
     '"three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":'
     '"123456789","medium":"msisdn"}]},"success":true}}'),
    ('{"a": "日本語"}', '{"a":"日本語"}'),
    ('{"本": 2, "日": 1}', '{"日":1,"本":2}'),
    ('{"a": "\\u65E5"}', '{"a":"日"}'),
    ('{"a": null}', '{"a":null}'),
    ('{"a": -0}', '{"a":0}'),
]


@pytest.mark.parametrize("src,expected", SPEC_EXAMPLES)
def test_spec_examples(src, expected):
    assert encode_canonical_json(json.loads(src)) == expected.encode("utf-8")


def test_keys_sorted_by_code_point_not_utf16():
    # U+FF21 sorts before U+1F600 by code point, but after it in UTF-16 code units.
    obj = {"\U0001F600": 1, "\uFF21": 2}
    assert encode_canonical_json(obj) == '{"Ａ":2,"😀":1}'.encode()


def test_control_characters_escaped_per_grammar():
    out = encode_canonical_json({"a": "\x00\x08\t\n\x0b\x0c\r\x1f\"\\/\x7f"})
    assert out == b'{"a":"\\u0000\\b\\t\\n\\u000b\\f\\r\\u001f\\"\\\\/\x7f"}'


def test_nan_and_lone_surrogates_rejected():
    with pytest.raises(ValueError):
        encode_canonical_json({"a": float("nan")})
    with pytest.raises(ValueError):  # UnicodeEncodeError is a ValueError
        encode_canonical_json({"a": "\ud800"})


@pytest.mark.parametrize("ok", [
    {}, {"a": [1, "x", None, True, False, {"b": -(2**53) + 1}]}, 2**53 - 1, "s", [],
])
def test_strict_accepts_in_range_values(ok):
    check_strict_json(ok)
    assert is_strict_json(ok)


@pytest.mark.parametrize("bad", [
    1.0, {"a": 0.5}, {"a": [1, {"b": 2**53}]}, -(2**53), {"deep": [[[[{"x": 1e10}]]]]},
    {"a": object()},
])
def test_strict_rejects_floats_and_big_ints(bad):
    with pytest.raises(CanonicalJsonError):
        check_strict_json(bad)
    assert not is_strict_json(bad)


def test_strict_walk_handles_very_deep_nesting():
    obj: object = 1
    for _ in range(5000):
        obj = [obj]
    check_strict_json(obj)  # no RecursionError
