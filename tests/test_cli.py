"""The ``robustprior segment`` command."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robustprior.cli import main
from robustprior.image_io import read_rgb_image


def test_segment_with_a_point_writes_mask_and_overlay(tmp_path: Path, capsys) -> None:
    assert main(["segment", "skimage:astronaut", "--points", "260,180", "--output", str(tmp_path)]) == 0
    mask = read_rgb_image(tmp_path / "astronaut_mask.png")[:, :, 0]
    overlay = read_rgb_image(tmp_path / "astronaut_overlay.png")
    assert mask.shape == overlay.shape[:2] == (512, 512)
    assert set(np.unique(mask)) <= {0, 255}
    assert "astronaut_mask.png" in capsys.readouterr().out


def test_segment_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    arguments = ["segment", "skimage:coffee", "--box", "100,50,400,350", "--output", str(tmp_path)]
    assert main(arguments) == 0
    before = (tmp_path / "coffee_mask.png").read_bytes()
    assert main(arguments) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "coffee_mask.png").read_bytes() == before
    assert main(arguments + ["--overwrite"]) == 0


def test_segment_automatic_and_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["segment", "skimage:coffee", "--points-per-side", "4", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "coffee_overlay.png").exists()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main(["segment", str(broken), "--points", "1,1", "--output", str(tmp_path)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["segment", "skimage:coffee", "--points", "9999,1", "--output", str(tmp_path / "x")]) == 2
    assert "outside" in capsys.readouterr().err
