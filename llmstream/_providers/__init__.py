"""The provider registry: name -> provider object. Nothing else lives here."""

from __future__ import annotations

from typing import Dict

from ._base import Provider
from .anthropic import AnthropicProvider
from .azure import AzureOpenAIProvider
from .gemini import GeminiProvider, VertexProvider
from .ollama import OllamaProvider
from .openai_chat import OpenAIChatProvider
from .openai_responses import OpenAIResponsesProvider

__all__ = ["PROVIDERS", "DEFAULT_PROVIDER", "get_provider"]

#: The provider of ``llmstream.stream()`` and ``Client()`` when none is named.
DEFAULT_PROVIDER = "openai"

PROVIDERS: Dict[str, Provider] = {
    "openai": OpenAIChatProvider(),
    "openai-responses": OpenAIResponsesProvider(),
    "anthropic": AnthropicProvider(),
    "ollama": OllamaProvider(),
    "gemini": GeminiProvider(),
    "vertex": VertexProvider(),
    "azure": AzureOpenAIProvider(),
}


def get_provider(name: str) -> Provider:
    """Return the provider called ``name``; ``ValueError`` lists the known ones."""
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown provider {name!r}; choose one of: {known}") from None
