"""Run folders: created, resumed or overwritten only when they are this project's runs.

A run folder carries a marker file, ``.robustprior-run`` (JSON: the trainer kind and when the run
was created). :meth:`Run.open` applies one policy for every trainer:

===============================  ================================================================
the output folder is ...         what happens
===============================  ================================================================
missing, or an empty folder      a fresh run (``--resume``: an error, there is nothing to resume)
a run of this kind               ``--resume``: continue from its checkpoint (from the start when it
                                 has none yet); ``--overwrite``: delete its contents (the marker and
                                 the ``keep`` patterns stay) and start again; neither: an error,
                                 unless the run holds nothing but its config (it stopped before
                                 training, e.g. on a bad device): then it starts again
a run of another kind            an error
anything else (a file, a folder  an error; nothing is changed or deleted
with other content, read-only)
===============================  ================================================================

``--overwrite`` deletes only what the run wrote: a caller that knows its run's layout passes
``foreign``, which names the entries it did not write (a user's files); any such entry refuses the
overwrite, naming them, before anything is deleted (the recipes of :mod:`restoration.table8` do).
:func:`check_output_folder` refuses an output that is a file or that cannot be written to, before any
work, for every command that writes into a folder.

While a run is open, its marker is locked (``flock``): a second process training into the same
folder is refused. Opening a run also deletes what an earlier process killed mid-write left there
(temporary files of atomic writes, checkpoint files never committed), and cuts the CSV logs back to
the checkpoint's iteration, so a resumed run never repeats a row.

Configs: a fresh run saves its validated config as ``config.yaml``. A resumed run compares the
config it is given with the one the run was trained with; a difference is refused
(:class:`ConfigChangeError`) unless ``allow_config_change`` (``--allow-config-change``) is set.
``overrides`` (dotted keys set by command-line options such as ``--iterations``) are explicit and
always allowed. Every accepted change is appended to ``config_changes.yaml`` (iteration, time,
old and new values; :func:`record_config_changes`, also used by the recipes). Only training writes a
run's config; other commands read it with :func:`read_run_config`. A run saved before keys were
renamed (``Section.former``, e.g. ``seed`` -> ``manual_seed``) resumes: its saved config is read with
the names of now (:func:`~robustprior.training.config.migrate_config`) and training rewrites its
``config.yaml`` with them (a config *given* with an earlier name is refused, naming the new one).
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import __version__
from robustprior.io.atomic import remove_temporaries, write_text_atomically
from .checkpoints import (CHECKPOINT_FOLDER, TrainingCheckpoint, load_training_checkpoint, remove_unreferenced,
                          save_training_checkpoint)
from .config import (Section, apply_overrides, config_differences, copy_internal_values, format_value,
                     migrate_config, read_config_file, validate_config)
from .csv_log import CsvLog
from .distributed import DistributedContext
from .errors import CheckpointError, ConfigChangeError, ConfigError, RunExistsError, RunFolderError
from .rng import capture_rng_state, restore_rng_state, seed_everything

try:
    import fcntl
except ImportError:  # pragma: no cover (not on Linux / macOS: no lock)
    fcntl = None

RUN_MARKER = ".robustprior-run"
CONFIG_NAME = "config.yaml"
CONFIG_CHANGES_NAME = "config_changes.yaml"
_LEGACY_FILES = ("checkpoint.pt", "checkpoints/last.pt")  # runs of robustprior before the engine
_SETUP_FILES = (RUN_MARKER, CONFIG_NAME, CONFIG_CHANGES_NAME)  # all a run holds before it has trained


def _note(message: str) -> None:
    print(f"[robustprior] {message}", file=sys.stderr)


def _read_marker(folder: Path) -> dict[str, Any]:
    try:
        marker = json.loads((folder / RUN_MARKER).read_text())
        if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str):
            raise ValueError("no kind")
        return marker
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{folder / RUN_MARKER} is damaged ({error}); if {folder} is a run you want to "
                             "replace, delete the folder yourself") from None


def _not_a_run(folder: Path) -> RunFolderError:
    legacy = [name for name in _LEGACY_FILES if (folder / name).exists()]
    if legacy:
        return RunFolderError(
            f"{folder} holds a run of an earlier robustprior version ({legacy[0]}: a pickled checkpoint, which is "
            "not loaded because loading it could run code); nothing was changed: train into a new --output folder")
    return RunFolderError(
        f"{folder} is not empty and is not a robustprior run folder (it has no {RUN_MARKER} file); nothing in it "
        "was changed or deleted: choose a new or empty --output folder")


def _write_marker(folder: Path, kind: str) -> None:
    marker = {"kind": kind, "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "robustprior": __version__}
    write_text_atomically(folder / RUN_MARKER, json.dumps(marker, indent=2) + "\n")


def _lock(folder: Path):
    """An open handle on the marker holding an exclusive ``flock`` (None where there is no fcntl)."""
    if fcntl is None:
        return None
    handle = open(folder / RUN_MARKER)  # noqa: SIM115 (held until Run.close)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunFolderError(f"another process is using the run in {folder} (is it still training?); wait for it "
                             "or stop it first") from None
    return handle


def check_output_folder(folder: str | Path, option: str = "--output") -> None:
    """Refuse, before any work, an output ``folder`` that is a file, lies below a file, or cannot be
    written to (the folder, or the nearest existing folder above it when it does not exist yet): a
    one-line :class:`RunFolderError` naming ``option``. Nothing is created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{option} {folder} is a file, not a folder; choose another {option}")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"{option} {folder} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == folder else f" ({existing}, where it would be made)"
        raise RunFolderError(f"{option} {folder} is not writable{where}; choose a folder you can write to")


ForeignEntries = Callable[[Path, Sequence[Path]], Sequence[Path]]


def _refuse_foreign(folder: Path, kind: str, unknown: Sequence[Path]) -> None:
    if unknown:
        listed = ", ".join(str(path.relative_to(folder)) for path in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise RunFolderError(f"--overwrite would delete what the {kind} run did not write in {folder}: {listed}{more}; "
                             "nothing was changed or deleted: move them out or choose another --output")


def prepare_run_folder(folder: Path, kind: str, resume: bool, overwrite: bool, keep: Sequence[str] = (),
                       foreign: ForeignEntries | None = None):
    """The folder policy of the module docstring (one process); returns the lock handle.

    ``foreign(folder, entries)``: of the top-level ``entries`` about to be deleted, the paths (at any
    depth) the run did not write; any refuses the deletion (None: the whole folder is the run's)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"the output {folder} is a file, not a folder; choose another --output")
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    try:
        if not (folder / RUN_MARKER).is_file():
            if entries:
                raise _not_a_run(folder)
            if resume:
                raise RunFolderError(f"--resume: there is no run in {folder} to resume")
            folder.mkdir(parents=True, exist_ok=True)
            _write_marker(folder, kind)
            return _lock(folder)
        saved_kind = _read_marker(folder)["kind"]
        if saved_kind != kind:
            raise RunFolderError(f"{folder} holds a {saved_kind} run, not a {kind} run; nothing was changed")
        handle = _lock(folder)
        try:
            contents = [path for path in entries if path.name != RUN_MARKER
                        and not any(fnmatch.fnmatch(path.name, pattern) for pattern in keep)]
            trained = [path for path in contents if path.name not in _SETUP_FILES]
            if trained and not (resume or overwrite):
                raise RunExistsError(f"{folder} already holds a {kind} run; pass --resume to continue it or "
                                     "--overwrite to start it again")
            if not resume:  # --overwrite, or a run that stopped before its first step: start again
                if foreign is not None:
                    _refuse_foreign(folder, kind, list(foreign(folder, contents)))
                for path in contents:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed = remove_temporaries(folder) + remove_unreferenced(folder)
            if removed:
                _note(f"removed {len(removed)} file(s) an interrupted write left in {folder}: "
                      + ", ".join(str(path.relative_to(folder)) for path in removed))
        except BaseException:
            if handle is not None:
                handle.close()
            raise
        return handle
    except PermissionError as error:
        raise RunFolderError(f"cannot write to {folder} ({error.strerror}: {error.filename}); choose a folder you "
                             "can write to") from None
    except OSError as error:
        if isinstance(error, (RunFolderError, RunExistsError)):
            raise
        raise RunFolderError(f"cannot use {folder} as a run folder: {error}") from None


def config_change_error(differences: Mapping[str, tuple[Any, Any]], advice: str) -> ConfigChangeError:
    """The refusal of a resume with other settings: every ``{key: (old, new)}`` on its own line, then
    ``advice`` (how to keep the run's settings) and how to change them anyway."""
    listed = "\n  ".join(f"{key}: {format_value(old)} -> {format_value(new)}" for key, (old, new) in differences.items())
    return ConfigChangeError(f"the config given differs from the run's own config:\n  {listed}\n{advice}, or pass "
                             f"--allow-config-change to continue with the new values (the change is recorded in "
                             f"{CONFIG_CHANGES_NAME})")


def record_config_changes(folder: Path, changes: Mapping[str, tuple[Any, Any]], allowed_by: str,
                          **where: Any) -> None:
    """Append one entry to ``folder / config_changes.yaml``: ``where`` (e.g. ``iteration``), the time,
    ``allowed_by`` and every ``{key: (old, new)}``; and say so on stderr in one line."""
    path = folder / CONFIG_CHANGES_NAME
    history = yaml.safe_load(path.read_text()) if path.is_file() else None
    entry = {**where, "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             "allowed_by": allowed_by,
             "changes": {key: {"from": old, "to": new} for key, (old, new) in changes.items()}}
    write_text_atomically(path, yaml.safe_dump((history or []) + [entry], sort_keys=False))
    _note(f"resuming {folder} with a changed config (recorded in {CONFIG_CHANGES_NAME}): "
          + ", ".join(f"{key} {format_value(old)} -> {format_value(new)}" for key, (old, new) in changes.items()))


def _read_saved_config(folder: Path, schema: Section | Mapping) -> tuple[dict, list[str]]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise RunFolderError(f"{folder} has no {CONFIG_NAME}: not a run folder, or a run that never started")
    values, renamed = migrate_config(read_config_file(path), schema)
    return validate_config(values, schema, source=str(path)), renamed


def read_run_config(folder: str | Path, schema: Section | Mapping) -> dict:
    """A run's saved config (``config.yaml``), validated; for commands that use a run without training
    it. A config saved before keys were renamed is read with the names of now
    (:func:`~robustprior.training.config.migrate_config`); the file is not changed."""
    return _read_saved_config(Path(folder), schema)[0]


class Run:
    """An open run folder (use :meth:`open`): its effective ``config``, the ``checkpoint`` it
    resumes from (or None), ``start_iteration``, its CSV logs and checkpoint writing."""

    def __init__(self, folder: Path, kind: str, schema: Section | Mapping, config: dict,
                 checkpoint: TrainingCheckpoint | None, context: DistributedContext, lock, logs: dict[str, CsvLog]):
        self.folder, self.kind, self.schema, self.config = folder, kind, schema, config
        self.checkpoint, self.context, self._lock, self._logs = checkpoint, context, lock, logs

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, folder: str | Path, *, kind: str, schema: Section | Mapping, config: Mapping[str, Any] | None,
             resume: bool = False, overwrite: bool = False, allow_config_change: bool = False,
             overrides: Mapping[str, Any] | None = None, keep: Sequence[str] = (),
             logs: Mapping[str, Sequence[str] | None] | None = None, context: DistributedContext | None = None,
             map_location: str | torch.device = "cpu") -> Run:
        """Open ``folder`` for training (policy: module docstring); every rank calls it.

        ``config``: the validated config given (None with ``resume``: the run's own); ``overrides``:
        dotted keys set on the command line; ``keep``: name patterns that ``overwrite`` keeps
        (caches); ``logs``: CSV log names and their columns (None: from the first row)."""
        folder = Path(folder)
        context = context or DistributedContext(0, 1, torch.device("cpu"))
        lock = context.run_on_main(prepare_run_folder, folder, kind, resume, overwrite, keep)
        try:
            checkpoint = load_training_checkpoint(folder, map_location) if resume else None
            saved, renamed = cls._saved_config(folder, checkpoint, schema) if resume else (None, [])
            if resume and checkpoint is None and context.is_main:
                _note(f"no checkpoint in {folder} yet: the run starts again from iteration 0")
            effective, changes = cls._resolve_config(saved, config, overrides or {}, schema, allow_config_change)
            run = cls(folder, kind, schema, effective, checkpoint, context, lock,
                      {name: CsvLog(folder / name, columns) for name, columns in (logs or {}).items()})
            if context.is_main:
                for log in run._logs.values():
                    log.truncate(run.start_iteration)
                if changes:
                    run._record_changes(changes, bool(set(changes) - set(overrides or {})))
                if renamed:
                    _note(f"{folder / CONFIG_NAME} was written with earlier key names; rewritten with the names of "
                          f"now: {', '.join(renamed)}")
                if saved is None or changes or renamed:
                    run.save_config(effective)
            context.barrier()
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        return run

    @staticmethod
    def _saved_config(folder: Path, checkpoint: TrainingCheckpoint | None, schema: Section | Mapping
                      ) -> tuple[dict | None, list[str]]:
        """The run's own config (the checkpoint's, else ``config.yaml``), migrated to the key names of
        now, and the renames that needed (``config.yaml`` is rewritten when there are any)."""
        if checkpoint is not None:
            if "config" not in checkpoint.state:
                raise CheckpointError(f"the checkpoint in {folder / CHECKPOINT_FOLDER} holds no config")
            values, renamed = migrate_config(checkpoint.state["config"], schema)
            if not renamed and (folder / CONFIG_NAME).is_file():
                try:  # the checkpoint may be of now and config.yaml not yet rewritten
                    renamed = migrate_config(read_config_file(folder / CONFIG_NAME), schema)[1]
                except ConfigError:
                    pass  # a damaged config.yaml: the checkpoint's config is the run's
            return validate_config(values, schema, source=f"the config saved in {folder}"), renamed
        if (folder / CONFIG_NAME).is_file():
            return _read_saved_config(folder, schema)
        return None, []

    @staticmethod
    def _resolve_config(saved: dict | None, given: Mapping[str, Any] | None, overrides: Mapping[str, Any],
                        schema: Section | Mapping, allow_change: bool) -> tuple[dict, dict[str, tuple[Any, Any]]]:
        if saved is None:
            if given is None:
                raise ConfigError("a new run needs a config")
            return apply_overrides(given, overrides, schema), {}
        base = copy_internal_values(given if given is not None else saved, saved, schema)
        base = validate_config(base, schema)
        differences = config_differences(saved, base, schema)
        if differences and not allow_change:
            raise config_change_error(differences, "resume without giving a config to continue with the run's config")
        effective = apply_overrides(base, overrides, schema)
        return effective, config_differences(saved, effective, schema)

    # ------------------------------------------------------------------ use
    @property
    def start_iteration(self) -> int:
        """The iteration training continues from (0 for a fresh run)."""
        return 0 if self.checkpoint is None else self.checkpoint.iteration

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None

    def log(self, name: str) -> CsvLog:
        """The CSV log ``name`` declared in :meth:`open` (write it from rank 0 only)."""
        return self._logs[name]

    def save_config(self, config: Mapping[str, Any]) -> None:
        """Make ``config`` (e.g. with a new history entry) the run's config and write ``config.yaml``
        (rank 0); later checkpoints carry it."""
        self.config = dict(config)
        if self.context.is_main:
            write_text_atomically(self.folder / CONFIG_NAME, yaml.safe_dump(self.config, sort_keys=False))

    def _record_changes(self, changes: Mapping[str, tuple[Any, Any]], from_config: bool) -> None:
        if self.context.is_main:
            record_config_changes(self.folder, changes, "--allow-config-change" if from_config else "command line",
                                  iteration=self.start_iteration)

    def save_checkpoint(self, iteration: int, weights: Mapping[str, torch.Tensor], state: Mapping[str, Any],
                        rng: bool = True) -> None:
        """Write a checkpoint (rank 0) with the run's config; ``rng``: also every rank's generator
        states (gathered: every rank must call this)."""
        payload = dict(state)
        if rng:
            payload["rng"] = self.context.all_gather(capture_rng_state())
        if self.context.is_main:
            save_training_checkpoint(self.folder, iteration, weights, {**payload, "config": self.config})
        self.context.barrier()

    def restore_rng(self, reseed: int) -> None:
        """Put back this rank's generator states from the checkpoint; when it was made by another
        number of ranks, seed with ``reseed`` instead (and say that the continuation is not bit-exact)."""
        if self.checkpoint is None:
            return
        state = self.checkpoint.rng_state(self.context.rank, self.context.world_size)
        if state is None:
            if self.context.is_main:
                _note(f"the checkpoint was made by another number of processes than {self.context.world_size}: "
                      "reseeding (the continuation is not bit-exact)")
            seed_everything(reseed)
        else:
            restore_rng_state(state)

    def close(self) -> None:
        """Release the run folder's lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
