"""The layers import only downward: checked on the source, with the AST."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llmstream"

VOCABULARY = {"_exceptions", "_events", "_config", "_version", "_record"}
CORE = {"_linebuffer", "sse", "_jsonl", "_fastjson", "_dechunk", "_redact", "_resume", "_resume_match", "_histogram", "_render", "_output_guard", "_options", "_providers", "_cost", "_turn"}
SHELL = {"_connection", "_transport", "_retry", "_next_attempt", "_flow", "_monitor", "_stats", "_textlog", "_body",
         "_lending", "_queue", "_attempt", "_worker", "_redis_state"}
CONSUMER = {"_stream", "_client", "_async", "_runs", "_redis_runs", "relay"}
#: Standard modules that do IO, threads or clocks: the sans-IO core must not touch them.
IO_MODULES = {"requests", "urllib3", "socket", "threading", "time", "queue", "select", "asyncio", "logging", "backoff"}


def imports_of(path: Path) -> Set[str]:
    """Top-level names imported by a module, llmstream-relative ones as their first component."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif node.module:
                # Relative: ".x" from llmstream, "..x" from llmstream/_providers.
                found.add("." + node.module.split(".")[0])
            else:
                found.update("." + alias.name for alias in node.names)
    return found


def module_files(names: Set[str]) -> list:
    files = []
    for name in sorted(names):
        path = PACKAGE / f"{name}.py"
        files.extend([path] if path.exists() else sorted((PACKAGE / name).glob("*.py")))
    return files


def local(imports: Set[str]) -> Set[str]:
    return {name[1:] for name in imports if name.startswith(".")}


@pytest.mark.parametrize("path", module_files(VOCABULARY), ids=lambda p: p.name)
def test_vocabulary_imports_nothing_of_llmstream(path: Path) -> None:
    # _record is the base of the vocabulary's value classes, and imports nothing itself.
    assert local(imports_of(path)) - ({"_record"} if path.name != "_record.py" else set()) == set()


@pytest.mark.parametrize("path", module_files(CORE), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_is_sans_io(path: Path) -> None:
    imports = imports_of(path)
    assert imports & IO_MODULES == set()
    # Providers import their siblings as ".x" (from inside _providers) or the vocabulary as "..x" -> ".x".
    allowed = VOCABULARY | CORE | {"_base", "_shape", "_think", "openai_chat", "openai_responses", "anthropic", "ollama", "gemini", "azure", "_sse_json", ""}
    assert local(imports) - allowed == set()


@pytest.mark.parametrize("path", module_files(SHELL), ids=lambda p: p.name)
def test_shell_imports_no_consumer(path: Path) -> None:
    assert local(imports_of(path)) & CONSUMER == set()


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_imports_the_package_root(path: Path) -> None:
    if path.parent == PACKAGE and path.name in ("__init__.py", "__main__.py"):
        return
    depth = len(path.relative_to(PACKAGE).parts)  # 1 for llmstream/x.py, 2 for llmstream/_providers/x.py
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            assert not (node.level == depth and node.module is None), f"{path.name}: {ast.unparse(node)}"
            assert not (node.level == 0 and node.module == "llmstream"), f"{path.name}: {ast.unparse(node)}"
        if isinstance(node, ast.Import):
            assert "llmstream" not in [a.name for a in node.names], path.name


@pytest.mark.parametrize("path", sorted((PACKAGE / "testing").glob("*.py")), ids=lambda p: p.name)
def test_the_fake_server_is_standalone(path: Path) -> None:
    # llmstream.testing imports only itself and the standard library.
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level >= 2:
            pytest.fail(f"{path.name} imports from llmstream: {ast.unparse(node)}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.startswith("llmstream") and not n.startswith("llmstream.testing") for n in names)


def test_only_the_transport_catches_http_library_errors() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_transport.py":
            continue
        if path.name == "_connection.py":
            # It subclasses urllib3's connections (to track their sockets) and
            # raises urllib3's own errors from them, but catches none.
            assert "except requests" not in path.read_text() and "except urllib3" not in path.read_text()
            continue
        assert not {"requests", "urllib3"} & imports_of(path), path


#: Above the consumer API: the command line and the optional extras' modules.
TOOLS = {"_cli", "notebook", "prometheus", "otel"}
#: Optional dependencies, and the one module allowed to import each.
EXTRAS = {"IPython": "notebook.py", "prometheus_client": "prometheus.py", "opentelemetry": "otel.py"}


@pytest.mark.parametrize("path", module_files(VOCABULARY | CORE | SHELL | CONSUMER), ids=lambda p: p.name)
def test_nothing_below_the_tools_imports_them(path: Path) -> None:
    # TokenStream._ipython_display_ imports llmstream.notebook lazily, inside the method.
    top_level = {"." + n.module.split(".")[0] for n in ast.parse(path.read_text(encoding="utf-8")).body
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert local(top_level) & TOOLS == set()


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_optional_extras_are_imported_by_their_module_only(path: Path) -> None:
    for extra, owner in EXTRAS.items():
        if path.name != owner:
            assert extra not in imports_of(path), f"{path.name} imports the optional {extra}"
