"""train under failure (issue #9): refused paths, dead temporaries, crash-safe run files, Ctrl-C and kill -9
followed by --resume (bit for bit), resume settings, unreadable images, option ranges and train.log.

Crash tests run ``python -m facecleaner train`` in a real subprocess through a small driver that pauses or
kills it at a chosen step or checkpoint write; everything else runs in-process on a 48-image generated set.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_error, assert_ok, assert_same_weights, invoke
from PIL import Image

from facecleaner import api, fileio
from facecleaner.config import TrainConfig
from facecleaner.sources.recordio import RecordIOWriter
from facecleaner.sources.synthetic import generate_noisy_faces

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(backbone="tiny", image_size=16, embedding_size=16, batch_size=8, device="cpu", seed=1)
FLAGS = ["--backbone", "tiny", "--image-size", "16", "--embedding-size", "16", "--batch-size", "8", "--device",
         "cpu", "--seed", "1"]
EPOCHS = 3
STEPS = 6  # 48 samples in batches of 8
RUN_FILES = ["config.json", "train.log", "metrics.jsonl", "checkpoint.pt", "model.pt", "summary.json"]

# Runs `python -m facecleaner ARGS` with one hook: HOOK names it, HOOK_AT says where.
DRIVER = r'''
import os, runpy, signal, sys, time

from facecleaner import fileio
import facecleaner.jobs.train as job
from facecleaner.training import loop

hook, at = os.environ["HOOK"], int(os.environ["HOOK_AT"])
real_lr_factor, real_save, real_open = loop.lr_factor, loop.atomic_save, job.open_source


def interrupted_at_step(step, *args):
    """At global step `at`, say so and wait (20 s at most) until the parent's Ctrl-C has been received."""
    if step == at:
        print("HOOK", file=sys.stderr, flush=True)
        handler = signal.getsignal(signal.SIGINT)
        deadline = time.monotonic() + 20
        while not getattr(getattr(handler, "__self__", None), "requested", False) and time.monotonic() < deadline:
            time.sleep(0.01)
    return real_lr_factor(step, *args)


def killed_at_checkpoint(payload, path):
    """kill -9 while the end-of-epoch `at` checkpoint is half written, or right after it is written."""
    if path.name == "checkpoint.pt" and payload["epoch"] == at and payload["step_in_epoch"] == 0:
        if hook == "kill during checkpoint":
            with fileio.atomic_output(path) as tmp:
                tmp.write_bytes(b"the first half of a checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)
        real_save(payload, path)
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(payload, path)


def slow_open(data):
    print("HOOK", file=sys.stderr, flush=True)
    time.sleep(30)
    return real_open(data)


if hook == "interrupt at step":
    loop.lr_factor = interrupted_at_step
elif hook == "interrupt while opening":
    job.open_source = slow_open
else:
    loop.atomic_save = killed_at_checkpoint
runpy.run_module("facecleaner", run_name="__main__")
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_noisy_faces(tmp_path_factory.mktemp("data"), identities=6, images_per_identity=8, image_size=16,
                                seed=2)


@pytest.fixture(scope="module")
def straight(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every crashed-and-resumed run must equal bit for bit."""
    run = tmp_path_factory.mktemp("straight") / "run"
    api.train(data, run, TrainConfig(epochs=EPOCHS, **TINY), progress=False)
    return run


@pytest.fixture(scope="module")
def one_epoch(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("one_epoch") / "run"
    api.train(data, run, TrainConfig(epochs=1, **TINY), progress=False)
    return run


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


def start(driver: Path, hook: str, at: int, *args: object) -> subprocess.Popen:
    """``python -m facecleaner train ARGS`` with a hook, in its own process group (as a terminal runs it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOOK": hook, "HOOK_AT": str(at)}
    return subprocess.Popen([sys.executable, str(driver), "train", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def ctrl_c_at_hook(process: subprocess.Popen) -> tuple[str, str]:
    """Wait for the hook, press Ctrl-C (SIGINT to the whole process group), return stdout and later stderr."""
    before = []
    for line in process.stderr:
        if line.strip() == "HOOK":
            break
        before.append(line)
    else:
        pytest.fail(f"the hook was never reached: {''.join(before)}")
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return out, err


def one_error_line(err: str, *fragments: str) -> str:
    """Exactly one ``Error: <what> — <fix>`` line, no traceback, not the catch-all bug message."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and " — " in lines[0], err
    assert "unexpected" not in lines[0] and "bug" not in lines[0], err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def metric_epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def faces(root: Path, broken: int) -> tuple[Path, list[Path]]:
    """Identity folders of 3 × 8 good images plus ``broken`` undecodable ones (in input order)."""
    for identity in range(3):
        (root / f"id{identity}").mkdir(parents=True)
        for image in range(8):
            pixels = np.random.default_rng([identity, image]).integers(0, 256, (16, 16, 3), dtype=np.uint8)
            pixels[:, :, identity] = 255
            Image.fromarray(pixels).save(root / f"id{identity}" / f"{image}.png")
    bad = [root / f"id{k % 3}" / f"broken{k:02d}.png" for k in range(broken)]
    for path in bad:
        path.write_bytes(b"not an image at all")
    return root, sorted(bad)


# --- 1. outputs that are inputs ------------------------------------------------------------------------------

def _record_set(folder: Path) -> Path:
    with RecordIOWriter(folder, image_size=(16, 16)) as writer:
        for label in range(2):
            for image in range(4):
                buffer = io.BytesIO()
                Image.new("RGB", (16, 16), (80 * label, 40 * image, 0)).save(buffer, format="PNG")
                writer.write(label, buffer.getvalue())
    return folder


@pytest.mark.parametrize("case", ["out is DATA", "out links to DATA", "out holds DATA's train.rec",
                                  "out is DATA's rec folder", "a run file is --config",
                                  "a run file is --init-backbone"])
def test_run_dir_or_run_file_that_is_an_input_is_refused(data: Path, tmp_path: Path, case: str) -> None:
    extra: list[object] = []
    if case in ("out is DATA", "out links to DATA"):
        source, _ = faces(tmp_path / "faces", broken=0)
        out = source
        if case == "out links to DATA":
            out = tmp_path / "link"
            out.symlink_to(source)
        named = "DATA"
    elif case in ("out holds DATA's train.rec", "out is DATA's rec folder"):
        out = _record_set(tmp_path / "rec")
        source = out / "train.rec" if case == "out holds DATA's train.rec" else out
        named = "DATA"
    elif case == "a run file is --config":
        source, out = data, tmp_path / "run"
        out.mkdir()
        (out / "config.json").write_text('{"train": {"epochs": 1}}\n')
        extra, named = ["--config", out / "config.json"], "--config"
    else:
        source, out = data, tmp_path / "run"
        out.mkdir()
        torch.save({}, out / "model.pt")
        extra, named = ["--init-backbone", out / "model.pt"], "--init-backbone"
    before = {p: p.read_bytes() for p in Path(os.path.realpath(out)).rglob("*") if p.is_file()}
    assert_error(invoke("train", source, "--out", out, *FLAGS, "--epochs", 1, *extra, "-q"), "--out", named)
    after = {p: p.read_bytes() for p in Path(os.path.realpath(out)).rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing changed


# --- 8. dead temporaries ---------------------------------------------------------------------------------------

def test_dead_temporaries_of_every_run_file_are_removed_at_start_and_live_ones_kept(data: Path,
                                                                                    tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = fileio.owner_tag().rpartition("-")[0]
    dead = [run / f".{name}.{host}-{int(child.stdout)}.0123abcd.tmp" for name in RUN_FILES]
    live = [run / f".{name}.{fileio.owner_tag()}.4567cdef.tmp" for name in RUN_FILES]  # this process's
    for path in dead + live:
        path.write_bytes(b"partial")
    api.train(data, run, TrainConfig(epochs=1, **TINY), progress=False)
    assert [p for p in dead if p.exists()] == []
    assert [p for p in live if not p.exists()] == []


@pytest.mark.parametrize("hook", ["kill during checkpoint", "kill after checkpoint"])
def test_kill_9_at_an_epoch_checkpoint_then_resume(data: Path, straight: Path, driver: Path, tmp_path: Path,
                                                   hook: str) -> None:
    """A real kill -9 while the epoch-2 checkpoint is written (or just after): --resume removes the dead
    temporary, metrics.jsonl ends with one line per epoch in order, and the weights equal the straight run's."""
    run = tmp_path / "run"
    process = start(driver, hook, 2, data, "--out", run, *FLAGS, "--epochs", EPOCHS, "-q")
    _, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, err
    temporaries = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert len(temporaries) == (hook == "kill during checkpoint"), temporaries
    assert metric_epochs(run) in ([1], [1, 2])
    api.train(data, run, TrainConfig(epochs=EPOCHS, **TINY), resume=True, progress=False)
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []
    assert metric_epochs(run) == [1, 2, 3]
    assert_same_weights(straight, run)


# --- 9. crash-safe run files -------------------------------------------------------------------------------------

def test_run_files_are_published_atomically(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[str] = []
    real_publish = fileio.publish
    monkeypatch.setattr(fileio, "publish", lambda tmp, path: published.append(Path(path).name) or
                        real_publish(tmp, path))
    api.train(data, tmp_path / "run", TrainConfig(epochs=2, **TINY), progress=False)
    assert set(published) == set(RUN_FILES) - {"train.log"}
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []


def test_a_checkpoint_without_metrics_history_keeps_the_metrics_file(data: Path, one_epoch: Path,
                                                                    tmp_path: Path) -> None:
    """Checkpoints written before the history moved into them: the finished epochs' lines are kept."""
    run = shutil.copytree(one_epoch, tmp_path / "run")
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    payload.pop("metrics", None)
    torch.save(payload, run / "checkpoint.pt")
    first = (run / "metrics.jsonl").read_text().splitlines()
    with open(run / "metrics.jsonl", "a") as handle:  # a line the old order could leave: an epoch not checkpointed
        handle.write(json.dumps({**json.loads(first[0]), "epoch": 2}) + "\n")
    api.train(data, run, TrainConfig(epochs=2, **TINY), resume=True, progress=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == first[0] and metric_epochs(run) == [1, 2]


# --- 10. Ctrl-C ------------------------------------------------------------------------------------------------------

# In the first epoch; mid second, decoding workers; in an epoch's last step, which ends the epoch (its metrics and
# checkpoint) before stopping.
@pytest.mark.parametrize("step, workers", [(2, 0), (9, 2), (STEPS - 1, 0)])
def test_ctrl_c_mid_epoch_checkpoints_and_resume_is_bit_for_bit(data: Path, straight: Path, driver: Path,
                                                               tmp_path: Path, step: int, workers: int) -> None:
    run = tmp_path / "run"
    process = start(driver, "interrupt at step", step, data, "--out", run, *FLAGS, "--epochs", EPOCHS, "--workers",
                    workers, "-q")
    out, err = ctrl_c_at_hook(process)
    assert process.returncode == 1 and out == ""
    one_error_line(err, "Ctrl-C", str(run), "run the same command with --resume")
    assert not (run / "model.pt").exists()
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    epoch, done = divmod(step + 1, STEPS)  # where the checkpoint resumes: after the interrupted step
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) == (epoch, done)
    assert not epoch or metric_epochs(run) == list(range(1, epoch + 1))
    resumed = invoke("train", data, "--out", run, *FLAGS, "--epochs", EPOCHS, "--resume", "-q")  # no --workers
    assert_ok(resumed)
    assert_same_weights(straight, run)
    assert metric_epochs(run) == [1, 2, 3]
    log = (run / "train.log").read_text()
    assert "Ctrl-C" in log and f"resumed at epoch {epoch + 1}/{EPOCHS}, step {done + 1}/{STEPS}" in log


def test_ctrl_c_while_the_data_is_opened_ends_with_one_clear_line(data: Path, driver: Path, tmp_path: Path) -> None:
    process = start(driver, "interrupt while opening", 0, data, "--out", tmp_path / "run", *FLAGS, "-q")
    out, err = ctrl_c_at_hook(process)
    assert process.returncode == 1 and out == ""
    one_error_line(err, "Ctrl-C", "run the same command again")
    assert not (tmp_path / "run").exists()


# --- 11. --resume with other settings ------------------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [
    (["--lr", "0.3"], ["--lr 0.3"]),
    (["--lr", "0.3", "--subcenters", "2", "--no-compile"], ["--lr 0.3", "--subcenters 2"]),
    (["--backbone", "mbf"], ["--backbone mbf"]),
    (["--config", "run.toml"], ["--margin 0.4"]),
])
def test_resume_with_other_settings_is_refused_naming_them(data: Path, one_epoch: Path, tmp_path: Path,
                                                           flags: list[str], named: list[str]) -> None:
    run = shutil.copytree(one_epoch, tmp_path / "run")
    (tmp_path / "run.toml").write_text("[train]\nmargin = 0.4\nbackbone = \"tiny\"\n")
    flags = [str(tmp_path / f) if f.endswith(".toml") else f for f in flags]
    before = {name: (run / name).read_bytes() for name in ("config.json", "checkpoint.pt", "metrics.jsonl")}
    result = invoke("train", data, "--out", run, *FLAGS, "--epochs", 2, *flags, "--resume", "-q")
    line = assert_error(result, *named, "--epochs")
    assert "--no-compile" not in line and "--seed" not in line  # the same as the run's: not a difference
    assert {name: (run / name).read_bytes() for name in before} == before
    assert line.removeprefix("Error: ") in (run / "train.log").read_text()


@pytest.mark.parametrize("flags", [["--seed", "0"], ["--config", "run.toml"]])
def test_resume_with_a_setting_given_at_its_default_value_is_refused_too(data: Path, one_epoch: Path,
                                                                          tmp_path: Path, flags: list[str]) -> None:
    """The run has seed 1; asking for seed 0 (the default, on the command line or in a --config file) is asking
    for another seed, not for nothing."""
    run = shutil.copytree(one_epoch, tmp_path / "run")
    (tmp_path / "run.toml").write_text("[train]\nseed = 0\n")
    flags = [str(tmp_path / f) if f.endswith(".toml") else f for f in flags]
    resumed = FLAGS[:-2]  # every flag of the run but its --seed 1
    before = {name: (run / name).read_bytes() for name in ("config.json", "checkpoint.pt", "model.pt")}
    result = invoke("train", data, "--out", run, *resumed, "--epochs", 2, *flags, "--resume", "-q")
    assert_error(result, "--seed 0 (the run has 1)")
    assert {name: (run / name).read_bytes() for name in before} == before


def test_resume_needs_no_settings_but_may_change_epochs(data: Path, one_epoch: Path, tmp_path: Path) -> None:
    run = shutil.copytree(one_epoch, tmp_path / "run")
    assert_ok(invoke("train", data, "--out", run, "--epochs", 2, "--resume", "-q"))
    assert metric_epochs(run) == [1, 2]
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2


# --- 14. unreadable images -----------------------------------------------------------------------------------------

def test_train_prints_the_unreadable_count(tmp_path: Path) -> None:
    root, broken = faces(tmp_path / "faces", broken=2)
    result = invoke("train", root, "--out", tmp_path / "run", *FLAGS, "--epochs", 1, "--max-bad-fraction", 0.5, "-q")
    assert_ok(result)
    assert "26 samples (2 unreadable), 3 identities, 1 epochs" in result.stdout.splitlines()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["unreadable"] == len(broken) == 2


def test_too_many_unreadable_images_abort_naming_the_first_files(tmp_path: Path) -> None:
    root, broken = faces(tmp_path / "faces", broken=10)
    result = invoke("train", root, "--out", tmp_path / "run", *FLAGS, "--epochs", 1, "--max-bad-fraction", 0.1, "-q")
    line = assert_error(result, "of 34 samples are unreadable", "--max-bad-fraction")
    named = [path for path in broken if str(path) in line]
    assert 4 <= len(named) <= 5, line  # the abort comes at the 4th (> 3.4); at most five are named
    assert [line.index(str(path)) for path in named] == sorted(line.index(str(path)) for path in named)
    assert not any(str(root / f"id{i}" / f"{j}.png") in line for i in range(3) for j in range(8))
    assert line.removeprefix("Error: ") in (tmp_path / "run" / "train.log").read_text()


# --- 15. option ranges -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("--margin", "1.58"), ("--margin", "-0.1"), ("--scale", "0"), ("--scale", "-64"), ("--lr", "0"), ("--lr", "-0.1"),
    ("--seed", "-1"), ("--seed", str(2 ** 31)), ("--subcenters", "0"), ("--subcenters", "129"), ("--epochs", "0"),
    ("--batch-size", "1"), ("--embedding-size", "1"), ("--image-size", "8"), ("--sample-rate", "0"),
    ("--sample-rate", "1.5"), ("--dropout", "1"), ("--shift", "0.5"), ("--workers", "-1"),
    ("--max-bad-fraction", "1.5"),
])
def test_out_of_range_options_are_usage_errors(tmp_path: Path, option: str, value: str) -> None:
    result = invoke("train", tmp_path, "--out", tmp_path / "run", option, value)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert f"Invalid value for '{option}'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_help_shows_every_range() -> None:
    result = invoke("train", "--help")
    assert_ok(result)
    text = " ".join(result.stdout.split())
    for fragment in ("--margin FLOAT RANGE", "0<=x<1.5707963267948966", "--scale FLOAT RANGE", "--lr FLOAT RANGE",
                     "x>0", "--seed INTEGER RANGE", "0<=x<=2147483647", "--subcenters INTEGER RANGE", "1<=x<=128"):
        assert fragment in text, fragment


# --- 17. train.log ---------------------------------------------------------------------------------------------

def test_train_log_holds_the_convergence_warning(data: Path, tmp_path: Path) -> None:
    summary = api.train(data, tmp_path / "run", TrainConfig(epochs=1, lr=1e-9, **TINY), progress=False)
    assert not summary["separated"] and summary["health"]["warnings"]
    log = (tmp_path / "run" / "train.log").read_text()
    assert all(f"WARNING {warning}" in log for warning in summary["health"]["warnings"])
    assert "INFO training tiny on 48 samples of 6 identities" in log and "INFO epoch 1/1" in log
