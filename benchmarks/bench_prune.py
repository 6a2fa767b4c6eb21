"""Benchmark ``facecleaner.api.prune`` on a synthetic 12M-row scores manifest (target: ≤ 10 s, ≤ 4 GB RSS, 2 cores).

The manifest is generated here, in 1M-row batches with pyarrow compute (no per-row Python), with the real
scores schema (string labels, ~500K classes, ~1 % unreadable rows with null geometry, one extra string
column; ``--embedding-dim D`` adds a D-d float32 list column, like an embedding a user joined in), written
batch by batch in 1M-row row groups (pandas' and pyarrow's default) so that generating holds one batch. Each
prune runs in a fresh Python process; the parent measures its wall time and peak RSS (``os.wait4`` rusage of
that child alone), so interpreter start-up and every import ``prune`` triggers are counted, as a user of the
CLI would see them.

    python benchmarks/bench_prune.py --workdir /tmp/prune-bench --repeat 3
    python benchmarks/bench_prune.py --workdir /tmp/prune-bench --repeat 3 --embedding-dim 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BATCH_ROWS = 1 << 20
UNREADABLE_REASONS = (
    "unreadable: missing file",
    "unreadable: empty file",
    "unreadable: cannot decode image: cannot identify image file <_io.BytesIO object at 0x7f3a1c2b9e50>",
    "unreadable: cannot decode image: image file is truncated (12 bytes not processed)",
)


# --- synthetic scores manifest ----------------------------------------------------------------------


def _batch(rng: np.random.Generator, class_index: np.ndarray, ordinal: np.ndarray, start: int,
           labels: pa.Array, dominant: np.ndarray, origins: pa.Array, schema: pa.Schema,
           unreadable_fraction: float, num_classes: int, embedding_dim: int) -> pa.RecordBatch:
    """One batch of scores rows for the given (sorted) class indices (with an embedding when ``embedding_dim``)."""
    n = len(class_index)
    bad = rng.random(n) < unreadable_fraction
    label = labels.take(pa.array(class_index))
    ordinal_text = pc.utf8_lpad(pc.cast(pa.array(ordinal), pa.string()), 5, "0")
    path = pc.binary_join_element_wise(pc.binary_join_element_wise(label, ordinal_text, "/"), "jpg", ".")
    dom = dominant[class_index]
    # 92 % of samples sit nearest their class's dominant sub-center; the rest nearest another one.
    off = rng.random(n) >= 0.92
    nearest = np.where(off, (dom + rng.integers(1, 3, n)) % 3, dom).astype(np.int8)
    noise = rng.random(n) < 0.06   # ~6 % far from the dominant sub-center (label noise)
    angle = np.where(noise, rng.uniform(70, 100, n), np.clip(rng.normal(38, 9, n), 5, 89)).astype(np.float32)
    angle_nearest = np.where(off, angle - rng.uniform(0, 20, n), angle).astype(np.float32)
    other = rng.integers(0, num_classes, n).astype(np.int32)
    angle_other = np.clip(rng.normal(72, 5, n), 40, 95).astype(np.float32)
    reason = rng.integers(0, len(UNREADABLE_REASONS), n)
    status = pa.DictionaryArray.from_arrays(pa.array(np.where(bad, reason + 1, 0).astype(np.int8)),
                                            pa.array(("ok", *UNREADABLE_REASONS))).cast(pa.string())
    origin = origins.take(pa.array(rng.integers(0, len(origins), n)))
    columns = [
        pa.array(np.arange(start, start + n, dtype=np.int64)),
        path,
        pa.nulls(n, pa.int64()),                                  # rec_index: null for image files
        label,
        pa.array(class_index.astype(np.int32)),
        pa.array(nearest, mask=bad),
        pa.array(dom.astype(np.int8)),
        pa.array(nearest == dom, mask=bad),
        pa.array(angle, mask=bad),
        pa.array(angle_nearest, mask=bad),
        pa.array(other, mask=bad),
        pa.array(angle_other, mask=bad),
        status,
        origin,
    ]
    if embedding_dim:
        values = pa.array(rng.standard_normal(n * embedding_dim, dtype=np.float32))
        offsets = pa.array(np.arange(0, (n + 1) * embedding_dim, embedding_dim, dtype=np.int32))
        columns.append(pa.ListArray.from_arrays(offsets, values))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def generate_scores(path: Path, rows: int, classes: int, unreadable_fraction: float = 0.01, seed: int = 0,
                    embedding_dim: int = 0) -> None:
    """Write a ``rows``-row scores manifest of ``classes`` identities (sorted by class, like identity folders)."""
    from facecleaner.manifests.io import manifest_metadata, manifest_writer
    from facecleaner.manifests.schema import scores_schema

    rng = np.random.default_rng(seed)
    extras = [pa.field("origin", pa.string())]
    if embedding_dim:
        extras.append(pa.field("embedding", pa.list_(pa.float32())))
    schema = scores_schema(pa.string(), pa.schema(extras))
    class_index = np.sort(rng.integers(0, classes, rows)).astype(np.int32)
    counts = np.bincount(class_index, minlength=classes)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    labels = pa.array([f"m.{c:07d}" for c in range(classes)], pa.string())
    dominant = rng.integers(0, 3, classes).astype(np.int8)
    origins = pa.array([f"crawl-{k:04d}" for k in range(2000)], pa.string())
    meta = manifest_metadata("scores", model={"backbone": "r50", "subcenters": 3, "margin": 0.5, "scale": 64.0,
                                              "embedding_size": 512, "image_size": 112},
                             num_classes=classes, checkpoint_sha256="0" * 64, input="synthetic",
                             input_fingerprint="synthetic", input_root=None)
    with manifest_writer(path, schema, meta, row_group_rows=BATCH_ROWS) as write:  # as a user's join writes it
        for start in range(0, rows, BATCH_ROWS):
            ci = class_index[start:start + BATCH_ROWS]
            ordinal = np.arange(start, start + len(ci)) - first[ci]
            write(pa.Table.from_batches([_batch(rng, ci, ordinal, start, labels, dominant, origins, schema,
                                                unreadable_fraction, classes, embedding_dim)]))


# --- child process: one timed prune ---------------------------------------------------------------------


def _child(impl: str, scores: str, out: str, angle: float, profile: str | None) -> None:
    started = time.perf_counter()
    from facecleaner.api import prune as run
    imported = time.perf_counter()
    if profile:
        import cProfile

        cProfile.runctx("run(scores, out, angle=angle)", globals(), {"run": run, "scores": scores, "out": out,
                                                                      "angle": angle}, profile)
        summary = {}
    else:
        summary = run(scores, out, angle=angle)
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - started, "prune_s": done - imported,
                      "kept": summary.get("kept"), "dropped": summary.get("dropped_samples")}))


def time_prune(impl: str, scores: Path, out: Path, angle: float, profile: str | None = None) -> dict:
    """Run one prune in a fresh interpreter; wall time and peak RSS of that process alone (os.wait4)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, str(scores), str(out), str(angle)]
    if profile:
        cmd.append(profile)
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        # os.wait4 (not proc.wait) so that we get this child's own rusage, not the max over all children.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out_text, err_text = stdout.read(), stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"prune ({impl}) failed with {proc.returncode}:\n{err_text[-3000:]}")
    child = json.loads(out_text.strip().splitlines()[-1])
    # ru_maxrss is in KiB on Linux
    return {"impl": impl, "wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20,
            "user_s": usage.ru_utime, "sys_s": usage.ru_stime, **child}


def machine_info() -> str:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    try:
        kib = int(next(x for x in Path("/proc/meminfo").read_text().splitlines()
                       if x.startswith("MemTotal")).split()[1])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    load = f", load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return f"{cores} cores ({model}){mem}{load}, python {platform.python_version()}, pyarrow {pa.__version__}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6] if len(sys.argv) > 6 else None)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=12_000_000)
    parser.add_argument("--classes", type=int, default=500_000)
    parser.add_argument("--unreadable", type=float, default=0.01, help="fraction of unreadable rows")
    parser.add_argument("--embedding-dim", type=int, default=0,
                        help="add an 'embedding' column of this many float32 per row (0: none)")
    parser.add_argument("--angle", type=float, default=75.0)
    parser.add_argument("--workdir", type=Path, help="keep the generated manifest here and reuse it next time")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the manifest even if one exists")
    parser.add_argument("--repeat", type=int, default=3, help="timed prunes per implementation")
    parser.add_argument("--profile", type=Path, help="write a cProfile of one extra run per impl here (prefix)")
    parser.add_argument("--target-s", type=float, default=10.0)
    parser.add_argument("--target-gib", type=float, default=4.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        wide = f"_emb{args.embedding_dim}" if args.embedding_dim else ""
        scores = work / f"scores_{args.rows}_{args.classes}{wide}.parquet"
        print(f"machine: {machine_info()}", flush=True)
        if args.regenerate or not scores.exists():
            started = time.perf_counter()
            generate_scores(scores, args.rows, args.classes, args.unreadable, embedding_dim=args.embedding_dim)
            print(f"generated {scores} ({scores.stat().st_size / 2**20:.0f} MiB) in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        else:
            print(f"reusing {scores} ({scores.stat().st_size / 2**20:.0f} MiB)", flush=True)
        impls = ("api",)
        results = {}
        for impl in impls:
            out = work / f"clean_{impl}.parquet"
            runs = []
            for i in range(args.repeat):
                r = time_prune(impl, scores, out, args.angle)
                runs.append(r)
                print(f"  {impl} run {i + 1}: wall {r['wall_s']:.2f} s (import {r['import_s']:.2f} s, prune "
                      f"{r['prune_s']:.2f} s), user {r['user_s']:.1f} s sys {r['sys_s']:.1f} s, "
                      f"peak RSS {r['peak_rss_gib']:.2f} GiB, kept {r['kept']} dropped {r['dropped']}", flush=True)
            results[impl] = runs
            if args.profile:
                prof = f"{args.profile}.{impl}.prof"
                time_prune(impl, scores, out, args.angle, profile=prof)
                print(f"  profile written to {prof} (python -m pstats {prof})")
        for impl, runs in results.items():
            if not runs:
                continue
            walls = [r["wall_s"] for r in runs]
            rss = [r["peak_rss_gib"] for r in runs]
            ok = statistics.median(walls) <= args.target_s and max(rss) <= args.target_gib
            print(f"RESULT prune impl={impl} rows={args.rows} classes={args.classes} "
                  f"embedding_dim={args.embedding_dim} n={len(runs)} "
                  f"wall_min={min(walls):.2f}s wall_median={statistics.median(walls):.2f}s "
                  f"rss_max={max(rss):.2f}GiB rss_median={statistics.median(rss):.2f}GiB "
                  f"target={args.target_s:g}s/{args.target_gib:g}GiB {'MET' if ok else 'MISSED'} | "
                  f"{machine_info()}")


if __name__ == "__main__":
    main()
