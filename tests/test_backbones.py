"""Backbones: output shapes, channels_last, arcface_torch state-dict layout, weight loading errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from facecleaner.errors import CheckpointError, InputError
from facecleaner.model.backbones import BACKBONES, build_backbone, load_backbone_weights


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _fresh(name: str, seed: int, **kwargs: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(name, **kwargs)


def _calibrate(model: torch.nn.Module, size: int) -> None:
    """Set BatchNorm statistics from one batch, as a trained network has (keeps activations in range)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(_images(8, size, seed=99))


def _perturb_running_stats(model: torch.nn.Module) -> None:
    """Give every BatchNorm non-default statistics, so a load that skips buffers shows in the output."""
    gen = torch.Generator().manual_seed(123)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)


# --- shapes and memory format -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "size"), [("r18", 112), ("tiny", 32), ("tiny", 48), ("tiny", 40), ("mbf", 112)])
def test_output_shape(name: str, size: int) -> None:
    model = build_backbone(name, image_size=size).eval()
    with torch.no_grad():
        out = model(_images(2, size))
    assert out.shape == (2, 512)
    assert torch.isfinite(out).all()


def test_embedding_size_and_dropout_are_passed_through() -> None:
    model = build_backbone("tiny", embedding_size=128, image_size=32, dropout=0.4)
    assert model.dropout.p == pytest.approx(0.4)
    assert model.fc.out_features == 128
    assert model(_images(4, 32)).shape == (4, 128)
    # Dropout must only act in training mode: eval output is deterministic.
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(_images(3, 32)), model(_images(3, 32)))


@pytest.mark.parametrize(("name", "size"), [("tiny", 32), ("r18", 32), ("mbf", 32)])
def test_channels_last_matches_contiguous(name: str, size: int) -> None:
    model = _fresh(name, 0, image_size=size)
    _calibrate(model, size)
    model.eval()
    x = _images(4, size)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    # Embeddings are O(1); float32 kernels for the two layouts round differently (seen: 1.3e-5 on mbf),
    # while a layout bug (flattening NHWC memory as NCHW) shifts them by O(1).
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)


def test_channels_last_trains() -> None:
    """A training step on channels_last input runs, and the frozen features.weight stays at 1."""
    model = build_backbone("tiny", image_size=32).to(memory_format=torch.channels_last).train()
    x = _images(8, 32).contiguous(memory_format=torch.channels_last)
    model(x).square().mean().backward()
    assert model.fc.weight.grad is not None and model.body[0].weight.grad is not None
    assert model.features.weight.grad is None
    assert torch.equal(model.features.weight, torch.ones(512))


# --- arcface_torch layout ---------------------------------------------------------------------------

# Hand-written from arcface_torch's iresnet.py (a few entries per kind of layer).
R50_EXPECTED_SHAPES = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.weight": (64,),
    "bn1.running_var": (64,),
    "prelu.weight": (64,),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.bn2.bias": (64,),
    "layer1.0.prelu.weight": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn3.running_mean": (64,),
    "layer1.0.downsample.0.weight": (64, 64, 1, 1),
    "layer1.0.downsample.1.weight": (64,),
    "layer1.2.conv2.weight": (64, 64, 3, 3),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.3.prelu.weight": (128,),
    "layer3.0.downsample.0.weight": (256, 128, 1, 1),
    "layer3.13.bn3.running_mean": (256,),
    "layer3.13.conv2.weight": (256, 256, 3, 3),
    "layer4.0.bn1.weight": (256,),
    "layer4.0.conv1.weight": (512, 256, 3, 3),
    "layer4.0.downsample.1.running_var": (512,),
    "layer4.2.bn3.bias": (512,),
    "bn2.weight": (512,),
    "bn2.num_batches_tracked": (),
    "fc.weight": (512, 512 * 7 * 7),
    "fc.bias": (512,),
    "features.weight": (512,),
    "features.bias": (512,),
    "features.running_mean": (512,),
}

# r50 parameter count, derived by hand (BN = 2·C parameters, PReLU = C, 3×3 conv = 9·in·out):
#   stem: conv 3·64·9 = 1,728 + bn 128 + prelu 64                                   =      1,920
#   a block (in → C): bn1 2·in + conv1 9·in·C + bn2 2C + prelu C + conv2 9·C² + bn3 2C
#   first block of a stage adds downsample: 1×1 conv in·C + bn 2C
#   layer1 (64→64, 3):    78,400 + 2 × 74,176                                       =    226,752
#   layer2 (64→128, 4):  230,400 + 3 × 295,808                                      =  1,117,824
#   layer3 (128→256, 14): 919,552 + 13 × 1,181,440                                  = 16,278,272
#   layer4 (256→512, 3): 3,674,112 + 2 × 4,722,176                                  = 13,118,464
#   bn2 1,024 + fc 25,088·512 + 512 = 12,845,568 + features (BN1d) 1,024            = 12,847,616
#   total                                                                           = 43,590,848
# (arcface_torch's r50 is quoted as 43.59M parameters; 512 of them, features.weight, are frozen.)
R50_PARAMETERS = 43_590_848
# r100 = r50 + 9 more layer2 blocks (9 × 295,808) + 16 more layer3 blocks (16 × 1,181,440).
R100_PARAMETERS = R50_PARAMETERS + 9 * 295_808 + 16 * 1_181_440  # = 65,156,160
# State-dict entries of r50: 24 blocks × (3 BN × 5 + 2 conv + 1 PReLU) + 4 downsamples × (1 + 5)
# + stem (1 + 5 + 1) + output block (bn2 5 + fc 2 + features 5).
R50_STATE_ENTRIES = 24 * 18 + 4 * 6 + 7 + 12  # = 475


def test_r50_state_dict_matches_arcface_torch_layout() -> None:
    model = build_backbone("r50")
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for key, shape in R50_EXPECTED_SHAPES.items():
        assert shapes.get(key) == shape, key
    assert len(state) == R50_STATE_ENTRIES
    assert sum(p.numel() for p in model.parameters()) == R50_PARAMETERS
    # Blocks per stage, and nothing beyond them.
    assert {k.split(".")[0] for k in state} == {
        "conv1",
        "bn1",
        "prelu",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "bn2",
        "fc",
        "features",
    }
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 14, 3]
    assert not any(k.startswith(f"layer{i}.1.downsample") for i in range(1, 5) for k in state)
    # features is a BatchNorm1d whose weight is frozen at 1.0, as arcface_torch does.
    assert isinstance(model.features, torch.nn.BatchNorm1d)
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(512))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == R50_PARAMETERS - 512


def test_r100_parameter_count() -> None:
    model = build_backbone("r100")
    assert sum(p.numel() for p in model.parameters()) == R100_PARAMETERS
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 13, 30, 3]


@pytest.mark.parametrize(("size", "spatial"), [(112, 7), (128, 8), (96, 6), (16, 1)])
def test_fc_input_follows_image_size(size: int, spatial: int) -> None:
    model = build_backbone("r18", image_size=size)
    assert model.fc.in_features == 512 * spatial * spatial


def test_mbf_keeps_arcface_torch_names() -> None:
    shapes = {k: tuple(v.shape) for k, v in build_backbone("mbf").state_dict().items()}
    assert shapes["layers.0.layers.0.weight"] == (128, 3, 3, 3)
    assert shapes["layers.1.layers.0.weight"] == (128, 2, 3, 3)  # grouped conv, groups=64
    assert shapes["layers.2.layers.1.layers.0.weight"] == (128, 1, 3, 3)  # depthwise
    assert shapes["layers.5.layers.5.layers.2.layers.0.weight"] == (256, 256, 1, 1)
    assert shapes["conv_sep.layers.0.weight"] == (512, 256, 1, 1)
    assert shapes["features.layers.0.layers.0.weight"] == (512, 1, 7, 7)
    assert shapes["features.layers.2.weight"] == (512, 512)
    assert shapes["features.layers.3.running_mean"] == (512,)
    assert "features.layers.2.bias" not in shapes


def test_tiny_is_small() -> None:
    model = build_backbone("tiny", image_size=32)
    assert sum(p.numel() for p in model.parameters()) < 500_000


# --- validation -------------------------------------------------------------------------------------


def test_unknown_backbone_lists_the_valid_names() -> None:
    with pytest.raises(InputError) as info:
        build_backbone("resnet50")
    message = str(info.value)
    assert "resnet50" in message
    for name in ("r18", "r34", "r50", "r100", "r200", "mbf", "tiny"):
        assert name in message
    assert set(BACKBONES) == {"r18", "r34", "r50", "r100", "r200", "mbf", "tiny"}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("r18", {"image_size": 100}),
        ("r18", {"image_size": 8}),
        ("mbf", {"image_size": 120}),
        ("tiny", {"image_size": 15}),
        ("tiny", {"embedding_size": 0}),
        ("r18", {"dropout": 1.0}),
        ("tiny", {"dropout": -0.1}),
    ],
)
def test_bad_sizes_are_input_errors(name: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(InputError):
        build_backbone(name, **kwargs)


# --- load_backbone_weights --------------------------------------------------------------------------


def _saved_tiny(tmp_path: Path, wrap: str | None = None, prefix: str = "") -> tuple[Path, torch.nn.Module]:
    model = _fresh("tiny", 1, image_size=32)
    _perturb_running_stats(model)
    state = {prefix + k: v for k, v in model.state_dict().items()}
    obj = {wrap: state, "epoch": 3} if wrap else state
    path = tmp_path / "backbone.pth"
    torch.save(obj, path)
    return path, model.eval()


@pytest.mark.parametrize(
    ("wrap", "prefix"), [(None, ""), ("backbone", ""), ("state_dict", ""), (None, "module."), ("backbone", "module.")]
)
def test_load_round_trip(tmp_path: Path, wrap: str | None, prefix: str) -> None:
    path, source = _saved_tiny(tmp_path, wrap, prefix)
    target = _fresh("tiny", 2, image_size=32).eval()
    x = _images(4, 32)
    with torch.no_grad():
        assert not torch.allclose(target(x), source(x))
        load_backbone_weights(target, path)
        assert torch.equal(target(x), source(x))


def test_load_accepts_str_path_and_missing_batch_counters(tmp_path: Path) -> None:
    model = _fresh("tiny", 1, image_size=32)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "w.pth")
    target = _fresh("tiny", 2, image_size=32)
    load_backbone_weights(target, str(tmp_path / "w.pth"))
    assert torch.equal(target.fc.weight, model.fc.weight)


def test_missing_keys_are_listed_with_a_count(tmp_path: Path) -> None:
    state = _fresh("r18", 0, image_size=16).state_dict()
    dropped = [k for k in state if k.startswith("layer4.") and not k.endswith("num_batches_tracked")]
    assert len(dropped) > 12
    torch.save({k: v for k, v in state.items() if k not in dropped}, tmp_path / "w.pth")
    target = build_backbone("r18", image_size=16)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(target, tmp_path / "w.pth")
    message = str(info.value)
    assert f"{len(dropped)} missing keys" in message
    assert dropped[0] in message and dropped[9] in message
    assert dropped[10] not in message and f"and {len(dropped) - 10} more" in message
    assert "w.pth" in message
    # Nothing was half-loaded.
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_unexpected_keys_are_listed(tmp_path: Path) -> None:
    state = _fresh("tiny", 0, image_size=32).state_dict()
    state["head.weight"] = torch.zeros(10, 512)
    state["margin"] = torch.tensor(0.5)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(build_backbone("tiny", image_size=32), tmp_path / "w.pth")
    message = str(info.value)
    assert "2 unexpected keys" in message and "head.weight" in message and "margin" in message
    assert "missing" not in message


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    torch.save(build_backbone("tiny", image_size=48).state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(build_backbone("tiny", image_size=32), tmp_path / "w.pth")
    message = str(info.value)
    assert "1 shape mismatches" in message
    assert "fc.weight: file (512, 864) vs model (512, 384)" in message
    assert "--image-size" in info.value.fix


def test_wrong_architecture_is_a_checkpoint_error(tmp_path: Path) -> None:
    torch.save(build_backbone("tiny", image_size=32).state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys"):
        load_backbone_weights(build_backbone("r18", image_size=32), tmp_path / "w.pth")


class _RunsCode:
    """Unpickling this calls print(): a weights-only loader must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("UNPICKLED CODE RAN",))


@pytest.mark.parametrize(
    "content",
    [
        "garbage",
        "empty",
        "code",
        "list",
        "non_tensor_values",
        "empty_dict",
        "plain_pickle",
    ],
)
def test_not_a_state_dict_is_a_checkpoint_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = tmp_path / "w.pth"
    if content == "garbage":
        path.write_bytes(b"this is not a torch file\x00\x01")
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "code":
        torch.save({"backbone": _RunsCode()}, path)
    elif content == "list":
        torch.save([torch.zeros(3)], path)
    elif content == "non_tensor_values":
        torch.save({"conv1.weight": [1, 2, 3], "lr": 0.1}, path)
    elif content == "empty_dict":
        torch.save({}, path)
    else:
        path.write_bytes(pickle.dumps({"conv1.weight": 1}, protocol=2))
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(build_backbone("tiny", image_size=32), path)
    assert "w.pth" in str(info.value)
    assert info.value.fix
    assert "UNPICKLED CODE RAN" not in capsys.readouterr().out


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone_weights(build_backbone("tiny", image_size=32), tmp_path / "nope.pth")
