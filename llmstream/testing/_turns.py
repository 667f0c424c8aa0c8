"""Signed thinking and the next request's check of the assistant turn, as the real APIs do.

Strategy: the fake server signs what the real APIs sign -- an Anthropic
thinking block (``signature``) and a Responses reasoning item
(``encrypted_content``) -- with an HMAC over the content under a fixed key,
so streams stay byte-for-byte reproducible. When a request sends a turn back,
:func:`check_turns` verifies it like the real API and returns the error
message for a 400:

  * Anthropic: an assistant ``thinking`` block without a ``signature``, or
    whose signature does not match its text ("Invalid `signature` in
    `thinking` block"); a ``redacted_thinking`` block whose ``data`` was
    altered; with ``thinking`` enabled, a final assistant message with
    ``tool_use`` that does not start with its thinking block; a
    ``tool_result`` whose ``tool_use_id`` is not a ``tool_use`` of the
    previous assistant message.
  * OpenAI chat: a ``tool`` message that answers no ``tool_calls`` id of an
    earlier assistant message.
  * Responses: a ``function_call_output`` without its ``function_call``; a
    function call of a response that reasoned, sent back without that
    reasoning item before it; a reasoning item whose ``encrypted_content``
    does not verify.

Must never: import ``llmstream`` (the fake server is standalone).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, Callable, Dict, List, Mapping, Optional

__all__ = ["sign", "redacted_data", "check_turns"]

#: Fixed so that streams are reproducible; the point is that an altered text or signature fails.
_KEY = b"llmstream fake server signing key"

Recall = Callable[[str], Any]


def sign(text: str) -> str:
    """The fake server's signature of ``text`` (an Anthropic thinking block, a reasoning item's id)."""
    return "fakesig_" + hmac.new(_KEY, text.encode("utf-8"), hashlib.sha256).hexdigest()[:40]


def redacted_data(number: int) -> str:
    """The opaque, signed ``data`` of the fake's ``redacted_thinking`` block for request ``number``."""
    payload = base64.b64encode(f"redacted thinking of request {number}".encode()).decode()
    return f"{payload}.{sign('redacted:' + payload)}"


def check_turns(provider: str, body: Mapping[str, Any], had_reasoning: Callable[[str], bool]) -> Optional[str]:
    """The 400 message for a conversation whose assistant turns were altered, or None if it is valid."""
    if provider == "anthropic":
        thinking = body.get("thinking")
        enabled = isinstance(thinking, dict) and thinking.get("type") == "enabled"
        return _anthropic(body.get("messages")) or (_thinking_first(body.get("messages")) if enabled else None)
    if provider == "openai-responses":
        return _responses(body.get("input"), had_reasoning)
    if provider == "openai":
        return _chat(body.get("messages"))
    return None


def _blocks(message: Any) -> List[Any]:
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, list) else []


def _anthropic(messages: Any) -> Optional[str]:
    if not isinstance(messages, list):
        return None
    previous_uses: List[str] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        uses: List[str] = []
        for j, block in enumerate(_blocks(message)):
            if not isinstance(block, dict):
                continue
            where = f"messages.{i}.content.{j}"
            kind = block.get("type")
            if role == "assistant" and kind == "thinking":
                signature = block.get("signature")
                if not isinstance(signature, str) or not signature:
                    return f"{where}.thinking.signature: Field required"
                if not hmac.compare_digest(signature, sign(str(block.get("thinking", "")))):
                    return f"{where}: Invalid `signature` in `thinking` block"
            elif role == "assistant" and kind == "redacted_thinking":
                payload, _, signature = str(block.get("data", "")).partition(".")
                if not hmac.compare_digest(signature, sign("redacted:" + payload)):
                    return f"{where}: Invalid `data` in `redacted_thinking` block"
            elif role == "assistant" and kind == "tool_use":
                uses.append(str(block.get("id")))
            elif role == "user" and kind == "tool_result" and block.get("tool_use_id") not in previous_uses:
                return (f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {block.get('tool_use_id')}. "
                        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.")
        previous_uses = uses
    return None


def _thinking_first(messages: Any) -> Optional[str]:
    """With thinking enabled, the final assistant message of a tool loop must start with its thinking."""
    if not isinstance(messages, list):
        return None
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        blocks = [b for b in _blocks(message) if isinstance(b, dict)]
        if not any(b.get("type") == "tool_use" for b in blocks):
            return None
        first = blocks[0].get("type")
        if first in ("thinking", "redacted_thinking"):
            return None
        return (f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. "
                "When `thinking` is enabled, a final `assistant` message must start with a thinking block "
                "(preceeding the lastmost set of `tool_use` and `tool_result` blocks).")
    return None


def _chat(messages: Any) -> Optional[str]:
    if not isinstance(messages, list):
        return None
    calls: List[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict):
                    calls.append(str(call.get("id")))
        elif message.get("role") == "tool" and message.get("tool_call_id") not in calls:
            return (f"Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    f"with 'tool_calls'. (messages[{i}])")
    return None


def _responses(items: Any, had_reasoning: Callable[[str], bool]) -> Optional[str]:
    if not isinstance(items, list):
        return None
    reasoning: Dict[str, bool] = {}
    calls: List[str] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        item_id = str(item.get("id", ""))
        if kind == "reasoning":
            content = item.get("encrypted_content")
            if content is not None and not hmac.compare_digest(str(content), sign(item_id)):
                return f"The encrypted content for item {item_id} could not be verified."
            reasoning[item_id] = True
        elif kind == "function_call":
            calls.append(str(item.get("call_id")))
            # fc_fake_{N}_{k} came from response N; rs_fake_{N} is its reasoning item.
            parts = item_id.split("_")
            if len(parts) == 4 and parts[:2] == ["fc", "fake"]:
                needed = f"rs_fake_{parts[2]}"
                if had_reasoning(f"resp_fake_{parts[2]}") and needed not in reasoning:
                    return (f"Item '{item_id}' of type 'function_call' was provided without its required "
                            f"'reasoning' item: '{needed}'.")
        elif kind == "function_call_output" and item.get("call_id") not in calls:
            return f"No tool call found for function call output with call_id {item.get('call_id')}."
    return None
