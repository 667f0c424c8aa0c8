"""The answer kept once, or not at all (issue 14, item 9), end to end against the fake server.

* With the text kept (the default), the resumer and the stream share ONE copy.
* ``keep_text=False`` keeps none: resume stays exactly once (``last-event-id``,
  ``replay`` checked against a hash) or raises a clear ``ResumeError``
  (``continue``, a replay that differs); ``.text`` says what is wrong.
* ``sink=`` and ``to_file()`` get the text as it arrives; ``to_file`` renames its
  ``.partial`` file into place only on a complete answer.
"""

from __future__ import annotations

import gc
import io
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, List

import pytest

from llmstream import (
    Client,
    IncompleteStreamError,
    Reset,
    ResumeError,
    Retry,
    TextDelta,
    TextNotKeptError,
    Timeout,
)
from llmstream._resume_match import DigestMatcher, TextDigest
from llmstream._textlog import SharedText
from llmstream.testing import FakeLLMServer
from llmstream.testing import Reply as _Reply


def Reply(**fields: Any) -> _Reply:  # noqa: N802
    """The fake server's reply, with SSE event ids unless a case says otherwise (these cases resume by them)."""
    fields.setdefault("event_ids", True)
    return _Reply(**fields)

TOKENS = ["The", " capital", " of", " France", " is", " Paris", ".", " Ça", " va", " 🎉"]
TEXT = "".join(TOKENS)
CUT = 4
DELIVERED = "".join(TOKENS[:CUT])
PROVIDERS = ["openai", "openai-responses", "anthropic", "ollama"]
FAULTS = {
    "close-after-tokens": dict(close_after_tokens=CUT),
    "stall-after-tokens": dict(stall_after_tokens=(CUT, 30.0)),
    "missing-end-marker": dict(close_after_tokens=CUT, omit_end_marker=True),
}


def client(server: FakeLLMServer, provider: str, resume: str = "auto", attempts: int = 3, **kw: Any) -> Client:
    return Client(provider, base_url=server.base_url(provider), api_key="sk-test",
                  retry=Retry(max_attempts=attempts, initial_delay=0.01, resume=resume), **kw)


# -- kept once ----------------------------------------------------------------------------


def test_the_resumer_and_the_stream_share_one_copy(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=False), Reply(tokens=TOKENS, event_ids=False))
    s = client(server, "openai").stream("q", model="m")
    assert "".join(s) == TEXT
    log = s._worker.text
    assert log is not None and s._worker._resumer._text is log
    assert s.text == TEXT == log.value()


def test_a_long_answer_is_held_once_in_utf8(server: FakeLLMServer) -> None:
    # 100,000 pieces of 20 characters, each with a curly quote (past U+00FF: a str
    # holding one costs 2 bytes per character), with retries on. The stream and
    # the resumer used to keep a copy each (~8 MB); now one, UTF-8 (~2.2 MB).
    piece = "x" * 17 + "\u201c\n "
    server.script(Reply(tokens=[piece] * 100_000, events_per_write=256))
    gc.collect()
    tracemalloc.start()
    try:
        s = client(server, "openai").stream("q", model="m")
        chars = sum(len(t) for t in s)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        assert s.text == piece * 100_000
    finally:
        tracemalloc.stop()
    assert chars == 2_000_000
    utf8 = len(piece.encode("utf-8")) * 100_000
    # The pieces not yet folded into a block (up to 4,095 str objects) come on top.
    assert held < 1.4 * utf8, f"{held:,} bytes held for {utf8:,} bytes of UTF-8"


def test_text_is_what_the_caller_took_not_what_was_read_ahead(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, events_per_write=len(TOKENS)))
    with client(server, "openai").stream("q", model="m") as s:
        it = iter(s)
        assert next(it) == "The"
        assert s.text == "The"  # the log already holds the whole batch
        assert next(it) == " capital"
        assert s.text == "The capital"
        assert repr(s).endswith("delivered=11 chars>")


def test_text_before_a_reset_the_caller_has_not_reached(server: FakeLLMServer) -> None:
    # The worker reads ahead (nobody iterates yet) past a Reset, clearing its
    # log: the stream's .text is still the text its caller took.
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT), Reply(tokens=["The", " answer", " is", " Paris"]))
    s = client(server, "openai", resume="replay").stream("q", model="m")
    log = s._worker.text
    assert log is not None
    end = time.monotonic() + 10
    while log.epoch == 0 and time.monotonic() < end:
        time.sleep(0.005)  # the read-ahead runs in the worker's thread: nothing to await
    assert log.epoch == 1
    seen = []
    for event in s.events():
        if isinstance(event, (TextDelta, Reset)):
            seen.append((type(event).__name__, s.text))
    assert seen == [
        ("TextDelta", "The"), ("TextDelta", "The capital"), ("TextDelta", "The capital of"),
        ("TextDelta", DELIVERED), ("Reset", ""), ("TextDelta", "The"),
        ("TextDelta", "The answer"), ("TextDelta", "The answer is"), ("TextDelta", "The answer is Paris"),
    ]
    assert s.result.text == "The answer is Paris"


# -- keep_text=False: resume in every mode -----------------------------------------------

# With no text kept: continue cannot send a prefill; the rest as with the text.
NO_TEXT_SUPPORT = {
    ("openai", "last-event-id"): "ok", ("openai", "continue"): ResumeError, ("openai", "replay"): "ok",
    ("openai-responses", "last-event-id"): "ok", ("openai-responses", "continue"): ResumeError,
    ("openai-responses", "replay"): "ok",
    ("anthropic", "last-event-id"): "ok", ("anthropic", "continue"): ResumeError, ("anthropic", "replay"): "ok",
    ("ollama", "last-event-id"): ResumeError, ("ollama", "continue"): ResumeError, ("ollama", "replay"): "ok",
    ("openai", "auto"): "ok", ("openai-responses", "auto"): "ok", ("anthropic", "auto"): "ok", ("ollama", "auto"): "ok",
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("mode", ["last-event-id", "continue", "replay", "auto"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_resume_without_text(server: FakeLLMServer, provider: str, mode: str, fault: str) -> None:
    server.script(Reply(tokens=TOKENS, **FAULTS[fault]), Reply(tokens=TOKENS))
    got: List[str] = []
    sunk: List[str] = []
    c = client(server, provider, resume=mode, timeout=Timeout(idle=0.3), keep_text=False)
    expected = NO_TEXT_SUPPORT[(provider, mode)]
    s = c.stream("Capital of France?", model="m", sink=sunk.append)
    if expected == "ok":
        got.extend(s)
        assert "".join(got) == TEXT
        assert "".join(sunk) == TEXT
        assert s.result.text == ""
        assert len(server.requests) == 2
        return
    with pytest.raises(ResumeError) as info:
        got.extend(s)
    assert type(info.value) is expected
    assert info.value.partial_text == ""  # nothing kept: the caller has it (here, in ``got``)
    assert "".join(got) == DELIVERED
    if mode == "continue":
        assert "keep_text=False" in str(info.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_auto_without_text_and_event_ids_replays(server: FakeLLMServer, provider: str) -> None:
    # Anthropic would continue (a prefill) with the text; without it, replay.
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=False), Reply(tokens=TOKENS, event_ids=False))
    s = client(server, provider, keep_text=False).stream("q", model="m")
    assert "".join(s) == TEXT
    first, second = server.requests
    assert second.json == first.json


@pytest.mark.parametrize("events", [False, True], ids=["text", "events"])
@pytest.mark.parametrize("replayed", [["Paris", ", of course."], ["The", " capital"], ["Thy", " capital", " of", " France", "!"]],
                         ids=["differs", "ends-early", "differs-same-length"])
def test_replay_that_differs_without_text_raises(server: FakeLLMServer, events: bool, replayed: List[str]) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT), Reply(tokens=replayed))
    s = client(server, "openai", resume="replay", keep_text=False).stream("q", model="m")
    got: List[Any] = []
    with pytest.raises(ResumeError) as info:
        for item in (s.events() if events else s):
            got.append(item)
    texts = [e.text if isinstance(e, TextDelta) else e for e in got if isinstance(e, (str, TextDelta))]
    assert "".join(texts) == DELIVERED
    assert not any(isinstance(e, Reset) for e in got)
    assert "keep_text=False" in info.value.message
    assert info.value.partial_text == ""
    assert s.status == "failed"


def test_text_of_a_stream_without_text_says_what_is_wrong(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS))
    client_ = Client("openai", base_url=server.base_url("openai"), api_key="k", keep_text=False)
    s = client_.stream("q", model="m")
    assert "".join(s) == TEXT
    with pytest.raises(TextNotKeptError, match=r"keep_text=False.*39 characters were delivered.*keep_text=True"):
        s.text
    assert s.result.text == ""
    assert repr(s).endswith("delivered=39 chars>")


def test_keep_text_per_stream_overrides_the_client(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS))
    s = Client("openai", base_url=server.base_url("openai"), api_key="k", keep_text=False).stream(
        "q", model="m", keep_text=True)
    assert s.result.text == TEXT


@pytest.mark.parametrize("value", ["no", 0, None])
def test_keep_text_must_be_a_bool(server: FakeLLMServer, value: Any) -> None:
    with pytest.raises(TypeError, match="keep_text must be True or False"):
        Client("openai", base_url=server.base_url("openai"), api_key="k", keep_text=value)


def test_a_sink_must_be_callable_or_writable(server: FakeLLMServer) -> None:
    with pytest.raises(TypeError, match="sink must be a callable"):
        client(server, "openai").stream("q", model="m", sink=42)  # type: ignore[arg-type]
    assert server.requests == []


# -- sinks and files ------------------------------------------------------------------------


def test_a_file_object_sink_gets_the_answer_across_a_resume(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT), Reply(tokens=TOKENS))
    out = io.StringIO()
    s = client(server, "openai", keep_text=False).stream("q", model="m", sink=out)
    assert "".join(s) == TEXT
    assert out.getvalue() == TEXT


def test_a_sink_cannot_take_back_text_on_a_reset(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT), Reply(tokens=["The", " answer"]))
    sunk: List[str] = []
    s = client(server, "openai", resume="replay").stream("q", model="m", sink=sunk.append)
    with pytest.raises(ResumeError, match="a sink cannot take back") as info:
        list(s.events())
    assert "".join(sunk) == DELIVERED
    assert info.value.partial_text == DELIVERED


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "not-kept"])
@pytest.mark.parametrize("mode", ["last-event-id", "replay", "auto"])
def test_to_file_writes_the_resumed_answer(server: FakeLLMServer, tmp_path: Path, mode: str, keep: bool) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT), Reply(tokens=TOKENS))
    target = tmp_path / "answer.txt"
    with client(server, "anthropic", resume=mode, keep_text=keep).stream("q", model="m") as s:
        result = s.to_file(target)
    assert target.read_bytes() == TEXT.encode("utf-8")
    assert not (tmp_path / "answer.txt.partial").exists()
    assert result.text == ""  # the file is the copy
    assert result.attempts == 2
    with pytest.raises(TextNotKeptError, match="went to a file" if keep else "keep_text=False"):
        s.text


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "not-kept"])
def test_to_file_leaves_a_partial_file_on_failure(server: FakeLLMServer, tmp_path: Path, keep: bool) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT))
    target = tmp_path / "answer.txt"
    s = client(server, "openai", resume="never", keep_text=keep).stream("q", model="m")
    with pytest.raises(IncompleteStreamError) as info:
        s.to_file(str(target))
    assert not target.exists()
    assert (tmp_path / "answer.txt.partial").read_bytes() == DELIVERED.encode("utf-8")
    assert info.value.partial_text == ""


def test_to_file_after_a_replay_that_differs_without_text(server: FakeLLMServer, tmp_path: Path) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT), Reply(tokens=["Paris", "!"]))
    target = tmp_path / "answer.txt"
    s = client(server, "openai", resume="replay", keep_text=False).stream("q", model="m")
    with pytest.raises(ResumeError):
        s.to_file(target)
    assert not target.exists()
    assert (tmp_path / "answer.txt.partial").read_text(encoding="utf-8") == DELIVERED


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "not-kept"])
def test_to_file_checks_a_replay_against_the_hash(server: FakeLLMServer, tmp_path: Path, keep: bool) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT), Reply(tokens=["The", " capitol", " of", " France!"]))
    target = tmp_path / "answer.txt"
    s = client(server, "openai", resume="replay", keep_text=keep).stream("q", model="m")
    with pytest.raises(ResumeError, match="keep_text=False kept no copy"):
        s.to_file(target)
    assert (tmp_path / "answer.txt.partial").read_text(encoding="utf-8") == DELIVERED
    assert not target.exists()


def test_to_file_keeps_memory_flat_with_the_default_client(server: FakeLLMServer, tmp_path: Path) -> None:
    # The text goes to the file, not to memory too: the log holds only a digest.
    piece = "x" * 17 + "\u201c\n "
    server.script(Reply(tokens=[piece] * 100_000, events_per_write=256))
    s = client(server, "openai").stream("q", model="m")
    gc.collect()
    tracemalloc.start()
    try:
        s.to_file(tmp_path / "answer.txt")
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    size = (tmp_path / "answer.txt").stat().st_size
    assert size == len(piece.encode("utf-8")) * 100_000
    # Kept, the text would take its UTF-8 size (2.2 MB); the digest's pending
    # pieces take ~470 KB at most, and the rest of the process (other threads,
    # the fake server) some noise.
    assert held < size / 3, f"{held:,} bytes held for a {size:,}-byte answer"


def test_to_file_after_iterating_without_text_says_why_not(server: FakeLLMServer, tmp_path: Path) -> None:
    server.script(Reply(tokens=TOKENS))
    with client(server, "openai", keep_text=False).stream("q", model="m") as s:
        it = iter(s)
        next(it)
        with pytest.raises(TextNotKeptError, match="before iterating"):
            s.to_file(tmp_path / "answer.txt")
    assert list(tmp_path.iterdir()) == []


# -- the digest ---------------------------------------------------------------------------


def digest_of(text: str, every: int) -> TextDigest:
    d = TextDigest(checkpoint_every=every)
    d.append(text)
    return d


@pytest.mark.parametrize("every", [1, 3, 7, 1 << 20])
def test_a_replay_of_the_same_text_matches_at_every_split(every: int) -> None:
    text = "ab€🎉\ud800cdefgh"  # a lone surrogate too: hashed, not refused
    for cut in range(len(text) + 1):
        m = digest_of(text, every).matcher()
        assert m.match(text[:cut]) == ""
        assert m.match(text[cut:] + "!?") == "!?"
        assert m.complete


def test_a_digest_fed_in_pieces_equals_one_fed_at_once() -> None:
    text = "x" * 10 + "yz" * 7
    whole = digest_of(text, 4).matcher()
    pieces = TextDigest(checkpoint_every=4)
    pieces.extend([text[:3], text[3:9]])
    for ch in text[9:]:
        pieces.append(ch)
    assert pieces.matcher()._checks == whole._checks


def test_a_difference_is_found_at_the_next_checkpoint() -> None:
    text = "abcdefghij" * 10
    m: DigestMatcher = digest_of(text, 10).matcher()
    other = "abcdeXghij" + text[10:]
    assert m.match(other[:9]) == ""
    assert m.match(other[9:12]) is None  # the checkpoint at 10 characters


def test_an_empty_delivery_matches_anything() -> None:
    assert digest_of("", 4).matcher().match("abc") == "abc"


def test_the_partial_file_can_be_followed_as_it_arrives(server: FakeLLMServer, tmp_path: Path) -> None:
    # The server stalls after two lines; meanwhile they are in the .partial file.
    tokens = ["line one\n", "line two\n", "rest"]
    server.script(Reply(tokens=tokens, stall_after_tokens=(2, 30.0)))
    target = tmp_path / "answer.txt"
    partial = tmp_path / "answer.txt.partial"
    s = client(server, "openai", timeout=Timeout(idle=30)).stream("q", model="m")
    errors: List[BaseException] = []

    def write() -> None:
        try:
            s.to_file(target)
        except BaseException as exc:  # noqa: B036 - handed to the test thread
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    end = time.monotonic() + 10
    while time.monotonic() < end and not (partial.exists() and partial.read_text(encoding="utf-8") == "line one\nline two\n"):
        time.sleep(0.01)  # another thread writes the file: polled, within a bound
    assert partial.read_text(encoding="utf-8") == "line one\nline two\n"
    s.close()
    writer.join(5)
    assert not writer.is_alive()
    assert [type(e).__name__ for e in errors] == ["StreamClosedError"]  # closed, not finished: no rename
    assert not target.exists()
    assert partial.read_text(encoding="utf-8") == "line one\nline two\n"


def test_text_read_from_another_thread_is_always_a_prefix(server: FakeLLMServer) -> None:
    # One thread iterates (and so appends to the log); another reads .text
    # meanwhile: every read is a prefix of the answer, never a piece missed or twice.
    pieces = [f"w{i} " for i in range(100_000)]
    answer = "".join(pieces)
    server.script(Reply(tokens=pieces, events_per_write=64))
    s = client(server, "openai").stream("q", model="m")
    reader = threading.Thread(target=lambda: [None for _ in s])
    reader.start()
    reads = []
    while reader.is_alive():
        reads.append(s.text)  # each read folds the pieces into the log's blocks, while the writer appends
    reader.join(5)
    assert s.text == answer
    assert len(reads) > 1
    lengths = [len(r) for r in reads]
    assert lengths == sorted(lengths)
    assert all(answer.startswith(r) for r in reads)


# -- the shared log itself ----------------------------------------------------------------


def test_the_log_keeps_any_text_exactly() -> None:
    log = SharedText()
    pieces = ["a", "é", "\u201c", "🎉", "\ud83c", "\udf89", "\r\n", ""] * 1500  # folded into blocks twice
    for i in range(0, len(pieces), 7):
        log.extend(pieces[i:i + 7])
    whole = "".join(pieces)
    assert log.value() == whole
    log.append("z")
    assert log.value() == whole + "z"
    assert log.prefix(3, 0) == "aé\u201c"


def test_a_cleared_log_keeps_the_old_text_until_released() -> None:
    log = SharedText()
    log.extend(["old", " text"])
    log.clear()
    log.append("new")
    assert (log.epoch, log.prefix(8, 0), log.prefix(3, 1)) == (1, "old text", "new")
    log.release(1)
    assert log.prefix(8, 0) == ""
    assert log.value() == "new"


def test_the_log_holds_about_a_byte_per_character_in_few_blocks() -> None:
    # Hundreds of concurrent answers whose callers drop their pieces (a relay)
    # must not hold a str object per token (issue 17): pieces are joined into
    # UTF-8 blocks every COMPACT_EVERY, and the blocks merged as a binary counter.
    # Blocks stop growing at MAX_BLOCK (a larger one would be a mapping of its
    # own, whose heap space stays in the RSS once it is merged away).
    from llmstream._textlog import COMPACT_EVERY, MAX_BLOCK
    log = SharedText()
    pieces = [f" w{i % 97}" for i in range(20_000)]
    for piece in pieces:
        log.append(piece)
    assert COMPACT_EVERY <= 64
    assert len(log._parts) < COMPACT_EVERY
    size = len("".join(pieces).encode())
    assert max(len(block) for block in log._blocks) <= MAX_BLOCK
    assert len(log._blocks) <= 2 * size // MAX_BLOCK + (MAX_BLOCK // 64).bit_length()
    held = sum(len(block) for block in log._blocks) + sum(len(p) for p in log._parts)
    assert held == len("".join(pieces).encode())
    assert log.value() == "".join(pieces)
