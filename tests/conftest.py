"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# torch's thread count: OMP_NUM_THREADS where the environment sets it, else 1 (set before torch is imported,
# and inherited by the processes tests start). The suite's networks are tiny: a second thread gains them
# little, and wherever the other core is busy the threads wait on each other (a 4-iteration training test:
# 5.7 s with one thread, 152 s with two on a loaded 2-core machine). Forcing a number over the environment's
# made the suite 15 times slower on a busy machine whatever OMP_NUM_THREADS said, so the environment wins.
_DEFAULT_THREADS = "OMP_NUM_THREADS" not in os.environ
if _DEFAULT_THREADS:
    os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

if _DEFAULT_THREADS:
    torch.set_num_threads(1)  # in case torch was imported before this file (a plugin)

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data sits beside the checkout (also in CI); ROBUSTPRIOR_SHARED_DATA overrides it.
SHARED_DATA = Path(os.environ.get("ROBUSTPRIOR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def small_gopro(tmp_path_factory: pytest.TempPathFactory):
    """``small_gopro(train_sequences, train_frames)``: a new folder of generated GoPro-layout data at 48 x 48,
    ``train_sequences`` x ``train_frames`` training frames (seed 3) and one test sequence of 2 (seed 4)."""
    from robustprior.data.scenes import SceneConfig, write_gopro_dataset

    def make(train_sequences: int, train_frames: int) -> Path:
        root = tmp_path_factory.mktemp("gopro")
        config = SceneConfig(image_size=(48, 48), object_count_range=(2, 3))
        write_gopro_dataset(root, train_sequences, train_frames, seed=3, split="train", blur_frames=3,
                            config=config, progress=False)
        write_gopro_dataset(root, 1, 2, seed=4, split="test", blur_frames=3, config=config, progress=False)
        return root

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real sample data (../shared/data); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny networks: they gain nothing from a second thread, and on a
    shared CPU the contended second thread makes them several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _flip_tensor_bytes(path: Path, count: int = 8) -> None:
    """Invert ``count`` bytes in the middle of a safetensors file's tensor data, keeping its length and
    header: the same-length corruption that header and size checks cannot see."""
    content = bytearray(path.read_bytes())
    data_start = 8 + int.from_bytes(content[:8], "little")
    middle = data_start + (len(content) - data_start) // 2
    content[middle:middle + count] = bytes(255 - b for b in content[middle:middle + count])
    path.write_bytes(bytes(content))


@pytest.fixture()
def flip_tensor_bytes():
    """:func:`_flip_tensor_bytes`: corrupt a safetensors file's tensors in place, same length."""
    return _flip_tensor_bytes


@pytest.fixture()
def unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder this process may not write into (mode 0555). Root ignores modes, so under root
    ``os.access`` is made to answer for this folder as the kernel answers everyone else (not writable);
    the checks under test ask ``os.access``."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and Path(path).resolve() == folder.resolve():
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    yield folder
    folder.chmod(0o755)
