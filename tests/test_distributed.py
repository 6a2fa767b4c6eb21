"""torchrun on the CPU (gloo, 2 processes): the sharded head is exact, and train/score/resume work across worlds.

Each test launches ``python -m torch.distributed.run --standalone --nproc-per-node 2`` on a worker script
(below) that asserts inside the ranks and exits non-zero on any failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from facecleaner import api
from facecleaner.config import TrainConfig
from facecleaner.distributed import Dist, shard_range
from facecleaner.model.sharded_head import ShardedSubCenterArcFace
from facecleaner.sources.synthetic import generate_noisy_faces
from facecleaner.training import loop

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

TINY = dict(backbone="tiny", image_size=16, embedding_size=16, batch_size=8, device="cpu", seed=1)

WORKER = textwrap.dedent('''
    import gc
    import os
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    def head_checks():
        from facecleaner.model.head import SubCenterArcFace
        from facecleaner.model.sharded_head import ShardedSubCenterArcFace

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(0)
        classes, k, dim, per_rank = 7, 3, 16, 5
        reference = SubCenterArcFace(classes, k, dim, scale=16.0, margin=0.5)
        embeddings = torch.randn(per_rank * world, dim)
        labels = torch.randint(0, classes, (per_rank * world,))
        labels[0] = 6  # a label far from the first rank's shard
        mine = slice(rank * per_rank, (rank + 1) * per_rank)

        # (a) loss and gradients of the embeddings and of every shard equal the one-process head's.
        full = embeddings.clone().requires_grad_(True)
        expected = reference(full, labels, margin=0.3)
        expected.loss.backward()
        head = ShardedSubCenterArcFace(classes, k, dim, 16.0, 0.5, rank, world)
        head.load_full(reference.weight.detach())
        local = embeddings[mine].clone().requires_grad_(True)
        out = head(local, labels[mine], margin=0.3)
        out.loss.backward()
        torch.testing.assert_close(out.global_loss, expected.loss.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(local.grad, full.grad[mine], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head.weight.grad, head.shard_rows(reference.weight.grad), rtol=1e-5, atol=1e-5)
        assert torch.equal(out.correct, expected.correct)
        torch.testing.assert_close(out.target_cosine, expected.target_cosine)

        # Ranks may hold different numbers of rows (unreadable samples are dropped before the head).
        cut = per_rank - 2 if rank == 1 else per_rank
        keep = torch.cat([torch.arange(per_rank), per_rank + torch.arange(per_rank - 2)])
        reference.weight.grad = None
        ragged = embeddings[keep].clone().requires_grad_(True)
        expected_ragged = reference(ragged, labels[keep])
        expected_ragged.loss.backward()
        head.weight.grad = None
        local = embeddings[mine][:cut].clone().requires_grad_(True)
        out = head(local, labels[mine][:cut])
        out.loss.backward()
        torch.testing.assert_close(out.global_loss, expected_ragged.loss.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(local.grad, ragged.grad[rank * per_rank:rank * per_rank + cut],
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head.weight.grad, head.shard_rows(reference.weight.grad), rtol=1e-5, atol=1e-5)

        # DDP averages the backbone's gradients: backward on world × partial loss, then the shard's
        # gradients divided by world, gives the one-process gradients for both (what the loop does).
        torch.manual_seed(1)
        images = torch.randn(per_rank * world, 8)
        backbone = torch.nn.Linear(8, dim)
        single = torch.nn.Linear(8, dim)
        single.load_state_dict(backbone.state_dict())
        reference.weight.grad = None
        reference(single(images), labels).loss.backward()
        ddp = torch.nn.parallel.DistributedDataParallel(backbone)
        head.weight.grad = None
        (head(ddp(images[mine]), labels[mine]).loss * world).backward()
        head.weight.grad.div_(world)
        torch.testing.assert_close(backbone.weight.grad, single.weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head.weight.grad, head.shard_rows(reference.weight.grad), rtol=1e-5, atol=1e-5)

        # (b) partial FC: a rate whose quota is every class of the shard is the exact head.
        exact_loss = None
        for rate in (1.0, 0.99):
            partial = ShardedSubCenterArcFace(classes, k, dim, 16.0, 0.5, rank, world, sample_rate=rate)
            partial.load_full(reference.weight.detach())
            local = embeddings[mine].clone().requires_grad_(True)
            out = partial(local, labels[mine], step=3)
            out.loss.backward()
            torch.testing.assert_close(out.global_loss, exact_loss if exact_loss is not None else out.global_loss)
            exact_loss = out.global_loss
            reference.weight.grad = None
            full = embeddings.clone().requires_grad_(True)
            reference(full, labels).loss.backward()
            torch.testing.assert_close(out.global_loss, reference(embeddings, labels).loss.detach(),
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(local.grad, full.grad[mine], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(partial.weight.grad, partial.shard_rows(reference.weight.grad),
                                       rtol=1e-5, atol=1e-5)

        # Partial FC with positives past the quota: all positives kept, the loss is the softmax over the
        # kept classes only, and the other classes get no gradient.
        many = 40
        reference = SubCenterArcFace(many, k, dim, scale=16.0, margin=0.5)
        labels = torch.arange(2 * per_rank * world) % many
        embeddings = torch.randn(len(labels), dim)
        mine = slice(rank * 2 * per_rank, (rank + 1) * 2 * per_rank)
        for rate in (0.05, 0.5):
            partial = ShardedSubCenterArcFace(many, k, dim, 16.0, 0.5, rank, world, sample_rate=rate)
            partial.load_full(reference.weight.detach())
            out = partial(embeddings[mine], labels[mine], step=7)
            out.loss.backward()
            kept_parts = [None] * world
            dist.all_gather_object(kept_parts, partial.kept_classes.tolist())
            kept = torch.tensor(sorted(c for part in kept_parts for c in part))
            assert set(labels.tolist()) <= set(kept.tolist())
            quota = -(-rate * partial.local_classes // 1)
            positives = set(labels.tolist()) & set(range(partial.start, partial.end))
            assert len(partial.kept_classes) == max(quota, len(positives))
            cosines = reference.class_cosines(embeddings)[:, kept]
            from facecleaner.model.head import margin_logits
            remapped = torch.searchsorted(kept, labels)
            expected_loss = F.cross_entropy(margin_logits(cosines, remapped, 16.0, 0.5), remapped)
            torch.testing.assert_close(out.global_loss, expected_loss.detach(), rtol=1e-5, atol=1e-5)
            dropped = torch.ones(partial.local_classes, dtype=torch.bool)
            dropped[partial.kept_classes - partial.start] = False
            grads = partial.weight.grad.view(partial.local_classes, k, dim)
            assert torch.all(grads[dropped] == 0) and torch.all(grads[~dropped].abs().sum(dim=(1, 2)) > 0)
        gc.collect()  # no autograd graph or gloo work object may outlive the group
        dist.barrier()
        dist.destroy_process_group()  # a group left alive aborts the process at exit
        print(f"rank {rank}: head checks passed", flush=True)
        os._exit(0)  # the checks are done; skip interpreter teardown, where gloo's threads can still abort

    def pipeline(data, tmp):
        from facecleaner import api
        from facecleaner.config import TrainConfig

        tiny = dict(backbone="tiny", image_size=16, embedding_size=16, batch_size=8, device="cpu", seed=1)
        tmp = Path(tmp)
        api.train(data, tmp / "run2", TrainConfig(epochs=1, **tiny), progress=False)

        # Score interrupted on both ranks after their first batch (each rank keeps its own part), then resumed on
        # 2 ranks: the test compares the result with one process's uninterrupted run.
        import pytest
        from facecleaner.errors import FaceCleanerError
        from facecleaner.sources.dataset import DecodedImages

        real_getitem = DecodedImages.__getitem__
        decoded = []

        def interrupted(self, index):
            decoded.append(index)
            if len(decoded) > 10:
                raise KeyboardInterrupt
            return real_getitem(self, index)

        DecodedImages.__getitem__ = interrupted
        with pytest.raises(FaceCleanerError, match="--resume"):  # Ctrl-C: the measurements are kept
            api.score(tmp / "run2", data, tmp / "scores2.parquet", batch_size=10, device="cpu",
                      embeddings=tmp / "emb2.npy", progress=False)
        DecodedImages.__getitem__ = real_getitem
        dist.barrier()
        parts = sorted(p.name for p in (tmp / "scores2.parquet.resume").glob("batches-*"))
        assert parts == ["batches-000000000-000000001.npz", "batches-000000003-000000004.npz"], parts
        dist.barrier()  # every rank has looked before the resumed run removes the work area
        resumed = api.score(tmp / "run2", data, tmp / "scores2.parquet", batch_size=10, device="cpu",
                            embeddings=tmp / "emb2.npy", progress=False, resume=True)
        assert resumed["resumed"] == 20 and resumed["world_size"] == 2, resumed
        api.train(data, tmp / "run1", TrainConfig(epochs=2, **tiny), resume=True, progress=False)

        # SIGTERM reaching one rank mid-epoch: every rank stops at the same step, the checkpoint is written,
        # and --resume on the same world continues bit-for-bit.
        import signal

        import pytest
        from facecleaner.training import loop

        config = TrainConfig(epochs=2, **tiny)
        api.train(data, tmp / "straight", config, progress=False)
        real_lr_factor = loop.lr_factor

        def sigterm_rank1(step, *args):
            if step == 4 and dist.get_rank() == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_lr_factor(step, *args)

        loop.lr_factor = sigterm_rank1
        with pytest.raises(loop.Interrupted):
            api.train(data, tmp / "stopped", config, progress=False)
        loop.lr_factor = real_lr_factor
        assert torch.load(tmp / "stopped" / "checkpoint.pt", weights_only=True)["step_in_epoch"] == 2
        api.train(data, tmp / "stopped", config, resume=True, progress=False)
        straight = torch.load(tmp / "straight" / "model.pt", weights_only=True)
        resumed = torch.load(tmp / "stopped" / "model.pt", weights_only=True)
        for part in ("backbone", "head"):
            for name, value in straight[part].items():
                assert torch.equal(value, resumed[part][name]), (part, name)
        print(f"rank {dist.get_rank()}: pipeline passed")

    if __name__ == "__main__":
        if sys.argv[1] == "head":
            head_checks()
        else:
            pipeline(sys.argv[2], sys.argv[3])
''')


def _torchrun(tmp_path: Path, *args: str) -> None:
    """Run the worker on 2 ranks; both must finish their checks."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(worker), *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    assert result.stdout.count("passed") == 2, result.stdout


def test_shard_ranges_cover_the_classes_evenly() -> None:
    for classes in (2, 7, 10):
        for world in (1, 2, 3):
            if classes < world:
                continue
            ranges = [shard_range(classes, world, r) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == classes
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1
    with pytest.raises(ValueError, match="fewer processes"):
        ShardedSubCenterArcFace(1, 3, 8, rank=0, world=2)


def test_partial_fc_in_one_process_keeps_positives() -> None:
    head = ShardedSubCenterArcFace(50, 2, 8, 16.0, 0.5, sample_rate=0.1)
    labels = torch.tensor([3, 3, 17, 49])
    out = head(torch.randn(4, 8), labels, step=0)
    out.loss.backward()
    kept = head.kept_classes.tolist()
    assert {3, 17, 49} <= set(kept) and len(kept) == 5
    assert torch.isfinite(out.loss)


def test_sharded_head_equals_one_process_head(tmp_path: Path) -> None:
    _torchrun(tmp_path, "head")


def test_two_rank_train_score_and_resume_across_worlds(tmp_path: Path) -> None:
    data = generate_noisy_faces(tmp_path / "data", identities=6, images_per_identity=8, image_size=16, seed=2,
                                progress=False)
    api.train(data, tmp_path / "run1", TrainConfig(epochs=1, **TINY), progress=False)  # resumed on 2 ranks
    _torchrun(tmp_path, "pipeline", str(data), str(tmp_path))

    # 2-rank score (interrupted, then resumed on 2 ranks) == 1-process score of the same model.pt, row for row
    # (and the embeddings file).
    api.score(tmp_path / "run2", data, tmp_path / "scores1.parquet", batch_size=10, device="cpu",
              embeddings=tmp_path / "emb1.npy", progress=False)
    for name in ("scores", "scores.classes"):
        one = pd.read_parquet(tmp_path / f"{name.replace('scores', 'scores1')}.parquet")
        two = pd.read_parquet(tmp_path / f"{name.replace('scores', 'scores2')}.parquet")
        pd.testing.assert_frame_equal(one, two)
    import numpy as np

    # Other processes, other thread counts: the same up to float rounding.
    assert np.allclose(np.load(tmp_path / "emb1.npy"), np.load(tmp_path / "emb2.npy"), atol=2e-3)

    # The 2-rank checkpoint holds the whole head in class order plus the shard layout; it resumes on 1 process.
    checkpoint = torch.load(tmp_path / "run2" / "checkpoint.pt", weights_only=True)
    assert checkpoint["head"]["weight"].shape == (6 * 3, 16)
    assert checkpoint["shards"]["world"] == 2 and checkpoint["shards"]["ranges"] == [[0, 3], [3, 6]]
    head_index = len(checkpoint["optimizer"]["param_groups"][0]["params"]) - 1
    assert checkpoint["optimizer"]["state"][head_index]["momentum_buffer"].shape == (6 * 3, 16)
    assert checkpoint["epoch"] == 1
    resumed = api.train(data, tmp_path / "run2", TrainConfig(epochs=2, **TINY), resume=True, progress=False)
    assert resumed["epochs"] == 2
    assert len((tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()) == 2
    assert torch.load(tmp_path / "run2" / "checkpoint.pt", weights_only=True)["epoch"] == 2

    # The 1-process run resumed on 2 ranks: one more epoch, a final model.pt in the one-process format.
    assert len((tmp_path / "run1" / "metrics.jsonl").read_text().splitlines()) == 2
    final = torch.load(tmp_path / "run1" / "model.pt", weights_only=True)
    assert final["head"]["weight"].shape == (6 * 3, 16) and "optimizer" not in final


def test_partial_fc_training_in_one_process_writes_a_standard_model(tmp_path: Path) -> None:
    data = generate_noisy_faces(tmp_path / "data", identities=6, images_per_identity=8, image_size=16, seed=2,
                                progress=False)
    summary = api.train(data, tmp_path / "run", TrainConfig(epochs=2, sample_rate=0.5, **TINY), progress=False)
    assert summary["config"]["sample_rate"] == 0.5
    model = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert model["head"]["weight"].shape == (6 * 3, 16)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["shards"]["world"] == 1 and checkpoint["shards"]["sample_rate"] == 0.5
    scored = api.score(tmp_path / "run", data, tmp_path / "scores.parquet", device="cpu", progress=False)
    assert scored["samples"] == 48


class _OtherRank(Dist):
    """This process as rank 0 of two, with the other rank's contribution to a MAX all-reduce given."""

    def __init__(self, other: float) -> None:
        super().__init__(rank=0, world=2)
        self.other = other

    def all_reduce(self, tensor: torch.Tensor, op: object = None) -> torch.Tensor:
        return tensor.clamp_(min=self.other)


@pytest.mark.parametrize(("local_overflow", "other_overflow", "skipped"),
                         [(False, False, False), (False, True, True), (True, False, True)])
def test_fp16_overflow_on_any_rank_skips_the_step_on_every_rank(local_overflow: bool, other_overflow: bool,
                                                                 skipped: bool) -> None:
    """Each rank's GradScaler sees only its own head shard; _share_overflow makes them all skip together."""
    weight = torch.nn.Parameter(torch.ones(4, 2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale((weight * 3).sum()).backward()
    if local_overflow:
        weight.grad[2, 1] = float("inf")
    loop._share_overflow([weight], _OtherRank(1.0 if other_overflow else 0.0))
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    expected = torch.ones(4, 2) if skipped else torch.full((4, 2), 1.0 - 0.5 * 3)
    assert torch.equal(weight.detach(), expected)
    assert scaler.get_scale() == (4.0 if skipped else 8.0)
