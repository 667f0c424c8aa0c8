"""llmstream.notebook.monitor(): the live view of the process monitor, pure and in a real Jupyter kernel."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

pytest.importorskip("IPython")
jupyter_manager = pytest.importorskip("jupyter_client.manager")

import llmstream  # noqa: E402
import llmstream.notebook  # noqa: E402
from llmstream.notebook import MonitorView, monitor_bundle  # noqa: E402
from llmstream.testing import FakeLLMServer, Reply  # noqa: E402

IMPORT_ROOT = Path(llmstream.__file__).resolve().parent.parent
HOSTILE = "<img src=x onerror=alert(1)>"


def test_the_view_shows_the_snapshot_escaped() -> None:
    snap = llmstream.MonitorSnapshot(
        started=5, finished=3, failed=1, closed=1, active=2, waiting=1, attempts=6,
        errors={"NotFoundError": 1}, retried_errors={"ServerError": 2},
        time_to_first_token=llmstream.Distribution(count=3, p50=0.1204, p90=0.2, p99=0.3),
        circuits={HOSTILE: "open"}, cost=0.01234, output_tokens=40, wasted_output_tokens=3,
    )
    view = monitor_bundle(snap)
    page = view["text/html"]
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt; open" in page
    assert "<tr><th>success rate</th><td>75.0%</td></tr>" in page
    assert "<tr><th>time to first token</th><td>p50 120 ms · p90 200 ms · p99 300 ms</td></tr>" in page
    assert "<tr><th>active</th><td>2 (1 waiting)</td></tr>" in page
    assert "<tr><th>errors</th><td>NotFoundError 1</td></tr>" in page
    assert "<tr><th>cost</th><td>$0.012340</td></tr>" in page
    assert "output tokens: 40 (3 wasted)" in view["text/plain"]
    # the only tags are the table's own
    import re
    assert set(re.findall(r"</?([a-z]+)", page)) == {"table", "caption", "tr", "th", "td"}


def test_outside_a_kernel_it_displays_once_and_runs_no_thread(capsys: pytest.CaptureFixture[str]) -> None:
    view = llmstream.notebook.monitor()
    assert isinstance(view, MonitorView) and not view.running and view.interval == 1.0
    assert capsys.readouterr().out.startswith("llmstream monitor\nactive: ")
    view.stop()
    with pytest.raises(ValueError, match="interval must be"):
        llmstream.notebook.monitor(interval=0.0)


def kernel_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OLLAMA_HOST")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(IMPORT_ROOT), env.get("PYTHONPATH")]))
    return env


class Kernel:
    def __init__(self) -> None:
        self.km, self.kc = jupyter_manager.start_new_kernel(kernel_name="python3", env=kernel_env(),
                                                            startup_timeout=60)
        self.seen: List[Dict[str, Any]] = []

    def run(self, code: str) -> Dict[str, Any]:
        """Execute and wait for the reply; every IOPub message is kept (the view updates from a thread)."""
        msg_id = self.kc.execute(code)
        reply = self.kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "ok", reply["content"]
        # IOPub is another channel than the reply's: the cell's outputs can arrive after
        # the reply (a loaded machine). The kernel's "idle" for this request comes after them.
        deadline = time.monotonic() + 30
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "the kernel never went idle after the cell"
            msg = self.kc.get_iopub_msg(timeout=left)
            self.seen.append(msg)
            if (msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") == msg_id
                    and msg["content"]["execution_state"] == "idle"):
                return reply

    def drain(self, timeout: float) -> None:
        import queue
        while True:
            try:
                self.seen.append(self.kc.get_iopub_msg(timeout=timeout))
            except queue.Empty:
                return

    def wait_for_display(self, display_id: str, contains: str, timeout: float = 15.0) -> Dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.seen:
                content = msg["content"]
                if (msg["msg_type"] in ("display_data", "update_display_data")
                        and content.get("transient", {}).get("display_id") == display_id
                        and contains in content["data"]["text/plain"]):
                    return dict(content["data"])
            left = deadline - time.monotonic()
            assert left > 0, f"no view with {contains!r}; last: {self.displays(display_id)[-1:]}"
            self.drain(min(left, 0.5))

    def displays(self, display_id: str) -> List[str]:
        return [m["content"]["data"]["text/plain"] for m in self.seen
                if m["msg_type"] in ("display_data", "update_display_data")
                and m["content"].get("transient", {}).get("display_id") == display_id]

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def test_live_view_in_a_real_kernel(server: FakeLLMServer) -> None:
    server.script(Reply(), Reply(status=404, error="no such model"))
    kernel = Kernel()
    try:
        kernel.run(
            "import llmstream, llmstream.notebook\n"
            "class Breaker:\n"
            f"    state, base_url = 'open', {HOSTILE!r}\n"
            "breaker = Breaker()\n"
            "llmstream.monitor.register_breaker(breaker)\n"
            f"client = llmstream.Client('openai', base_url={server.base_url('openai')!r}, api_key='k', retry=1)\n"
            "view = llmstream.notebook.monitor(interval=0.2)\n"
        )
        [first] = [m for m in kernel.seen if m["msg_type"] == "display_data"]
        display_id = first["content"]["transient"]["display_id"]
        assert "0 finished · 0 failed" in first["content"]["data"]["text/plain"]
        page = first["content"]["data"]["text/html"]
        assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt; open" in page
        # streams run in a later cell; the view's own thread updates the first cell's area
        kernel.run(
            "client.complete('Hi', model='m')\n"
            "try:\n"
            "    client.complete('Hi', model='gpt-5-mega')\n"
            "except llmstream.NotFoundError:\n"
            "    pass\n"
        )
        shown = kernel.wait_for_display(display_id, "1 finished · 1 failed · 0 closed")
        assert "success rate: 50.0%" in shown["text/plain"]
        assert "errors: NotFoundError 1" in shown["text/plain"]
        assert "<tr><th>errors</th><td>NotFoundError 1</td></tr>" in shown["text/html"]
        assert HOSTILE not in shown["text/html"]
        reply = kernel.run("view.stop()\nassert not view.running\n")
        assert reply["content"]["status"] == "ok"
        count = len(kernel.displays(display_id))
        kernel.run("client.complete('Hi', model='m')\nimport time; time.sleep(0.6)")
        kernel.drain(0.3)
        assert len(kernel.displays(display_id)) == count  # stopped: a new stream updates nothing
    finally:
        kernel.close()
