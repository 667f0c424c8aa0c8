"""Azure OpenAI chat completions: request and stream decoder (the OpenAI chat format plus content filters).

Contract
--------
Spec: https://learn.microsoft.com/azure/ai-foundry/openai/reference (chat
completions, ``api-version``), https://learn.microsoft.com/azure/ai-foundry/openai/concepts/content-filter
(``prompt_filter_results``, ``content_filter_results``, ``finish_reason: "content_filter"``),
and the ``openai`` package's ``AzureOpenAI`` client (its environment variables and URL rules).

Strategy: the stream is OpenAI's chat completion chunks, decoded by
:class:`~llmstream._providers.openai_chat.OpenAIChatDecoder`; this module adds
what Azure puts around them:

  * the first chunk has ``"choices": []`` and ``prompt_filter_results`` (the
    prompt's filter annotations): one :class:`ContentFilter` with
    ``source="prompt"`` (``blocked`` when a category says ``filtered: true``);
  * each choice may carry ``content_filter_results``; when a category is
    filtered, or ``finish_reason`` is ``"content_filter"`` (the answer was cut
    by the filter mid-stream), a :class:`ContentFilter` with
    ``source="completion"``, ``blocked=True`` and those results goes right
    before the ``Finish("content_filter")``, so an app can retract what it
    showed. Reports that filtered nothing are not events (Azure sends one on
    almost every chunk).

Requests: ``{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=V``
(the deployment is the ``model`` argument, as with ``AzureOpenAI``), or the v1
API ``{endpoint}/openai/v1/chat/completions`` when the api version is ``v1``
or ``preview`` or not given, or the endpoint already ends with ``/openai/v1``. The key goes
in ``api-key``; a token callable (Entra ID) is sent as ``Authorization: Bearer``.

Never: touch a socket, thread, clock or logger.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import quote, urlencode

from .._events import ContentFilter, Event, Finish
from .._fastjson import loads as fast_loads
from ._base import BearerToken, Message, RequestSpec, ServerSentEvent, drop_none
from ._shape import expect, optional
from .openai_chat import OpenAIChatDecoder, OpenAIChatProvider

__all__ = ["AzureOpenAIProvider", "AzureDecoder"]

_WHERE = "Azure OpenAI chunk"
#: Api versions that mean the v1 API (``/openai/v1/...``), not a deployment path.
V1_VERSIONS = frozenset({"v1", "preview", "latest"})


def _any_filtered(results: Any) -> bool:
    """Whether a filter result object (or a list of them) says some category was filtered."""
    if isinstance(results, list):
        return any(_any_filtered(r) for r in results)
    if not isinstance(results, dict):
        return False
    if results.get("filtered") is True:
        return True
    return any(_any_filtered(v) for v in results.values() if isinstance(v, (dict, list)))


class AzureDecoder(OpenAIChatDecoder):
    """The chat decoder, plus :class:`ContentFilter` events for Azure's filter annotations."""

    def feed(self, message: ServerSentEvent) -> List[Event]:
        """Decode one SSE event (see the module contract for the filter events)."""
        events = super().feed(message)
        if "filter_results" not in message.data:
            return events
        try:
            chunk = fast_loads(message.data)
        except ValueError:
            return events
        if not isinstance(chunk, dict):
            return events
        out: List[Event] = []
        prompt = chunk.get("prompt_filter_results")
        if prompt is not None:
            expect(prompt, list, "prompt_filter_results", _WHERE)
            blocked = _any_filtered(prompt)
            out.append(ContentFilter("prompt", "content_filter" if blocked else "", blocked, prompt))
        completion = self._completion_filter(chunk)
        if completion is None:
            return out + events
        # Right before the Finish it explains, or at the end of the chunk's events.
        at = next((i for i, e in enumerate(events) if isinstance(e, Finish)), len(events))
        return out + events[:at] + [completion] + events[at:]

    @staticmethod
    def _completion_filter(chunk: Dict[str, Any]) -> Optional[ContentFilter]:
        for i, choice in enumerate(optional(chunk, "choices", list, _WHERE) or ()):
            if not isinstance(choice, dict) or (choice.get("index") or 0) != 0:
                continue
            results = optional(choice, "content_filter_results", dict, _WHERE, f"choices[{i}].")
            reason = choice.get("finish_reason")
            if reason == "content_filter" or _any_filtered(results):
                return ContentFilter("completion", "content_filter", True, results)
        return None


class AzureOpenAIProvider(OpenAIChatProvider):
    """Azure OpenAI chat completions (``provider="azure"``).

    ``base_url`` is the resource endpoint (``https://NAME.openai.azure.com``),
    as ``AzureOpenAI(azure_endpoint=...)``, defaulting from
    ``AZURE_OPENAI_ENDPOINT``. The key defaults from ``AZURE_OPENAI_API_KEY``
    (else ``AZURE_OPENAI_AD_TOKEN``, a bearer token); ``api_version`` is a
    call option (never sent in the body) defaulting from ``OPENAI_API_VERSION``.
    """

    name = "azure"
    api_key_env: Optional[str] = "AZURE_OPENAI_API_KEY"
    base_url_env: Optional[str] = "AZURE_OPENAI_ENDPOINT"
    default_base_url = ""
    env_vars = ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION")
    default_model = "gpt-4o-mini"
    fake_format = "azure"
    otel_name = "azure.ai.openai"
    #: Azure has no assistant prefill: resume="auto" replays.
    supports_continue = False

    def api_key_from_env(self, environ: Mapping[str, str]) -> Optional[str]:
        """``AZURE_OPENAI_API_KEY``, else ``AZURE_OPENAI_AD_TOKEN`` as a bearer token (``AzureOpenAI``'s order)."""
        key = environ.get("AZURE_OPENAI_API_KEY")
        if key:
            return key
        token = environ.get("AZURE_OPENAI_AD_TOKEN")
        return BearerToken(token) if token else None

    def params_from_env(self, environ: Mapping[str, str]) -> Dict[str, Any]:
        """``api_version`` from ``OPENAI_API_VERSION``."""
        version = environ.get("OPENAI_API_VERSION")
        return {"api_version": version} if version else {}

    def continue_allowed(self, base_url: str) -> bool:
        """False: Azure OpenAI continues no final assistant message."""
        return False

    def continue_request(self, spec: RequestSpec, delivered_text: str) -> RequestSpec:
        """``spec`` itself: no continuation (resume is a replay)."""
        return spec

    def headers(self, api_key: Optional[str]) -> Dict[str, str]:
        """JSON body, SSE answer, and ``api-key`` (or ``Authorization: Bearer`` for an Entra ID token)."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if isinstance(api_key, BearerToken):
            headers["Authorization"] = f"Bearer {api_key}"
        elif api_key:
            headers["api-key"] = api_key
        return headers

    def build_request(
        self,
        *,
        base_url: str,
        api_key: Optional[str],
        model: str,
        messages: List[Message],
        params: Mapping[str, Any],
    ) -> RequestSpec:
        """Build the deployment (or v1) chat completions request; ``model`` is the deployment name.

        Without an ``api_version`` (argument or ``OPENAI_API_VERSION``) the v1
        API is used, which needs none (``AzureOpenAI`` refuses to start instead).

        Raises:
            ValueError: no endpoint.
        """
        options = dict(params)
        version = options.pop("api_version", None)
        endpoint = self.normalize_base_url(base_url)
        if not endpoint:
            raise ValueError("provider='azure' needs an endpoint: pass base_url=... or set AZURE_OPENAI_ENDPOINT")
        spec = super().build_request(base_url=endpoint, api_key=api_key, model=model, messages=messages, params=options)
        if endpoint.endswith("/openai/v1"):
            url = f"{endpoint}/chat/completions"
        elif not version or version in V1_VERSIONS:
            # The v1 API needs no api-version; without one, it is the one that works.
            url = f"{endpoint}/openai/v1/chat/completions"
        else:
            url = f"{endpoint}/openai/deployments/{quote(model, safe='')}/chat/completions"
        if version and version not in ("v1", "latest"):
            url += "?" + urlencode({"api-version": version})
        return spec.replace(url=url, json=drop_none(dict(spec.json or {})))

    def new_decoder(self) -> AzureDecoder:
        """Return a fresh decoder for one stream."""
        return AzureDecoder()
