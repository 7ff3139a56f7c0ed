"""One model loader: a name, a file or the bundled default -> ``(RobustSAM, ModelSource)``.

:func:`load_model` is the single way every command and API gets a model. It resolves what it is given
once, reads the file once, builds the model from it and returns a :class:`ModelSource` saying what was
loaded, so that callers can warn accordingly:

=================  ==============================================================================
source kind        what it is
=================  ==============================================================================
``bundled``        a model shipped in ``robustprior/weights`` (``tiny`` = ``robustsam_tiny``:
                   RobustSAM-tiny; ``sam_tiny``: SAM-tiny, robust parts untrained), trained on
                   generated scenes only
``official``       an official RobustSAM checkpoint (``robustsam_vit_{b,l,h}``)
``sam-only``       a SAM / MobileSAM checkpoint: the robust parts are untrained
``trained``        one of our own safetensors checkpoints (e.g. a ``robustprior train`` run)
``random``         no weights at all; only built when asked for (``random_init=True``)
=================  ==============================================================================

Names: ``tiny`` / ``robustsam_tiny`` / ``sam_tiny`` (bundled) and those of
:data:`robustprior.io.hub.CHECKPOINTS` (downloaded once). Traps closed here: a model with untrained
robust parts is refused for the RobustSAM decoder path unless ``allow_untrained_robust=True``; an
explicit ``model_type`` (or ``fourier_mode`` / ``token_mode``) that contradicts the file is an error;
a model without weights needs ``random_init=True``.

:func:`build_robust_sam` and :data:`robust_sam_model_registry` are the ``segment_anything.sam_model_registry``
-style entry points on top of it.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from robustprior.io.amg_settings import SAM_DEFAULTS, settings_from_metadata
from robustprior.modeling.build import MODEL_CONFIGS, ModelConfig, build_from_config
from robustprior.io.checkpoint import (
    CheckpointError,
    detect_format,
    guess_model_type,
    load_state,
    read_state_dict,
)
from robustprior.io.hub import CHECKPOINTS, cache_dir, download_checkpoint
from .modeling.robust_sam import RobustSAM

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED: dict[str, Path] = {
    "tiny": WEIGHTS_DIR / "robustsam_tiny.safetensors",  # RobustSAM-tiny (its SAM path is SAM-tiny)
    "robustsam_tiny": WEIGHTS_DIR / "robustsam_tiny.safetensors",
    "sam_tiny": WEIGHTS_DIR / "sam_tiny.safetensors",  # SAM-tiny base, robust parts untrained
}
"""Bundled model names -> files (scene-world models: see the model cards beside them)."""
SourceKind = Literal["bundled", "official", "sam-only", "trained", "random"]
DecoderPathOrNone = Literal["robust", "sam"] | None
ROBUST_PARTS_KEY = "robust_parts"  # metadata: "trained" / "untrained"
REAL_PHOTO_ADVICE = "on real photos use --checkpoint robustsam_vit_b (or _l / _h; downloaded once)"
_PATH_WORDS = {"sam": "SAM decoder path", "robust": "RobustSAM decoder path"}
_warned_domains: set[str] = set()


class UntrainedRobustPartsError(ValueError):
    """A model whose robust parts are untrained was asked for the RobustSAM decoder path."""


def notice(message: str) -> None:
    """One ``[robustprior] ...`` line on stderr."""
    print(f"[robustprior] {message}", file=sys.stderr)


def known_names() -> str:
    """``bundled: ...; downloadable (once): ...`` for error messages."""
    return f"bundled: {', '.join(BUNDLED)}; downloadable (once): {', '.join(CHECKPOINTS)}"


@dataclass(frozen=True)
class ModelSource:
    """What :func:`load_model` loaded (``path``: the file actually read; None for a random model)."""

    kind: SourceKind
    model_type: str
    path: Path | None = None
    name: str | None = None  # the bundled / downloadable name asked for, if any
    checkpoint_format: str | None = None  # "robustprior", "robustsam-official" or "sam"
    robust_trained: bool = False  # whether the robust parts carry trained weights
    amg_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per decoder path, from metadata

    @property
    def scene_world(self) -> bool:
        """Trained on generated scenes only (the bundled models)."""
        return self.kind == "bundled"

    def label(self, decoder_path: DecoderPathOrNone = "robust") -> str:
        """Short model name for ``decoder_path``: ``RobustSAM-tiny``, ``SAM vit_b``, ..."""
        size = self.model_type
        if self.kind == "bundled":
            if decoder_path == "sam":
                return "SAM-tiny"
            return "RobustSAM-tiny" if self.robust_trained else "SAM-tiny with an UNTRAINED robust path"
        if self.kind == "random":
            return f"RANDOMLY INITIALISED {size} model"
        base = "MobileSAM" if size == "vit_t" else f"SAM {size}"
        if self.kind == "official":
            return f"SAM {size} of the official RobustSAM" if decoder_path == "sam" else f"official RobustSAM {size}"
        if self.kind == "sam-only":
            return base if decoder_path == "sam" else f"{base} with an UNTRAINED robust path"
        if decoder_path == "sam":
            return f"SAM {size} (SAM parts of a robustprior checkpoint)"
        return f"robustprior {size}" + ("" if self.robust_trained else " with an UNTRAINED robust path")

    def describe(self, decoder_path: DecoderPathOrNone = "robust") -> str:
        """One phrase naming the model, the file and the decoder path (for notices and reports)."""
        if self.kind == "random":
            where = "no weights"
        elif self.path is None:
            where = f"{self.name}, downloaded on first use"
        else:
            where = f"bundled {self.path.name}" if self.kind == "bundled" else str(self.path)
        path_words = f", {_PATH_WORDS[decoder_path]}" if decoder_path else ""
        suffix = ": not RobustSAM" if decoder_path == "robust" and not self.robust_trained else ""
        return f"{self.label(decoder_path)} ({where}{path_words}){suffix}"

    def generator_settings(self, decoder_path: Literal["robust", "sam"]) -> dict[str, Any]:
        """The automatic-mask settings stored with the model for ``decoder_path`` (SAM's defaults
        when it has none; see :mod:`robustprior.evaluation.amg_settings`)."""
        return dict(self.amg_settings.get(decoder_path) or SAM_DEFAULTS)

    def domain_warning(self, decoder_path: DecoderPathOrNone = "robust") -> str | None:
        """The one line for a scene-world model meeting other input (None for other models)."""
        if not self.scene_world:
            return None
        return (f"warning: the bundled {self.label(decoder_path)} model was trained on generated scenes; "
                f"{REAL_PHOTO_ADVICE}")

    def warn_outside_domain(self, decoder_path: DecoderPathOrNone = "robust",
                            inputs: Iterable[str | Path | None] | None = None) -> bool:
        """Print :meth:`domain_warning` once per model and process when an input is not a generated
        scene. ``inputs``: image paths (a generated scene is an image inside a folder written by
        :mod:`robustprior.data.scenes`, see :func:`robustprior.data.scenes.is_generated_scene_file`); None
        entries (arrays of unknown origin, sample photos) count as not generated; ``inputs=None``
        means the caller already knows the input is not a generated scene. Returns whether it warned
        (now or before)."""
        message = self.domain_warning(decoder_path)
        if message is None:
            return False
        if inputs is not None:
            from robustprior.data.scenes import is_generated_scene_file

            if all(item is not None and is_generated_scene_file(item) for item in inputs):
                return False
        if message not in _warned_domains:
            _warned_domains.add(message)
            print(message, file=sys.stderr)
        return True


# ----------------------------------------------------------------------------- resolution
def resolve_checkpoint_spec(checkpoint: str | Path | None, decoder_path: DecoderPathOrNone = "robust",
                            download: bool = True) -> tuple[Path | None, str | None, bool]:
    """``(file, name, bundled)`` for a checkpoint argument; None picks the bundled model for
    ``decoder_path`` (RobustSAM-tiny, or SAM-tiny for the SAM path). With ``download=False`` a
    downloadable name that is not cached yet gives ``(None, name, False)``."""
    if checkpoint is None:
        name = "sam_tiny" if decoder_path == "sam" else "tiny"
        return _bundled_file(name), name, True
    text = str(checkpoint)
    if text in BUNDLED:
        return _bundled_file(text), text, True
    path = Path(checkpoint)
    if path.is_file():
        bundled = any(path.resolve() == file.resolve() for file in BUNDLED.values() if file.is_file())
        return path, None, bundled
    if text in CHECKPOINTS:
        if download:
            return download_checkpoint(text), text, False
        cached = cache_dir() / CHECKPOINTS[text].filename
        return (cached if cached.is_file() else None), text, False
    if path.suffix or "/" in text or "\\" in text:
        raise FileNotFoundError(f"checkpoint file {checkpoint} does not exist ({known_names()})")
    raise ValueError(f"unknown checkpoint name {text!r}; known names: {known_names()} (or pass a file path)")


def _bundled_file(name: str) -> Path:
    path = BUNDLED[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled {name} weights ({path}) are missing from this installation: reinstall robustprior, "
            "pass a checkpoint, or ask for a model without weights explicitly (random_init=True)")
    return path


def _robust_parts_trained(checkpoint_format: str, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    """Official RobustSAM: trained; SAM-only: untrained; ours: the ``robust_parts`` metadata entry,
    else trained unless the Robust Output Tokens still equal SAM's mask tokens bit for bit (a SAM
    checkpoint converted without training the robust parts)."""
    if checkpoint_format == "robustsam-official":
        return True
    if checkpoint_format == "sam":
        return False
    recorded = metadata.get(ROBUST_PARTS_KEY)
    if recorded in ("trained", "untrained"):
        return recorded == "trained"
    tokens, sam_tokens = state.get("robust.output_tokens.weight"), state.get("mask_decoder.mask_tokens.weight")
    return tokens is None or sam_tokens is None or not torch.equal(tokens, sam_tokens)


def _source_of(path: Path, name: str | None, bundled: bool, state: Mapping[str, torch.Tensor],
               metadata: Mapping[str, str]) -> tuple[ModelSource, dict | None]:
    """What a read file is, and the model config stored in it (ours only)."""
    checkpoint_format = detect_format(state, metadata)
    stored_config = json.loads(metadata["config"]) if checkpoint_format == "robustprior" and "config" in metadata else None
    model_type = stored_config["model_type"] if stored_config else (
        CHECKPOINTS[name].model_type if name in CHECKPOINTS else guess_model_type(state))
    kind: SourceKind = "bundled" if bundled else {"robustsam-official": "official", "sam": "sam-only"}.get(
        checkpoint_format, "trained")
    source = ModelSource(kind, model_type, path, name, checkpoint_format,
                         _robust_parts_trained(checkpoint_format, state, metadata), settings_from_metadata(metadata))
    return source, stored_config


def _check_explicit(name: str, asked: Any, found: Any, path: Path) -> None:
    if asked is not None and found is not None and asked != found:
        raise CheckpointError(f"{name} {asked!r} contradicts the checkpoint {path}, which holds {name} {found!r}; "
                              f"drop the {name} argument or pass a matching checkpoint")


def _refuse_untrained(source: ModelSource) -> None:
    raise UntrainedRobustPartsError(
        f"{source.path} is a {'SAM-only checkpoint' if source.kind == 'sam-only' else 'model'} whose RobustSAM "
        "parts are UNTRAINED: the RobustSAM decoder path would draw noise masks. Use its SAM decoder path "
        "(--sam-baseline, SAMPrior, path='sam'), a RobustSAM checkpoint (tiny, robustsam_vit_b/_l/_h, a trained run), "
        "or allow it explicitly (--allow-untrained-robust, allow_untrained_robust=True), e.g. to train them")


# ----------------------------------------------------------------------------- loading
def load_model(
    checkpoint: str | Path | None = None,
    model_type: str | None = None,
    *,
    decoder_path: DecoderPathOrNone = "robust",
    allow_untrained_robust: bool = False,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    fourier_mode: str | None = None,
    token_mode: str | None = None,
    strict: bool = True,
    announce: bool = True,
    **overrides: Any,
) -> tuple[RobustSAM, ModelSource]:
    """A :class:`RobustSAM` in eval mode (SAM frozen) on ``device`` and the :class:`ModelSource` it came from.

    ``checkpoint``: None (the bundled model for ``decoder_path``), a bundled or downloadable name, or
    a file (SAM, MobileSAM, official RobustSAM ``.pth`` or our safetensors). ``model_type`` (and
    ``fourier_mode`` / ``token_mode``) default to what the file says; given and contradicting it, they
    are an error. ``decoder_path``: how the caller will decode (``"robust"``, ``"sam"``, or None when
    it does not decode, e.g. a trainer); a model with untrained robust parts is refused for the robust
    path unless ``allow_untrained_robust``. ``random_init=True`` (with ``model_type``, no checkpoint)
    builds a model without weights. ``overrides`` change single :class:`ModelConfig` fields (tests).
    ``announce``: say in one line on stderr which file the default (no checkpoint) resolved to.
    """
    if random_init:
        if checkpoint is not None:
            raise ValueError("random_init=True builds a model WITHOUT weights: do not pass a checkpoint as well")
        if model_type is None:
            raise ValueError("random_init=True needs a model_type (one of " + ", ".join(MODEL_CONFIGS) + ")")
        config = _registry_config(model_type, fourier_mode or "paper", token_mode or "paper", overrides)
        source = ModelSource("random", model_type)
        if announce:
            notice(f"building a {source.label()} (no weights: its masks are meaningless)")
        model = build_from_config(config)
        if not next(model.parameters()).is_meta:  # built under `with torch.device("meta")`: shapes only (FLOP counts)
            model = model.to(device)
        return model.eval(), source
    path, name, bundled = resolve_checkpoint_spec(checkpoint, decoder_path)
    state, metadata = read_state_dict(path)
    source, stored_config = _source_of(path, name, bundled, state, metadata)
    checkpoint_format = source.checkpoint_format
    if not overrides or stored_config:
        _check_explicit("model type", model_type, source.model_type, path)
    if model_type is None and source.model_type is None:
        raise CheckpointError(f"cannot tell the model size of {path}; pass model_type (one of {', '.join(MODEL_CONFIGS)})")
    model_type = model_type or source.model_type
    source = replace(source, model_type=model_type)
    if decoder_path == "robust" and not source.robust_trained and not allow_untrained_robust:
        _refuse_untrained(source)

    if stored_config:
        _check_explicit("fourier_mode", fourier_mode, stored_config.get("fourier_mode"), path)
        _check_explicit("token_mode", token_mode, stored_config.get("token_mode"), path)
        config = ModelConfig.from_dict({**stored_config, **overrides})
    else:
        if checkpoint_format == "robustsam-official" and token_mode not in (None, "release"):
            raise ValueError("official RobustSAM checkpoints need token_mode='release' (their AOTG MLP is 64 -> 64 -> 256)")
        if token_mode is None:
            token_mode = "release" if checkpoint_format == "robustsam-official" else "paper"
        config = _registry_config(model_type, fourier_mode or "paper", token_mode, overrides)
    model = build_from_config(config)
    load_state(model, state, checkpoint_format, strict=strict)
    if announce and checkpoint is None:
        notice(f"no checkpoint given: using the bundled {source.label(decoder_path)} ({path})")
    return model.to(device).eval(), source


def _registry_config(model_type: str, fourier_mode: str, token_mode: str, overrides: Mapping[str, Any]) -> ModelConfig:
    if model_type not in MODEL_CONFIGS:
        raise ValueError(f"unknown model type {model_type!r}; expected one of {sorted(MODEL_CONFIGS)}")
    return replace(MODEL_CONFIGS[model_type], fourier_mode=fourier_mode, token_mode=token_mode, **overrides)


def inspect_checkpoint(checkpoint: str | Path | None, decoder_path: DecoderPathOrNone = "robust") -> ModelSource | None:
    """The :class:`ModelSource` :func:`load_model` would report, without building a model or
    downloading (None for a downloadable name that is not cached yet)."""
    path, name, bundled = resolve_checkpoint_spec(checkpoint, decoder_path, download=False)
    if path is None:
        return None
    state, metadata = read_state_dict(path, mmap=True)
    source, _ = _source_of(path, name, bundled, state, metadata)
    return source if source.model_type else replace(source, model_type="?")


def describe_checkpoint(checkpoint: str | Path | None, decoder_path: DecoderPathOrNone = "robust") -> str:
    """:meth:`ModelSource.describe` of what ``checkpoint`` resolves to (no model built, nothing downloaded)."""
    source = inspect_checkpoint(checkpoint, decoder_path)
    if source is None:  # a downloadable name, not cached yet: described from the registry
        official = str(checkpoint).startswith("robustsam_")
        source = ModelSource("official" if official else "sam-only", CHECKPOINTS[str(checkpoint)].model_type,
                             name=str(checkpoint), checkpoint_format="robustsam-official" if official else "sam",
                             robust_trained=official)
    return source.describe(decoder_path)


def build_robust_sam(
    model_type: str = "vit_b",
    checkpoint: str | Path | None = None,
    *,
    random_init: bool = False,
    fourier_mode: str | None = None,
    token_mode: str | None = None,
    strict: bool = True,
    **overrides: Any,
) -> RobustSAM:
    """A RobustSAM of ``model_type`` with ``checkpoint`` loaded (``segment_anything``'s registry style).

    ``checkpoint`` may be a SAM / MobileSAM checkpoint (robust parts start fresh, the ROT as a copy of
    SAM's mask tokens; said in one line), an official RobustSAM checkpoint (``token_mode`` then
    defaults to "release", which those weights need), one of our safetensors checkpoints or a known
    name. Without a checkpoint the model has no weights, which must be asked for with
    ``random_init=True``. ``overrides`` change single :class:`ModelConfig` fields.
    """
    if checkpoint is None and not random_init:
        raise ValueError(
            f"build_robust_sam({model_type!r}) without a checkpoint would build a model with RANDOM weights: pass "
            "random_init=True for that, a checkpoint for weights, or load_model('tiny') for the bundled model")
    model, source = load_model(checkpoint, model_type, decoder_path=None, random_init=random_init,
                               fourier_mode=fourier_mode, token_mode=token_mode, strict=strict, announce=False,
                               **overrides)
    if source.kind == "sam-only":
        notice(f"{source.path} is a SAM-only checkpoint: the RobustSAM parts of this {model_type} model are untrained")
    return model


robust_sam_model_registry: dict[str, Callable[..., RobustSAM]] = {
    name: partial(build_robust_sam, name) for name in MODEL_CONFIGS
}


def load_robust_sam(checkpoint: str | Path | None = None, model_type: str | None = None,
                    fourier_mode: str | None = None, device: str = "cpu", *,
                    decoder_path: str | None = "robust", allow_untrained_robust: bool = False) -> RobustSAM:
    """A ready-to-use model in eval mode: ``load_model(...)[0]``, for callers that need no source.

    ``checkpoint``: None (the bundled model, said in one line), ``"tiny"`` / ``"sam_tiny"``, a known
    name from :data:`robustprior.io.hub.CHECKPOINTS` (downloaded once into the cache), or a file path.
    """
    return load_model(checkpoint, model_type, decoder_path=decoder_path, allow_untrained_robust=allow_untrained_robust,
                      fourier_mode=fourier_mode, device=device)[0]
