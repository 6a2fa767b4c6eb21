"""Queries/s of the nearest-other-class search: faiss IndexFlatIP against facecleaner's chunked matmul.

Why: ``score`` runs this search for every image over every sub-center (C × K × D per query); the issue measured
faiss slower than the matmul on the CPU, and this script is the record of that choice. For each class count it
builds random unit sub-centers (C, K, D) and batches of embeddings near a random own sub-center (cosine ≈ 0.6,
so the own class is usually the nearest and has to be skipped), then times, one batch per call:

- ``faiss``: IndexFlatIP over all C·K sub-centers, top K+1, the first that is not the own class (what
  ``score`` did on the CPU before), when faiss is installed;
- ``fp32 M=1``: ``OtherClassSearch`` in fp32 with one candidate (the old chunked torch search's work);
- ``fp32 M=8``: the CPU default (fp32 candidates, the best 8 rescored);
- ``bf16 M=8``: the CUDA default (bf16 candidates, the best 8 rescored in fp32), here on the CPU;
- ``bf16 M=1``: bf16 with a single candidate, to count how often bf16's first candidate is not the exact best.

Each line gives the median queries/s over ``--repeats`` timed batches (after one untimed batch), the threads
used, peak RSS, and the agreement with ``fp32 M=8``: the share of samples given the same class and the
largest cosine difference.

    python benchmarks/bench_search.py --classes 50000 150000 --batch 256
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from facecleaner.scoring.search import OtherClassSearch

Search = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def unit_subcenters(classes: int, per_class: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Random unit sub-centers (C, K, D), normalized in place so the peak stays at one copy."""
    subcenters = torch.randn(classes, per_class, dim, generator=generator)
    return subcenters.div_(subcenters.norm(dim=2, keepdim=True))


def query_batches(subcenters: torch.Tensor, batch: int, count: int,
                  generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of unit embeddings at cosine ≈ 0.6 from one of their own class's sub-centers."""
    classes, per_class, dim = subcenters.shape
    batches = []
    for _ in range(count):
        labels = torch.randint(0, classes, (batch,), generator=generator)
        picked = subcenters[labels, torch.randint(0, per_class, (batch,), generator=generator)]
        noise = torch.randn(batch, dim, generator=generator) * (1.33 / dim**0.5)
        embeddings = picked + noise
        batches.append((embeddings / embeddings.norm(dim=1, keepdim=True), labels))
    return batches


def faiss_search(subcenters: torch.Tensor) -> Search | None:
    """The CPU search ``score`` used before: faiss top K+1 over the sub-centers, the first of another class."""
    try:
        import faiss
    except ImportError:
        return None
    classes, per_class, dim = subcenters.shape
    index = faiss.IndexFlatIP(dim)
    index.add(subcenters.reshape(-1, dim).numpy())

    def search(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cosines, ids = index.search(embeddings.numpy(), per_class + 1)
        owner = ids // per_class
        other = owner != labels.numpy()[:, None]
        first = other.argmax(axis=1)
        rows = np.arange(len(owner))
        found = other[rows, first]
        return (torch.from_numpy(np.where(found, owner[rows, first], -1)),
                torch.from_numpy(np.where(found, cosines[rows, first], -np.inf)))

    return search


def time_search(search: Search, batches: list[tuple[torch.Tensor, torch.Tensor]],
                repeats: int) -> tuple[float, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Median queries/s over ``repeats`` batches after one untimed one, and the answers for every batch."""
    answers = [search(*batches[0])]
    seconds = []
    for embeddings, labels in batches[1:repeats + 1]:
        start = time.perf_counter()
        answers.append(search(embeddings, labels))
        seconds.append(time.perf_counter() - start)
    return len(batches[0][0]) / statistics.median(seconds), answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[50_000, 150_000])
    parser.add_argument("--subcenters", type=int, default=3)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per method")
    parser.add_argument("--chunk-classes", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
        faiss_note = f"faiss {faiss.__version__} threads={faiss.omp_get_max_threads()}"
    except ImportError:
        faiss_note = "faiss not installed"
    print(f"torch {torch.__version__} threads={threads}, {faiss_note}, {platform.processor() or platform.machine()}, "
          f"batch {args.batch}, K={args.subcenters}, {args.dim}-d, chunk {args.chunk_classes} classes")
    generator = torch.Generator().manual_seed(0)
    for classes in args.classes:
        subcenters = unit_subcenters(classes, args.subcenters, args.dim, generator)
        batches = query_batches(subcenters, args.batch, args.repeats + 1, generator)
        methods: dict[str, Search | None] = {"fp32 M=8": OtherClassSearch(subcenters, "fp32", 8, args.chunk_classes)}
        methods["faiss"] = faiss_search(subcenters)
        for precision, candidates in (("fp32", 1), ("bf16", 8), ("bf16", 1)):
            methods[f"{precision} M={candidates}"] = OtherClassSearch(subcenters, precision, candidates,
                                                                      args.chunk_classes)
        reference = None
        for name, search in methods.items():
            if search is None:
                continue
            rate, answers = time_search(search, batches, args.repeats)
            found = torch.cat([a[0] for a in answers])
            cosine = torch.cat([a[1].float() for a in answers])
            reference = reference or (found, cosine)
            same = (found == reference[0]).float().mean().item()
            gap = (cosine - reference[1]).abs().max().item()
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(f"RESULT classes={classes} method={name!r} queries_per_s={rate:.1f} threads={threads} "
                  f"same_class_as_fp32={same:.4f} max_cos_diff={gap:.2e} peak_rss_gb={rss:.2f}", flush=True)
        del methods, subcenters, batches


if __name__ == "__main__":
    main()
