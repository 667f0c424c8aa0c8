"""Fake-server formats that live in their own modules, found by name.

Strategy: every module ``llmstream/testing/_format_<name>.py`` defines
``FORMAT``, a :class:`FakeFormat`: how to answer a client of that provider
(its routes, frames, errors, keep-alives). ``_formats`` and ``_handler`` ask
:data:`PLUGINS` before their built-in formats, so adding a provider to the
fake server is one new module, and nothing else names it. The provider
module names the same format in its ``fake_format``.

Must never: import ``llmstream``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

__all__ = ["FakeFormat", "PLUGINS", "route"]


@dataclass(frozen=True)
class FakeFormat:
    """One provider's wire format on the fake server.

    Attributes:
        name: the provider's name (``Provider.fake_format``).
        content_type: of a streaming answer.
        formatter: ``(reply, ctx) -> Iterator[Event]``, the end marker last.
        route: ``path -> {"model": ...}`` for a path of this provider (``{}`` when the body names
            the model), None for another.
        error_body: ``(status, message, type) -> bytes``, a non-2xx body.
        error_events: ``(ctx, type, message, next_sequence) -> [Event]``, the in-stream error.
        encoder: ``(line_ending, ids, id_prefix) -> encode(event, index) -> bytes``.
        keepalive: ``line_ending -> bytes`` sent while idle.
        oversized: ``(size, line_ending, model) -> bytes``, one over-long line.
        base_path: appended to the server's URL to make a client's base URL.
        also: other providers served by this format (``vertex`` speaks ``gemini``).
    """

    name: str
    content_type: str
    formatter: Callable[..., Iterator[Any]]
    route: Callable[[str], Optional[Dict[str, str]]]
    error_body: Callable[[int, Optional[str], Optional[str]], bytes]
    error_events: Callable[..., List[Any]]
    encoder: Callable[[bytes, bool, str], Callable[[Any, int], bytes]]
    keepalive: Callable[[bytes], bytes]
    oversized: Callable[[int, bytes, str], bytes]
    base_path: str = ""
    also: Tuple[str, ...] = ()


def _discover() -> Dict[str, FakeFormat]:
    found: Dict[str, FakeFormat] = {}
    for info in sorted(pkgutil.iter_modules([os.path.dirname(__file__)]), key=lambda i: i.name):
        if info.name.startswith("_format_"):
            module = importlib.import_module(f"{__package__}.{info.name}")
            fmt: FakeFormat = module.FORMAT
            for name in (fmt.name, *fmt.also):
                found[name] = fmt
    return found


#: name -> format, filled by ``_formats`` once its helpers exist (the format modules use them).
PLUGINS: Dict[str, FakeFormat] = {}


def load() -> Dict[str, FakeFormat]:
    """Import every ``_format_*`` module (once) and return :data:`PLUGINS`."""
    if not PLUGINS:
        PLUGINS.update(_discover())
    return PLUGINS


def route(path: str) -> Tuple[Optional[str], Dict[str, str]]:
    """The plug-in format serving ``path`` and what the path says (``{"model": ...}``), or (None, {})."""
    for name, fmt in PLUGINS.items():
        found = fmt.route(path)
        if found is not None:
            return name, found
    return None, {}
