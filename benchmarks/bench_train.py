"""Training-step throughput of backbone + SubCenterArcFace, built and stepped as facecleaner.training.loop does.

Synthetic data only (no disk, no decoding): a small pool of uint8 NHWC batches in pinned host memory, copied
to the device each step like the DataLoader's output, then prepare_images → augment → autocast(backbone) →
head → backward → clip → SGD(momentum 0.9, wd 5e-4). Warm-up steps (cuDNN autotuning, torch.compile) are not
timed; timed steps are bracketed by torch.cuda.synchronize. Prints img/s, peak GPU memory
(torch.cuda.max_memory_allocated) with the card name, precision and batch size.

By default each step also does what the loop does for its progress bar and epoch sums (``loss.item()``,
``int(correct.sum())``, ``float(angle.sum())``: three host syncs per step); ``--no-step-sync`` drops them and
shows what they cost.

    python benchmarks/bench_train.py                                  # r50, K=3, 93,431 classes, bs 256, bf16
    python benchmarks/bench_train.py --backbone r100 --compile
    python benchmarks/bench_train.py --check                          # bf16 vs fp32 loss; N steps finite
    python benchmarks/bench_train.py --device cpu --backbone tiny --classes 1000 --steps 5 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

from facecleaner.model import prepare_images
from facecleaner.model.backbones import build_backbone
from facecleaner.model.head import SubCenterArcFace
from facecleaner.model.runtime import autocast, resolve_device
from facecleaner.training.augment import augment

# Forward + backward GFLOP per 112×112 image (DESIGN.md); used only to print the achieved rate.
BACKBONE_GFLOP = {"r50": 37.8}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def build(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, SubCenterArcFace,
                                                                    torch.optim.Optimizer, torch.amp.GradScaler,
                                                                    list[torch.nn.Parameter]]:
    """Backbone, head, optimizer and scaler exactly as train_model builds them."""
    backbone = build_backbone(args.backbone, embedding_size=args.embedding_size, image_size=args.image_size)
    head = SubCenterArcFace(args.classes, args.subcenters, args.embedding_size, args.scale, args.margin)
    backbone.to(device)
    head.to(device)
    if args.channels_last:
        backbone.to(memory_format=torch.channels_last)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD([p for p in params if p.requires_grad], lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    return backbone, head, optimizer, scaler, params


def synthetic_pool(args: argparse.Namespace, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``--pool`` uint8 NHWC image batches (pinned on CUDA) and int64 label batches."""
    gen = torch.Generator().manual_seed(args.seed)
    images, labels = [], []
    for _ in range(args.pool):
        batch = torch.randint(0, 256, (args.batch_size, args.image_size, args.image_size, 3), dtype=torch.uint8,
                              generator=gen)
        images.append(batch.pin_memory() if device.type == "cuda" else batch)
        labels.append(torch.randint(0, args.classes, (args.batch_size,), generator=gen))
    return images, labels


class Stepper:
    """One optimizer step of the training loop (same order of operations as train_model)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.backbone, self.head, self.optimizer, self.scaler, self.params = build(args, device)
        self.forward_backbone = self.backbone
        self.forward_head = self.head
        if args.compile:
            self.forward_backbone = torch.compile(self.backbone)
            self.forward_head = torch.compile(self.head)
        self.augment_rng = torch.Generator().manual_seed(args.seed + 1)

    def step(self, images: torch.Tensor, labels: torch.Tensor, sync: bool) -> torch.Tensor:
        args = self.args
        x = augment(prepare_images(images, self.device, args.channels_last), self.augment_rng, args.shift)
        y = labels.to(self.device, non_blocking=True)
        with autocast(self.device, args.precision):
            out = self.forward_head(self.forward_backbone(x), y, margin=args.margin)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 5.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if sync:  # what _EpochSums.add and the progress bar do every step
            out.loss.item()
            int(out.correct.sum())
            float(torch.rad2deg(torch.arccos(out.target_cosine.clamp(-1, 1))).sum())
        return out.loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    stepper = Stepper(args, device)
    images, labels = synthetic_pool(args, device)
    started = time.perf_counter()
    for i in range(args.warmup):
        stepper.step(images[i % args.pool], labels[i % args.pool], args.step_sync)
    synchronize(device)
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    started = time.perf_counter()
    for i in range(args.steps):
        losses.append(stepper.step(images[i % args.pool], labels[i % args.pool], args.step_sync))
    synchronize(device)
    elapsed = time.perf_counter() - started
    final_loss = float(losses[-1]) if losses else math.nan
    result = {
        "bench": "train", "device": device_name(device), "backbone": args.backbone, "classes": args.classes,
        "subcenters": args.subcenters, "batch_size": args.batch_size, "precision": args.precision,
        "channels_last": args.channels_last, "compile": args.compile, "step_sync": args.step_sync,
        "shift": args.shift, "warmup_steps": args.warmup, "warmup_s": round(warmup_s, 2), "steps": args.steps,
        "seconds": round(elapsed, 3), "img_per_s": round(args.steps * args.batch_size / elapsed, 1),
        "ms_per_step": round(1000 * elapsed / max(args.steps, 1), 2), "final_loss": round(final_loss, 4),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    if args.backbone in BACKBONE_GFLOP and args.image_size == 112:
        result["backbone_tflops"] = round(result["img_per_s"] * BACKBONE_GFLOP[args.backbone] / 1000, 1)
    return result


def check(args: argparse.Namespace, device: torch.device) -> bool:
    """(1) bf16 (or --precision) loss within --rtol of fp32 on the same batch and weights;
    (2) --check-steps training steps in --precision with finite loss and gradients."""
    ok = True
    torch.manual_seed(args.seed)
    stepper = Stepper(args, device)
    images, labels = synthetic_pool(args, device)
    low = args.precision if args.precision != "fp32" else "bf16"
    x = augment(prepare_images(images[0], device, args.channels_last), stepper.augment_rng, args.shift)
    y = labels[0].to(device)
    losses = {}
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False   # a true fp32 reference
    try:
        for precision in ("fp32", low):
            with torch.no_grad(), autocast(device, precision):
                losses[precision] = float(stepper.head(stepper.backbone(x), y, margin=args.margin).loss)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    rel = abs(losses[low] - losses["fp32"]) / max(abs(losses["fp32"]), 1e-12)
    passed = math.isfinite(rel) and rel <= args.rtol
    ok &= passed
    print(f"CHECK loss {low} vs fp32 (train-mode BN, same batch and weights): fp32 {losses['fp32']:.5f} "
          f"{low} {losses[low]:.5f} rel diff {rel:.2e} (≤ {args.rtol:g}) {'PASS' if passed else 'FAIL'}",
          flush=True)
    history, bad = [], []
    for i in range(args.check_steps):
        loss = float(stepper.step(images[i % args.pool], labels[i % args.pool], sync=False))
        grads_finite = all(torch.isfinite(p.grad).all() for p in stepper.params if p.grad is not None)
        weights_finite = all(torch.isfinite(p).all() for p in stepper.params)
        history.append(loss)
        if not (math.isfinite(loss) and grads_finite and weights_finite):
            bad.append(i)
    passed = not bad
    ok &= passed
    print(f"CHECK {args.check_steps} {args.precision} steps on a pool of {args.pool} batches: loss "
          f"{history[0]:.4f} → {history[-1]:.4f}, non-finite at steps {bad[:10] or 'none'} "
          f"{'PASS' if passed else 'FAIL'}", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--backbone", default="r50")
    parser.add_argument("--classes", type=int, default=93_431)
    parser.add_argument("--subcenters", type=int, default=3)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for CUDA, off for the CPU (as the loop does)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone and the head")
    parser.add_argument("--step-sync", action=argparse.BooleanOptionalAction, default=True,
                        help="do the loop's per-step .item() syncs (default on)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    parser.add_argument("--shift", type=float, default=0.1, help="augment's shift/zoom (TrainConfig default 0.1)")
    parser.add_argument("--scale", type=float, default=64.0)
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=50, help="timed steps")
    parser.add_argument("--pool", type=int, default=4, help="distinct synthetic batches cycled through")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="correctness mode instead of timing")
    parser.add_argument("--check-steps", type=int, default=20)
    parser.add_argument("--rtol", type=float, default=1e-2)
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.channels_last is None:
        args.channels_last = device.type == "cuda"
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.check:
        sys.exit(0 if check(args, device) else 1)
    r = benchmark(args, device)
    mem = f" peak {r['peak_mem_gib']} GiB (reserved {r['peak_reserved_gib']})" if "peak_mem_gib" in r else ""
    flops = f" ≈{r['backbone_tflops']} TFLOP/s backbone" if "backbone_tflops" in r else ""
    print(f"RESULT train {r['device']} {r['backbone']} K={r['subcenters']} C={r['classes']} bs={r['batch_size']} "
          f"{r['precision']} channels_last={r['channels_last']} compile={r['compile']} step_sync={r['step_sync']}: "
          f"{r['img_per_s']:.0f} img/s ({r['ms_per_step']} ms/step over {r['steps']} steps, warm-up "
          f"{r['warmup_s']} s){mem}{flops}", flush=True)
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
