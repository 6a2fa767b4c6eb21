"""Training settings: automatic values, validation, and --config files with command-line flags winning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facecleaner.cli import main
from facecleaner.config import TrainConfig, auto_epochs, auto_scale, load_config, resolve
from facecleaner.errors import InputError


def test_automatic_values_follow_dataset_size() -> None:
    assert auto_scale(93_431) == 64.0
    assert auto_scale(100) == pytest.approx(4 * math.sqrt(2) * math.log(99))
    assert auto_scale(3) == 16.0
    assert auto_epochs(5_800_000) == 20 and auto_epochs(3_000) == 40
    config = resolve(TrainConfig(device="cpu", batch_size=64), num_samples=3_000, num_classes=100)
    assert (config.backbone, config.precision, config.workers, config.compile) == ("tiny", "fp32", 0, False)
    assert config.lr == pytest.approx(0.025) and config.margin_warmup_epochs == pytest.approx(10.0)


@pytest.mark.parametrize("field, value", [("batch_size", 1), ("margin", 2.0), ("subcenters", 0), ("shift", 0.6)])
def test_impossible_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(InputError):
        TrainConfig(**{field: value}).validate()


def test_config_file_unknown_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("[train]\nepochs = 3\nlearning_rate = 0.1\n")
    with pytest.raises(InputError, match="unknown settings: learning_rate"):
        load_config(tmp_path / "run.toml")


def test_command_line_flags_win_over_the_config_file_and_defaults_do_not(tmp_path: Path) -> None:
    for who in ("a", "b"):
        (tmp_path / "faces" / who).mkdir(parents=True)
        for i in range(3):
            pixels = (np.random.default_rng(i + 9 * (who == "b")).random((16, 16, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "faces" / who / f"{i}.png")
    (tmp_path / "run.toml").write_text('[train]\ndevice = "cpu"\nepochs = 1\nimage_size = 16\nembedding_size = 8\n'
                                       "max_bad_fraction = 0.3\nbackbone = \"tiny\"\n")
    result = CliRunner().invoke(main, ["train", str(tmp_path / "faces"), "--out", str(tmp_path / "run"), "--config",
                                       str(tmp_path / "run.toml"), "--epochs", "2", "-q"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["epochs"] == 2 and saved["max_bad_fraction"] == 0.3 and saved["image_size"] == 16
