"""The one redaction step: secrets out of every string built from server text.

Why: servers echo keys back — in a 401 body, in an error event, in a proxy's
HTML page — and llmstream copies server text into exception messages, reprs,
``Retrying`` events and log lines. Every such string passes through a
:class:`Redactor` that knows the client's secrets before it leaves the IO shell.

Strategy: a secret is removed wherever it appears, whole or in part: any run
of :data:`MIN_FRAGMENT` or more characters that also stands in the secret is
replaced by ``<redacted>``. Matching fragments, not only the whole secret,
keeps the rule true even where text was cut before it got here (a decoder's
message quotes the first 80 characters of a bad line; a key cut in half by
that truncation must not leak its first half). Secrets shorter than
:data:`MIN_FRAGMENT` are not redacted: they are not keys, and replacing every
"test" in a message would only hide the message.

Cost: linear in the text for each secret (a set of the secret's fragments,
looked up at each position); it runs only when an error or a retry is
reported, never per token.

Sans-IO: a pure function over strings.
"""

from __future__ import annotations

import re
import weakref
from urllib.parse import unquote_plus
from typing import Iterable, List, Mapping, Optional, Tuple

from ._exceptions import APIStatusError, ProviderError, StreamError

__all__ = ["Redactor", "MARKER", "MIN_FRAGMENT", "SECRET_HEADER_WORDS", "is_secret_header", "redact_error", "redactor_for",
           "secrets_in_headers", "secrets_in_request"]

#: What a secret, or a fragment of one, is replaced with.
MARKER = "<redacted>"
#: The shortest run of a secret's characters that counts as a leak.
MIN_FRAGMENT = 8

#: A header whose lower-case name contains one of these carries a credential.
SECRET_HEADER_WORDS = ("auth", "key", "token", "secret", "cookie", "password")
_AUTH_SCHEME = re.compile(r"^(?:bearer|basic|token)\s+", re.IGNORECASE)


def is_secret_header(name: str) -> bool:
    """Whether a header of this name carries a credential (its value is never shown)."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_HEADER_WORDS)


def secrets_in_headers(headers: Mapping[str, object]) -> List[str]:
    """The credential values among request headers (``Bearer`` and the like stripped)."""
    found = []
    for name, value in headers.items():
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, str) and is_secret_header(name):
            found.append(_AUTH_SCHEME.sub("", value.strip()))
    return found


def secrets_in_request(headers: Mapping[str, object], url: str) -> List[str]:
    """The credentials a request carries: secret-looking headers, and query values of secret-looking names."""
    found = secrets_in_headers(headers)
    query = url.partition("?")[2]
    if query:
        found.extend(unquote_plus(value) for name, _, value in (pair.partition("=") for pair in query.split("&"))
                     if value and is_secret_header(unquote_plus(name)))
    return found


class Redactor:
    """Replaces every secret it knows, or any fragment of one, with ``<redacted>``.

    Usage::

        redact = Redactor(["sk-live-0123456789abcdef"])
        redact("bad key sk-live-0123456789abcdef")   # 'bad key <redacted>'
        redact("bad key sk-live-0123")               # 'bad key <redacted>'
    """

    __slots__ = ("_secrets", "_fragments", "__weakref__")

    def __init__(self, secrets: Iterable[Optional[str]] = ()) -> None:
        self._secrets = tuple(secret for secret in secrets if secret and len(secret) >= MIN_FRAGMENT)
        # Made at the first redaction (an error or a retry): a stream that ends
        # well never needs them, and a 56-character key's are ~5 KB and ~6 us
        # for every stream that finds no Redactor to share (issue 17).
        self._fragments: Optional[frozenset[str]] = None

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __call__(self, text: str) -> str:
        """Return ``text`` with every secret fragment replaced by ``<redacted>``."""
        if not self._secrets or len(text) < MIN_FRAGMENT:
            return text
        spans = self._spans(text)
        if not spans:
            return text
        out, pos = [], 0
        for start, end in spans:
            out.append(text[pos:start])
            out.append(MARKER)
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def _spans(self, text: str) -> List[Tuple[int, int]]:
        """Merged ``[start, end)`` ranges of ``text`` covered by secret fragments."""
        fragments = self._fragments
        if fragments is None:
            # Two threads may both make them: the same set.
            fragments = self._fragments = frozenset(
                secret[i : i + MIN_FRAGMENT] for secret in self._secrets for i in range(len(secret) - MIN_FRAGMENT + 1))
        spans: List[Tuple[int, int]] = []
        for i in range(len(text) - MIN_FRAGMENT + 1):
            if text[i : i + MIN_FRAGMENT] in fragments:
                end = i + MIN_FRAGMENT
                if spans and spans[-1][1] >= i:
                    spans[-1] = (spans[-1][0], end)
                else:
                    spans.append((i, end))
        return spans


# Streams that carry the same secrets (a client's key) share one Redactor: a
# key's fragments are a few KiB, which every one of hundreds of concurrent
# streams would otherwise hold (issue 17). Weak values: an entry (and the
# secrets in its key) goes when the last stream holding it does.
_SHARED: "weakref.WeakValueDictionary[Tuple[str, ...], Redactor]" = weakref.WeakValueDictionary()


def redactor_for(secrets: Iterable[Optional[str]]) -> Redactor:
    """A :class:`Redactor` for ``secrets``, shared while any holder of one for the same secrets lives."""
    key = tuple(secret for secret in secrets if secret and len(secret) >= MIN_FRAGMENT)
    redactor = _SHARED.get(key)
    if redactor is None:
        redactor = Redactor(key)
        _SHARED[key] = redactor  # two threads racing make two equal ones: harmless
    return redactor


def redact_error(error: StreamError, redact: Redactor) -> None:
    """Redact, in place, the server text an error carries: message, body, type, and its chain.

    The chained exceptions (requests', urllib3's, http.client's) quote the
    server's bytes as they came, and every traceback prints them: with
    secrets to protect, the chain is dropped; the message already names the
    root cause, redacted.
    """
    if not redact:
        return
    error.message = redact(error.message)
    error.args = (error.message,)
    if isinstance(error, APIStatusError):
        error.body = redact(error.body)
    if isinstance(error, ProviderError) and error.type is not None:
        error.type = redact(error.type)
    error.__cause__ = None
    error.__context__ = None
    error.__suppress_context__ = True
