"""The provider as one declared extension point: every provider satisfies the protocol, and nothing else names one.

Adding a provider is one provider module, one fake-server format module
(``llmstream/testing/_<name>.py``), its recorded fixtures and one registry
line in each registry (``llmstream/_providers/__init__.py``, and the fake
server's ``FORMATS`` in ``llmstream/testing/_formats.py``). The scan below fails
when any other module of ``llmstream/`` names a provider: its name or an
environment variable it reads, as a string in code (docstrings and comments
are prose, and free to mention them).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from llmstream._providers import PROVIDERS
from llmstream._providers._base import BaseProvider, Provider
from llmstream.testing._formats import FORMATS

ROOT = Path(__file__).resolve().parent.parent / "llmstream"
#: The provider modules, by the provider names they define.
OWNERS: Dict[str, Set[str]] = {}
for _name, _provider in PROVIDERS.items():
    OWNERS.setdefault(type(_provider).__module__.rsplit(".", 1)[-1] + ".py", set()).add(_name)
#: The registries, which name them all: the providers', and the fake server's table of formats.
REGISTRY = {"_providers/__init__.py", "testing/_formats.py"}
#: The fake server's format modules (``llmstream/testing/_<module>.py``), by the providers they speak.
FAKE_MODULES: Dict[str, Set[str]] = {}
for _name, _format in FORMATS.items():
    FAKE_MODULES.setdefault(_format.stream.__module__.rsplit("._", 1)[-1], set()).add(_name)
#: The fake server's HTTP layer still names the first four providers (the styles of its
#: shared endpoints: model lists, error pages, request ids); new providers must not be named there.
BUILT_IN = {"openai", "openai-responses", "anthropic", "ollama"}
LEGACY_FAKE_FORMATS = {"testing/_handler.py": BUILT_IN, "testing/_server.py": BUILT_IN, "testing/_cli.py": BUILT_IN,
                       "testing/_wire.py": BUILT_IN}


def words(name: str) -> Set[str]:
    provider = PROVIDERS[name]
    return {name, *provider.env_vars, *(v for v in (provider.api_key_env, provider.base_url_env) if v)}


def code_strings(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    """String constants that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def offenders(root: Path) -> List[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in REGISTRY:
            continue
        allowed = set(OWNERS.get(path.name, set())) if rel.startswith("_providers/") else set()
        if rel.startswith("testing/_") and rel[len("testing/_"):-3] in FAKE_MODULES:
            allowed |= FAKE_MODULES[rel[len("testing/_"):-3]]
        allowed |= LEGACY_FAKE_FORMATS.get(rel, set())
        # Words shared by providers (OpenAI's two APIs read the same variables) are theirs in each module.
        allowed_words = set().union(*(words(n) for n in allowed)) if allowed else set()
        # and so is the OpenTelemetry name a provider declares (the Responses API's is "openai").
        allowed_words |= {PROVIDERS[n].otel_name for n in allowed if n in PROVIDERS}
        for line, text in code_strings(ast.parse(path.read_text(encoding="utf-8"))):
            for name in PROVIDERS:
                if name in allowed:
                    continue
                hit = (text == name and text not in allowed_words) or any(re.search(rf"(?<![A-Za-z0-9_]){w}(?![A-Za-z0-9_])", text)
                                          for w in words(name) - {name} - allowed_words)
                if hit:
                    found.append(f"{rel}:{line}: names provider {name!r} ({text[:60]!r})")
    return found


def test_nothing_outside_its_modules_and_the_registry_names_a_provider() -> None:
    assert offenders(ROOT) == []


def test_the_scan_finds_a_provider_named_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "_client.py").write_text('"""Mentions gemini in prose: fine."""\nRULE = provider.name == "gemini"\n')
    (tmp_path / "_flow.py").write_text('KEY = os.environ.get("AZURE_OPENAI_ENDPOINT")\n')
    assert offenders(tmp_path) == [
        "_client.py:2: names provider 'gemini' ('gemini')",
        "_flow.py:1: names provider 'azure' ('AZURE_OPENAI_ENDPOINT')",
    ]


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_every_provider_is_declared_and_complete(name: str) -> None:
    provider: Provider = PROVIDERS[name]
    assert isinstance(provider, BaseProvider) and provider.name == name
    assert provider.framing in ("sse", "jsonl", "sse+json")
    assert provider.default_model and provider.env_vars
    assert provider.fake_format in FORMATS and provider.otel_name
    assert isinstance(provider.estimate_tokens({"messages": [{"role": "user", "content": "x" * 400}]}), float)
    limit = provider.limit_params(77)
    assert provider.output_limit(limit) == 77  # the limit it writes is the limit it reads
    assert provider.supports_continue in (False, True, "prefill")


def test_the_fake_server_serves_every_provider() -> None:
    from llmstream.testing import FakeLLMServer

    with FakeLLMServer() as server:
        for name in PROVIDERS:
            assert server.base_url(PROVIDERS[name].fake_format).startswith(server.url)  # by its declared format


def probes(root: Path) -> List[str]:
    """``getattr``/``hasattr`` on a provider or its decoder outside ``_providers/``: what the protocol declares instead."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("_providers/", "testing/")):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                    and node.args and re.search(r"provider|decoder|inner", ast.unparse(node.args[0]))):
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_probing_of_providers_outside_their_modules(tmp_path: Path) -> None:
    assert probes(ROOT) == []
    (tmp_path / "_resume.py").write_text('support = getattr(self._provider, "supports_continue", False)\n')
    assert probes(tmp_path) == ["_resume.py:1: getattr(self._provider, 'supports_continue', False)"]
