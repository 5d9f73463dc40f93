"""Request bodies: the orjson fast path of ``parse_json`` gives exactly what the strict
standard-library parse gives, or hands the body to it (no shortcut changes an answer)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node._common import _SLOW, MAX_BODY_DEPTH, _fast_parse, _strict_parse, parse_json
from node._exceptions import ApiError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab:"\\\u00e9\U0001f600\n{}[],'), max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet='ab:\\"', max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)


def outcome(parse: Any, raw: bytes) -> Any:
    try:
        return ("ok", parse(raw))
    except ApiError as exc:
        return ("error", exc.status, exc.code)


@settings(max_examples=400, deadline=None)
@given(values, st.booleans(), st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : ")]))
def test_the_fast_path_agrees_with_the_strict_parse(value: Any, ascii_only: bool, separators: tuple[str, str]) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only, separators=separators).encode()
    assert outcome(parse_json, raw) == outcome(_strict_parse, raw)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(alphabet="ab:", max_size=2), values, min_size=1, max_size=3), st.data())
def test_a_duplicated_key_is_refused_whichever_way_the_body_goes(obj: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    again = json.dumps(data.draw(values))
    raw = (json.dumps(obj)[:-1] + f", {json.dumps(key)}: {again}}}").encode()
    assert outcome(parse_json, raw) == ("error", 400, "bad_json") == outcome(_strict_parse, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 1, "a": 2}',
        b'{"a": 1, "a": "\\u003a"}',  # an escaped colon must not hide the second key
        b'{"a:": 1, "a:": "b"}',
        b'{"value": 123456789012345678901234567890}',  # beyond 64 bits: an int, not a float
        b'{"value": -9223372036854775809}',
        b'{"value": 1e19}',
        b"1e999",
        b"NaN",
        b'"\\ud800"',
        b"\xef\xbb\xbf{}",  # a UTF-8 BOM: json takes it
        b'{"v": "\\u00e9"}',
        b"[" * (MAX_BODY_DEPTH + 1) + b"]" * (MAX_BODY_DEPTH + 1),
        b"[" * MAX_BODY_DEPTH + b"]" * MAX_BODY_DEPTH,
        b"[1,]",
        b'{"a": 1}x',
    ],
)
def test_bodies_the_fast_path_must_not_decide_alone(raw: bytes) -> None:
    assert outcome(parse_json, raw) == outcome(_strict_parse, raw)


def test_a_plain_write_body_takes_the_fast_path() -> None:
    raw = b'{"value": {"name": "r0", "pool": "p:0", "port": 8080, "weight": 0.5, "tags": [1, 2]}}'
    assert _fast_parse(raw) == json.loads(raw)
    assert _fast_parse(b'{"a": 1, "a": 2}') is _SLOW
