"""llmstream.notebook: escaping, status line and throttle (pure), the live display, and a real Jupyter kernel.

The kernel tests share one kernel (module-scoped fixture): it runs a notebook
against the fake server of this process, cell by cell, interrupts one cell
mid-stream from here, and records every display message it sent.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import nbformat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nbclient import NotebookClient

import llmstream
from llmstream import Client, Retry
from llmstream import _render as render
from llmstream import notebook as nb
from llmstream.testing import FakeLLMServer, Reply

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.ipynb"
#: Where the kernel imports llmstream from: the same code this process tests.
IMPORT_ROOT = Path(llmstream.__file__).resolve().parent.parent
STATUS = re.compile(
    r"(streaming|finished|failed|stopped) · (?:[^·]+) · first token (?:\d+ ms|–) · (\d+) tokens? · (?:\d+\.\d|–) tokens/s"
    r" · (\d+) retr(?:y|ies)(?: · (.*))?",
    re.S,
)


def counted(n: int) -> str:
    """The text of ``Reply(token_count=n)``."""
    return " ".join(f"tok{i}" for i in range(n))


def split_plain(plain: str) -> Tuple[str, str]:
    """A bundle's ``text/plain`` -> (answer text, status line)."""
    text, _, status = plain.rpartition("\n\n[")
    assert status.endswith("]"), plain
    return text, status[:-1]


def status_of(plain: str) -> "re.Match[str]":
    match = STATUS.fullmatch(split_plain(plain)[1])
    assert match, plain
    return match


def client_for(server: FakeLLMServer, **kwargs: Any) -> Client:
    return Client("openai", base_url=server.base_url("openai"), api_key="sk-test", **kwargs)


# -- escaping and Markdown ---------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>", id="script"),
        pytest.param("<img src=x onerror=alert(1)>", "<p>&lt;img src=x onerror=alert(1)&gt;</p>", id="img-onerror"),
        pytest.param("a & b &lt; \"q\" 'q'", "<p>a &amp; b &amp;lt; &quot;q&quot; &#x27;q&#x27;</p>", id="entities-stay-text"),
        pytest.param("[click](javascript:alert(1))", "<p>[click](javascript:alert(1))</p>", id="link-is-text"),
        pytest.param("![x](https://evil.example/?q=secret)", "<p>![x](https://evil.example/?q=secret)</p>", id="image-is-text"),
        pytest.param("<https://example.com>", "<p>&lt;https://example.com&gt;</p>", id="autolink-is-text"),
        pytest.param("```html\n<b>x</b>\n```", "<pre><code>&lt;b&gt;x&lt;/b&gt;</code></pre>", id="fenced-code"),
        pytest.param("```\nstill <i>streaming", "<pre><code>still &lt;i&gt;streaming</code></pre>", id="unclosed-fence"),
        pytest.param("use `<div>` and `a*b*c`", "<p>use <code>&lt;div&gt;</code> and <code>a*b*c</code></p>", id="inline-code"),
        pytest.param("**bold** *it* _it_ ~~gone~~", "<p><strong>bold</strong> <em>it</em> <em>it</em> <del>gone</del></p>",
                     id="emphasis"),
        pytest.param("**<b>x</b>**", "<p><strong>&lt;b&gt;x&lt;/b&gt;</strong></p>", id="escaped-inside-bold"),
        pytest.param("snake_case_name 2*3*4", "<p>snake_case_name 2*3*4</p>", id="intraword-is-text"),
        pytest.param("**not closed yet", "<p>**not closed yet</p>", id="unclosed-bold"),
        pytest.param("# Title <x>\n### Sub ###", "<h1>Title &lt;x&gt;</h1><h3>Sub</h3>", id="headings"),
        pytest.param("line one\nline two\n\nnext", "<p>line one<br>line two</p><p>next</p>", id="paragraphs"),
        pytest.param("- a\n* b\n  more\n+ c", "<ul><li>a</li><li>b<br>more</li><li>c</li></ul>", id="bullets"),
        pytest.param("1. one\n2. two\n\n3. three", '<ol><li>one</li><li>two</li></ol><ol start="3"><li>three</li></ol>',
                     id="numbered"),
        pytest.param("> quote <q>\n> more", "<blockquote>quote &lt;q&gt;<br>more</blockquote>", id="quote"),
        pytest.param("a\n---\nb", "<p>a</p><hr><p>b</p>", id="rule"),
        pytest.param("crlf\r\nlines", "<p>crlf<br>lines</p>", id="crlf"),
        pytest.param("", "", id="empty"),
    ],
)
def test_render_markdown(text: str, expected: str) -> None:
    assert render.render_markdown(text) == expected


ALLOWED_TAG = re.compile(r'</?(?:p|br|h[1-6]|ul|li|blockquote|hr|pre|code|strong|em|del)>|<ol(?: start="\d+")?>|</ol>')
ENTITY = re.compile(r"&(?!(?:amp|lt|gt|quot|#x27);)")
MARKDOWNISH = st.text(alphabet="<>&\"'`*_~#-+>[]()!:/=;. \n\tab1", max_size=120)


@settings(max_examples=400, deadline=None, database=None)
@given(MARKDOWNISH)
def test_render_markdown_emits_only_its_own_tags(text: str) -> None:
    rendered = render.render_markdown(text)
    outside_tags = ALLOWED_TAG.sub("", rendered)
    assert "<" not in outside_tags and ">" not in outside_tags
    assert not ENTITY.search(rendered), "every & must start an entity this module wrote"


def test_render_plain_escapes_and_keeps_layout() -> None:
    assert render.render_plain("a <b>\n  c & d") == (
        '<pre style="white-space:pre-wrap;margin:0">a &lt;b&gt;\n  c &amp; d</pre>'
    )


# -- status line and bundle ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        pytest.param(dict(state="finished", tokens=120, seconds=2.5, retries=0),
                     "finished · 120 tokens · 48.0 tokens/s · 0 retries", id="finished"),
        pytest.param(dict(state="streaming", tokens=1, seconds=None, retries=1),
                     "streaming · 1 token · – tokens/s · 1 retry", id="no-rate-yet"),
        pytest.param(dict(state="streaming", tokens=0, seconds=0.0, retries=2),
                     "streaming · 0 tokens · – tokens/s · 2 retries", id="zero-seconds"),
        pytest.param(dict(state="failed", tokens=3, seconds=1.0, retries=2, error=llmstream.ProviderError("boom <b>")),
                     "failed · 3 tokens · 3.0 tokens/s · 2 retries · ProviderError: boom <b>", id="failed"),
        pytest.param(dict(state="stopped", tokens=7, seconds=0.5, retries=0),
                     "stopped · 7 tokens · 14.0 tokens/s · 0 retries", id="stopped"),
    ],
)
def test_status_line(kwargs: Dict[str, Any], expected: str) -> None:
    state = kwargs.pop("state")
    assert render.status_line(state, **kwargs) == expected


def test_bundle_escapes_the_status_and_colours_a_failure() -> None:
    bundle = render.bundle("hi <b>", "failed · ServerError: <script>", state="failed", markdown=True)
    assert bundle["text/plain"] == "hi <b>\n\n[failed · ServerError: <script>]"
    assert bundle["text/html"] == (
        f'<div class="llmstream-output" style="{render._FRAME_STYLE}"><p>hi &lt;b&gt;</p>'
        f'<div style="{render._FAILED_STYLE}">failed · ServerError: &lt;script&gt;</div></div>'
    )


def test_bundle_plain_mode() -> None:
    bundle = render.bundle("*x*", "finished", state="finished", markdown=False)
    assert bundle["text/html"].startswith(
        f'<div class="llmstream-output" style="{render._FRAME_STYLE}"><pre style="white-space:pre-wrap;margin:0">*x*</pre>')


# -- throttle ------------------------------------------------------------------------


def test_throttle_lets_one_call_through_per_interval() -> None:
    times = iter([0.0, 0.05, 0.0999, 0.1, 0.15, 0.2, 0.35, 0.36])
    throttle = nb._Throttle(0.1, clock=lambda: next(times))
    assert [throttle.ready() for _ in range(8)] == [True, False, False, True, False, True, True, False]


class Screen:
    """Stands in for a Jupyter display handle: records every bundle shown, in order."""

    def __init__(self, interrupt_at: Optional[int] = None) -> None:
        self.bundles: List[Dict[str, str]] = []
        self._interrupt_at = interrupt_at

    def open(self, first: Dict[str, str]) -> Callable[[Dict[str, str]], None]:
        self.bundles.append(first)
        return self.update

    def update(self, bundle: Dict[str, str]) -> None:
        self.bundles.append(bundle)
        if len(self.bundles) == self._interrupt_at:
            raise KeyboardInterrupt  # as if the kernel were interrupted while the display updates

    @property
    def texts(self) -> List[str]:
        return [split_plain(b["text/plain"])[0] for b in self.bundles]

    @property
    def last_status(self) -> "re.Match[str]":
        return status_of(self.bundles[-1]["text/plain"])


def follow(stream: llmstream.TokenStream, screen: Screen, *, markdown: bool = True,
           clock: Callable[[], float] = time.monotonic) -> str:
    """show() with the display handle replaced by ``screen``."""
    tally = nb._Tally(stream)
    output = nb._LiveOutput(stream, tally, markdown=markdown, open_display=screen.open, clock=clock)
    return nb._follow(stream, tally, output)


def test_2000_tokens_at_full_speed_make_few_updates_and_the_exact_final_text(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=2000))
    screen = Screen()
    started = time.monotonic()
    text = follow(client_for(server).stream("hi", model="m"), screen)
    elapsed = time.monotonic() - started
    assert text == counted(2000)
    # The empty area, at most one update per 0.1 s (the first at once), the final one.
    assert 3 <= len(screen.bundles) <= 3 + int(elapsed * nb.UPDATES_PER_SECOND)
    assert screen.texts[0] == "" and screen.texts[-1] == counted(2000)
    assert all(counted(2000).startswith(t) for t in screen.texts)
    status = screen.last_status
    assert (status[1], status[2], status[3]) == ("finished", "2000", "0")
    assert screen.bundles[-1]["text/html"].startswith(f'<div class="llmstream-output" style="{render._FRAME_STYLE}"><p>{counted(2000)}</p>')


def test_a_clock_that_stands_still_allows_exactly_the_first_text_and_the_final_update(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=500))
    screen = Screen()
    follow(client_for(server).stream("hi", model="m"), screen, clock=lambda: 42.0)
    assert [t == counted(500) for t in screen.texts] == [False, False, True]
    assert screen.texts[:2] == ["", "tok0"]


def test_a_failure_stays_on_screen_and_is_raised(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=10, close_after_tokens=3))
    screen = Screen()
    with pytest.raises(llmstream.StreamError) as caught:
        follow(client_for(server, retry=Retry(max_attempts=1)).stream("hi", model="m"), screen)
    assert screen.texts[-1] == "tok0 tok1 tok2" == caught.value.partial_text
    status = screen.last_status
    assert (status[1], status[2], status[4]) == ("failed", "3", f"{type(caught.value).__name__}: {caught.value}")
    assert render._FAILED_STYLE in screen.bundles[-1]["text/html"]


def test_retries_are_counted(server: FakeLLMServer) -> None:
    server.script(Reply(status=503), Reply(text="fine"))
    screen = Screen()
    text = follow(client_for(server, retry=Retry(max_attempts=2, initial_delay=0)).stream("hi", model="m"), screen)
    assert text == "fine"
    assert screen.last_status[0].endswith(" · 1 retry")


def test_an_interrupt_during_a_display_update_closes_the_stream(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=5000, interval=0.005))
    screen = Screen(interrupt_at=3)
    stream = client_for(server).stream("hi", model="m")
    with pytest.raises(KeyboardInterrupt):
        follow(stream, screen, clock=iter(range(10**6)).__next__)  # every event may update
    assert stream.status == "closed"
    assert screen.last_status[1] == "stopped"
    assert screen.texts[-1] == stream.text and counted(5000).startswith(stream.text) and stream.text
    wait_until(lambda: server.active_connections == 0)


def test_plain_mode_shows_preformatted_text(server: FakeLLMServer) -> None:
    server.script(Reply(text="*not emphasis* <b>"))
    screen = Screen()
    follow(client_for(server).stream("hi", model="m"), screen, markdown=False)
    assert '<pre style="white-space:pre-wrap;margin:0">*not emphasis* &lt;b&gt;</pre>' in screen.bundles[-1]["text/html"]


# -- streams that ended before show() ----------------------------------------------------


def test_a_finished_stream_shows_its_text_and_usage(server: FakeLLMServer) -> None:
    server.script(Reply(text="all done", usage=(5, 9)))
    stream = client_for(server).stream("hi", model="m")
    stream.result
    screen = Screen()
    assert follow(stream, screen) == "all done"
    assert screen.texts == ["all done"]
    assert re.fullmatch(r"finished · m · first token \d+ ms · 9 tokens · – tokens/s · 0 retries", screen.last_status[0])


def test_a_failed_stream_shows_and_raises_its_own_error(server: FakeLLMServer) -> None:
    server.script(Reply(status=400, error="no"))
    stream = client_for(server).stream("hi", model="m")
    with pytest.raises(llmstream.BadRequestError) as first:
        stream.result
    screen = Screen()
    with pytest.raises(llmstream.BadRequestError) as again:
        follow(stream, screen)
    assert again.value is first.value
    assert screen.last_status[1] == "failed"


def test_a_closed_stream_shows_stopped(server: FakeLLMServer) -> None:
    server.script(Reply(text="one two three"))
    stream = client_for(server).stream("hi", model="m")
    next(iter(stream))
    stream.close()
    screen = Screen()
    assert follow(stream, screen) == "one"
    assert screen.last_status[1] == "stopped"


# -- outside a kernel -----------------------------------------------------------------


def test_show_outside_a_kernel_prints_as_it_streams(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(text="Hello <b>world</b>"))
    assert nb.show(client_for(server).stream("hi", model="m")) == "Hello <b>world</b>"
    out = capsys.readouterr().out
    assert out.startswith("Hello <b>world</b>\n[finished · m · first token ") and out.endswith(" · 0 retries]\n")


def test_last_expression_display_shows_a_failure_without_raising(server: FakeLLMServer,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(status=400, error="bad"))
    stream = client_for(server).stream("hi", model="m")
    stream._ipython_display_()
    assert stream.status == "failed"
    assert "[failed · m · first token – · 0 tokens · – tokens/s · 0 retries · BadRequestError: " in capsys.readouterr().out


# -- a real Jupyter kernel ------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition that no event announces, with a bound."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def kernel_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OLLAMA_HOST")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(IMPORT_ROOT), env.get("PYTHONPATH")]))
    return env


class RecordingClient(NotebookClient):
    """An nbclient that also keeps every IOPub message per cell, and wakes a waiter on each."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: Dict[int, List[Dict[str, Any]]] = {}
        self.arrived: Optional[asyncio.Event] = None

    def process_message(self, msg: Dict[str, Any], cell: Any, cell_index: int) -> Any:
        self.messages.setdefault(cell_index, []).append(copy.deepcopy(msg))
        if self.arrived is not None:
            self.arrived.set()
        return super().process_message(msg, cell, cell_index)


XSS_TOKENS = ("Hello **world**! ", "<scr", "ipt>alert(1)</sc", "ript> ", "<img src=x one", "rror=alert(1)>",
              " & ", "[x](javascript:alert(1))", " done.")
XSS_TEXT = "".join(XSS_TOKENS)
SLOW_COUNT = 3000

CELLS = {
    "setup": None,  # filled with the fake server's URL
    "xss": 'answer = show(client.stream("xss", model="fake"))\nanswer',
    "last": 'stream = client.stream("last", model="fake")\nstream',
    "plain": 'show(client.stream("plain", model="fake"), markdown=False);',
    "fail": 'show(client.stream("fail", model="fake"))',
    "slow": 'slow = show(client.stream("slow", model="fake"))\nslow',
    "again": None,  # the same source as "slow", run again after the interrupt
    "threads": ('for t in threading.enumerate():\n'
                '    if t.name.startswith("llmstream-worker"):\n'
                '        t.join(3)\n'
                '[t.name for t in threading.enumerate() if t.name.startswith("llmstream-worker")]'),
}
INDEX = {name: i for i, name in enumerate(CELLS)}
REPLIES = [
    Reply(tokens=XSS_TOKENS, interval=0.05),
    Reply(text="Shown as the last expression.", interval=0.02),
    Reply(text="*plain* <b>text</b>"),
    Reply(token_count=10, close_after_tokens=4),
    Reply(token_count=SLOW_COUNT, interval=0.02),
    Reply(text="Back again."),
]


@dataclass
class KernelRun:
    cells: List[Any]
    messages: Dict[int, List[Dict[str, Any]]]
    requests_at_interrupt: int
    requests_after: int
    connection_closed: bool = False
    interrupted_after: float = 0.0
    notes: List[str] = field(default_factory=list)

    def outputs(self, name: str, output_type: str) -> List[Any]:
        return [o for o in self.cells[INDEX[name]].outputs if o.output_type == output_type]

    def display(self, name: str) -> Dict[str, str]:
        [shown] = self.outputs(name, "display_data")
        return dict(shown.data)

    def display_messages(self, name: str) -> List[Tuple[str, str, Dict[str, str]]]:
        return display_messages(self.messages, name)


def display_messages(messages: Dict[int, List[Dict[str, Any]]], name: str) -> List[Tuple[str, str, Dict[str, str]]]:
    """(msg_type, display_id, data) of every display message of a cell, in order."""
    return [(m["msg_type"], m["content"]["transient"]["display_id"], m["content"]["data"])
            for m in messages.get(INDEX[name], [])
            if m["msg_type"] in ("display_data", "update_display_data")]


def build_notebook(base_url: str) -> Any:
    sources = dict(CELLS)
    sources["setup"] = (
        "import threading\nimport llmstream\nfrom llmstream.notebook import show\n"
        f"client = llmstream.Client('openai', base_url={base_url!r}, api_key='sk-test', "
        "retry=llmstream.Retry(max_attempts=1))"
    )
    sources["again"] = CELLS["slow"]
    cells = [nbformat.v4.new_code_cell(source) for source in sources.values()]
    for name in ("fail", "slow"):
        cells[INDEX[name]].metadata["tags"] = ["raises-exception"]
    return nbformat.v4.new_notebook(cells=cells)


async def interrupt_mid_stream(client: RecordingClient, server: FakeLLMServer, run_cell: Callable[[str], Any]) -> int:
    """Run the slow cell, interrupt the kernel once its request arrived and text is on screen."""
    assert client.arrived is not None and client.km is not None
    before = len(server.requests)
    task = asyncio.ensure_future(run_cell("slow"))
    await asyncio.to_thread(server.wait_for_requests, before + 1, 15)

    def text_on_screen() -> bool:
        return any(kind == "update_display_data" and "tok1" in data["text/plain"]
                   for kind, _, data in display_messages(client.messages, "slow"))

    while not text_on_screen():
        client.arrived.clear()
        await asyncio.wait_for(client.arrived.wait(), 15)
    requests = len(server.requests)
    await client.km.interrupt_kernel()
    await asyncio.wait_for(task, 15)
    return requests


async def run_kernel(server: FakeLLMServer) -> KernelRun:
    notebook = build_notebook(server.base_url("openai"))
    client = RecordingClient(notebook, timeout=30, kernel_name="python3")
    client.arrived = asyncio.Event()

    async def run_cell(name: str) -> Any:
        return await client.async_execute_cell(notebook.cells[INDEX[name]], INDEX[name], execution_count=INDEX[name] + 1)

    async with client.async_setup_kernel(env=kernel_env()):
        for name in ("setup", "xss", "last", "plain", "fail"):
            await run_cell(name)
        started = time.monotonic()
        requests = await interrupt_mid_stream(client, server, run_cell)
        interrupted_after = time.monotonic() - started
        closed = await asyncio.to_thread(lambda: _closed(server))
        for name in ("again", "threads"):
            await run_cell(name)
    return KernelRun(notebook.cells, client.messages, requests, len(server.requests), closed, interrupted_after)


def _closed(server: FakeLLMServer) -> bool:
    wait_until(lambda: server.active_connections == 0)
    return True


@pytest.fixture(scope="module")
def jupyter_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Kernel connection files in a temporary directory, not the user's Jupyter runtime directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path_factory.mktemp("jupyter-runtime")))
        yield


@pytest.fixture(scope="module")
def kernel_run(jupyter_runtime: None) -> Iterator[KernelRun]:
    with FakeLLMServer() as server:
        server.script(*REPLIES)
        yield asyncio.run(run_kernel(server))


def test_kernel_display_updates_in_place(kernel_run: KernelRun) -> None:
    shown = kernel_run.display_messages("xss")
    kinds = [kind for kind, _, _ in shown]
    assert kinds[0] == "display_data" and set(kinds[1:]) == {"update_display_data"}
    assert len({display_id for _, display_id, _ in shown}) == 1
    # Paced over ~0.45 s: the text appears piece by piece, each update a prefix of the answer.
    texts = [split_plain(data["text/plain"])[0] for _, _, data in shown]
    assert len(set(texts)) >= 3 and all(XSS_TEXT.startswith(t) for t in texts)


def test_kernel_updates_are_at_least_a_tenth_of_a_second_apart(kernel_run: KernelRun) -> None:
    # The kernel's own send times: the throttle's interval between streaming updates (the final one may come sooner).
    sent = [m["header"]["date"] for m in kernel_run.messages[INDEX["xss"]] if m["msg_type"] == "update_display_data"]
    assert len(sent) >= 3
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(sent[:-2], sent[1:-1])]
    assert gaps and min(gaps) >= 0.095, gaps


def test_kernel_final_output_is_the_exact_text_escaped(kernel_run: KernelRun) -> None:
    data = kernel_run.display("xss")
    text, status = split_plain(data["text/plain"])
    assert text == XSS_TEXT
    assert STATUS.fullmatch(status) and status.startswith("finished · fake · first token ")
    assert f" · {len(XSS_TOKENS)} tokens · " in status
    assert data["text/html"] == render.bundle(XSS_TEXT, status, state="finished", markdown=True)["text/html"]
    page = data["text/html"]
    assert "<script" not in page and "<img" not in page and "<a" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<strong>world</strong>" in page


def test_kernel_show_returns_the_final_text(kernel_run: KernelRun) -> None:
    [result] = kernel_run.outputs("xss", "execute_result")
    assert result.data["text/plain"] == repr(XSS_TEXT)


def test_kernel_last_expression_streams_live(kernel_run: KernelRun) -> None:
    shown = kernel_run.display_messages("last")
    assert shown[0][0] == "display_data" and len(shown) >= 3
    assert kernel_run.outputs("last", "execute_result") == []  # displayed by _ipython_display_, not repr
    text, status = split_plain(kernel_run.display("last")["text/plain"])
    assert text == "Shown as the last expression." and status.startswith("finished · ")


def test_kernel_plain_mode(kernel_run: KernelRun) -> None:
    page = kernel_run.display("plain")["text/html"]
    assert '<pre style="white-space:pre-wrap;margin:0">*plain* &lt;b&gt;text&lt;/b&gt;</pre>' in page


def test_kernel_failure_keeps_partial_text_and_shows_the_error(kernel_run: KernelRun) -> None:
    [error] = kernel_run.outputs("fail", "error")
    text, status = split_plain(kernel_run.display("fail")["text/plain"])
    assert text == counted(4)
    assert status.startswith("failed · fake · first token ") and " · 4 tokens · " in status and status.endswith(f" · {error.ename}: {error.evalue}")
    assert issubclass(getattr(llmstream, error.ename), llmstream.StreamError)


def test_kernel_interrupt_stops_the_stream(kernel_run: KernelRun) -> None:
    [error] = kernel_run.outputs("slow", "error")
    assert error.ename == "KeyboardInterrupt"
    text, status = split_plain(kernel_run.display("slow")["text/plain"])
    assert text.startswith("tok0 tok1") and counted(SLOW_COUNT).startswith(text) and text != counted(SLOW_COUNT)
    assert status.startswith("stopped · ")
    assert kernel_run.connection_closed  # the fake server saw the client go away
    assert kernel_run.interrupted_after < 20  # the slow reply would take 60 s


def test_kernel_cell_runs_again_after_the_interrupt(kernel_run: KernelRun) -> None:
    assert kernel_run.requests_after == kernel_run.requests_at_interrupt + 1  # no retry after the stop
    [result] = kernel_run.outputs("again", "execute_result")
    assert result.data["text/plain"] == repr("Back again.")
    assert split_plain(kernel_run.display("again")["text/plain"])[1].startswith("finished · ")


def test_kernel_has_no_worker_thread_left(kernel_run: KernelRun) -> None:
    [result] = kernel_run.outputs("threads", "execute_result")
    assert result.data["text/plain"] == "[]"


# -- the quickstart notebook ----------------------------------------------------------------


@pytest.fixture(scope="module")
def quickstart(jupyter_runtime: None) -> Any:
    notebook = nbformat.read(QUICKSTART, as_version=4)
    client = NotebookClient(notebook, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(QUICKSTART.parent)}})
    return asyncio.run(client.async_execute(env=kernel_env()))


def test_quickstart_runs_and_shows_streams(quickstart: Any) -> None:
    code = [cell for cell in quickstart.cells if cell.cell_type == "code"]
    assert all(o.output_type != "error" for cell in code for o in cell.outputs)
    shown = [o for cell in code for o in cell.outputs if o.output_type == "display_data"]
    assert len(shown) == 4  # show(), show(markdown=False), the stream live, the stream again
    for output in shown:
        text, status = split_plain(output.data["text/plain"])
        assert text.startswith("## Streaming, in brief\n") and status.startswith("finished · ")
        assert "<script" not in output.data["text/html"]
        assert "&lt;script&gt;alert(&#x27;hi&#x27;)&lt;/script&gt;" in output.data["text/html"]
    results = [o.data["text/plain"] for cell in code for o in cell.outputs if o.output_type == "execute_result"]
    assert results == ["'## Streaming, in brief'"]


# -- the answer set apart, the status names the model and the first token (issue 14, item 5) ----


def test_the_answer_is_framed_and_its_headings_are_smaller_than_the_notebooks() -> None:
    page = render.bundle("# Title\n## Part\ntext <h1>", "finished", state="finished", markdown=True)["text/html"]
    assert page.startswith('<div class="llmstream-output" style="border:1px solid rgba(128,128,128,0.35);')
    assert "background:rgba(128,128,128,0.06)" in page
    assert '<h1 style="font-size:1.3em;margin:0.6em 0 0.3em">Title</h1>' in page
    assert '<h2 style="font-size:1.2em;margin:0.6em 0 0.3em">Part</h2>' in page
    assert "<h1>" not in page and "text &lt;h1&gt;" in page  # the model's own "<h1>" stays text


def test_status_line_names_the_model_and_the_time_to_first_token() -> None:
    assert render.status_line("finished", tokens=18, rate=48.04, retries=0, model="gpt-4o-mini", first_token=0.2304) == (
        "finished · gpt-4o-mini · first token 230 ms · 18 tokens · 48.0 tokens/s · 0 retries")
    assert render.status_line("streaming", tokens=0, retries=0, model="claude-sonnet-4-5", first_token=None) == (
        "streaming · claude-sonnet-4-5 · first token – · 0 tokens · – tokens/s · 0 retries")


def test_a_shown_stream_names_its_model_and_first_token(server: FakeLLMServer) -> None:
    server.script(Reply(text="Hi there", stall_before_first_byte=0.05))
    screen = Screen()
    follow(client_for(server).stream("hi", model="gpt-4o-mini"), screen)
    match = re.fullmatch(r"finished · gpt-4o-mini · first token (\d+) ms · 2 tokens · – tokens/s · 0 retries",
                         screen.last_status[0])
    assert match and int(match[1]) >= 50


def test_a_stream_that_keeps_no_text_is_shown_from_what_passes(server: FakeLLMServer,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # keep_text=False: the stream holds no text, so show() keeps what it shows.
    server.script(Reply(token_count=300), Reply(text="Hello <b>world</b>"))
    screen = Screen()
    stream = client_for(server, keep_text=False).stream("hi", model="m")
    assert follow(stream, screen) == counted(300)
    assert screen.texts[-1] == counted(300) and screen.last_status[1] == "finished"
    assert nb.show(client_for(server, keep_text=False).stream("hi", model="m")) == "Hello <b>world</b>"
    assert capsys.readouterr().out.startswith("Hello <b>world</b>\n[finished · m · ")
