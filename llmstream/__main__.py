"""``python -m llmstream`` and the ``llmstream`` console script: ``chat``, ``debug``, ``serve-fake``.

This module is only the entry point; the commands live in ``llmstream._cli``.
With no API key and no base URL, ``chat`` and ``debug`` start the built-in
fake server (``llmstream.testing``) and stream from it, so a fresh offline
install shows the library working. Errors print one line (exit 1) unless
``--verbose``; Ctrl+C stops cleanly with exit status 130.
"""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
