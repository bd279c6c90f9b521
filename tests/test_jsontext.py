"""The JSON nesting limit is the project's own: the same document gets the same answer on every
Python."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pt2interp import jsontext

# strings full of what could fool a scanner: brackets, quotes and backslashes
_TRICKY_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\ab,:\n'), max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY_TEXT, inner, max_size=3),
    max_leaves=40,
)


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(_JSON, st.integers(0, 8), st.sampled_from([None, 1, 2]))
def test_depth_check_agrees_with_the_parsed_document(value, limit, indent):
    text = json.dumps(value, indent=indent).encode()
    assert jsontext.depth_exceeds(text, limit) == (_depth(value) > limit)


@pytest.mark.parametrize("depth", [jsontext.MAX_DEPTH, jsontext.MAX_DEPTH + 1, 5000, 100_000])
@pytest.mark.parametrize("shape", ["list", "object", "mixed"])
def test_the_limit_is_exact_and_does_not_recurse(depth, shape):
    # 100_000 levels: past any interpreter's own limit, so a recursive check would fail here
    if shape == "list":
        text = "[" * depth + "]" * depth
    elif shape == "object":
        text = '{"k":' * depth + "1" + "}" * depth
    else:  # alternating levels around a string that looks like closing brackets
        opens = ["[" if i % 2 == 0 else '{"k":' for i in range(depth)]
        closes = ["]" if i % 2 == 0 else "}" for i in reversed(range(depth))]
        text = "".join(opens) + r'"]}]}\\"' + "".join(closes)
    if depth <= jsontext.MAX_DEPTH:
        assert jsontext.loads(text) is not None
    else:
        with pytest.raises(jsontext.NestingError, match=f"over {jsontext.MAX_DEPTH} levels"):
            jsontext.loads(text)


@pytest.mark.parametrize("text", ['["[[[[[["]', r'["\"[[[["]', '["\\\\"]', "[1, 2", '{"a": [}'])
def test_malformed_or_tricky_text_is_left_to_the_parser(text):
    try:
        json.loads(text)
    except ValueError as exc:
        with pytest.raises(ValueError) as got:
            jsontext.loads(text)
        assert type(got.value) is type(exc)
    else:
        assert jsontext.loads(text) == json.loads(text)


def test_unbalanced_deep_openers_are_refused_before_parsing():
    with pytest.raises(jsontext.NestingError):
        jsontext.loads("[1," * 10_000)
