"""Pure rendering of a stream for display: escaped HTML (a Markdown subset) or plain text, and a status line.

Strategy: every character the model sends goes through :func:`html.escape`;
the only tags are the few added here, without attributes (an ``ol`` may carry
a numeric ``start``), for a small Markdown subset: headings, lists, quotes,
code blocks and spans, emphasis. Links and images stay text on purpose: a
shown image URL is fetched at once (a known way for a prompt injection to send
data out), and a link can carry ``javascript:``. Markdown itself is never
handed to the front end, because it passes inline HTML through.

Never: IPython, a clock, a thread. ``llmstream.notebook`` uses these
functions; they are tested without a kernel.
"""

from __future__ import annotations

import html
import re
from typing import Dict, List, Optional

__all__ = ["Bundle", "bundle", "render_markdown", "render_plain", "status_line"]

#: A display bundle: MIME type -> content.
Bundle = Dict[str, str]


def status_line(state: str, *, tokens: int, seconds: Optional[float] = None, retries: int,
                error: Optional[BaseException] = None, model: Optional[str] = None,
                first_token: Optional[float] = None, rate: Optional[float] = None) -> str:
    """``"finished · gpt-4o-mini · first token 230 ms · 120 tokens · 48.0 tokens/s · 0 retries"``, then a failure.

    ``tokens`` are output tokens (text pieces when the provider reported
    none); the rate is ``rate`` if given, else ``tokens / seconds`` (``None``
    or 0: no rate yet). ``model`` and ``first_token`` (seconds) appear when
    given (``first token –`` while it is awaited); a failure ends the line
    with ``Type: message``.
    """
    if rate is None and seconds:
        rate = tokens / seconds
    parts = [state]
    if model is not None:
        parts.append(model)
        parts.append("first token –" if first_token is None else f"first token {first_token * 1000:.0f} ms")
    parts += [_plural(tokens, "token", "tokens"), "– tokens/s" if rate is None else f"{rate:.1f} tokens/s",
              _plural(retries, "retry", "retries")]
    if error is not None:
        parts.append(f"{type(error).__name__}: {error}")
    return " · ".join(parts)


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


_STATUS_STYLE = "margin-top:0.5em;font-size:smaller;font-family:monospace;opacity:0.75"
_FAILED_STYLE = "margin-top:0.5em;font-size:smaller;font-family:monospace;color:#c62828"
#: The answer's frame: set apart from the notebook's own text, readable in light
#: and dark themes alike (translucent grey, not a fixed colour).
_FRAME_STYLE = ("border:1px solid rgba(128,128,128,0.35);border-left:3px solid rgba(100,130,200,0.7);"
                "border-radius:4px;padding:0.5em 0.9em;margin:0.3em 0;background:rgba(128,128,128,0.06)")
#: The answer's headings, smaller than the notebook's own (whose h1 is about 2em).
_HEADING_SIZES = {1: "1.3em", 2: "1.2em", 3: "1.1em", 4: "1em", 5: "1em", 6: "1em"}
_HEADING_TAGS = {level: f'<h{level} style="font-size:{size};margin:0.6em 0 0.3em">'
                 for level, size in _HEADING_SIZES.items()}


def bundle(text: str, status: str, *, state: str, markdown: bool) -> Bundle:
    """The MIME bundle of one display: escaped HTML for notebooks, plain text for everything else."""
    body = render_markdown(text) if markdown else render_plain(text)
    if markdown:
        # Every "<hN>" in the body is one render_markdown wrote (the model's text is escaped).
        for level, tag in _HEADING_TAGS.items():
            body = body.replace(f"<h{level}>", tag)
    style = _FAILED_STYLE if state == "failed" else _STATUS_STYLE
    page = (f'<div class="llmstream-output" style="{_FRAME_STYLE}">{body}'
            f'<div style="{style}">{html.escape(status)}</div></div>')
    return {"text/html": page, "text/plain": f"{text}\n\n[{status}]"}


def render_plain(text: str) -> str:
    """The text as escaped, preformatted HTML: line breaks and spaces kept, no markup."""
    return f'<pre style="white-space:pre-wrap;margin:0">{html.escape(text)}</pre>'


_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_RULE = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_BULLET = re.compile(r"[ \t]*[-*+][ \t]+(.*)$")
_NUMBERED = re.compile(r"[ \t]*(\d{1,9})[.)][ \t]+(.*)$")
_QUOTE = re.compile(r" {0,3}>[ \t]?(.*)$")
_CODE_SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_EM = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])|(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])")
_DEL = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")


def render_markdown(text: str) -> str:
    """Render a safe Markdown subset to HTML; every character of ``text`` is escaped.

    Paragraphs (a line break stays a line break), ``#`` headings, ``-``/``*``
    and numbered lists (nesting is flattened), ``>`` quotes, rules, fenced code
    blocks, inline code, bold, italics and ``~~strike-through~~``. Raw HTML,
    links and images are shown as the text they are. An unfinished construct
    (a fence not yet closed, a ``**`` without its pair) renders sensibly while
    the text is still streaming. The only tags produced are ``p br h1-h6 ul ol
    li blockquote hr pre code strong em del``, without attributes except an
    ``ol``'s numeric ``start``.
    """
    blocks = _Blocks()
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        blocks.feed(line)
    return blocks.close()


class _Blocks:
    """The block structure of :func:`render_markdown`: one line at a time."""

    def __init__(self) -> None:
        self._out: List[str] = []
        self._lines: List[str] = []  # the open paragraph or quote, already rendered inline
        self._container = ""  # "p" or "blockquote" while lines are open
        self._items: List[str] = []
        self._list = ""  # "ul" or "ol" while a list is open
        self._start = 1
        self._fence = ""  # the opening fence while inside a code block
        self._code: List[str] = []

    def feed(self, line: str) -> None:
        if self._fence:
            closing = line.strip()
            if closing.startswith(self._fence) and closing == closing[0] * len(closing):
                self._close_code()
            else:
                self._code.append(line)
            return
        fence = _FENCE.match(line)
        if fence:
            self.flush()
            self._fence = fence.group(1)
        elif not line.strip():
            self.flush()
        elif _RULE.match(line):
            self.flush()
            self._out.append("<hr>")
        else:
            self._content(line)

    def _content(self, line: str) -> None:
        heading = _HEADING.match(line)
        bullet = _BULLET.match(line)
        numbered = _NUMBERED.match(line)
        quote = _QUOTE.match(line)
        if heading:
            self.flush()
            level = len(heading.group(1))
            self._out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif bullet:
            self._item("ul", 1, bullet.group(1))
        elif numbered:
            self._item("ol", int(numbered.group(1)), numbered.group(2))
        elif quote:
            self._open("blockquote")
            self._lines.append(_inline(quote.group(1)))
        elif self._items and line[:1] in (" ", "\t"):
            self._items[-1] += "<br>" + _inline(line.strip())  # an item's indented continuation
        else:
            self._open("p")
            self._lines.append(_inline(line))

    def _open(self, container: str) -> None:
        if self._container != container or self._items:
            self.flush()
        self._container = container

    def _item(self, kind: str, number: int, text: str) -> None:
        if self._list != kind or self._lines:
            self.flush()
            self._list, self._start = kind, number
        self._items.append(_inline(text))

    def flush(self) -> None:
        """Close the open paragraph, quote or list."""
        if self._lines:
            tag = self._container
            self._out.append(f"<{tag}>{'<br>'.join(self._lines)}</{tag}>")
            self._lines, self._container = [], ""
        if self._items:
            start = f' start="{self._start}"' if self._list == "ol" and self._start != 1 else ""
            items = "".join(f"<li>{item}</li>" for item in self._items)
            self._out.append(f"<{self._list}{start}>{items}</{self._list}>")
            self._items, self._list = [], ""

    def _close_code(self) -> None:
        code = "\n".join(self._code)
        self._out.append(f"<pre><code>{html.escape(code)}</code></pre>")
        self._fence, self._code = "", []

    def close(self) -> str:
        """End of text: an unclosed code fence shows what it has so far."""
        if self._fence:
            self._close_code()
        self.flush()
        return "".join(self._out)


def _inline(text: str) -> str:
    """Escape one line and mark up its code spans and emphasis.

    Safe by construction: the text is escaped first, and the patterns only
    insert fixed tags at ``*``, ``_``, ``~`` and backtick positions, which
    never occur inside an entity such as ``&lt;``.
    """
    parts: List[str] = []
    position = 0
    for span in _CODE_SPAN.finditer(text):
        parts.append(_emphasis(html.escape(text[position:span.start()])))
        parts.append(f"<code>{html.escape(span.group(2))}</code>")
        position = span.end()
    parts.append(_emphasis(html.escape(text[position:])))
    return "".join(parts)


def _emphasis(escaped: str) -> str:
    escaped = _STRONG.sub(lambda m: f"<strong>{m.group(1) or m.group(2)}</strong>", escaped)
    escaped = _EM.sub(lambda m: f"<em>{m.group(1) or m.group(2)}</em>", escaped)
    return _DEL.sub(r"<del>\1</del>", escaped)
