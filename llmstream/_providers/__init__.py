"""The provider registry: name -> provider object. Nothing else lives here."""

from __future__ import annotations

from typing import Dict

from ._base import Provider
from .anthropic import AnthropicProvider
from .ollama import OllamaProvider
from .openai_chat import OpenAIChatProvider
from .openai_responses import OpenAIResponsesProvider

__all__ = ["PROVIDERS", "get_provider"]

PROVIDERS: Dict[str, Provider] = {
    "openai": OpenAIChatProvider(),
    # An OpenAI-compatible server whose model writes its reasoning inline in <think>...</think>.
    "openai-think": OpenAIChatProvider(think_tags=True, name="openai-think"),
    "openai-responses": OpenAIResponsesProvider(),
    "anthropic": AnthropicProvider(),
    "ollama": OllamaProvider(),
}


def get_provider(name: str) -> Provider:
    """Return the provider called ``name``; ``ValueError`` lists the known ones."""
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown provider {name!r}; choose one of: {known}") from None
