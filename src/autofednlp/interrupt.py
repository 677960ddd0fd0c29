"""Ctrl-C and SIGTERM during a run: stop within seconds, engines included, and say how to
resume. Results are written as they happen and the checkpoint atomically, so leaving at once
loses at most the rounds since the last checkpoint, which `--resume` runs again exactly."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within this block SIGINT and SIGTERM end the process (exit 128 + signal) after ending
    the processes it started; the previous handlers come back after it (for Python callers)."""
    before = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _stop_descendants(grace_s: float = 2.0) -> None:
    """End every process this one started (the simulation engine's Ray processes and its
    workers): asked politely first, killed after `grace_s`."""
    try:
        import psutil
    except ImportError:
        return
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for p in children:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(children, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _on_stop_signal(signum: int, _frame: Any) -> None:
    """Stop now, whatever the engine's threads are doing: raising KeyboardInterrupt is not
    enough, the simulation engine's threads keep the interpreter alive after `main` returns."""
    from autofednlp import run
    from autofednlp.report.results import last_checkpoint

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    rd = run.active_run_dir
    if rd is None:
        msg = f"autofednlp: {what}"
    else:
        at = last_checkpoint.get(rd)
        where = f" from round {at}" if at else ""
        msg = (
            f"autofednlp: {what}; results so far are in {rd}; continue{where} with: "
            f"autofednlp run --resume {rd}"
        )
    print(msg, file=sys.stderr, flush=True)
    sys.stdout.flush()
    # what the engine's threads print while their processes go is noise after that line
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    _stop_descendants()
    os._exit(128 + signum)
