"""Per-GPU memory of the class-sharded sub-center head under torchrun: the README's table, computed.

Per GPU, for C identities × K sub-centers of D floats split over W GPUs, a per-GPU batch B (global N = B·W)
and partial-FC sample rate r (classes kept per step = r·C/W):
  weight, gradient, SGD momentum: C·K·D·4/W bytes each (fp32 master weights; the gradient covers the whole
  shard since index_select scatters into it),
  logits: N·(r·C/W)·(K + 3)·4 bytes — the (N, r·C/W·K) cosines, their max over K, the margin logits and the
  softmax's exp/gradient, in fp32 (the margin and softmax always run in fp32).
Activations of the backbone are not included (they do not grow with C).

    python benchmarks/head_memory.py [--gpus 8] [--batch 128] [--dim 512] [--subcenters 3]
"""

from __future__ import annotations

import argparse

GIB = 2**30


def head_bytes(classes: int, subcenters: int, dim: int, gpus: int) -> float:
    return classes * subcenters * dim * 4 / gpus


def logits_bytes(classes: int, subcenters: int, gpus: int, batch: int, rate: float) -> float:
    return batch * gpus * (rate * classes / gpus) * (subcenters + 3) * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128, help="per-GPU batch size")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--subcenters", type=int, default=3)
    args = parser.parse_args()
    print(f"Per GPU, {args.gpus} GPUs, batch {args.batch}/GPU (global {args.batch * args.gpus}), "
          f"K={args.subcenters}, {args.dim}-d, fp32 head:\n")
    print("| identities | sample rate | weight | gradient | momentum | logits | head total |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for classes in (500_000, 2_000_000, 10_000_000):
        for rate in (1.0, 0.3, 0.1):
            weight = head_bytes(classes, args.subcenters, args.dim, args.gpus)
            logits = logits_bytes(classes, args.subcenters, args.gpus, args.batch, rate)
            total = 3 * weight + logits
            print(f"| {classes:,} | {rate:g} | {weight / GIB:.2f} GiB | {weight / GIB:.2f} GiB | "
                  f"{weight / GIB:.2f} GiB | {logits / GIB:.2f} GiB | {total / GIB:.2f} GiB |")


if __name__ == "__main__":
    main()
