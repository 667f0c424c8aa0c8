"""A newcomer with no API key follows the README alone, and every snippet runs.

The README's ``newcomer`` block says: start ``llmstream serve-fake`` in the
background, then export the variables it prints. This test does exactly that
(the command as the README writes it, on a free port), reads the ``export``
lines the server printed, checks they are the ones the README shows, and runs
every other runnable block of the README in an environment holding only those
variables (no key of the machine's, no in-process server, no scripted reply):

* a block that needs no scripted reply must print what its ``stdout`` marker says;
* a block whose marker scripts the server (a timeout, a 503...) gets the plain
  default answer here, so it only has to run: exit status 0.

Blocks run four at a time (the server is paced like a real model, so most of
the time is spent waiting for tokens).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple


from helpers import read_until
from test_readme import (BLOCKS, PROVIDER_ENV_PREFIXES, ROOT, RUN_TIMEOUT, Block, command, evaluate, free_port,
                         shims)  # noqa: F401  (shims is a fixture)

NEWCOMER = [b for b in BLOCKS if b.value("newcomer") is not None]
#: Blocks that are not a newcomer's to run: the install commands (CI runs them), servers (they
#: run until Ctrl+C), the newcomer block itself, and the development commands (the test suite).
NOT_RUN = ("llmstream-1", "development-1")


def _exports(lines: List[str]) -> Dict[str, str]:
    env: Dict[str, str] = {}
    for line in lines:
        words = shlex.split(line.strip())
        if words[:1] == ["export"]:
            env.update(word.split("=", 1) for word in words[1:])  # type: ignore[misc]
    return env


def _runnable(block: Block) -> bool:
    return (block.id not in NOT_RUN and block.value("skip") is None and block.value("serve") is None
            and block.value("newcomer") is None)


def _code(block: Block, port: int) -> str:
    code = block.code
    number = block.value("fake-port")
    if number is not None:  # the README says: serve-fake on that port stands in for the server
        code = code.replace(number, str(port))
    number = block.value("free-port")
    if number is not None:
        code = code.replace(number, str(free_port()))
    return code


def _run(block: Block, env: Dict[str, str], port: int, workdir: Path) -> Tuple[Block, int, str, str]:
    workdir.mkdir()
    argv, cwd = command(block, _code(block, port), workdir)
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8",
                          timeout=RUN_TIMEOUT, check=False)
    return block, done.returncode, done.stdout, done.stderr


def test_there_is_one_newcomer_block_near_the_top() -> None:
    [block] = NEWCOMER
    first_example = next(b for b in BLOCKS if b.id.startswith("in-a-script"))
    assert block.line < first_example.line, "the no-key instructions come before the first example"


def test_every_snippet_runs_for_a_newcomer_without_a_key(shims: Path, tmp_path: Path) -> None:  # noqa: F811
    [block] = NEWCOMER
    port = free_port()
    lines = block.code.replace(block.value("free-port") or "", str(port)).splitlines()
    start = [line for line in lines if line.startswith("llmstream serve-fake")]
    assert len(start) == 1 and start[0].endswith(" &"), f"{block.where}: start serve-fake in the background"
    readme_env = _exports(lines)
    env = {k: v for k, v in os.environ.items() if not k.startswith(PROVIDER_ENV_PREFIXES)}
    env.update(PATH=f"{shims}{os.pathsep}{env.get('PATH', '')}", PYTHONIOENCODING="utf-8",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    proc = subprocess.Popen(["bash", "-c", "exec " + start[0][:-2]], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        printed = read_until(proc, b"Press Ctrl+C to stop.").decode().splitlines()
        served_env = _exports(printed)
        assert served_env == readme_env, f"serve-fake prints {served_env}, the README says {readme_env}"
        # The official SDKs refuse to start without a key, whatever the base URL: the key is exported too.
        assert {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL"} <= set(served_env)

        env.update(served_env)
        blocks = [b for b in BLOCKS if _runnable(b)]
        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda b: _run(b, env, port, tmp_path / b.id), blocks))
        failures = []
        for run_block, status, out, err in runs:
            said = f"{run_block.where}: exit {status}\n--- stdout:\n{out}\n--- stderr:\n{err}"
            if status != 0:
                failures.append(said)
                continue
            scripted = run_block.value("script") is not None or run_block.value("default") is not None
            expected, pattern = run_block.value("stdout"), run_block.value("stdout-re")
            if not scripted and run_block.value("pytest") is None:
                if expected is not None and out != evaluate(run_block, expected):
                    failures.append("stdout differs: " + said)
                if pattern is not None and not re.fullmatch(pattern, out):
                    failures.append("stdout does not match: " + said)
        assert not failures, "\n\n".join(failures)
        assert len(runs) >= 25
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
    assert proc.returncode == 0
