"""The optional extras stay optional: llmstream works without them, and their modules name the extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import llmstream

IMPORT_ROOT = Path(llmstream.__file__).resolve().parent.parent
EXTRAS = [
    pytest.param("IPython", "llmstream.notebook",
                 'llmstream.notebook needs IPython: pip install "llmstream[notebook]"', id="notebook"),
    pytest.param("prometheus_client", "llmstream.prometheus",
                 'llmstream.prometheus needs prometheus-client: pip install "llmstream[prometheus]"', id="prometheus"),
    pytest.param("opentelemetry", "llmstream.otel",
                 'llmstream.otel needs opentelemetry-api: pip install "llmstream[otel]"', id="otel"),
]


def block(package: str) -> str:
    """Python source that makes ``package`` impossible to import, as if it were not installed."""
    return f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == {package!r} or name.startswith({package + "."!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          cwd=IMPORT_ROOT, env={**os.environ, "PYTHONPATH": str(IMPORT_ROOT)})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("package, module, message", EXTRAS)
def test_import_llmstream_does_not_import_the_extra(package: str, module: str, message: str) -> None:
    assert run_python(f"import sys, llmstream; print({package!r} in sys.modules)") == "False\n"


@pytest.mark.parametrize("package, module, message", EXTRAS)
def test_without_the_extra_its_module_names_it(package: str, module: str, message: str) -> None:
    out = run_python(block(package) + f"""
try:
    import {module}
except ImportError as exc:
    print(type(exc).__name__, exc)
""")
    assert out == f"ImportError {message}\n"


def test_without_ipython_streams_and_repr_work() -> None:
    out = run_python(block("IPython") + """
import llmstream
from llmstream.testing import FakeLLMServer, Reply
with FakeLLMServer() as server:
    server.script(Reply(text="still works"))
    stream = llmstream.Client("openai", base_url=server.base_url("openai"), api_key="k").stream("hi", model="m")
    print("".join(stream))
    print(repr(stream))
""")
    assert out == "still works\n<TokenStream provider='openai' model='m' status='finished' delivered=11 chars>\n"
