"""End-to-end throughput of ``facecleaner.api.score`` over a folder of 112×112 JPEGs (target: ≥ 20,000 img/s).

Generates ``--images`` JPEGs in identity folders (``<workdir>/data/<identity>/<n>.jpg``; each identity is a
smooth random pattern, each image a shifted, re-lit, noisy copy, ~3 KB at quality 90), builds a
run dir holding a randomly initialised model (``ModelSpec`` + ``save_model``; nothing is trained) and times
``api.score`` on it: model load, decoding in the DataLoader workers, the backbone, the sub-center geometry
against ``--head-classes`` classes and writing the manifests, all counted. The model is made numerically
sane first: BatchNorm running statistics are set from one batch in train mode (a fresh IResNet in eval mode
otherwise grows its activations layer after layer), and sub-center 0 of each identity is the embedding of
its first image, so angles and dominant sub-centers mean something. The JPEGs were just written, so they
are in the page cache: this measures decoding, not the disk.

``--check`` scores a small set on the CPU (fp32) and on the GPU in each of ``--check-precisions`` (default
auto = bf16 on an H100, and fp32) and requires every angle within ``--max-angle-diff`` (0.5°) of the CPU's
and the same dominant sub-center for every class; without CUDA it compares the CPU with itself.

    python benchmarks/bench_score.py                                   # r50, 50,000 JPEGs, bs 256, auto
    python benchmarks/bench_score.py --check
    python benchmarks/bench_score.py --device cpu --backbone tiny --images 400 --identities 20 \\
        --head-classes 100 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

IMAGE_SIZE = 112


# --- data ------------------------------------------------------------------------------------------------


def _identity_images(args: tuple[Path, int, int, int, int]) -> int:
    """Write ``count`` JPEGs of one identity; returns bytes written."""
    from PIL import Image

    folder, identity, count, seed, quality = args
    rng = np.random.default_rng([seed, identity])
    base = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(
        (IMAGE_SIZE + 16, IMAGE_SIZE + 16), Image.Resampling.BICUBIC)
    base = np.asarray(base, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for n in range(count):
        dx, dy = rng.integers(0, 17, 2)
        crop = base[dy:dy + IMAGE_SIZE, dx:dx + IMAGE_SIZE] * rng.uniform(0.8, 1.2)
        crop += rng.normal(0, 3, crop.shape)
        path = folder / f"{n:05d}.jpg"
        Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(path, quality=quality)
        written += path.stat().st_size
    return written


def generate_jpegs(root: Path, images: int, identities: int, seed: int = 0, quality: int = 90) -> dict:
    """``images`` JPEGs over ``identities`` identity folders under ``root`` (reused if already there)."""
    marker = root / "bench_data.json"
    want = {"images": images, "identities": identities, "seed": seed, "quality": quality, "size": IMAGE_SIZE}
    if marker.is_file() and json.loads(marker.read_text()).get("params") == want:
        return json.loads(marker.read_text())
    per = [images // identities + (1 if i < images % identities else 0) for i in range(identities)]
    jobs = [(root / f"id{i:06d}", i, n, seed, quality) for i, n in enumerate(per) if n]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        total = sum(pool.map(_identity_images, jobs, chunksize=max(1, len(jobs) // (8 * (os.cpu_count() or 1)))))
    info = {"params": want, "bytes": total, "mean_kib": round(total / images / 1024, 2),
            "seconds": round(time.perf_counter() - started, 1)}
    marker.write_text(json.dumps(info))
    return info


# --- model -------------------------------------------------------------------------------------------------


def make_run(run_dir: Path, data: Path, backbone_name: str, head_classes: int, device: torch.device,
             seed: int = 0, calibration_images: int = 128) -> None:
    """A run dir with a random but numerically sane model for ``data``'s identities (+ padding classes)."""
    from facecleaner.model import prepare_images
    from facecleaner.model.checkpoint import MODEL_FILE, ModelSpec, save_model
    from facecleaner.sources.images import decode_image

    identities = sorted(p.name for p in data.iterdir() if p.is_dir())
    classes = identities + [f"zz_pad{i:07d}" for i in range(max(0, head_classes - len(identities)))]
    torch.manual_seed(seed)
    spec = ModelSpec(backbone=backbone_name, embedding_size=512, image_size=IMAGE_SIZE, subcenters=3, scale=64.0,
                     margin=0.5, classes=classes)
    backbone, head = spec.build()
    firsts = [sorted((data / name).iterdir())[0] for name in identities]
    others = sorted(p for name in identities[:8] for p in (data / name).iterdir())
    calib = (firsts + others)[:calibration_images]

    def load(paths: list[Path]) -> torch.Tensor:
        return torch.from_numpy(np.stack([decode_image(p.read_bytes(), IMAGE_SIZE) for p in paths]))

    backbone.to(device)
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:   # running stats := this batch's statistics
        bn.reset_running_stats()
        bn.momentum = None
    backbone.train()
    with torch.no_grad():
        backbone(prepare_images(load(calib), device))
    for bn in bns:
        bn.momentum = 0.1
    backbone.eval()
    embeddings = []
    with torch.no_grad():
        for start in range(0, len(firsts), 256):
            out = backbone(prepare_images(load(firsts[start:start + 256]), device))
            embeddings.append(torch.nn.functional.normalize(out.float(), dim=1).cpu())
    with torch.no_grad():
        weight = head.weight.view(len(classes), spec.subcenters, -1)
        weight[:len(identities), 0] = torch.cat(embeddings) * weight[:len(identities), 1].norm(dim=1, keepdim=True)
    backbone.cpu()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_model(run_dir / MODEL_FILE, spec, backbone, head)


# --- timing and check ------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def time_score(run_dir: Path, data: Path, out: Path, args: argparse.Namespace, device: str) -> tuple[float, dict]:
    from facecleaner.api import score

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = score(run_dir, data, out, batch_size=args.batch_size, device=device, precision=args.precision,
                    workers=args.workers, progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, summary


def benchmark(args: argparse.Namespace, work: Path) -> None:
    from facecleaner.model.runtime import resolve_device

    device = resolve_device(args.device)
    data = work / f"data_{args.images}_{args.identities}"
    info = generate_jpegs(data, args.images, args.identities, args.seed)
    print(f"data: {args.images} JPEGs of {args.identities} identities in {data}, mean {info['mean_kib']} KiB "
          f"(generated in {info['seconds']} s)", flush=True)
    run_dir = work / f"run_{args.backbone}_{args.head_classes}_{args.identities}"
    if not (run_dir / "model.pt").is_file():
        make_run(run_dir, data, args.backbone, args.head_classes, device, args.seed)
    times, peaks, summary = [], [], {}
    for i in range(args.repeat):
        seconds, summary = time_score(run_dir, data, work / "scores.parquet", args, str(device))
        times.append(seconds)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else math.nan
        peaks.append(peak)
        print(f"  run {i + 1}: {seconds:.2f} s = {args.images / seconds:.0f} img/s end to end "
              f"(precision {summary['precision']}, median angle {summary['median_angle']:.1f}°, "
              f"unreadable {summary['unreadable']}, peak GPU mem {peak:.2f} GiB)", flush=True)
    from facecleaner.config import default_workers

    workers = args.workers if args.workers is not None else default_workers(device)
    rates = [args.images / t for t in times]
    print(f"RESULT score {device_name(device)} {args.backbone} K=3 head_classes={args.head_classes} "
          f"bs={args.batch_size} precision={summary.get('precision')} workers={workers} images={args.images}: "
          f"{max(rates):.0f} img/s best, {statistics.median(rates):.0f} median over {len(rates)} runs "
          f"(first run includes CUDA/cuDNN start-up); peak GPU mem {max(peaks):.2f} GiB; "
          f"{os.cpu_count()} CPU cores; torch {torch.__version__}", flush=True)


def check(args: argparse.Namespace, work: Path) -> bool:
    """CPU fp32 vs the GPU in each of --check-precisions, on the same model and images."""
    import pyarrow.parquet as pq

    from facecleaner.api import score
    from facecleaner.model.runtime import resolve_precision

    gpu = torch.cuda.is_available() and args.device != "cpu"
    data = work / f"check_data_{args.check_images}_{args.check_identities}"
    generate_jpegs(data, args.check_images, args.check_identities, args.seed + 1)
    run_dir = work / f"check_run_{args.backbone}_{args.check_identities}"
    if not (run_dir / "model.pt").is_file():
        make_run(run_dir, data, args.backbone, args.check_identities * 4, torch.device("cpu"), args.seed)
    runs = [("cpu", "cpu", "fp32")]
    if gpu:
        wanted = [resolve_precision(p, torch.device("cuda")) for p in args.check_precisions.split(",")]
        runs += [(f"gpu-{p}", "cuda", p) for p in dict.fromkeys(wanted)]
    else:
        runs.append(("cpu-again", "cpu", "fp32"))
        print("  no CUDA device: comparing the CPU with itself (exercises the code path only)")
    tables, embeddings = {}, {}
    for name, device, precision in runs:
        out = work / f"check_{name}.parquet"
        started = time.perf_counter()
        summary = score(run_dir, data, out, batch_size=args.batch_size, device=device, precision=precision,
                        workers=args.workers, embeddings=work / f"check_{name}.npy", progress=False)
        print(f"  {name}: {summary['device']} {summary['precision']} in {time.perf_counter() - started:.1f} s, "
              f"median angle {summary['median_angle']:.2f}°", flush=True)
        tables[name] = pq.read_table(out).to_pandas()
        embeddings[name] = np.load(work / f"check_{name}.npy").astype(np.float32)
    ok = True
    reference = tables["cpu"]
    for name, table in tables.items():
        if name == "cpu":
            continue
        cos = np.sum(embeddings["cpu"] * embeddings[name], axis=1) / (
            np.linalg.norm(embeddings["cpu"], axis=1) * np.linalg.norm(embeddings[name], axis=1))
        print(f"  {name} vs cpu: embeddings (stored float16) min cosine {cos.min():.6f} = "
              f"{math.degrees(math.acos(min(1.0, float(cos.min())))):.3f}° apart at most")
        for column in ("angle", "angle_nearest", "angle_other"):
            diff = np.abs(reference[column].to_numpy(float) - table[column].to_numpy(float))
            worst = float(np.nanmax(diff))
            passed = worst <= args.max_angle_diff
            ok &= passed
            print(f"CHECK {name} {column}: max |diff| {worst:.4f}° (≤ {args.max_angle_diff}°), mean "
                  f"{float(np.nanmean(diff)):.4f}°, p99 {float(np.nanpercentile(diff, 99)):.4f}° "
                  f"{'PASS' if passed else 'FAIL'}")
        same_dominant = bool((reference["dominant_subcenter"].to_numpy() == table["dominant_subcenter"].to_numpy()
                              ).all())
        same_status = bool((reference["status"] == table["status"]).all())
        nearest = float((reference["nearest_subcenter"].to_numpy() == table["nearest_subcenter"].to_numpy()).mean())
        other = float((reference["nearest_other_class"].to_numpy() == table["nearest_other_class"].to_numpy()
                       ).mean())
        ok &= same_dominant and same_status
        print(f"CHECK {name} dominant sub-center identical for every class: {'PASS' if same_dominant else 'FAIL'}; "
              f"status identical: {'PASS' if same_status else 'FAIL'}; nearest sub-center agrees on {nearest:.2%} "
              f"of samples, nearest other class on {other:.2%} (informational)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="r50")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--head-classes", type=int, default=93_431,
                        help="classes in the model's head (identities + padding): sets the geometry's cost")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: score's own)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the JPEGs and run dir here and reuse them")
    parser.add_argument("--check", action="store_true", help="CPU vs GPU agreement instead of timing")
    parser.add_argument("--check-images", type=int, default=256)
    parser.add_argument("--check-identities", type=int, default=16)
    parser.add_argument("--max-angle-diff", type=float, default=0.5)
    parser.add_argument("--check-precisions", default="auto,fp32",
                        help="GPU precisions compared with CPU fp32 (auto = what score picks: bf16 on H100)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.check:
            sys.exit(0 if check(args, work) else 1)
        benchmark(args, work)


if __name__ == "__main__":
    main()
