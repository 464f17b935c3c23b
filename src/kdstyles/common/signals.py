"""Graceful stops: SIGINT, SIGTERM and SIGHUP (Ctrl-C, a batch scheduler's preemption, a
closed terminal) set a flag that long work checks at safe points (after a training step,
between runs), instead of killing the process mid-write. A second SIGINT stops at once.

Handlers can only be installed from the main thread; elsewhere :class:`GracefulStop` is a
plain flag that nothing sets.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable

STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
_EXTRA: list[int] = []  # more signals that stop gracefully (a scheduler's preemption signal: also_stop_on)


@contextmanager
def also_stop_on(signum: int):
    """Inside: :class:`GracefulStop` also stops on ``signum`` (e.g. the SIGUSR2 a Slurm job gets
    before its time limit or preemption), instead of whatever handled it before."""
    _EXTRA.append(signum)
    try:
        yield
    finally:
        _EXTRA.remove(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class GracefulStop:
    """``with GracefulStop() as stop: ... if stop.requested: ...``; ``on_signal`` (optional) is
    called from the handler, e.g. to pass the signal on to child processes."""

    def __init__(self, on_signal: Callable[[int], None] | None = None):
        self.signum: int | None = None
        self.on_signal = on_signal
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, _frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now (files are written atomically)
        self.signum = self.signum or signum
        if self.on_signal is not None:
            self.on_signal(signum)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in (*STOP_SIGNALS, *_EXTRA):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
