"""_fastjson.loads gives exactly json.loads's value or error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmstream._fastjson import loads

CASES = ['{"a": 1}', ' {"a": 1}', '{"a": 1} ', "[1, 2]", '"x"', "3.5", "null", "", " ", "{", '{"a": 1} x', "NaN",
         '{"a":"\\u00e9\\ud83c\\udf89"}', '{"a": 1}\n']


@pytest.mark.parametrize("text", CASES)
def test_same_as_json_loads(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError as exc:
        with pytest.raises(ValueError) as info:
            loads(text)
        assert str(info.value) == str(exc)
    else:
        assert loads(text) == expected or (expected != expected)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(["", " ", "\n", "\t "]))
def test_round_trip(value: object, pad: str) -> None:
    text = pad + json.dumps(value) + pad
    assert loads(text) == json.loads(text)
