"""The one redaction step: whole secrets, fragments of them, header credentials."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmstream
from llmstream._redact import MARKER, MIN_FRAGMENT, Redactor, redact_error, secrets_in_headers

KEY = "sk-test-" + "0123456789abcdefghij" * 8


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(f"bad key {KEY}!", "bad key <redacted>!", id="whole"),
        pytest.param(f"bad key {KEY[:40]}", "bad key <redacted>", id="truncated-start"),
        pytest.param(f"...{KEY[-30:]} end", "...<redacted> end", id="truncated-end"),
        pytest.param(f"{KEY}{KEY}", "<redacted>", id="twice-adjacent"),
        pytest.param(f"a {KEY} b {KEY} c", "a <redacted> b <redacted> c", id="twice"),
        pytest.param(f"x {KEY[:MIN_FRAGMENT - 1]} y", f"x {KEY[:MIN_FRAGMENT - 1]} y", id="short-fragment-kept"),
        pytest.param("nothing secret here", "nothing secret here", id="clean"),
    ],
)
def test_redacts_secrets_and_their_fragments(text: str, expected: str) -> None:
    assert Redactor([KEY])(text) == expected


def test_short_values_are_not_secrets() -> None:
    redact = Redactor(["test", None, ""])
    assert not redact
    assert redact("test test") == "test test"


def test_credentials_are_found_in_headers() -> None:
    headers = {"Authorization": f"Bearer {KEY}", "x-api-key": "k" * 20, "Content-Type": "application/json",
               "anthropic-version": "2023-06-01"}
    assert secrets_in_headers(headers) == [KEY, "k" * 20]


def test_an_error_is_redacted_in_place() -> None:
    error = llmstream.AuthenticationError(f"HTTP 401: key {KEY}", status_code=401, body=f'{{"key": "{KEY}"}}')
    redact_error(error, Redactor([KEY]))
    assert str(error) == "HTTP 401: key <redacted>"
    assert error.body == '{"key": "<redacted>"}'
    assert KEY[:MIN_FRAGMENT] not in repr(error)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.integers(0, len(KEY)), st.integers(0, len(KEY)), st.text(max_size=40))
def test_no_fragment_of_the_key_survives(before: str, start: int, stop: int, after: str) -> None:
    piece = KEY[min(start, stop):max(start, stop)]
    out = Redactor([KEY])(before + piece + after)
    for i in range(len(KEY) - MIN_FRAGMENT + 1):
        fragment = KEY[i:i + MIN_FRAGMENT]
        assert fragment not in out or fragment in (before + after).replace(piece, "")
    if len(piece) >= MIN_FRAGMENT:
        assert MARKER in out
