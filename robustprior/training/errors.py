"""The run engine's errors: problems found before any work, with a message written for the user.

Every class derives from :class:`RunSetupError` (and from the built-in class a caller would expect:
``ValueError``, ``FileExistsError``, ...), so a command line catches one class and prints the
message instead of a traceback (:func:`exit_on_setup_error`).
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar


class RunSetupError(Exception):
    """A run cannot start or resume as asked; ``str(error)`` says why and what to do."""


class ConfigError(RunSetupError, ValueError):
    """A config is not valid against its schema (unknown key, wrong type, out-of-range value)."""


class ConfigChangeError(RunSetupError, ValueError):
    """``--resume`` was given a config that differs from the run's, without permission to change it."""


class RunFolderError(RunSetupError, OSError):
    """The output folder cannot hold this run (a file, read-only, not a run, locked by another process)."""


class RunExistsError(RunSetupError, FileExistsError):
    """The folder already holds a run and neither resuming nor overwriting was asked for."""


class CheckpointError(RunSetupError, ValueError):
    """A checkpoint is missing, damaged, of another format, not where it should be (a run not finished),
    or would run code when loaded."""


class DeviceError(RunSetupError, RuntimeError):
    """The requested device does not exist on this machine (e.g. ``cuda`` without a GPU)."""


Function = TypeVar("Function", bound=Callable[..., object])


def exit_on_setup_error(main: Function) -> Function:
    """Decorate a command-line ``main``: a :class:`RunSetupError` prints ``error: MESSAGE`` on
    stderr and exits with status 2 (argparse's status for a bad command line)."""

    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except RunSetupError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return guarded  # type: ignore[return-value]
