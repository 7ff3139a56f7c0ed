"""Official checkpoints: where users get them, and a verified local cache.

Nothing here is needed offline: every command also takes ``--checkpoint PATH``. When a known name
is asked for, the file is looked up in the cache directory (``$ROBUSTPRIOR_CACHE``, default
``~/.cache/robustprior``) and downloaded once if missing, to a temporary file that is checked and
then renamed into place. Files with a published SHA-256 are verified against it; for the others the
hash of the first download is recorded beside the file (``NAME.sha256``) and checked on later use.

=====================  ==========================================================================================
name                   URL
=====================  ==========================================================================================
``sam_vit_b``          https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth
``sam_vit_l``          https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth
``sam_vit_h``          https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth
``mobile_sam``         https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt
``robustsam_vit_b``    https://huggingface.co/robustsam/robustsam/resolve/main/model_checkpoint/robustsam_checkpoint_b.pth
``robustsam_vit_l``    https://huggingface.co/robustsam/robustsam/resolve/main/model_checkpoint/robustsam_checkpoint_l.pth
``robustsam_vit_h``    https://huggingface.co/robustsam/robustsam/resolve/main/model_checkpoint/robustsam_checkpoint_h.pth
=====================  ==========================================================================================
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CheckpointSource:
    url: str
    model_type: str
    sha256: str | None = None  # published hash, when one is known

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_ROBUSTSAM = "https://huggingface.co/robustsam/robustsam/resolve/main/model_checkpoint/robustsam_checkpoint_{}.pth"
CHECKPOINTS: dict[str, CheckpointSource] = {
    "sam_vit_b": CheckpointSource("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth", "vit_b",
                                  "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "sam_vit_l": CheckpointSource("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth", "vit_l",
                                  "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "sam_vit_h": CheckpointSource("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth", "vit_h",
                                  "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    "mobile_sam": CheckpointSource("https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt", "vit_t"),
    "robustsam_vit_b": CheckpointSource(_ROBUSTSAM.format("b"), "vit_b"),
    "robustsam_vit_l": CheckpointSource(_ROBUSTSAM.format("l"), "vit_l"),
    "robustsam_vit_h": CheckpointSource(_ROBUSTSAM.format("h"), "vit_h"),
}


def cache_dir() -> Path:
    """``$ROBUSTPRIOR_CACHE`` or ``~/.cache/robustprior``."""
    return Path(os.environ.get("ROBUSTPRIOR_CACHE", Path.home() / ".cache" / "robustprior"))


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_checkpoint(name: str, directory: Path | None = None, progress: bool = True,
                        source: CheckpointSource | None = None) -> Path:
    """Path of the cached checkpoint ``name``, downloading and verifying it if needed."""
    if source is None:
        if name not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {name!r}; known: {sorted(CHECKPOINTS)} (or pass a file path)")
        source = CHECKPOINTS[name]
    directory = Path(directory or cache_dir())
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / source.filename
    recorded = target.with_name(target.name + ".sha256")
    expected = source.sha256 or (recorded.read_text().strip() if recorded.exists() else None)
    if target.exists():
        actual = file_sha256(target)
        if expected is None or actual == expected:
            return target
        raise ValueError(f"cached {target} has SHA-256 {actual}, expected {expected}: delete it to download again")
    import torch.hub  # here, so that reading the table above does not import torch

    try:  # torch writes a .partial file beside the target, checks its SHA-256 prefix and only then moves it
        torch.hub.download_url_to_file(source.url, str(target), hash_prefix=expected, progress=progress)
    except RuntimeError as error:
        if "invalid hash value" not in str(error):
            raise
        raise ValueError(f"download of {source.url}: SHA-256 mismatch ({error}); not kept") from None
    except OSError as error:
        raise RuntimeError(
            f"could not download {source.url} ({error}); download it yourself and pass --checkpoint PATH"
        ) from error
    if expected is None:
        recorded.write_text(file_sha256(target) + "\n")
    return target
