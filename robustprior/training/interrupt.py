"""Stopping a long job on SIGINT (Ctrl-C) or SIGTERM (``kill``) cleanly: one exception, one line, a
checkpoint where one can be made.

:func:`stop_on_signals` (a context manager, main thread only) turns both signals into
:class:`Interrupted` (a ``KeyboardInterrupt`` carrying the signal and the exit status a shell
expects, 128 + the signal number: 130 for SIGINT, 143 for SIGTERM); the previous handlers come back
on exit. Inside :func:`deferred_stop` a signal is only recorded: a training loop checks
:func:`stop_requested` after each step, writes a checkpoint of a consistent state and then raises
:func:`interruption` itself (a signal still recorded when the block ends is raised
there). A second signal while one is pending raises at once (the user insists).
Outside :func:`stop_on_signals` nothing changes (Python's default handlers).

:func:`stop_with_parent`: a job started by a recipe asks Linux (``PR_SET_PDEATHSIG``) for a SIGTERM when
the recipe dies, even by SIGKILL, so no job outlives its recipe.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PARENT_VARIABLE = "ROBUSTPRIOR_PARENT_PID"  # set by a parent whose death must stop this process
_PR_SET_PDEATHSIG = 1


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` and ``exit_status`` (128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_status = 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_pending: list[int] = []  # the signal recorded while deferring (at most one)
_deferring = [0]  # nesting depth of deferred_stop


def _handle(signum: int, frame: object) -> None:
    if _deferring[0] and not _pending:
        _pending.append(signum)
        return
    _pending.clear()
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (a no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, _handle) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _pending.clear()


@contextmanager
def deferred_stop() -> Iterator[None]:
    """Inside the block a first stop signal is recorded (:func:`stop_requested`) instead of raised; one
    still recorded when the block ends is raised then."""
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
    if _pending and not _deferring[0]:
        raise interruption()


def stop_requested() -> int | None:
    """The stop signal recorded inside :func:`deferred_stop` (None: none)."""
    return _pending[0] if _pending else None


def interruption() -> Interrupted:
    """The :class:`Interrupted` of the recorded signal (clears it); call only when :func:`stop_requested`."""
    signum = _pending.pop()
    return Interrupted(signum)


def stop_with_parent() -> None:
    """When ``$ROBUSTPRIOR_PARENT_PID`` names this process's parent (a recipe started it): SIGTERM when
    the parent dies (Linux; elsewhere nothing), and :class:`Interrupted` now if it is already gone. The
    variable is removed, so this process's own children do not inherit it."""
    parent = os.environ.pop(PARENT_VARIABLE, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover (a libc without prctl)
        return
    if str(os.getppid()) != parent:
        raise Interrupted(signal.SIGTERM)
