"""export-model: the backbone as an arcface_torch state dict (round trip through --init-backbone's loader, bit for
bit) and as ONNX (run in onnxruntime and compared with torch on images normalised the way score does)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_error, assert_ok, invoke

from facecleaner import api
from facecleaner.errors import CheckpointError, FaceCleanerError, InputError
from facecleaner.model import prepare_images
from facecleaner.model.backbones import build_backbone, load_backbone_weights
from facecleaner.model.checkpoint import ModelSpec, load_model, save_model

SIZE = 24
EMBEDDING = 16


def make_run(run: Path, seed: int) -> Path:
    """A tiny model saved as RUN_DIR/model.pt, its BatchNorm statistics and dropout far from a fresh network's,
    so that an export in training mode (batch statistics, dropout on) would give other embeddings."""
    torch.manual_seed(seed)
    spec = ModelSpec(backbone="tiny", embedding_size=EMBEDDING, image_size=SIZE, subcenters=2, scale=16.0,
                     margin=0.5, classes=["ann", "ben", "cat"], dropout=0.3)
    backbone, head = spec.build()
    for module in backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    run.mkdir(parents=True)
    save_model(run / "model.pt", spec, backbone, head)
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("export-model") / "run", seed=0)


@pytest.fixture(scope="module")
def onnx_export(run: Path) -> tuple[dict, Path]:
    """One ONNX export through the CLI (the exporter takes seconds): its --json summary and the file."""
    pytest.importorskip("onnxruntime")
    out = run.parent / "onnx" / "backbone.onnx"
    result = invoke("export-model", run, "--format", "onnx", "--out", out, "--json")
    assert_ok(result)
    return json.loads(result.stdout), out


def pixels(count: int, seed: int) -> np.ndarray:
    """uint8 RGB images, NHWC, as score's decoder gives them."""
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def reference_backbone(run: Path) -> torch.nn.Module:
    return load_model(run).backbone.eval()


def test_pth_round_trips_through_the_init_backbone_loader(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "backbone.pth"
    summary = api.export_model(run, "pth", out)
    assert summary["format"] == "pth" and summary["out"] == str(out) and summary["backbone"] == "tiny"
    assert summary["model_sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()
    assert summary["out_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()

    state = torch.load(out, map_location="cpu", weights_only=True)  # nothing to unpickle
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    saved = torch.load(run / "model.pt", weights_only=True)["backbone"]
    assert list(state) == list(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    assert "features.weight" in state and "fc.weight" in state  # arcface_torch's output-block names

    torch.manual_seed(123)  # a fresh network with other weights, filled by the loader train --init-backbone uses
    fresh = build_backbone("tiny", embedding_size=EMBEDDING, image_size=SIZE, dropout=0.3)
    images = prepare_images(torch.from_numpy(pixels(4, seed=1)), torch.device("cpu"))
    reference = reference_backbone(run)
    with torch.no_grad():
        assert not torch.equal(fresh.eval()(images), reference(images))
        load_backbone_weights(fresh, out)
        assert torch.equal(fresh.eval()(images), reference(images))


def test_pth_cli_refuses_to_overwrite(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "backbone.pth"
    result = invoke("export-model", run, "--format", "pth", "--out", out)
    assert_ok(result)
    assert result.stdout.startswith(f"pth: {out} (tiny backbone, 16-d embeddings, 24×24 input)")
    before = out.read_bytes()
    assert_error(invoke("export-model", run, "--format", "pth", "--out", out), "already exists", "never overwrites")
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["backbone.pth"]  # no temporaries left


def test_onnx_matches_torch_on_images_normalised_as_documented(run: Path, onnx_export: tuple[dict, Path]) -> None:
    import onnxruntime

    summary, out = onnx_export
    assert summary["input"] == {"name": "input", "shape": ["N", 3, SIZE, SIZE], "dtype": "float32",
                                "normalisation": summary["input"]["normalisation"]}
    assert "(x - 127.5) / 127.5" in summary["input"]["normalisation"] and "RGB" in summary["input"]["normalisation"]
    assert summary["output"]["name"] == "embedding" and summary["output"]["l2_normalised"] is False
    assert summary["check"]["max_abs_diff"] <= 1e-4 * summary["check"]["embedding_scale"]

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (output,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("input", "tensor(float)", [3, SIZE, SIZE])
    assert isinstance(inp.shape[0], str)  # a named, dynamic batch axis
    assert output.name == "embedding" and output.shape[1:] == [EMBEDDING]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["source_model_sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()
    assert meta["image_size"] == str(SIZE) and meta["input_normalisation"] == summary["input"]["normalisation"]

    reference = reference_backbone(run)
    for count in (1, 5):  # neither is the batch of 2 the exporter traced with
        rgb = pixels(count, seed=count)
        normalised = ((rgb.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)  # as the README says
        (got,) = session.run(["embedding"], {"input": np.ascontiguousarray(normalised)})
        with torch.no_grad():  # what score feeds the backbone
            expected = reference(prepare_images(torch.from_numpy(rgb), torch.device("cpu"))).numpy()
        assert got.shape == (count, EMBEDDING)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        assert not np.allclose(np.linalg.norm(got, axis=1), 1.0)  # not L2-normalised, as documented


def test_onnx_self_check_refuses_a_file_that_differs(run: Path, onnx_export: tuple[dict, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter is replaced by one that writes the ONNX file of another model (same shapes, other weights):
    the onnxruntime check must catch it, and nothing may be published."""
    other = make_run(tmp_path / "other", seed=1)

    def wrong_export(model, args, f, **kwargs):  # noqa: ANN001, ANN003, ANN202
        shutil.copyfile(onnx_export[1], f)

    monkeypatch.setattr(torch.onnx, "export", wrong_export)
    out = tmp_path / "out" / "other.onnx"
    with pytest.raises(FaceCleanerError, match="differ from torch's"):
        api.export_model(other, "onnx", out)
    assert list(out.parent.iterdir()) == []


def test_onnx_without_its_packages_says_how_to_install(run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    out = tmp_path / "backbone.onnx"
    assert_error(invoke("export-model", run, "--format", "onnx", "--out", out), 'pip install "facecleaner[onnx]"')
    assert not out.exists()


def test_errors(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "backbone.pth"
    assert_error(invoke("export-model", tmp_path / "nowhere", "--format", "pth", "--out", out), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_error(invoke("export-model", empty, "--format", "pth", "--out", out), "has no model.pt")
    assert_error(invoke("export-model", run, "--format", "pth", "--out", run / "model.pt"),
                 "is the run's model file", "choose another --out")
    assert_error(invoke("export-model", run / "model.pt", "--format", "pth", "--out", run / "checkpoint.pt"),
                 "is the run's checkpoint.pt")
    assert_error(invoke("export-model", run, "--format", "onnx", "--out", run / "config.json"), "config.json")
    assert_error(invoke("export-model", run, "--format", "pth", "--out", tmp_path), "is a folder")
    usage = invoke("export-model", run, "--format", "tflite", "--out", out)
    assert usage.exit_code == 2 and "tflite" in usage.stderr
    with pytest.raises(InputError, match="not one of pth, onnx"):
        api.export_model(run, "tflite", out)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a readable facecleaner model"):
        api.export_model(tmp_path / "junk.pt", "pth", out)
    assert not out.exists()
    assert sorted(p.name for p in run.iterdir()) == ["model.pt"]


def test_a_folds_run_dir_points_to_one_fold(tmp_path: Path) -> None:
    run = tmp_path / "heldout"
    make_run(run / "fold-1", seed=0)
    (run / "folds.json").write_text("{}")
    assert_error(invoke("export-model", run, "--format", "pth", "--out", tmp_path / "b.pth"),
                 "train --folds", str(run / "fold-1"))


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", seed=0)
    payload = torch.load(run / "model.pt", weights_only=True)
    payload["backbone"]["fc.weight"][0, 0] = float("nan")
    torch.save(payload, run / "model.pt")
    with pytest.raises(CheckpointError, match="non-finite weights"):
        api.export_model(run, "pth", tmp_path / "b.pth")
