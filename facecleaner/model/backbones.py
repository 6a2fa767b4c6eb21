"""Embedding backbones: IResNet-18..200, MobileFaceNet and a tiny CPU network.

The IResNet and MobileFaceNet modules keep the parameter and buffer names of insightface's
``arcface_torch`` (``backbones/iresnet.py``, ``backbones/mobilefacenet.py``), so a published
``backbone.pth`` loads with ``strict=True`` and our trained backbones drop into their tools.
Every backbone maps ``(N, 3, S, S)`` images to ``(N, embedding_size)`` embeddings, accepts
channels_last input, and leaves mixed precision to the trainer (no ``fp16`` flag here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facecleaner.errors import CheckpointError, InputError

__all__ = [
    "BACKBONES",
    "IBasicBlock",
    "IResNet",
    "MobileFaceNet",
    "TinyNet",
    "build_backbone",
    "load_backbone_weights",
]

# Stage depths of arcface_torch's iresnet18/34/50/100/200.
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}

_STAGE_WIDTHS = (64, 128, 256, 512)


def _check_and_record(module: nn.Module, arch: str, embedding_size: int, image_size: int, dropout: float,
                      multiple: int) -> None:
    """Reject sizes that would only fail later, deep inside a forward pass, and record them on ``module``.

    The FC layer's input size depends on the image size (a multiple of ``multiple``), so it is fixed here.
    """
    if not isinstance(embedding_size, int) or isinstance(embedding_size, bool) or embedding_size < 1:
        raise InputError(
            f"embedding size {embedding_size!r} is not usable for backbone {arch!r}",
            "pass a positive integer, e.g. --embedding-size 512",
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise InputError(
            f"dropout {dropout!r} is outside [0, 1) for backbone {arch!r}",
            "pass a probability such as 0.0 (the arcface_torch default) or 0.4",
        )
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 16 or image_size % multiple:
        need = "at least 16" if multiple == 1 else f"a multiple of {multiple} and at least 16"
        raise InputError(
            f"image size {image_size!r} does not fit backbone {arch!r}: it must be {need}",
            "pass --image-size 112 (aligned faces) or another size that fits",
        )
    module.arch = arch
    module.embedding_size = embedding_size
    module.image_size = image_size


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class _EmbeddingOutput(nn.Module):
    """Shared BN2d – Dropout – flatten – FC – BN1d output block (arcface_torch's "E" head).

    The four layers live directly on the backbone (``bn2``, ``dropout``, ``fc``, ``features``) so the
    names match arcface_torch; ``features.weight`` is frozen at 1.0 as there.
    """

    bn2: nn.BatchNorm2d
    dropout: nn.Dropout
    fc: nn.Linear
    features: nn.BatchNorm1d

    def _build_output(self, channels: int, spatial: int, embedding_size: int, dropout: float) -> None:
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * spatial * spatial, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(x)
        # flatten, not view: a channels_last map is not contiguous in NCHW order.
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block of IResNet: BN–conv–BN–PReLU–conv(stride)–BN (+ shortcut)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        return out


class IResNet(_EmbeddingOutput):
    """IResNet with arcface_torch's state-dict layout; ``image_size`` sets the FC input (112 → 512·7·7)."""

    def __init__(
        self,
        layers: tuple[int, int, int, int] | list[int],
        embedding_size: int = 512,
        image_size: int = 112,
        dropout: float = 0.0,
        arch: str = "iresnet",
    ) -> None:
        super().__init__()
        _check_and_record(self, arch, embedding_size, image_size, dropout, 16)
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise InputError(f"IResNet needs four positive stage depths, got {list(layers)!r}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(_STAGE_WIDTHS[0], int(layers[0]))
        self.layer2 = self._make_layer(_STAGE_WIDTHS[1], int(layers[1]))
        self.layer3 = self._make_layer(_STAGE_WIDTHS[2], int(layers[2]))
        self.layer4 = self._make_layer(_STAGE_WIDTHS[3], int(layers[3]))
        # Four stride-2 stages: 112 → 56 → 28 → 14 → 7.
        self._build_output(_STAGE_WIDTHS[3], image_size // 16, embedding_size, dropout)

        # Same initialisation as arcface_torch, so training from scratch behaves like theirs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
        stage = [IBasicBlock(self.inplanes, planes, stride=2, downsample=downsample)]
        self.inplanes = planes
        stage.extend(IBasicBlock(planes, planes) for _ in range(1, blocks))
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self._embed(x)


# --- MobileFaceNet (arcface_torch "mbf") ---------------------------------------------------------


class ConvBlock(nn.Module):
    """Conv–BN–PReLU stored as ``layers.{0,1,2}`` like arcface_torch; without the PReLU (``activation=False``)
    it is arcface_torch's LinearBlock, the projection of an inverted residual."""

    def __init__(
        self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
        activation: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        ]
        if activation:
            layers.append(nn.PReLU(out_c))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted residual: 1×1 expand to ``groups`` channels, depthwise 3×3, 1×1 project."""

    def __init__(self, in_c: int, out_c: int, residual: bool, stride: int, groups: int) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups),
            ConvBlock(groups, groups, kernel=3, stride=stride, padding=1, groups=groups),
            ConvBlock(groups, out_c, activation=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """A run of stride-1 residual ``DepthWise`` blocks."""

    def __init__(self, c: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(DepthWise(c, c, True, 1, groups) for _ in range(num_block)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: ``layers`` = [ConvBlock dw k×k without PReLU, Flatten, Linear, BatchNorm1d]."""

    def __init__(self, embedding_size: int, spatial: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBlock(512, 512, kernel=spatial, groups=512, activation=False),
            nn.Flatten(1),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[1](self.layers[0](x))
        # Dropout applied functionally so that the state-dict indices stay those of arcface_torch.
        x = F.dropout(x, self.dropout, self.training)
        return self.layers[3](self.layers[2](x))


class MobileFaceNet(nn.Module):
    """MobileFaceNet as arcface_torch's ``mbf`` (blocks (1, 4, 6, 2), scale 2), same state-dict names."""

    def __init__(
        self,
        embedding_size: int = 512,
        image_size: int = 112,
        dropout: float = 0.0,
        blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
        scale: int = 2,
        arch: str = "mbf",
    ) -> None:
        super().__init__()
        _check_and_record(self, arch, embedding_size, image_size, dropout, 16)
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c1, kernel=3, stride=2, padding=1))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, kernel=3, stride=1, padding=1, groups=64))
        else:
            self.layers.append(Residual(c1, blocks[0], groups=128))
        self.layers.extend(
            [
                DepthWise(c1, c1, False, 2, groups=128),
                Residual(c1, blocks[1], groups=128),
                DepthWise(c1, c2, False, 2, groups=256),
                Residual(c2, blocks[2], groups=256),
                DepthWise(c2, c2, False, 2, groups=512),
                Residual(c2, blocks[3], groups=256),
            ]
        )
        self.conv_sep = ConvBlock(c2, 512)
        self.features = GDC(embedding_size, image_size // 16, dropout)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


# --- tiny: a CPU-sized network for tests, the demo and small experiments -------------------------

_TINY_WIDTHS = (32, 64, 96, 96)
_TINY_EXTRA = (False, True, True, False)  # a stride-1 conv after the stride-2 one in that stage


def _stride2_size(n: int) -> int:
    """Output size of a 3×3, stride-2, padding-1 convolution."""
    return (n - 1) // 2 + 1


class TinyNet(_EmbeddingOutput):
    """Plain conv–BN–PReLU network, four stride-2 stages, same output block as IResNet.

    Fast enough to train ~100 identities of 32–64 px images on two CPU cores in about a minute,
    which lets ``demo`` and the integration tests run the whole pipeline without a GPU.
    """

    def __init__(
        self, embedding_size: int = 512, image_size: int = 32, dropout: float = 0.0, arch: str = "tiny"
    ) -> None:
        super().__init__()
        _check_and_record(self, arch, embedding_size, image_size, dropout, 1)
        modules: list[nn.Module] = []
        channels, spatial = 3, image_size
        for width, extra in zip(_TINY_WIDTHS, _TINY_EXTRA, strict=True):
            modules += [_conv3x3(channels, width, 2), nn.BatchNorm2d(width), nn.PReLU(width)]
            spatial = _stride2_size(spatial)
            channels = width
            if extra:
                modules += [_conv3x3(width, width), nn.BatchNorm2d(width), nn.PReLU(width)]
        self.body = nn.Sequential(*modules)
        self._build_output(channels, spatial, embedding_size, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(self.body(x))


# --- registry ------------------------------------------------------------------------------------


def _iresnet_factory(arch: str) -> Callable[..., nn.Module]:
    def make(embedding_size: int = 512, image_size: int = 112, dropout: float = 0.0) -> nn.Module:
        return IResNet(IRESNET_LAYERS[arch], embedding_size, image_size, dropout, arch=arch)

    make.__name__ = f"iresnet_{arch}"
    make.__doc__ = f"IResNet {arch} with stage depths {IRESNET_LAYERS[arch]}."
    return make


def _mbf(embedding_size: int = 512, image_size: int = 112, dropout: float = 0.0) -> nn.Module:
    return MobileFaceNet(embedding_size, image_size, dropout)


def _tiny(embedding_size: int = 512, image_size: int = 112, dropout: float = 0.0) -> nn.Module:
    return TinyNet(embedding_size, image_size, dropout)


# name → factory(embedding_size, image_size, dropout); the CLI's --backbone choices.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **{arch: _iresnet_factory(arch) for arch in IRESNET_LAYERS},
    "mbf": _mbf,
    "tiny": _tiny,
}


def build_backbone(name: str, embedding_size: int = 512, image_size: int = 112, dropout: float = 0.0) -> nn.Module:
    """Build a backbone by its CLI name, so configs and checkpoints can name the network as a string.

    Raises ``InputError`` for an unknown name or sizes the network cannot take.
    """
    factory = BACKBONES.get(name)
    if factory is None:
        raise InputError(
            f"unknown backbone {name!r}",
            f"choose one of: {', '.join(BACKBONES)}",
        )
    return factory(embedding_size=embedding_size, image_size=image_size, dropout=dropout)


# --- loading published or earlier weights --------------------------------------------------------

_WRAPPER_KEYS = ("backbone", "state_dict")
_LIST_LIMIT = 10


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return f"{shown}, … and {more} more" if more > 0 else shown


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load ``path`` without unpickling code and unwrap it to a flat name → tensor dict."""
    if not path.is_file():
        raise CheckpointError(
            f"backbone weights file {path} does not exist",
            "pass the path of a backbone.pth (a saved state dict)",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure here means "not a weights-only torch file"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read backbone weights from {path}: {reason[:300]}",
            "pass a file written by torch.save(model.state_dict()); files that need code to unpickle "
            "are refused for safety",
        ) from exc
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path} does not hold a state dict (found {type(obj).__name__})",
            "pass a file written by torch.save(model.state_dict()), or a dict with a 'backbone' or 'state_dict' entry",
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path} does not hold a state dict: {len(bad)} entries are not named tensors ({_listing(bad)})",
            "pass a file written by torch.save(model.state_dict())",
        )
    # Weights saved from a DistributedDataParallel wrapper carry a "module." prefix.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone_weights(model: nn.Module, path: Path | str | os.PathLike[str]) -> None:
    """Load a saved backbone state dict into ``model``, strictly, with an error that says what differs.

    Accepts a plain state dict, or a dict holding it under ``"backbone"`` or ``"state_dict"``; strips a
    DDP ``"module."`` prefix. Only BatchNorm ``num_batches_tracked`` counters may be absent (older
    exports drop them; they do not change the network's output). Loads with ``weights_only=True``:
    nothing in the file is executed. Raises ``CheckpointError`` on any mismatch or unreadable file.
    """
    path = Path(path)
    state = _read_state_dict(path)
    expected = model.state_dict()

    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {_shape(state[k])} vs model {_shape(expected[k])}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_listing(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches ({_listing(mismatched)})")
        arch = getattr(model, "arch", type(model).__name__)
        raise CheckpointError(
            f"backbone weights in {path} do not fit backbone {arch!r}: " + "; ".join(parts),
            "use the --backbone, --embedding-size and --image-size of the network that saved the file",
        )
    for key, value in expected.items():
        if key not in state:  # a tolerated num_batches_tracked counter
            state[key] = value
    model.load_state_dict(state, strict=True)
