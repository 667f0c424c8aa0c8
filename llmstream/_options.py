"""What a call may pass, and how the official SDKs' extra options change a request.

Rules (issue 14, "the official SDKs' habits"):
  * ``**params`` of ``Client.stream`` go into the request body unchanged, so
    llmstream's own option names must never fall through into it: a client
    option given per call (``api_key=``, ``base_url=``...) raises
    ``TypeError`` naming where it belongs, and a near miss of a call option
    (``timout=``, two edits at most) or the official SDKs' name for one (``max_retries=``) raises
    ``TypeError`` with "did you mean". Anything else is a provider parameter.
  * ``extra_headers`` / ``extra_query`` / ``extra_body`` (openai's and
    anthropic's names) are applied to the request the provider built, after
    the client's ``default_headers``: headers case-insensitively, a ``None``
    value removing a header; the query appended to the URL; the body's keys
    set at its top level, sent as given.
  * A conversation of the wrong shape is refused with the shape expected,
    before anything is sent.

Sans-IO: pure functions over values.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping as MappingABC
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlencode, urlsplit

from ._providers._base import Message, RequestSpec

__all__ = ["CALL_OPTIONS", "check_params", "apply_extras", "merge_headers", "build_messages", "HeaderValues"]

HeaderValues = Mapping[str, Union[str, bytes, None]]

#: llmstream's own keyword options of ``Client.stream`` (everything else is a provider parameter).
CALL_OPTIONS = (
    "messages", "model", "system", "timeout", "retry", "max_output_chars",
    "extra_headers", "extra_query", "extra_body", "keep_text", "sink",
    "on_text", "on_event", "on_retry", "on_error", "on_complete",
)

_EXAMPLE = '[{"role": "user", "content": "Hi"}]'

#: Options of the client given to a call: where each belongs instead.
_CLIENT_OPTIONS = {
    "api_key": "llmstream.Client(api_key=...) (or llmstream.stream(..., api_key=...))",
    "base_url": "llmstream.Client(base_url=...) (or llmstream.stream(..., base_url=...))",
    "provider": 'llmstream.Client("anthropic", ...) (or llmstream.stream(..., provider=...))',
    "headers": "extra_headers={...} for this call, or llmstream.Client(default_headers={...}) for every call",
    "default_headers": "llmstream.Client(default_headers={...}); for this call only, use extra_headers={...}",
    "default_query": "extra_query={...} on each call",
    "proxies": "llmstream.Client(proxies=...)",
    "verify": "llmstream.Client(verify=...)",
    "cert": "llmstream.Client(cert=...)",
    "session": "llmstream.Client(session=...)",
    "http_client": "llmstream.Client(session=requests.Session()) (llmstream uses requests, not httpx)",
    "max_concurrent": "llmstream.Client(max_concurrent=...)",
    "rate_limit": "llmstream.Client(rate_limit=...)",
    "circuit_breaker": "llmstream.Client(circuit_breaker=...)",
    "max_buffered": "llmstream.Client(max_buffered=...)",
    "max_line_length": "llmstream.Client(max_line_length=...)",
    "pool_size": "llmstream.Client(pool_size=...)",
    "pricing": "llmstream.Client(pricing=...)",
    "organization": 'llmstream.Client(default_headers={"OpenAI-Organization": ...})',
    "project": 'llmstream.Client(default_headers={"OpenAI-Project": ...})',
    "stream": "nowhere: llmstream always streams (client.complete(...) gives the whole answer)",
}

#: The official SDKs' names for llmstream's call options.
_SDK_NAMES = {
    "max_retries": "retry=N (attempts in all, the first included: max_retries=2 is retry=3)",
    "retries": "retry=N (attempts in all, the first included)",
    "request_timeout": "timeout=",
    "timeout_seconds": "timeout=",
    "headers_extra": "extra_headers=",
    "query": "extra_query=",
    "params_extra": "extra_body=",
    "body": "extra_body=",
}

#: The names a typo is matched against: the call options and the client options a
#: call is most often given.
_TYPO_TARGETS = CALL_OPTIONS + ("api_key", "base_url", "provider")

def check_params(params: Mapping[str, Any], *, where: str, provider_options: Tuple[str, ...] = ()) -> None:
    """Refuse llmstream option names among provider parameters (the rules above).

    ``where`` names the function, for the message (``"Client.stream()"``).

    Raises:
        TypeError: a client option, an official SDK's name, or a near miss.
    """
    for name in params:
        if name in CALL_OPTIONS or name in provider_options:
            # Passed on to Client.stream() (from the module-level stream()), which
            # takes it, or an option of the provider's own (Vertex's project=).
            continue
        home = _CLIENT_OPTIONS.get(name)
        if home is not None:
            reason = " (it would be sent to the server inside the request body)" if name in (
                "api_key", "base_url", "provider", "headers") else ""
            raise TypeError(
                f"{where} got {name}=, which is not a per-call option{reason}: it belongs in {home} "
                f"(to send a body key of this name, use extra_body={{{name!r}: ...}})"
            )
        sdk = _SDK_NAMES.get(name)
        if sdk is not None:
            raise TypeError(f"{where} got an unexpected option {name}= (did you mean {sdk}?)")
        close = _near_miss(name)
        if close is not None:
            raise TypeError(
                f"{where} got an unexpected option {name}= (did you mean {close}=?); "
                "to send it to the provider as is, use extra_body={" + repr(name) + ": ...}"
            )


@functools.lru_cache(maxsize=256)
def _near_miss(name: str) -> Optional[str]:
    """The option ``name`` is a typo of, or None (cached: a program passes the same few names again and again).

    A typo is at most two edits away (an insertion, a deletion or a
    substitution each), and at most one per three letters of the option,
    so a short option does not catch unrelated short words. Written here
    rather than with ``difflib``, whose import alone costs what this whole
    check may cost at a cold start.
    """
    best: Optional[str] = None
    best_distance = 3
    for target in _TYPO_TARGETS:
        limit = min(2, len(target) // 3)
        distance = _edit_distance(name, target, limit)
        if distance <= limit and distance < best_distance:
            best, best_distance = target, distance
    return best


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of ``a`` and ``b``, or ``limit + 1`` as soon as it must exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def merge_headers(base: Mapping[str, Union[str, bytes]], *layers: Optional[HeaderValues]) -> Dict[str, Union[str, bytes]]:
    """``base`` with each layer applied in turn, case-insensitively; a ``None`` value removes the header."""
    merged: Dict[str, Union[str, bytes]] = dict(base)
    for layer in layers:
        if not layer:
            continue
        for name, value in layer.items():
            if not isinstance(name, str):
                raise TypeError(f"a header name must be a str, not {type(name).__name__}")
            for existing in [k for k in merged if k.lower() == name.lower()]:
                del merged[existing]
            if value is None:
                continue
            if not isinstance(value, (str, bytes)):
                raise TypeError(f"header {name!r} must be a str (or None to remove it), not {type(value).__name__}")
            merged[name] = value
    return merged


def check_headers(name: str, headers: Optional[HeaderValues]) -> Optional[HeaderValues]:
    """Validate a headers option early (``default_headers``, ``extra_headers``)."""
    if headers is None:
        return None
    if not isinstance(headers, MappingABC):
        raise TypeError(f"{name} must be a mapping of header names to values, not {type(headers).__name__}")
    merge_headers({}, headers)  # raises on a bad name or value
    return headers


def apply_extras(
    spec: RequestSpec,
    *,
    headers: Sequence[Optional[HeaderValues]] = (),
    query: Optional[Mapping[str, Any]] = None,
    body: Optional[Mapping[str, Any]] = None,
) -> RequestSpec:
    """``spec`` with header layers, a query and body keys added (the rules above)."""
    if not any(headers) and not query and not body:
        return spec
    url = spec.url
    if query:
        if not isinstance(query, MappingABC):
            raise TypeError(f"extra_query must be a mapping of parameter names to values, not {type(query).__name__}")
        url = f"{url}{'&' if urlsplit(url).query else '?'}{urlencode(query, doseq=True)}"
    json = spec.json
    if body:
        if not isinstance(body, MappingABC):
            raise TypeError(f"extra_body must be a mapping of JSON keys to values, not {type(body).__name__}")
        if json is None:
            raise ValueError("extra_body needs a request with a JSON body")
        json = {**json, **body}
    return spec.replace(url=url, headers=merge_headers(spec.headers, *headers), json=json)


def build_messages(prompt: Optional[str], messages: Optional[Sequence[Message]], system: Optional[str]) -> List[Message]:
    """The conversation a stream sends: a prompt or messages, with the system prompt first (the CLI uses it too).

    Raises:
        ValueError: neither or both given, or no message.
        TypeError: a prompt that is not a str, or messages not shaped as a list of dicts.
    """
    if prompt is not None and not isinstance(prompt, str):
        if isinstance(prompt, (list, tuple)):
            raise TypeError(
                f"the prompt must be a str, not a {type(prompt).__name__}; "
                f"pass a conversation by keyword: messages={_EXAMPLE}"
            )
        raise TypeError(f"the prompt must be a str, not {type(prompt).__name__}")
    if (prompt is None) == (messages is None):
        raise ValueError("pass either a prompt or messages=[...], not both and not neither")
    if prompt is not None:
        result: List[Message] = [{"role": "user", "content": prompt}]
    else:
        result = _check_messages(messages)
    if system is not None:
        result.insert(0, {"role": "system", "content": system})
    return result


def _check_messages(messages: Any) -> List[Message]:
    expected = f"messages must be a list of dicts, like messages={_EXAMPLE}"
    if isinstance(messages, str):
        raise TypeError(f"{expected}, not a str; for one user message pass it as the prompt: stream({messages[:20]!r}, ...)")
    if isinstance(messages, MappingABC):
        raise TypeError(f"{expected}, not a dict; wrap one message in a list: messages=[{{...}}]")
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"{expected}, not {type(messages).__name__}")
    result: List[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, MappingABC):
            what = type(message).__name__
            hint = ""
            if isinstance(message, (tuple, list)) and len(message) == 2:
                hint = f"; write ({message[0]!r}, ...) as {{'role': {message[0]!r}, 'content': ...}}"
            elif isinstance(message, str):
                hint = "; write a bare string as {'role': 'user', 'content': ...}"
            raise TypeError(f"{expected}: messages[{i}] is a {what}, not a dict{hint}")
        result.append(dict(message))
    if not result:
        raise ValueError("messages must not be empty")
    return result
