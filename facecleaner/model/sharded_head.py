"""The sub-center ArcFace head sharded by class across ranks (model parallel), with optional partial FC.

Rank ``r`` of ``W`` holds the K sub-centers of its contiguous class range ``[start, end)``. A step gathers
every rank's embeddings and labels (an autograd-aware all-gather, whose backward reduce-scatters the
gradients), scores them against the local classes only, and computes the softmax over all classes with a
global row maximum (all-reduce MAX, no gradient needed) and a global sum of exponentials (autograd-aware
all-reduce SUM). Each rank returns a *partial* loss::

    mean(logsumexp) / world  −  mean over rows of (target logit if the label is in this shard else 0)

whose sum over ranks is the global mean cross-entropy, so back-propagating every rank's partial loss
gives the exact gradients of the single-process head, for the embeddings and every shard.

Partial FC (``sample_rate < 1``, An et al., "Partial FC", 2021): each step each rank keeps the classes of
its shard that are labels in the global batch plus random other classes up to ``ceil(rate × classes)``
(all positives even past that quota), and scores only those rows of its weight.

With a world of one (no process group) the same code runs without collectives: partial FC on one GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from facecleaner.distributed import shard_range
from facecleaner.model.head import class_cosines, margin_logits

# Initial sub-centers come in blocks of this many classes, each from its own seeded generator, so the
# initial head is the same whatever the number of ranks, and no rank ever materialises the whole head.
_INIT_BLOCK = 4096


@dataclass(frozen=True)
class ShardedOutput:
    """``loss`` is this rank's partial loss (back-propagate it); the rest describe the whole global batch."""

    loss: torch.Tensor
    global_loss: torch.Tensor
    target_cosine: torch.Tensor
    correct: torch.Tensor


class ShardedSubCenterArcFace(nn.Module):
    """This rank's ``(end − start) · K`` sub-centers, stored as one matrix like :class:`SubCenterArcFace`."""

    def __init__(self, num_classes: int, subcenters: int = 3, embedding_size: int = 512, scale: float = 64.0,
                 margin: float = 0.5, rank: int = 0, world: int = 1, sample_rate: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__()
        if num_classes < world:
            raise ValueError(f"{num_classes} classes cannot be sharded over {world} ranks: every rank needs "
                             "at least one class; use fewer processes")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError("sample_rate must be in (0, 1]")
        self.num_classes = num_classes
        self.subcenters = subcenters
        self.embedding_size = embedding_size
        self.scale = scale
        self.margin = margin
        self.rank = rank
        self.world = world
        self.sample_rate = sample_rate
        self.seed = seed
        self.start, self.end = shard_range(num_classes, world, rank)
        self.local_classes = self.end - self.start
        self.weight = nn.Parameter(self.initial_weight(seed))
        self.kept_classes: torch.Tensor | None = None  # the global class ids scored by the last step

    def initial_weight(self, seed: int) -> torch.Tensor:
        """N(0, 0.01²) sub-centers of this shard, independent of the number of ranks."""
        rows = torch.empty(self.local_classes * self.subcenters, self.embedding_size)
        per_class = self.subcenters * self.embedding_size
        for block in range(self.start // _INIT_BLOCK, (self.end - 1) // _INIT_BLOCK + 1):
            lo, hi = block * _INIT_BLOCK, min((block + 1) * _INIT_BLOCK, self.num_classes)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
            values = torch.randn((hi - lo) * per_class, generator=generator).mul_(0.01)
            first, last = max(self.start, lo), min(self.end, hi)
            rows.view(-1)[(first - self.start) * per_class:(last - self.start) * per_class] = \
                values[(first - lo) * per_class:(last - lo) * per_class]
        return rows

    def load_full(self, full_weight: torch.Tensor) -> None:
        """Take this shard's rows from a class-ordered (C·K, D) weight (a checkpoint saved on any world)."""
        with torch.no_grad():
            self.weight.copy_(self.shard_rows(full_weight))

    def shard_rows(self, full: torch.Tensor) -> torch.Tensor:
        """This shard's rows of any class-ordered (C·K, ...) tensor (weights, momentum buffers)."""
        if full.shape[0] != self.num_classes * self.subcenters:
            raise ValueError(f"expected {self.num_classes * self.subcenters} rows, got {full.shape[0]}")
        return full[self.start * self.subcenters:self.end * self.subcenters]

    def sample_classes(self, positives: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Sorted local class indices kept this step: every positive, then random ones up to the quota."""
        positives = torch.unique(positives)
        quota = math.ceil(self.sample_rate * self.local_classes)
        if len(positives) >= quota:
            return positives
        score = torch.rand(self.local_classes, generator=generator, device=generator.device)
        score[positives] = 2.0
        return score.topk(quota).indices.sort().values

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = None,
                step: int = 0, sizes: list[int] | None = None) -> ShardedOutput:
        """``sizes``: every rank's row count, when the caller knows it already (it saves an exchange and a
        wait for the device)."""
        embeddings, labels = _gather_batch(embeddings.float(), labels, self.world, sizes)
        rows, k, device = len(labels), self.subcenters, embeddings.device
        local = labels - self.start
        in_shard = (local >= 0) & (local < self.local_classes)
        weight = self.weight
        class_ids = torch.arange(self.start, self.end, device=device)
        if self.sample_rate < 1.0:
            generator = torch.Generator(device=device).manual_seed(
                (self.seed * 1_000_003 + step) * 4099 + self.rank)
            kept = self.sample_classes(local[in_shard], generator)
            weight = weight.view(self.local_classes, k, -1).index_select(0, kept).view(len(kept) * k, -1)
            remap = torch.full((self.local_classes,), -1, dtype=torch.long, device=device)
            remap[kept] = torch.arange(len(kept), device=device)
            local = torch.where(in_shard, remap[local.clamp(0, self.local_classes - 1)], -1)
            class_ids = kept + self.start
        self.kept_classes = class_ids
        class_cosine = class_cosines(embeddings, weight, k)
        safe = torch.where(in_shard, local, 0)
        with_margin = margin_logits(class_cosine, safe, self.scale, self.margin if margin is None else margin)
        logits = torch.where(in_shard[:, None], with_margin, class_cosine.clamp(-1.0, 1.0) * self.scale)

        with torch.no_grad():
            row_max = _all_reduce(logits.amax(dim=1), dist.ReduceOp.MAX, self.world)
        sum_exp = (logits - row_max[:, None]).exp().sum(dim=1)
        if self.world > 1:
            sum_exp = _AllReduceSum.apply(sum_exp)
        log_sum_exp = sum_exp.log() + row_max
        target_logit = torch.where(in_shard, logits.gather(1, safe[:, None]).squeeze(1), 0.0)
        loss = log_sum_exp.sum() / (rows * self.world) - target_logit.sum() / rows

        with torch.no_grad():
            global_loss = _all_reduce(loss.detach().clone(), dist.ReduceOp.SUM, self.world)
            target = _all_reduce(torch.where(in_shard, class_cosine.gather(1, safe[:, None]).squeeze(1), 0.0),
                                 dist.ReduceOp.SUM, self.world)
            best, best_index = class_cosine.max(dim=1)
            predicted = _global_argmax(best, class_ids[best_index], self.world)
        return ShardedOutput(loss=loss, global_loss=global_loss, target_cosine=target, correct=predicted == labels)


# torch.distributed.nn.functional does the same but is deprecated (a FutureWarning every step since torch 2.10);
# these two are all the model parallelism needs.
class _AllGatherRows(torch.autograd.Function):
    """Every rank's (n, ...) tensor stacked in rank order; the backward sums the gradients over ranks and
    hands each rank its own rows (a reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        world, rank = dist.get_world_size(), dist.get_rank()
        grad = grad.contiguous()
        rows = len(grad) // world
        if dist.get_backend() == dist.Backend.NCCL:
            out = torch.empty((rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad)
            return out
        summed = grad.clone()  # gloo has no reduce-scatter
        dist.all_reduce(summed)
        return summed[rank * rows:(rank + 1) * rows]


class _AllReduceSum(torch.autograd.Function):
    """The sum over ranks; its gradient is the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(tensor, op=op)
    return tensor


def _gather_batch(embeddings: torch.Tensor, labels: torch.Tensor, world: int,
                  sizes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's rows in rank order; ranks may hold different counts (unreadable samples are dropped).
    Without ``sizes`` (every rank's count) the ranks exchange their counts first."""
    if world == 1:
        return embeddings, labels
    if sizes is None:
        count = torch.tensor([len(labels)], device=labels.device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
    most = max(sizes)
    padded = F.pad(embeddings, (0, 0, 0, most - len(labels)))
    gathered = _AllGatherRows.apply(padded).split(most)
    label_parts = [torch.empty(most, dtype=labels.dtype, device=labels.device) for _ in range(world)]
    dist.all_gather(label_parts, F.pad(labels, (0, most - len(labels)), value=-1))
    return (torch.cat([part[:n] for part, n in zip(gathered, sizes, strict=True)]),
            torch.cat([part[:n] for part, n in zip(label_parts, sizes, strict=True)]))


def _global_argmax(best: torch.Tensor, best_class: torch.Tensor, world: int) -> torch.Tensor:
    """The class of the highest cosine over all shards; ties go to the lowest class, as torch.argmax does."""
    if world == 1:
        return best_class
    values = [torch.empty_like(best) for _ in range(world)]
    classes = [torch.empty_like(best_class) for _ in range(world)]
    dist.all_gather(values, best)
    dist.all_gather(classes, best_class)
    owner = torch.stack(values).argmax(dim=0)
    return torch.stack(classes).gather(0, owner[None]).squeeze(0)
