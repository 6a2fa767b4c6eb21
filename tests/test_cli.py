"""The command line through click's CliRunner: exit codes, messages, stdout/stderr, and the files left behind.

Two tiny models are trained once per module on generated 16×16 images (a CPU and a few seconds each):
one on string labels with a corrupt and an empty image, a one-image identity and extra columns; one on
integer labels, run as the happy path from another working directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from helpers import assert_error, assert_ok, invoke
from PIL import Image

from facecleaner import __version__, api, cli
from facecleaner.errors import InputError

TINY = ["--backbone", "tiny", "--image-size", "16", "--embedding-size", "16", "--epochs", "2", "--batch-size", "8",
        "--device", "cpu"]
PALETTE = [(220, 40, 40), (40, 190, 60), (40, 70, 220), (230, 210, 40), (150, 40, 200), (30, 200, 210)]
LOGGER = logging.getLogger("facecleaner")


# --- helpers ------------------------------------------------------------------------------------------------

def temp_files(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob(".*") if ".tmp" in p.name]


def face(identity: int, seed: int) -> Image.Image:
    """A 16×16 'face': the identity's colour and stripe pattern, plus per-image noise."""
    rng = np.random.default_rng([identity, seed])
    pixels = np.zeros((16, 16, 3)) + PALETTE[identity % len(PALETTE)]
    pattern = identity % 3
    if pattern == 1:
        pixels[::2] = 255 - pixels[::2]
    elif pattern == 2:
        pixels[:, ::3] = 255 - pixels[:, ::3]
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def write_faces(root: Path, labels: list, per_identity: list[int], folder: str = "faces") -> list[dict]:
    rows = []
    for identity, (label, count) in enumerate(zip(labels, per_identity, strict=True)):
        for j in range(count):
            relative = f"{folder}/{label}/{j}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            face(identity, j).save(root / relative, format="PNG")
            rows.append({"path": relative, "label": label})
    return rows


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Run:
    data: Path  # the dataset's folder
    manifest: Path
    rows: pd.DataFrame  # the manifest as written, in input order
    run: Path
    train: Result
    scores: Path | None = None
    score: Result | None = None
    clean: Path | None = None
    prune: Result | None = None


# --- trained once per module ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def str_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """String labels, a corrupt PNG and a zero-byte JPEG, a one-image identity, extra columns, shuffled rows."""
    root = tmp_path_factory.mktemp("strings")
    rows = write_faces(root, ["alice", "bob", "carol", "dave", "solo"], [6, 6, 6, 6, 1])
    good_png = (root / "faces/bob/0.png").read_bytes()
    (root / "faces/bob/broken.png").write_bytes(good_png[:40] + b"\x00not the rest of a png" * 4)
    (root / "faces/carol/empty.jpg").write_bytes(b"")
    rows += [{"path": "faces/bob/broken.png", "label": "bob"}, {"path": "faces/carol/empty.jpg", "label": "carol"}]
    frame = pd.DataFrame(rows).iloc[np.random.default_rng(1).permutation(len(rows))].reset_index(drop=True)
    frame["quality"] = np.round(np.linspace(0.1, 0.9, len(frame)), 3)
    frame["source"] = [f"crawl-{i % 3}" for i in range(len(frame))]
    manifest = root / "manifest.csv"
    frame.to_csv(manifest, index=False)
    run = root / "run"
    result = invoke("train", manifest, "--out", run, *TINY, "--max-bad-fraction", "0.5", "-q")
    assert_ok(result)
    scores = root / "out" / "scores.parquet"
    scored = invoke("score", run, manifest, "--out", scores, "--device", "cpu", "--max-bad-fraction", "0.5", "-q")
    assert_ok(scored)
    return Run(root, manifest, frame, run, result, scores, scored)


@pytest.fixture(scope="module")
def int_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The happy path with integer labels: train (--json, logs on), score and prune, run from another cwd."""
    root = tmp_path_factory.mktemp("integers")
    data = root / "dataset"
    frame = pd.DataFrame(write_faces(data, [10, 2, 7], [6, 6, 6], folder="imgs"))
    frame["camera"] = [f"cam{i % 2}" for i in range(len(frame))]
    manifest = data / "manifest.csv"
    frame.to_csv(manifest, index=False)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    run, scores, clean = root / "run", root / "results" / "scores.parquet", root / "results" / "clean.parquet"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)  # relative paths must resolve against the manifest's folder, not here
        trained = invoke("train", manifest, "--out", run, *TINY, "--json")
        assert_ok(trained)
        scored = invoke("score", run, manifest, "--out", scores, "--device", "cpu", "--json")
        assert_ok(scored)
        pruned = invoke("prune", scores, "--out", clean, "--json", "--force")
        assert_ok(pruned)
    return Run(data, manifest, frame, run, trained, scores, scored, clean, pruned)


@pytest.fixture(scope="module")
def str_clean(str_run: Run) -> Path:
    """str_run pruned at 179° (keeps every readable sample), written beside the manifest."""
    clean = str_run.data / "clean.parquet"
    assert_ok(invoke("prune", str_run.scores, "--out", clean, "--angle", "179"))
    return clean


# --- every subcommand -------------------------------------------------------------------------------------------

def test_version() -> None:
    result = invoke("--version")
    assert_ok(result)
    assert result.stdout == f"facecleaner, version {__version__}\n"


@pytest.mark.parametrize("command", ["train", "score", "prune", "demo"])
def test_help_has_an_example(command: str) -> None:
    result = invoke(command, "--help")
    assert_ok(result)
    assert "Example:" in result.stdout
    example = result.stdout.split("Example:", 1)[1]
    assert f"facecleaner {command}" in example
    assert result.stderr == ""


def test_group_help_and_usage_errors() -> None:
    result = invoke("--help")
    assert_ok(result)
    for command in ("train", "score", "prune", "demo"):
        assert command in result.stdout
    assert invoke("no-such-command").exit_code == 2
    assert invoke("train").exit_code == 2  # DATA and --out missing
    assert invoke("score", "run").exit_code == 2


# --- happy path: train → score → prune ---------------------------------------------------------------------------

def test_happy_path_writes_every_file(int_run: Run) -> None:
    for name in ("model.pt", "checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"):
        assert (int_run.run / name).is_file(), name
    results = int_run.scores.parent
    for name in ("scores.parquet", "scores.classes.parquet", "clean.parquet", "clean.dropped.parquet",
                 "clean.classes.parquet"):
        assert (results / name).is_file(), name
    assert temp_files(int_run.run) == [] and temp_files(results) == []
    assert not any((int_run.data.parent / "elsewhere").iterdir())  # nothing written into the cwd


def test_train_json_and_logs(int_run: Run) -> None:
    summary = json.loads(int_run.train.stdout)  # stdout is the JSON and nothing else
    for key in ("samples", "classes", "epochs", "final_loss", "final_accuracy", "final_mean_angle",
                "images_per_second", "warning"):
        assert key in summary, key
    assert (summary["samples"], summary["classes"], summary["epochs"]) == (18, 3, 2)
    assert summary == json.loads((int_run.run / "summary.json").read_text())
    assert "INFO: training tiny on 18 samples of 3 identities" in int_run.train.stderr
    assert "INFO:" not in int_run.train.stdout


def test_score_json(int_run: Run) -> None:
    summary = json.loads(int_run.score.stdout)
    for key in ("scores", "samples", "unreadable", "median_angle", "over_75", "non_dominant"):
        assert key in summary, key
    assert summary["scores"] == str(int_run.scores)
    assert (summary["samples"], summary["unreadable"]) == (18, 0)
    assert 0.0 <= summary["median_angle"] <= 180.0


def test_prune_json_and_partition(int_run: Run) -> None:
    summary = json.loads(int_run.prune.stdout)
    for key in ("clean", "kept", "samples", "classes_kept", "classes", "dropped", "dropped_samples", "by_reason"):
        assert key in summary, key
    assert summary["clean"] == str(int_run.clean)
    assert summary["kept"] + summary["dropped_samples"] == summary["samples"] == 18
    clean = pq.read_table(summary["clean"]).to_pandas()
    dropped = pq.read_table(summary["dropped"]).to_pandas()
    ids = sorted(clean["sample_id"].tolist() + dropped["sample_id"].tolist())
    assert ids == list(range(18))
    assert sorted(set(clean["new_label"])) == list(range(summary["classes_kept"]))
    assert set(dropped["reason"]) <= {"angle", "non_dominant", "small_class", "unreadable"}


def test_human_output_is_results_only(int_run: Run, tmp_path: Path) -> None:
    scored = invoke("score", int_run.run, int_run.manifest, "--out", tmp_path / "s.parquet", "--device", "cpu")
    assert_ok(scored)
    lines = scored.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0] == f"scores: {tmp_path / 's.parquet'}"
    assert lines[1].startswith("18 samples (0 unreadable, 0 resized), median angle ")
    assert lines[2].startswith("suggested threshold (--angle auto): ")
    pruned = invoke("prune", tmp_path / "s.parquet", "--out", tmp_path / "c.parquet", "--angle", "179")
    assert_ok(pruned)
    lines = pruned.stdout.splitlines()
    assert lines[0] == f"clean: {tmp_path / 'c.parquet'} (18 of 18 samples, 3 of 3 identities)"
    assert lines[1] == f"dropped: {tmp_path / 'c.dropped.parquet'} (0 samples)"
    # This 2-epoch model is not separated: prune repeats score's health warnings, on stderr only.
    assert pruned.stderr.splitlines() and all(
        line.startswith("WARNING: the scores' model: ") for line in pruned.stderr.splitlines())


def test_integer_labels_keep_their_type(int_run: Run) -> None:
    scores = pq.read_table(int_run.scores)
    assert scores.schema.field("label").type == pa.int64()
    assert scores["label"].to_pylist() == int_run.rows["label"].tolist()
    classes = pq.read_table(int_run.scores.with_name("scores.classes.parquet")).to_pandas()
    assert classes["label"].tolist() == [2, 7, 10]  # class order: numeric
    assert pq.read_schema(int_run.clean).field("label").type == pa.int64()


def test_relative_paths_resolve_against_the_manifest(int_run: Run) -> None:
    scores = pq.read_table(int_run.scores).to_pandas()
    assert scores["status"].tolist() == ["ok"] * 18
    assert scores["path"].tolist() == int_run.rows["path"].tolist()  # as written, not made absolute
    assert scores["camera"].tolist() == int_run.rows["camera"].tolist()


# --- string labels, bad images, extras, a one-image identity ----------------------------------------------------

def test_string_labels_keep_their_type(str_run: Run) -> None:
    scores = pq.read_table(str_run.scores)
    assert scores.schema.field("label").type == pa.string()
    assert scores["label"].to_pylist() == str_run.rows["label"].tolist()


def test_unreadable_images_are_recorded_in_input_order(str_run: Run) -> None:
    assert str_run.score.stdout.splitlines()[1].startswith("27 samples (2 unreadable, 0 resized)")
    scores = pq.read_table(str_run.scores).to_pandas()
    assert scores["sample_id"].tolist() == list(range(len(str_run.rows)))
    assert scores["path"].tolist() == str_run.rows["path"].tolist()
    bad = scores["path"].isin(["faces/bob/broken.png", "faces/carol/empty.jpg"])
    assert bad.sum() == 2
    assert all(status.startswith("unreadable: ") for status in scores.loc[bad, "status"])
    assert (scores.loc[~bad, "status"] == "ok").all()
    assert scores.loc[bad, "angle"].isna().all() and scores.loc[~bad, "angle"].notna().all()
    assert json.loads((str_run.run / "summary.json").read_text())["unreadable"] == 2


def test_too_many_unreadable_images_fail_score(str_run: Run, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    result = invoke("score", str_run.run, str_run.manifest, "--out", out, "--device", "cpu", "-q")
    assert_error(result, "2 of 27", "--max-bad-fraction")
    assert not out.exists() and not out.with_name("scores.classes.parquet").exists()
    assert temp_files(tmp_path) == []


def test_failed_score_leaves_no_embeddings_temp_file(str_run: Run, tmp_path: Path) -> None:
    result = invoke("score", str_run.run, str_run.manifest, "--out", tmp_path / "scores.parquet", "--device", "cpu",
                    "--embeddings", tmp_path / "emb.npy", "-q")
    assert_error(result, "--max-bad-fraction")
    assert list(tmp_path.iterdir()) == []


def test_extra_columns_are_carried_through(str_run: Run, str_clean: Path) -> None:
    scores = pq.read_table(str_run.scores).to_pandas()
    assert scores.columns[-2:].tolist() == ["quality", "source"]
    assert scores["quality"].tolist() == str_run.rows["quality"].tolist()
    assert scores["source"].tolist() == str_run.rows["source"].tolist()
    for path in (str_clean, str_clean.with_name("clean.dropped.parquet")):
        table = pq.read_table(path).to_pandas()
        expected = str_run.rows.iloc[table["sample_id"].to_numpy()]
        assert table["quality"].tolist() == expected["quality"].tolist()
        assert table["source"].tolist() == expected["source"].tolist()
        assert table["path"].tolist() == expected["path"].tolist()


def test_one_image_identity_end_to_end(str_run: Run, str_clean: Path, tmp_path: Path) -> None:
    scores = pq.read_table(str_run.scores).to_pandas()
    solo = scores[scores["label"] == "solo"]
    assert len(solo) == 1 and solo["status"].iloc[0] == "ok"
    clean = pq.read_table(str_clean).to_pandas()
    assert "solo" in set(clean["label"])
    assert len(clean) == 25  # every readable sample at 179°
    strict = tmp_path / "strict.parquet"
    assert_ok(invoke("prune", str_run.scores, "--out", strict, "--angle", "179", "--min-images", "2"))
    dropped = pq.read_table(tmp_path / "strict.dropped.parquet").to_pandas()
    assert dropped.loc[dropped["label"] == "solo", "reason"].tolist() == ["small_class"]
    assert sorted(dropped.loc[dropped["label"] != "solo", "reason"]) == ["unreadable", "unreadable"]


def test_rescoring_a_clean_manifest(str_run: Run, str_clean: Path, tmp_path: Path) -> None:
    rescored = tmp_path / "rescored.parquet"
    assert_ok(invoke("score", str_run.run, str_clean, "--out", rescored, "--device", "cpu", "-q"))
    names = pq.read_schema(rescored).names
    assert len(names) == len(set(names)), names
    assert_ok(invoke("prune", rescored, "--out", tmp_path / "again.parquet", "--angle", "179"))


def test_score_identity_folders(str_run: Run, tmp_path: Path) -> None:
    write_faces(tmp_path, ["alice", "bob"], [2, 2], folder="folders")
    result = invoke("score", str_run.run, tmp_path / "folders", "--out", tmp_path / "s.parquet", "--device", "cpu")
    assert_ok(result)
    assert pq.read_table(tmp_path / "s.parquet")["label"].to_pylist() == ["alice", "alice", "bob", "bob"]


def test_demo_figures_agree_with_its_manifests(tmp_path: Path) -> None:
    """The printed precision/recall are recomputed here from the ground-truth column and the dropped manifests."""
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "--identities", "6", "--images-per-identity", "10", "--epochs", "10",
                    "--lr", "0.05", "--json", "-q")
    assert_ok(result)
    summary = json.loads(result.stdout)
    truth = pd.read_parquet(out / "data" / "manifest.parquet")
    assert summary["samples"] == len(truth) == 60 and summary["identities"] == 6
    for rule, name in (("paper", "clean"), ("drop_non_dominant", "clean_strict"), ("auto", "clean_auto")):
        dropped = pd.read_parquet(out / f"{name}.dropped.parquet")
        kept = pd.read_parquet(out / f"{name}.parquet")
        assert len(dropped) + len(kept) == len(truth)
        hits = int(dropped["is_noise"].sum())
        figures = summary["rules"][rule]
        assert figures["dropped"] == len(dropped) and figures["noise"] == int(truth["is_noise"].sum())
        assert figures["precision"] == pytest.approx(hits / max(len(dropped), 1))
        assert figures["recall"] == pytest.approx(hits / truth["is_noise"].sum())
        assert figures["clean_kept"] == pytest.approx((~kept["is_noise"]).sum() / (~truth["is_noise"]).sum())
        assert 0 < len(dropped) < len(truth)  # a model that separated the classes: the figures mean something
        assert (dropped.loc[dropped["reason"] == "angle", "angle"] > figures["angle"]).all()
    assert summary["rules"]["paper"]["angle"] == 75.0
    paper_dropped = set(pd.read_parquet(out / "clean.dropped.parquet")["sample_id"])
    strict_dropped = set(pd.read_parquet(out / "clean_strict.dropped.parquet")["sample_id"])
    assert paper_dropped <= strict_dropped  # the stricter rule drops everything the paper's does
    assert json.loads((out / "run" / "config.json").read_text())["train"]["lr"] == 0.05
    # The quick-start is rerunnable: a second demo into the same folder replaces the first, and only it.
    (out / "notes.txt").write_text("mine")
    first_mtime = (out / "run" / "model.pt").stat().st_mtime_ns
    again = invoke("demo", "--out", out, "--identities", "5", "--images-per-identity", "10", "--epochs", "2",
                   "--json")
    assert_ok(again)
    assert json.loads(again.stdout)["samples"] == 50 == len(pd.read_parquet(out / "clean.parquet")) + len(
        pd.read_parquet(out / "clean.dropped.parquet"))
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "run" / "model.pt").stat().st_mtime_ns != first_mtime
    assert "generating faces" not in again.stderr and "\r" not in again.stderr  # no bars off a terminal
    assert not temp_files(out)


def test_demo_seed_out_of_range_is_a_usage_error_and_the_api_refuses_it_before_generating(tmp_path: Path) -> None:
    """The seed also seeds the generator, which ended in the catch-all on a negative one."""
    result = invoke("demo", "--out", tmp_path / "demo", "--seed", "-1", "-q")
    assert result.exit_code == 2 and "Invalid value for '--seed'" in result.stderr, (result.exit_code, result.stderr)
    assert "0<=x<=2147483647" in " ".join(invoke("demo", "--help").stdout.split())
    with pytest.raises(InputError, match="--seed must be in"):
        api.demo(tmp_path / "demo", seed=-1, progress=False)
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_a_folder_with_other_files_under_its_names(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep")
    assert_error(invoke("demo", "--out", tmp_path, "-q"), "holds run and no earlier demo run")
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep"


# --- train: bad input and run directories ----------------------------------------------------------------------

def test_train_into_an_existing_run(str_run: Run) -> None:
    before = sha256(str_run.run / "model.pt")
    result = invoke("train", str_run.manifest, "--out", str_run.run, *TINY, "--max-bad-fraction", "0.5", "-q")
    assert_error(result, str(str_run.run), "already holds a run", "--resume")
    assert sha256(str_run.run / "model.pt") == before


def test_resume_without_a_checkpoint(str_run: Run, tmp_path: Path) -> None:
    out = tmp_path / "fresh"
    assert_error(invoke("train", str_run.manifest, "--out", out, *TINY, "--resume", "-q"), "checkpoint.pt", "resume")
    assert not out.exists()
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert_error(invoke("train", str_run.manifest, "--out", out, *TINY, "--resume", "-q"), "checkpoint.pt")


def test_resume_without_config(str_run: Run, tmp_path: Path) -> None:
    out = tmp_path / "half"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not really a checkpoint")
    assert_error(invoke("train", str_run.manifest, "--out", out, *TINY, "--resume", "-q"), "config.json")


@pytest.mark.parametrize("command", ["train", "score"])
def test_missing_dataset(str_run: Run, tmp_path: Path, command: str) -> None:
    missing = tmp_path / "no such data"
    out = tmp_path / "out"
    if command == "train":
        result = invoke("train", missing, "--out", out, *TINY, "-q")
    else:
        result = invoke("score", str_run.run, missing, "--out", out / "s.parquet", "--device", "cpu", "-q")
    assert_error(result, str(missing), "does not exist")
    assert not out.exists()


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
@pytest.mark.parametrize("missing", ["path", "label"])
def test_manifest_without_a_required_column(tmp_path: Path, suffix: str, missing: str) -> None:
    frame = pd.DataFrame({"path": ["a/1.png", "b/1.png"], "label": ["a", "b"], "extra": [1, 2]}).drop(columns=missing)
    manifest = tmp_path / f"manifest.{suffix}"
    frame.to_csv(manifest, index=False) if suffix == "csv" else frame.to_parquet(manifest)
    out = tmp_path / "run"
    assert_error(invoke("train", manifest, "--out", out, *TINY, "-q"), str(manifest), f"'{missing}'")
    assert not out.exists()


@pytest.mark.parametrize("kind", ["empty folder", "empty identity folder", "csv header only", "parquet no rows"])
def test_empty_dataset(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if kind == "empty identity folder":
        (data / "alice").mkdir()
        (data / "alice" / "notes.txt").write_text("no images here")
    elif kind == "csv header only":
        data = data / "manifest.csv"
        data.write_text("path,label\n")
    elif kind == "parquet no rows":
        data = data / "manifest.parquet"
        pq.write_table(pa.table({"path": pa.array([], pa.string()), "label": pa.array([], pa.string())}), data)
    out = tmp_path / "run"
    message = assert_error(invoke("train", data, "--out", out, *TINY, "-q"), str(data))
    assert "no images" in message or "no rows" in message
    assert not out.exists()


def test_empty_identity_folders(tmp_path: Path) -> None:
    for name in ("alice", "bob"):
        (tmp_path / "data" / name).mkdir(parents=True)
    assert_error(invoke("train", tmp_path / "data", "--out", tmp_path / "run", *TINY, "-q"), "no images found")


def test_train_needs_two_identities(tmp_path: Path) -> None:
    rows = write_faces(tmp_path, ["alice"], [3])
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    assert_error(invoke("train", tmp_path / "m.csv", "--out", tmp_path / "run", *TINY, "-q"), "only one identity")
    assert not (tmp_path / "run").exists()


def test_train_warns_once_when_the_model_has_not_separated_the_classes(tmp_path: Path) -> None:
    write_faces(tmp_path, ["alice", "bob", "carol"], [4, 4, 4])
    result = invoke("train", tmp_path / "faces", "--out", tmp_path / "run", *TINY, "--lr", "1e-9", "-q")
    assert_ok(result)
    warnings = [line for line in result.stderr.splitlines() if "has not separated the classes" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: "), result.stderr
    assert "separated" not in result.stdout and result.stdout.startswith("model: ")


# --- score: run directories and labels -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["empty", "checkpoint only", "missing", "foreign model.pt"])
def test_score_run_dir_without_a_model(str_run: Run, tmp_path: Path, kind: str) -> None:
    run = tmp_path / "run"
    if kind != "missing":
        run.mkdir()
    if kind == "checkpoint only":
        (run / "checkpoint.pt").write_bytes(b"a checkpoint")
    if kind == "foreign model.pt":
        (run / "model.pt").write_bytes(b"PK\x03\x04 not a torch file")
    out = tmp_path / "out" / "scores.parquet"
    message = assert_error(invoke("score", run, str_run.manifest, "--out", out, "--device", "cpu", "-q"), str(run))
    expected = {"empty": "has no model.pt", "checkpoint only": "--resume", "missing": "does not exist",
                "foreign model.pt": "not a readable facecleaner model"}[kind]
    assert expected in message
    assert not out.parent.exists()


def test_score_labels_the_model_does_not_know(str_run: Run, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": [str(str_run.data / "faces/alice/0.png")] * 3,
                  "label": ["alice", "zed", "zed"]}).to_csv(manifest, index=False)
    out = tmp_path / "scores.parquet"
    assert_error(invoke("score", str_run.run, manifest, "--out", out, "--device", "cpu", "-q"),
                 "2 samples", "'zed'", "not trained on")
    assert not out.exists()


def test_score_string_labels_under_an_integer_model(int_run: Run, str_run: Run, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    assert_error(invoke("score", int_run.run, str_run.manifest, "--out", out, "--device", "cpu", "-q"),
                 "not trained on")
    assert not out.exists()


# --- prune: foreign files and thresholds ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["plain parquet", "text file", "clean manifest"])
def test_prune_a_file_that_is_not_our_scores(str_clean: Path, tmp_path: Path, kind: str) -> None:
    scores = tmp_path / "scores.parquet"
    if kind == "plain parquet":
        pq.write_table(pa.table({"path": ["a.png"], "label": ["a"], "angle": [10.0]}), scores)
        expected = "has no column 'class_index', 'status'"  # a table without our metadata: judged by its columns
    elif kind == "text file":
        scores.write_text("path,label\na.png,a\n")
        expected = "not a Parquet file"
    else:
        scores = str_clean
        expected = "is a clean manifest, not a scores manifest"
    out = tmp_path / "out" / "clean.parquet"
    assert_error(invoke("prune", scores, "--out", out), str(scores), expected)
    assert not out.parent.exists()
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("angle", ["0", "180", "-1", "200"])
def test_prune_angle_out_of_range(scores_file, tmp_path: Path, angle: str) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 1, 1], [10.0, 20.0, 30.0, 40.0], [True] * 4)
    out = tmp_path / "clean.parquet"
    result = invoke("prune", scores, "--angle", angle, "--out", out)  # a usage error, as README promises
    assert result.exit_code == 2 and "Invalid value for '--angle'" in result.stderr and "0<x<180" in result.stderr
    assert not out.exists() and not (tmp_path / "clean.dropped.parquet").exists()
    assert temp_files(tmp_path) == []


def test_prune_angle_not_a_number(scores_file, tmp_path: Path) -> None:  # noqa: ANN001
    scores = scores_file([0, 1], [10.0, 20.0], [True, True])
    result = invoke("prune", scores, "--angle", "abc", "--out", tmp_path / "clean.parquet")
    assert result.exit_code == 2
    assert "Invalid value for '--angle'" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "clean.parquet").exists()


def test_prune_refuses_to_drop_most_samples(scores_file, tmp_path: Path) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 1, 1], [80.0, 90.0, 100.0, 10.0], [True] * 4)
    out = tmp_path / "clean.parquet"
    assert_error(invoke("prune", scores, "--out", out), "--max-drop-fraction", "--force")
    assert not out.exists() and temp_files(tmp_path) == []
    assert_ok(invoke("prune", scores, "--out", out, "--force"))
    assert pq.read_table(out)["sample_id"].to_pylist() == [3]


# --- bugs found in the CLI plumbing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "score", "prune"])
def test_out_under_an_existing_file(str_run: Run, tmp_path: Path, command: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    if command == "train":
        result = invoke("train", str_run.manifest, "--out", blocker, *TINY, "--max-bad-fraction", "0.5", "-q")
    elif command == "score":
        result = invoke("score", str_run.run, str_run.manifest, "--out", blocker / "s.parquet", "--device", "cpu",
                        "--max-bad-fraction", "0.5", "-q")
    else:
        result = invoke("prune", str_run.scores, "--out", blocker / "c.parquet", "--angle", "179")
    assert_error(result, str(blocker))


@pytest.mark.parametrize("command", ["score", "score --embeddings", "prune", "prune --dropped"])
def test_an_output_file_that_is_an_existing_folder_is_refused_before_any_work(str_run: Run, tmp_path: Path,
                                                                               command: str) -> None:
    """The rename that publishes the file would fail only at the end, naming a hidden temporary."""
    folder = tmp_path / ("folder.npy" if command == "score --embeddings" else "folder")
    folder.mkdir()
    other = tmp_path / "other.parquet"
    args = {
        "score": ["score", str_run.run, str_run.manifest, "--out", folder, "--device", "cpu", "-q"],
        "score --embeddings": ["score", str_run.run, str_run.manifest, "--out", other, "--embeddings", folder,
                               "--device", "cpu", "-q"],
        "prune": ["prune", str_run.scores, "--out", folder, "--angle", "179"],
        "prune --dropped": ["prune", str_run.scores, "--out", other, "--dropped", folder, "--angle", "179"],
    }[command]
    assert_error(invoke(*args), f"{folder} is a folder")
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no manifest, work area or journal
    assert not any(folder.iterdir())


def test_logs_follow_each_invocations_stderr() -> None:
    saved_handlers, saved_level = LOGGER.handlers[:], LOGGER.level
    LOGGER.handlers = [h for h in saved_handlers if not getattr(h, "_facecleaner_cli", False)]
    runner = CliRunner()
    try:
        with runner.isolation():
            cli._setup_logging(quiet=False)
        with runner.isolation() as (_, err, _):
            cli._setup_logging(quiet=False)
            LOGGER.warning("second invocation")
            assert b"second invocation" in err.getvalue()
    finally:
        LOGGER.handlers, LOGGER.level = saved_handlers, saved_level


def test_outputs_respect_the_umask(scores_file, tmp_path: Path) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 1, 1], [10.0, 20.0, 30.0, 40.0], [True] * 4)
    previous = os.umask(0o022)
    try:
        assert_ok(invoke("prune", scores, "--out", tmp_path / "clean.parquet"))
    finally:
        os.umask(previous)
    for name in ("clean.parquet", "clean.dropped.parquet", "clean.classes.parquet"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("args", [
    ("prune", "s.parquet", "--out", "c.parquet", "--angle", "nan"),
    ("prune", "s.parquet", "--out", "c.parquet", "--max-drop-fraction", "nan"),
    ("train", "data", "--out", "run", "--lr", "inf"),
    ("train", "data", "--out", "run", "--max-bad-fraction", "nan"),
    ("train", "data", "--out", "run", "--scale", "inf"),
    ("score", "run", "data", "--out", "s.parquet", "--max-bad-fraction", "nan"),
    ("demo", "--lr", "inf"),
], ids=lambda args: f"{args[0]} {args[-2]} {args[-1]}")
def test_non_finite_option_values_are_usage_errors(args: tuple[str, ...], tmp_path: Path) -> None:
    """NaN compares false with both bounds of a range, so a plain FloatRange would let it through."""
    result = invoke(*args)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "is not a finite number" in result.stderr
