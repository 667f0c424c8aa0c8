"""Signing, as the real APIs sign what an agent loop must send back, and the type of a turn check.

Strategy: the fake server signs what the real APIs sign -- an Anthropic
thinking block (``signature``), a Responses reasoning item
(``encrypted_content``), a Gemini part (``thoughtSignature``) -- with an HMAC
under a fixed key, so streams stay byte-for-byte reproducible. When a request
sends a turn back, the format's ``check_turns`` (a :data:`TurnCheck`, in each
format module: ``_anthropic``, ``_openai_chat``, ``_openai_responses``,
``_gemini``) verifies it like the real API and returns the message of a 400.

Must never: import ``llmstream`` (the fake server is standalone), or name a provider.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable, Mapping, Optional

__all__ = ["sign", "TurnCheck", "HadReasoning"]

#: Fixed so that streams are reproducible; the point is that an altered text or signature fails.
_KEY = b"llmstream fake server signing key"

#: Whether the stored response of that id reasoned (the Responses check asks).
HadReasoning = Callable[[str], bool]
#: ``check_turns(request body, had_reasoning) -> the 400 message, or None when the turns are valid``.
TurnCheck = Callable[[Mapping[str, Any], HadReasoning], Optional[str]]


def sign(text: str) -> str:
    """The fake server's signature of ``text`` (a thinking block, a reasoning item's id, a Gemini part)."""
    return "fakesig_" + hmac.new(_KEY, text.encode("utf-8"), hashlib.sha256).hexdigest()[:40]
