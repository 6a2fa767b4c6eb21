"""Training settings: automatic values, validation, and --config files with command-line flags winning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_error, invoke
from PIL import Image

from facecleaner.cli import main
from facecleaner.config import TrainConfig, auto_epochs, auto_scale, load_config, resolve, resume_conflicts
from facecleaner.errors import InputError


def test_automatic_values_follow_dataset_size() -> None:
    assert auto_scale(93_431) == 64.0
    assert auto_scale(100) == pytest.approx(4 * math.sqrt(2) * math.log(99))
    assert auto_scale(3) == 16.0
    assert auto_epochs(5_800_000) == 20 and auto_epochs(3_000) == 40
    config = resolve(TrainConfig(device="cpu", batch_size=64), num_samples=3_000, num_classes=100)
    assert (config.backbone, config.precision, config.workers, config.compile) == ("tiny", "fp32", 0, False)
    assert config.lr == pytest.approx(0.025) and config.margin_warmup_epochs == pytest.approx(10.0)


@pytest.mark.parametrize("field, value", [
    ("batch_size", 1), ("margin", 2.0), ("subcenters", 0), ("shift", 0.6),
    ("subcenters", 129), ("seed", -1), ("seed", 2 ** 31), ("workers", -1), ("device", "gpu"), ("momentum", 1.0),
    ("weight_decay", -1e-4), ("grad_clip", 0.0), ("warmup_epochs", -1.0), ("margin_warmup_epochs", -1.0),
])
def test_impossible_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(InputError):
        TrainConfig(**{field: value}).validate()


def test_config_file_values_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('[train]\nepochs = "3"\nlr = true\nmargin = 0.4\nscale = 30\nseed = 1.5\n')
    with pytest.raises(InputError, match="wrong type") as error:
        load_config(tmp_path / "run.toml")
    message = str(error.value)
    assert "epochs = '3'" in message and "lr = True" in message and "seed = 1.5" in message
    assert "margin" not in message and "scale" not in message  # an integer is a fine float


def test_a_config_file_value_out_of_range_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('[train]\ndevice = "gpu"\n')
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--config",
                                       str(tmp_path / "run.toml"), "-q"])
    assert result.exit_code == 1 and result.output.startswith("Error: --device must be auto, cpu, cuda or cuda:N")


@pytest.mark.parametrize("text, fragment", [
    ('[train]\nepochs = "3"\n', "wrong type: epochs = '3'"),
    ("[train]\nlearning_rate = 0.1\n", "unknown settings: learning_rate"),
    ("[train\nepochs = 3\n", "cannot read config"),
])
def test_a_config_file_that_cannot_be_used_is_one_error_line_not_a_traceback(tmp_path: Path, text: str,
                                                                              fragment: str) -> None:
    (tmp_path / "run.toml").write_text(text)
    result = invoke("train", tmp_path, "--out", tmp_path / "run", "--config", tmp_path / "run.toml", "-q")
    assert_error(result, str(tmp_path / "run.toml"), fragment)
    assert not (tmp_path / "run").exists()


def test_resume_conflicts_compare_only_what_was_asked_as_resolved() -> None:
    saved = resolve(TrainConfig(device="cpu", precision="bf16", batch_size=64), num_samples=3_000, num_classes=100)
    same = TrainConfig(device="cpu", precision="bf16", batch_size=64, epochs=saved.epochs + 5, compile=False)
    assert resume_conflicts(same, saved, 3_000, 100) == []  # bf16 on the CPU is the fp32 recorded; epochs may change
    assert resume_conflicts(TrainConfig(), saved, 3_000, 100) == []  # nothing asked, nothing differs
    other = TrainConfig(lr=0.3, compile=True, subcenters=3, margin=0.4)
    assert resume_conflicts(other, saved, 3_000, 100) == [
        "--margin 0.4 (the run has 0.5)", "--lr 0.3 (the run has 0.025)", "--compile (the run has False)"]


def test_resume_conflicts_compare_every_setting_given_even_at_its_default() -> None:
    saved = resolve(TrainConfig(device="cpu", seed=5, subcenters=1), num_samples=3_000, num_classes=100)
    asked = TrainConfig(device="cpu", seed=0, subcenters=3)  # both are the defaults
    assert resume_conflicts(asked, saved, 3_000, 100) == []  # not said to be given: nothing asked
    assert resume_conflicts(asked, saved, 3_000, 100, given=["seed", "device", "subcenters"]) == [
        "--subcenters 3 (the run has 1)", "--seed 0 (the run has 5)"]


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
