"""The provider registry: name -> provider object. Nothing else lives here.

Each provider's module is imported the first time it is asked for: a program
that streams from one provider does not pay, at import, for the other three.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from ._base import Provider

__all__ = ["PROVIDERS", "DEFAULT_PROVIDER", "get_provider"]

#: The provider of ``llmstream.stream()`` and ``Client()`` when none is named.
DEFAULT_PROVIDER = "openai"

#: name -> (module, class), in the order the CLI lists them.
_WHERE = {
    "openai": ("openai_chat", "OpenAIChatProvider"),
    # An OpenAI-compatible server whose model writes its reasoning inline in <think>...</think>.
    "openai-think": ("openai_chat", "OpenAIThinkTagsProvider"),
    "openai-responses": ("openai_responses", "OpenAIResponsesProvider"),
    "anthropic": ("anthropic", "AnthropicProvider"),
    "ollama": ("ollama", "OllamaProvider"),
    "gemini": ("gemini", "GeminiProvider"),
    "vertex": ("gemini", "VertexProvider"),
    "azure": ("azure", "AzureOpenAIProvider"),
}


class _Registry(Mapping[str, Provider]):
    """A read-only mapping whose values are made (their module imported) on first access."""

    def __init__(self) -> None:
        self._made: dict[str, Provider] = {}

    def __getitem__(self, name: str) -> Provider:
        provider = self._made.get(name)
        if provider is None:
            module, cls = _WHERE[name]  # KeyError for an unknown name, as a dict
            provider = getattr(importlib.import_module(f".{module}", __name__), cls)()
            # Two threads may both make one: equal, stateless objects; the first stored wins.
            provider = self._made.setdefault(name, provider)
        return provider

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


PROVIDERS: Mapping[str, Provider] = _Registry()


def get_provider(name: str) -> Provider:
    """Return the provider called ``name``; ``ValueError`` lists the known ones."""
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown provider {name!r}; choose one of: {known}") from None
