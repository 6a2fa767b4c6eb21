"""The nearest *other* class of each sample: reduced-precision candidates over all sub-centers, rescored in fp32.

At 2M identities × K=3 × 512-d the search is ≈ 6 GFLOP per image, as much as an r50 forward pass; in fp32 it caps
``score`` near 10K img/s on an H200, while bf16 tensor cores run it several times faster. So it runs in two
stages, the same code on the CPU and on a GPU:

1. Candidates: the cosines to every sub-center, a chunk of classes at a time so memory stays at
   B × chunk × K whatever the class count, in ``precision``; the max over each class's sub-centers, the
   sample's own class masked out, and the ``candidates`` (M) best classes kept.
2. Rescoring: the cosines to those M classes' sub-centers again, in fp32, and the best taken. The reported
   cosine is always an fp32 cosine to a real other class, never a reduced-precision one.

Why M candidates are enough. In bf16 (unit roundoff u = 2^-8) each coordinate is rounded with relative error
at most u, the products are summed in fp32 and the sum is rounded to bf16, so for unit vectors
|ĉ − c| ≤ (2u + u²)·Σ|x_i·w_i| + D·2^-24 + u·|ĉ| ≤ ε ≈ 3u ≈ 0.012 (Cauchy–Schwarz: Σ|x_i·w_i| ≤ 1), and a
class's max over its sub-centers moves by at most ε too. The exact best other class is dropped only when M
other classes score at least as high as it approximately, i.e. each lies within 2ε of it in exact cosine: an
(M+1)-way near-tie. Otherwise the answer is exactly the fp32 search's; in a near-tie it is another class whose
exact cosine is reported and is at most 2ε below the best. ε is the worst case (every rounding error of one
sign): independent rounding errors give ≈ u·√(2/3D) ≈ 1.4e-4 at D=512, and rounding the sum only merges
scores within one bf16 step (2^-9 for cosines in [0.25, 0.5)), so missing the best needs M other classes
within about 0.002 of it; benchmarks/bench_search.py counts how often the best is not the first candidate.
In fp32, ε ≈ D·2^-24 ≈ 3e-5. Masking the own class before keeping candidates makes M independent of K (a
top-(K+1) over sub-centers would need K of its slots for the own class).

faiss is not used: its IndexFlatIP on the CPU is slower than this chunked matmul and finds the same answer
(benchmarks/bench_search.py).
"""

from __future__ import annotations

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def default_precision(device: torch.device) -> str:
    """bf16 candidates on CUDA (tensor cores); exact fp32 elsewhere.

    On the CPU bf16 is fast only with AMX/AVX512-BF16 (about 2.5× fp32 on the 2-core box, where it has them)
    and may be slower than fp32 without them (not measured), so it is opt-in there."""
    return "bf16" if device.type == "cuda" else "fp32"


class OtherClassSearch:
    """Built once per scoring run from the unit sub-centers (C, K, D); called batch by batch."""

    def __init__(self, subcenters: torch.Tensor, precision: str | None = None, candidates: int = 8,
                 chunk_classes: int = 65536) -> None:
        precision = default_precision(subcenters.device) if precision is None else precision
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        if candidates < 1 or chunk_classes < 1:
            raise ValueError(f"candidates ({candidates}) and chunk_classes ({chunk_classes}) must be at least 1")
        self.subcenters = subcenters
        self.classes, self.per_class, dim = subcenters.shape
        self.precision = precision
        self.candidates = candidates
        self.chunk_classes = chunk_classes
        # Converted once here, not per batch: at 2M classes a per-batch copy would cost more than the matmul.
        self._rows = subcenters.reshape(-1, dim).to(PRECISIONS[precision])

    def __call__(self, embeddings: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(nearest other class or -1, its fp32 cosine or -inf) for unit ``embeddings`` (B, D) labelled ``classes``."""
        candidates = self._candidate_classes(embeddings, classes)
        # A product and a sum, not a matmul: stays fp32 even under autocast or with TF32 matmuls allowed.
        cosines = (embeddings[:, None, None, :] * self.subcenters[candidates]).sum(dim=3).amax(dim=2)
        cosines = cosines.masked_fill(candidates == classes[:, None], -torch.inf)
        best_cos, pick = cosines.max(dim=1)
        best_class = candidates.gather(1, pick[:, None]).squeeze(1)
        return torch.where(best_cos == -torch.inf, -1, best_class), best_cos

    def _candidate_classes(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The M classes with the highest approximate cosines, own class masked (B, min(M, C)).

        With fewer than M other classes the own class fills the remaining slots; the caller masks it again.
        Only tensor indexing, no boolean masks, so a CUDA device never waits for the host inside the loop."""
        queries = embeddings.to(self._rows.dtype)
        count = len(embeddings)
        rows = torch.arange(count, device=embeddings.device)
        best_score = torch.empty((count, 0), dtype=queries.dtype, device=embeddings.device)
        best_class = torch.empty((count, 0), dtype=torch.int64, device=embeddings.device)
        for start in range(0, self.classes, self.chunk_classes):
            stop = min(start + self.chunk_classes, self.classes)
            block = self._rows[start * self.per_class:stop * self.per_class]
            # (chunk·K, B) rather than (B, chunk·K): the max over K then reads contiguous rows of B. On the
            # 2-core box that cut the work after the matmul from ~0.27 s to ~0.1 s per 50K classes at B=256.
            sims = (block @ queries.T).view(stop - start, self.per_class, count).amax(dim=1)
            local = (classes - start).clamp(0, stop - start - 1)
            own = (classes >= start) & (classes < stop)
            sims[local, rows] = torch.where(own, -torch.inf, sims[local, rows])
            score, index = sims.T.contiguous().topk(min(self.candidates, stop - start), dim=1)
            score = torch.cat([best_score, score], dim=1)
            index = torch.cat([best_class, index + start], dim=1)
            best_score, keep = score.topk(min(self.candidates, score.shape[1]), dim=1)
            best_class = index.gather(1, keep)
        return best_class
