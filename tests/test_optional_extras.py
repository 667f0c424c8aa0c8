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
                 'llmstream.notebook needs IPython: pip install "llmstream-sdk[notebook]" (or pip install ".[notebook]" from a clone)', id="notebook"),
    pytest.param("prometheus_client", "llmstream.prometheus",
                 'llmstream.prometheus needs prometheus-client: pip install "llmstream-sdk[prometheus]" (or pip install ".[prometheus]" from a clone)', id="prometheus"),
    pytest.param("opentelemetry", "llmstream.otel",
                 'llmstream.otel needs opentelemetry-api: pip install "llmstream-sdk[otel]" (or pip install ".[otel]" from a clone)', id="otel"),
]
RELAY_FRAMEWORKS = [("flask", "flask_response", "flask"), ("starlette", "starlette_response", "starlette"),
                    ("django", "django_response", "django")]


@pytest.mark.parametrize("package, helper, extra", RELAY_FRAMEWORKS, ids=[r[0] for r in RELAY_FRAMEWORKS])
def test_relay_imports_no_framework_until_its_helper_is_called(package: str, helper: str, extra: str) -> None:
    assert run_python(f"import sys, llmstream.relay; print({package!r} in sys.modules)") == "False\n"
    out = run_python(block(package) + f"""
import llmstream.relay
try:
    llmstream.relay.{helper}(None)
except ModuleNotFoundError as exc:
    print(exc)
""")
    assert f'pip install "llmstream-sdk[{extra}]"' in out


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


def test_every_install_line_uses_our_distribution_name() -> None:
    # On PyPI "llmstream" is an unrelated project: `pip install "llmstream[...]"` installs
    # it, and no llmstream.stream. Every install line must name ours, or the clone.
    from llmstream._version import DISTRIBUTION

    assert DISTRIBUTION == "llmstream-sdk"
    setup_cfg = (IMPORT_ROOT / "setup.cfg").read_text()
    assert f"\nname = {DISTRIBUTION}\n" in setup_cfg
    assert "llmstream = llmstream.__main__:main" in setup_cfg  # the command keeps its name
    texts = {path: (IMPORT_ROOT / path).read_text() for path in (
        "README.md", "examples/quickstart.ipynb", "llmstream/notebook.py", "llmstream/prometheus.py")}
    for path, text in texts.items():
        assert "pip install llmstream" not in text.replace("pip install llmstream-sdk", ""), path
        assert '"llmstream[' not in text and "'llmstream[" not in text and '\\"llmstream[' not in text, path
    readme = texts["README.md"]
    assert 'pip install "llmstream-sdk[notebook]"' in readme
    assert 'pip install "llmstream-sdk[prometheus]"' in readme
    assert 'pip install ".[notebook]"' in readme
    assert 'pip install \\"llmstream-sdk[notebook]\\"' in texts["examples/quickstart.ipynb"]
