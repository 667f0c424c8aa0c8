"""``python -m llmstream.testing``: run the fake LLM server until Ctrl+C."""

from ._cli import serve

raise SystemExit(serve())
