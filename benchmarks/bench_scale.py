"""Issue 12's scale benchmark on generated data: what every rank pays to open 12M samples, what DataLoader workers
copy, what a 2-rank ``score`` and a 2-rank checkpoint hold.

Parts (``--part``, several allowed; ``all`` by default), each measured in a fresh subprocess:

- ``manifest``: a 12M-row Parquet manifest (path,label) of 500K and of 2M identities, and one with a 128-d
  float32 list extra column (``--extra-rows``): ``open_source`` + ``.table()`` + ``encode_labels`` (what
  ``train`` does; ``score`` looks labels up instead) and ``table_fingerprint`` (both do). Target ≤ 20 s, ≤ 3 GB.
- ``workers``: a forked DataLoader with 2 workers reads every sample's path (``source.resolved_path(i)``, what a
  FileSource does before opening the file) over the 12M-row manifest, and decodes every image
  (``DecodedImages``) of a smaller manifest whose rows all resolve to a few real tiny JPEGs. Each worker reports
  its private memory (Private_Clean + Private_Dirty of /proc/self/smaps_rollup) when it starts and after its last
  batch. Target ≤ 100 MB growth per worker.
- ``recordio``: a 12M-record ``train.rec``/``train.idx`` of 500K identities in insightface's layout (key 0 header,
  images 1..N, identity records after), framed in bulk with NumPy and checked record for record against
  ``frame_record(pack_record(...))`` on a sample: ``open_source`` + ``.table()``. Target ≤ 15 s.
- ``score``: ``torchrun --nproc-per-node 2 -m facecleaner score`` (gloo, CPU) with ``--embeddings`` on 1M rows
  repeating a few real tiny JPEGs, under a random-weight ``tiny`` model made with ``ModelSpec.build`` +
  ``save_model``. Per-rank peak RSS, wall, and the merge time: from the last image decoded on any rank to the
  scores manifest being written (its mtime).
- ``checkpoint``: ``torchrun ... train`` (2 ranks, tiny backbone, K=3, 512-d) on a manifest with one row per
  identity (``--ckpt-identities``, default 500K: 2M needs about 24 GB of host memory for weight + momentum +
  gradient + the gathered copies, more than the 2-core box has), of which only ``--ckpt-readable`` identities
  have a real image and the rest point at absent files (``--max-bad-fraction 1``): every step whose ranks hold
  two readable images trains the whole head, so the head, its momentum and checkpoint are full size while an
  epoch costs seconds. One epoch (save), then ``--resume --epochs 2`` (load + save). Per-rank peak RSS, and the
  peak up to the checkpoint's mtime vs after it (final model + train's health probe).

Under torchrun each rank runs this file's ``--rank`` wrapper around ``facecleaner.cli.main``: it writes its own
``getrusage`` peak RSS, an RSS timeline and the time of its last decoded image to a JSON file at exit. A
direct child's peak RSS comes from ``os.wait4``. A guard kills a child (tree) whose RSS passes ``--max-rss-gb``.
Everything goes to a markdown table on stdout and ``--json`` (default ``WORKDIR/bench_scale.json``).

    PYTHONPATH=$PWD python benchmarks/bench_scale.py --workdir /tmp/scale --part manifest --part recordio
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prune import machine_info  # noqa: E402 - the benchmarks folder is not a package

REPO = Path(__file__).resolve().parents[1]
PARTS = ("manifest", "workers", "recordio", "score", "checkpoint")
BATCH_ROWS = 1 << 20
GIB = 2**30
#: Few distinct real images: every generated row resolves to one of these.
DISTINCT_IMAGES = 8


# --- generated data ---------------------------------------------------------------------------------------------


def class_column(rows: int, identities: int, seed: int) -> np.ndarray:
    """Sorted class index per row (rows of an identity together, as identity folders list them); every identity
    has at least one row."""
    if rows < identities:
        raise ValueError(f"{rows} rows cannot hold {identities} identities")
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([np.arange(identities, dtype=np.int32),
                                   rng.integers(0, identities, rows - identities, dtype=np.int32)]))


def identity_names(class_index: pa.Array) -> pa.Array:
    """``id0012345`` for class 12345."""
    return pc.binary_join_element_wise("id", pc.utf8_lpad(pc.cast(class_index, pa.string()), 7, "0"), "")


def write_manifest(path: Path, rows: int, identities: int, extra_dim: int = 0, seed: int = 0) -> int:
    """A ``path,label`` Parquet manifest (paths ``id0012345/00007.jpg``, string labels ``id0012345``), built in 1M-row
    batches with pyarrow compute; ``extra_dim`` > 0 adds a float32 list column ``feature``. Returns the most rows
    of one identity (how many image names an identity folder needs)."""
    class_index = class_column(rows, identities, seed)
    counts = np.bincount(class_index, minlength=identities)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    fields = [pa.field("path", pa.string()), pa.field("label", pa.string())]
    if extra_dim:
        fields.append(pa.field("feature", pa.list_(pa.float32())))
    schema = pa.schema(fields)
    rng = np.random.default_rng(seed + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with pq.ParquetWriter(partial, schema) as writer:
        for start in range(0, rows, BATCH_ROWS):
            ci = class_index[start:start + BATCH_ROWS]
            ordinal = pc.utf8_lpad(pc.cast(pa.array(np.arange(start, start + len(ci)) - first[ci]), pa.string()),
                                   5, "0")
            label = identity_names(pa.array(ci))
            columns = [pc.binary_join_element_wise(label, "/", ordinal, ".jpg", ""), label]
            if extra_dim:
                values = pa.array(rng.standard_normal(len(ci) * extra_dim, dtype=np.float32))
                offsets = pa.array(np.arange(0, len(ci) * extra_dim + 1, extra_dim, dtype=np.int32))
                columns.append(pa.ListArray.from_arrays(offsets, values))
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema), row_group_size=BATCH_ROWS)
    partial.rename(path)
    return int(counts.max())


def tiny_jpegs(size: int) -> list[bytes]:
    """A few real ``size``² JPEGs (smooth random patterns), as the project's decoder reads them."""
    import io

    from PIL import Image

    rng = np.random.default_rng(7)
    images = []
    for _ in range(DISTINCT_IMAGES):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        pixels = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
        buffer = io.BytesIO()
        pixels.save(buffer, format="JPEG", quality=75)
        images.append(buffer.getvalue())
    return images


def image_tree(root: Path, identities: int, per_identity: int, image_size: int) -> None:
    """Make ``root/idNNNNNNN/KKKKK.jpg`` resolve to real files for the first ``identities`` identities: one shared
    folder of ``per_identity`` images (the few distinct JPEGs, repeated) and a symlink to it per identity."""
    shared = root / "_images"
    shared.mkdir(parents=True, exist_ok=True)
    jpegs = tiny_jpegs(image_size)
    for k in range(per_identity):
        (shared / f"{k:05d}.jpg").write_bytes(jpegs[k % len(jpegs)])
    for c in range(identities):
        link = root / f"id{c:07d}"
        if not link.is_symlink():
            link.symlink_to("_images", target_is_directory=True)


def dataset(work: Path, name: str, rows: int, identities: int, extra_dim: int = 0, readable: int = 0,
            image_size: int = 16) -> Path:
    """``work/name/manifest.parquet``, generated once and reused; ``readable`` identities get real images."""
    folder = work / name
    manifest = folder / "manifest.parquet"
    if not manifest.exists():
        started = time.perf_counter()
        per_identity = write_manifest(manifest, rows, identities, extra_dim)
        (folder / "per_identity").write_text(str(per_identity))
        print(f"generated {manifest} ({rows} rows, {identities} identities, {manifest.stat().st_size / GIB:.2f} GiB) "
              f"in {time.perf_counter() - started:.1f} s", flush=True)
    if readable:
        image_tree(folder, readable, int((folder / "per_identity").read_text()), image_size)
    return manifest


def write_recordio(folder: Path, rows: int, identities: int, seed: int = 0) -> Path:
    """``folder/train.rec`` + ``train.idx`` in insightface's layout, framed in bulk: every image record is one tiny
    JPEG with its own key and label, so records have one length and are laid out with NumPy."""
    from facecleaner.sources.recordio import frame_record, pack_record

    rec, idx = folder / "train.rec", folder / "train.idx"
    if rec.exists() and idx.exists():
        return rec
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jpeg = tiny_jpegs(16)[0]
    class_index = class_column(rows, identities, seed)
    counts = np.bincount(class_index, minlength=identities)
    first_identity = rows + 1
    header = frame_record(pack_record((first_identity, first_identity + identities), b""))
    image_size = len(frame_record(pack_record(0.0, jpeg, id=1)))
    range_size = len(frame_record(pack_record((1.0, 2.0), b"", id=first_identity)))
    image_layout = np.dtype([("magic", "<u4"), ("lrecord", "<u4"), ("flag", "<u4"), ("label", "<f4"),
                             ("id", "<u8"), ("id2", "<u8"), ("image", "u1", image_size - 32)])
    range_layout = np.dtype([("magic", "<u4"), ("lrecord", "<u4"), ("flag", "<u4"), ("label", "<f4"),
                             ("id", "<u8"), ("id2", "<u8"), ("range", "<f4", 2)])
    template = np.frombuffer(frame_record(pack_record(0.0, jpeg, id=1)), dtype=image_layout)[0]
    range_template = np.frombuffer(frame_record(pack_record((1.0, 2.0), b"", id=first_identity)), range_layout)[0]
    keys_written, offsets_written = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
    with open(rec.with_name("train.rec.partial"), "wb") as out:
        out.write(header)
        position = len(header)
        for start in range(0, rows, BATCH_ROWS):
            ci = class_index[start:start + BATCH_ROWS]
            block = np.full(len(ci), template, dtype=image_layout)
            keys = np.arange(start + 1, start + 1 + len(ci), dtype=np.int64)
            block["label"] = ci.astype(np.float32)
            block["id"] = keys
            block.tofile(out)
            keys_written.append(keys)
            offsets_written.append(position + image_size * np.arange(len(ci), dtype=np.int64))
            position += image_size * len(ci)
        ends = np.cumsum(counts) + 1
        block = np.full(identities, range_template, dtype=range_layout)
        block["id"] = first_identity + np.arange(identities)
        block["range"] = np.stack([ends - counts, ends], axis=1).astype(np.float32)
        block.tofile(out)
        keys_written.append(first_identity + np.arange(identities, dtype=np.int64))
        offsets_written.append(position + range_size * np.arange(identities, dtype=np.int64))
    _check_framing(rec.with_name("train.rec.partial"), class_index, image_size, len(header), jpeg)
    with open(idx.with_name("train.idx.partial"), "wb") as out:
        for keys, offsets in zip(keys_written, offsets_written, strict=True):
            for at in range(0, len(keys), BATCH_ROWS):
                lines = pc.binary_join_element_wise(pc.cast(pa.array(keys[at:at + BATCH_ROWS]), pa.string()),
                                                    pc.cast(pa.array(offsets[at:at + BATCH_ROWS]), pa.string()), "\t")
                lines = pc.binary_join_element_wise(lines, "", "\n")
                _, value_offsets, data = lines.buffers()
                bounds = np.frombuffer(value_offsets, np.int32, len(lines) + 1, lines.offset)
                out.write(memoryview(data)[bounds[0]:bounds[-1]])
    rec.with_name("train.rec.partial").rename(rec)
    idx.with_name("train.idx.partial").rename(idx)
    print(f"generated {rec} ({rows} images, {identities} identities, {rec.stat().st_size / GIB:.2f} GiB) in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return rec


def _check_framing(rec: Path, class_index: np.ndarray, image_size: int, header_size: int, jpeg: bytes) -> None:
    """The bulk-framed records are byte for byte what ``frame_record(pack_record(...))`` writes (a sample of keys)."""
    from facecleaner.sources.recordio import frame_record, pack_record

    with open(rec, "rb") as handle:
        for row in np.unique(np.linspace(0, len(class_index) - 1, 50).astype(np.int64)):
            handle.seek(header_size + int(row) * image_size)
            expected = frame_record(pack_record(float(class_index[row]), jpeg, id=int(row) + 1))
            if handle.read(image_size) != expected:
                raise AssertionError(f"record key {row + 1} of {rec} is not framed as frame_record frames it")


# --- measuring children ---------------------------------------------------------------------------------------


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (0 for processes already gone)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


def run_child(cmd: list[str], max_rss_gb: float, env: dict[str, str] | None = None,
              poll: Callable[[], None] | None = None, timeout_s: float = 3600) -> dict[str, Any]:
    """Run ``cmd``; its wall time, its own peak RSS (``os.wait4``), the peak RSS of its whole process tree as
    polled every 0.2 s, and its last stdout line as JSON when there is one. The tree is killed past
    ``max_rss_gb`` (the box is shared) or ``timeout_s``."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_scale_{os.getpid()}_{time.monotonic_ns()}.log"
    with open(log, "w+") as output:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        tree_peak, killed = 0, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            tree_peak = max(tree_peak, tree_rss(proc.pid))
            if poll:
                poll()
            if killed is None and tree_peak > max_rss_gb * GIB:
                killed = f"killed: its processes held {tree_peak / GIB:.1f} GiB, over --max-rss-gb {max_rss_gb}"
            elif killed is None and time.perf_counter() - started > timeout_s:
                killed = f"killed after {timeout_s:.0f} s"
            if killed is not None:
                os.killpg(proc.pid, 9)
            time.sleep(0.2)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read()
    log.unlink()
    result: dict[str, Any] = {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20, "tree_peak_gib": tree_peak / GIB,
                              "returncode": proc.returncode}
    if killed or proc.returncode != 0:
        result["error"] = killed or f"exit {proc.returncode}: {text[-2000:]}"
        print(f"  FAILED: {result['error']}", flush=True)
        return result
    last = text.strip().splitlines()[-1] if text.strip() else ""
    if last.startswith("{"):
        result.update(json.loads(last))
    result["log_tail"] = text[-1500:]
    return result


def _child_open(data: str) -> None:
    """What every rank of train/score does before its first batch: open, table, labels, fingerprint."""
    marks = [time.perf_counter()]
    from facecleaner.sources import open_source, table_fingerprint
    from facecleaner.sources.labels import encode_labels

    marks.append(time.perf_counter())
    source = open_source(data)
    marks.append(time.perf_counter())
    table = source.table()
    marks.append(time.perf_counter())
    _, classes = encode_labels(table["label"])
    marks.append(time.perf_counter())
    table_fingerprint(table)
    marks.append(time.perf_counter())
    spans = np.diff(marks).tolist()
    print(json.dumps({"rows": len(table), "identities": len(classes), "import_s": spans[0], "open_s": spans[1],
                      "table_s": spans[2], "encode_s": spans[3], "fingerprint_s": spans[4]}))


def private_bytes() -> int:
    """This process's private memory: Private_Clean + Private_Dirty of /proc/self/smaps_rollup."""
    total = 0
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


_WORKER_START: dict[str, int] = {}


def _worker_started(worker_id: int) -> None:
    _WORKER_START["private"] = private_bytes()


def _worker_report(items: list[int]) -> dict[str, int]:
    """A batch's whole result (made in the worker): who read it, and that worker's private memory now."""
    from torch.utils.data import get_worker_info

    return {"worker": get_worker_info().id, "pid": os.getpid(), "start": _WORKER_START["private"],
            "now": private_bytes(), "samples": len(items)}


class ReadEverySample:
    """Item ``i`` is what a worker does for sample ``i``: decode it (``DecodedImages``) or, path-only, find the
    path a FileSource opens; the pixels are dropped, so only what the source itself makes a worker copy grows."""

    def __init__(self, data: str, decode: bool, image_size: int) -> None:
        from facecleaner.sources import open_source
        from facecleaner.sources.dataset import DecodedImages

        self.source = open_source(data)
        self.decoded = DecodedImages(self.source, image_size) if decode else None
        self.length = len(self.source.table())

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        if self.decoded is not None:
            return int(self.decoded[index][1])
        return len(self.source.resolved_path(index))


def _child_workers(data: str, decode: bool, image_size: int, workers: int, batch: int) -> None:
    from torch.utils.data import DataLoader

    samples = ReadEverySample(data, decode, image_size)
    batches = [range(start, min(start + batch, len(samples))) for start in range(0, len(samples), batch)]
    loader = DataLoader(samples, batch_sampler=batches, num_workers=workers, collate_fn=_worker_report,
                        worker_init_fn=_worker_started, persistent_workers=True, prefetch_factor=4,
                        multiprocessing_context="fork")
    started = time.perf_counter()
    last: dict[int, dict[str, int]] = {}
    read = 0
    for report in loader:
        last[report["worker"]] = report
        read += report["samples"]
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": len(samples), "read": read, "read_s": seconds, "main_private_gib": private_bytes() / GIB,
                      "workers": [{"pid": r["pid"], "start_mib": r["start"] / 2**20, "end_mib": r["now"] / 2**20,
                                   "growth_mib": (r["now"] - r["start"]) / 2**20} for r in last.values()]}))


def _child_rank(report_dir: str, argv: list[str]) -> None:
    """One torchrun rank: ``facecleaner.cli.main(argv)``, then its own peak RSS, RSS timeline and the time of the
    last image it decoded in-process go to ``report_dir/rank<R>.json``."""
    from facecleaner.cli import main
    from facecleaner.sources.dataset import DecodedImages

    timeline: list[tuple[float, int]] = []
    last_decode = [0.0]
    page = os.sysconf("SC_PAGE_SIZE")
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            timeline.append((time.time(), int(Path("/proc/self/statm").read_text().split()[1]) * page))
            stop.wait(0.1)

    real_getitem = DecodedImages.__getitem__

    def timed_getitem(self: DecodedImages, index: int) -> Any:
        item = real_getitem(self, index)
        last_decode[0] = time.time()
        return item

    DecodedImages.__getitem__ = timed_getitem
    threading.Thread(target=sample, daemon=True).start()
    try:
        main(argv, prog_name="facecleaner")
    finally:
        stop.set()
        rank = os.environ.get("RANK", "0")
        Path(report_dir, f"rank{rank}.json").write_text(json.dumps({
            "rank": int(rank), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "workers_peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
            "last_decode": last_decode[0], "timeline": timeline}))


def torchrun(args: argparse.Namespace, report_dir: Path, argv: list[str],
             poll: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run ``facecleaner ARGV`` on 2 gloo ranks through the rank wrapper; the run's figures and each rank's report."""
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks),
           os.path.abspath(__file__), "--rank", str(report_dir), *argv]
    env = {"OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = run_child(cmd, args.max_rss_gb, env, poll, args.timeout_s)
    result["ranks"] = [json.loads(p.read_text()) for p in sorted(report_dir.glob("rank*.json"))]
    return result


def timeline_peak(rank: dict[str, Any], after: float | None = None, before: float | None = None) -> float:
    """The largest sampled RSS (GiB) of a rank between two times."""
    values = [rss for t, rss in rank["timeline"] if (after is None or t >= after) and (before is None or t <= before)]
    return max(values, default=0) / GIB


# --- parts -----------------------------------------------------------------------------------------------------


def part_manifest(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    cases = [(f"manifest {args.rows:,} rows, {ids:,} identities", args.rows, ids, 0) for ids in args.identities]
    if args.extra_rows:
        cases.append((f"manifest {args.extra_rows:,} rows, {args.identities[0]:,} identities, {args.extra_dim}-d "
                      "float32 list column", args.extra_rows, args.identities[0], args.extra_dim))
    figures = []
    for title, rows, ids, extra in cases:
        data = dataset(work, f"manifest_{rows}_{ids}_{extra}", rows, ids, extra)
        result = run_child([sys.executable, __file__, "--child-open", str(data)], args.max_rss_gb)
        figures.append({"part": "manifest", "case": title, **result})
        _print_open(result)
    return figures


def _print_open(result: dict[str, Any]) -> None:
    if "error" not in result:
        print(f"  wall {result['wall_s']:.1f} s (import {result['import_s']:.1f}, open_source {result['open_s']:.1f}, "
              f"table {result['table_s']:.1f}, encode_labels {result['encode_s']:.1f}, fingerprint "
              f"{result['fingerprint_s']:.1f}), peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)


def part_workers(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    cases = [("path only", args.worker_rows, False, 0)]
    if args.worker_decoded_rows:
        cases.append(("DecodedImages", args.worker_decoded_rows, True, args.identities[0]))
    figures = []
    for how, rows, decode, readable in cases:
        ids = min(args.identities[0], rows)
        data = dataset(work, f"manifest_{rows}_{ids}_0", rows, ids, readable=min(readable, ids),
                       image_size=args.image_size)
        result = run_child([sys.executable, __file__, "--child-workers", str(data), str(int(decode)),
                            str(args.image_size), str(args.loader_workers), str(args.worker_batch)],
                           args.max_rss_gb, {"OMP_NUM_THREADS": "1"}, timeout_s=args.timeout_s)
        figures.append({"part": "workers", "case": f"{args.loader_workers} forked workers, {how}, {rows:,} rows",
                        **result})
        if "error" not in result:
            growth = _mib_list([w["growth_mib"] for w in result["workers"]])
            print(f"  {how}: {result['read']} samples in {result['read_s']:.1f} s; worker private growth {growth} MiB; "
                  f"main peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)
    return figures


def part_recordio(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rec = write_recordio(work / f"rec_{args.rec_rows}_{args.rec_identities}", args.rec_rows, args.rec_identities)
    result = run_child([sys.executable, __file__, "--child-open", str(rec)], args.max_rss_gb, timeout_s=args.timeout_s)
    _print_open(result)
    return [{"part": "recordio", "case": f"RecordIO {args.rec_rows:,} records, {args.rec_identities:,} identities",
             **result}]


def score_model(folder: Path, classes: list[str], embedding: int, image_size: int) -> Path:
    """A run dir holding a random-weight tiny model over ``classes`` (what score needs of a run dir)."""
    import torch

    from facecleaner.model.checkpoint import MODEL_FILE, ModelSpec, save_model

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MODEL_FILE).exists():
        torch.manual_seed(0)
        spec = ModelSpec(backbone="tiny", embedding_size=embedding, image_size=image_size, subcenters=3, scale=64.0,
                         margin=0.5, classes=classes)
        backbone, head = spec.build()
        save_model(folder / MODEL_FILE, spec, backbone, head)
    return folder


def part_score(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    figures = []
    for rows in args.score_rows:
        ids = args.score_identities
        data = dataset(work, f"score_{rows}_{ids}", rows, ids, readable=ids, image_size=args.image_size)
        names = pc.unique(pq.read_table(data, columns=["label"])["label"]).to_pylist()
        run_dir = score_model(work / f"score_model_{ids}_{args.score_embedding}", sorted(names),
                              args.score_embedding, args.image_size)
        out = work / f"score_out_{rows}" / "scores.parquet"
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir(parents=True)
        work_files: dict[str, float] = {}

        def watch(folder: Path = out.parent, work_files: dict[str, float] = work_files) -> None:
            """Note the mtime of every file score writes before its outputs."""
            for path in folder.rglob("*"):
                if path.is_file() and path.suffix in (".npz", ".npy", ".parquet", ".json") and path.name not in (
                        "scores.parquet", "scores.classes.parquet", "embeddings.npy"):
                    try:
                        work_files[str(path)] = path.stat().st_mtime
                    except OSError:
                        pass

        result = torchrun(args, work / "score_ranks", [
            "score", str(run_dir), str(data), "--out", str(out), "--embeddings", str(out.parent / "embeddings.npy"),
            "--device", "cpu", "--batch-size", str(args.score_batch), "--json", "--quiet"], watch)
        figure = {"part": "score", "case": f"score, {args.ranks} gloo ranks, {rows:,} rows, {ids:,} classes, tiny "
                  f"{args.image_size}px {args.score_embedding}-d, --embeddings", **result}
        if "error" not in result and out.exists():
            written = out.stat().st_mtime
            last_decode = max(r["last_decode"] for r in result["ranks"])
            figure.update(merge_s=written - last_decode, work_files=len(work_files),
                          merge_from_last_work_file_s=written - max(work_files.values(), default=written),
                          rows_per_s=rows / result["wall_s"],
                          rank_peak_rss_gib=[r["peak_rss_gib"] for r in result["ranks"]],
                          rank_peak_before_merge_gib=[timeline_peak(r, before=last_decode) for r in result["ranks"]],
                          rank_peak_merge_gib=[timeline_peak(r, after=last_decode) for r in result["ranks"]])
            print(f"  {rows} rows: wall {result['wall_s']:.1f} s ({figure['rows_per_s']:.0f} rows/s), merge "
                  f"{figure['merge_s']:.1f} s, rank peak RSS {_gib_list(figure['rank_peak_rss_gib'])} GiB (in the "
                  f"merge {_gib_list(figure['rank_peak_merge_gib'])})", flush=True)
        figures.append(figure)
    return figures


def _gib_list(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _mib_list(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values)


def part_checkpoint(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    ids = args.ckpt_identities
    data = dataset(work, f"ckpt_{ids}", ids, ids, readable=args.ckpt_readable, image_size=args.image_size)
    run_dir = work / f"ckpt_run_{ids}"
    shutil.rmtree(run_dir, ignore_errors=True)
    common = ["--out", str(run_dir), "--device", "cpu", "--max-bad-fraction", "1", "--json", "--quiet"]
    steps = [("save (epoch 1)", ["train", str(data), *common, "--backbone", "tiny", "--image-size",
                                 str(args.image_size), "--embedding-size", "512", "--subcenters", "3", "--batch-size",
                                 str(args.ckpt_batch), "--epochs", "1"]),
             ("resume + save (epoch 2)", ["train", str(data), *common, "--resume", "--epochs", "2"])]
    figures = []
    for what, argv in steps:
        started = time.time()
        result = torchrun(args, work / "ckpt_ranks", argv)
        figure = {"part": "checkpoint", "case": f"train {what}, {args.ranks} gloo ranks, {ids:,} identities × K=3 × "
                  f"512-d", **result}
        checkpoint = run_dir / "checkpoint.pt"
        if "error" not in result and checkpoint.exists():
            saved = checkpoint.stat().st_mtime
            figure.update(checkpoint_gib=checkpoint.stat().st_size / GIB, checkpoint_after_s=saved - started,
                          rank_peak_rss_gib=[r["peak_rss_gib"] for r in result["ranks"]],
                          rank_peak_to_checkpoint_gib=[timeline_peak(r, before=saved) for r in result["ranks"]],
                          rank_peak_after_checkpoint_gib=[timeline_peak(r, after=saved) for r in result["ranks"]])
            print(f"  {what}: wall {result['wall_s']:.1f} s, checkpoint {figure['checkpoint_gib']:.2f} GiB, rank peak "
                  f"RSS {_gib_list(figure['rank_peak_rss_gib'])} GiB (until the checkpoint is written "
                  f"{_gib_list(figure['rank_peak_to_checkpoint_gib'])}; after it "
                  f"{_gib_list(figure['rank_peak_after_checkpoint_gib'])})", flush=True)
        figures.append(figure)
        if "error" in result:
            break
    shutil.rmtree(run_dir, ignore_errors=True)
    return figures


# --- report ----------------------------------------------------------------------------------------------------


def table_rows(figures: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """One markdown row per measurement: what, wall, peak RSS, the other figures, target and whether it is met."""
    lines = ["| part | case | wall | peak RSS | details | target |", "| --- | --- | --- | --- | --- | --- |"]
    for f in figures:
        if "error" in f:
            lines.append(f"| {f['part']} | {f['case']} | – | – | {f['error'].splitlines()[0][:200]} | not measured |")
            continue
        wall, rss, details, target = f"{f['wall_s']:.1f} s", f"{f['peak_rss_gib']:.2f} GiB", "", ""
        if f["part"] in ("manifest", "recordio"):
            details = (f"open_source {f['open_s']:.1f} s, table {f['table_s']:.1f} s, encode_labels {f['encode_s']:.1f}"
                       f" s, fingerprint {f['fingerprint_s']:.1f} s, import {f['import_s']:.1f} s")
            limit = args.target_manifest_s if f["part"] == "manifest" else args.target_recordio_s
            met = f["wall_s"] <= limit and (f["part"] == "recordio" or f["peak_rss_gib"] <= args.target_rank_gib)
            target = (f"≤ {limit:g} s" + (f", ≤ {args.target_rank_gib:g} GB" if f["part"] == "manifest" else "")
                      + (" MET" if met else " MISSED"))
        elif f["part"] == "workers":
            growth = [w["growth_mib"] for w in f["workers"]]
            rss = f"main {f['peak_rss_gib']:.2f} GiB"
            start = [w["start_mib"] for w in f["workers"]]
            details = (f"private growth per worker {_mib_list(growth)} MiB (at the worker's start {_mib_list(start)} "
                       f"MiB); read {f['read_s']:.1f} s")
            target = f"≤ {args.target_worker_mb:g} MB " + ("MET" if max(growth) * 2**20 <= args.target_worker_mb * 1e6
                                                            else "MISSED")
        elif f["part"] == "score":
            rss = f"ranks {_gib_list(f['rank_peak_rss_gib'])} GiB"
            details = (f"{f['rows_per_s']:.0f} rows/s; merge (last decode → manifest written) {f['merge_s']:.1f} s; "
                       f"peak in the merge {_gib_list(f['rank_peak_merge_gib'])} GiB, before it "
                       f"{_gib_list(f['rank_peak_before_merge_gib'])} GiB")
            target = "no rank over its share + 10 %"
        elif f["part"] == "checkpoint":
            rss = f"ranks {_gib_list(f['rank_peak_rss_gib'])} GiB"
            details = (f"checkpoint {f['checkpoint_gib']:.2f} GiB written after {f['checkpoint_after_s']:.0f} s; peak "
                       f"until it is written {_gib_list(f['rank_peak_to_checkpoint_gib'])} GiB, after it (model.pt + "
                       f"health probe) {_gib_list(f['rank_peak_after_checkpoint_gib'])} GiB")
            target = "no rank over its share + 10 % of the head"
        lines.append(f"| {f['part']} | {f['case']} | {wall} | {rss} | {details} | {target} |")
    return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-open":
        _child_open(sys.argv[2])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child-workers":
        _child_workers(sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--rank":
        _child_rank(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=(*PARTS, "all"), help="repeatable [default: all]")
    parser.add_argument("--workdir", type=Path, required=True, help="generated data (kept and reused) and outputs")
    parser.add_argument("--json", type=Path, help="all figures [default: WORKDIR/bench_scale.json]")
    parser.add_argument("--rows", type=int, default=12_000_000, help="manifest rows")
    parser.add_argument("--identities", type=int, nargs="+", default=[500_000, 2_000_000])
    parser.add_argument("--extra-rows", type=int, default=12_000_000,
                        help="rows of the manifest with the list column (0: skip it)")
    parser.add_argument("--extra-dim", type=int, default=128)
    parser.add_argument("--worker-rows", type=int, default=12_000_000, help="rows whose paths the workers read")
    parser.add_argument("--worker-decoded-rows", type=int, default=1_000_000,
                        help="rows the workers decode with DecodedImages (0: skip)")
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--worker-batch", type=int, default=1024)
    parser.add_argument("--rec-rows", type=int, default=12_000_000)
    parser.add_argument("--rec-identities", type=int, default=500_000)
    parser.add_argument("--score-rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--score-identities", type=int, default=50_000, help="classes of the score model")
    parser.add_argument("--score-embedding", type=int, default=64)
    parser.add_argument("--score-batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=16, help="image size of the tiny backbone (its smallest)")
    parser.add_argument("--ckpt-identities", type=int, default=500_000,
                        help="head size of the checkpoint part (the issue's 2,000,000 needs ~24 GB of RAM)")
    parser.add_argument("--ckpt-readable", type=int, default=2_000, help="identities with a real image")
    parser.add_argument("--ckpt-batch", type=int, default=4_096, help="train --batch-size (per rank)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per rank")
    parser.add_argument("--max-rss-gb", type=float, default=14.0, help="kill a measured process tree past this")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="kill a measured process tree after this")
    parser.add_argument("--target-manifest-s", type=float, default=20.0)
    parser.add_argument("--target-rank-gib", type=float, default=3.0)
    parser.add_argument("--target-worker-mb", type=float, default=100.0)
    parser.add_argument("--target-recordio-s", type=float, default=15.0)
    args = parser.parse_args()
    parts = PARTS if not args.part or "all" in args.part else [p for p in PARTS if p in args.part]
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    print(f"machine: {machine}; CUDA not used (gloo on the CPU)", flush=True)
    runners = {"manifest": part_manifest, "workers": part_workers, "recordio": part_recordio, "score": part_score,
               "checkpoint": part_checkpoint}
    figures: list[dict[str, Any]] = []
    for part in parts:
        print(f"== {part}", flush=True)
        figures.extend(runners[part](args, work))
    lines = table_rows(figures, args)
    print(f"\nMachine: {machine}. Every figure is one run on a shared box: timings are noisy.\n")
    print("\n".join(lines))
    skipped = [p for p in PARTS if p not in parts]
    if skipped:
        print(f"\nNot run: {', '.join(skipped)}")
    for figure in figures:
        for rank in figure.get("ranks", []):
            rank.pop("timeline", None)
    destination = args.json or work / "bench_scale.json"
    destination.write_text(json.dumps({"machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
                                       "figures": figures}, indent=2) + "\n")
    print(f"\nfigures written to {destination}")


if __name__ == "__main__":
    main()
