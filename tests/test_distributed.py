"""torchrun on the CPU (gloo, 2 processes): the sharded head is exact, and train/score/resume work across worlds.

Each test launches ``python -m torch.distributed.run --standalone --nproc-per-node 2`` on a worker script
(below) that asserts inside the ranks and exits non-zero on any failure. Checkpoints of a sharded head are
checked against hand-built rows (:func:`hand_rows`): each rank's shard file holds exactly its classes, and a
checkpoint saved on 1 or 2 processes, in the current or the old one-file format, loads on 1 or 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_same_weights

from facecleaner import api
from facecleaner.config import TrainConfig
from facecleaner.distributed import Dist, shard_range
from facecleaner.errors import CheckpointError
from facecleaner.model.checkpoint import MODEL_FORMAT, ModelSpec
from facecleaner.model.sharded_head import ShardedSubCenterArcFace
from facecleaner.sources.synthetic import generate_noisy_faces
from facecleaner.training import loop

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

TINY = dict(backbone="tiny", image_size=16, embedding_size=16, batch_size=8, device="cpu", seed=1)
CLASSES, K, DIM = 7, 3, 4  # the hand-built head: rank 0 of 2 holds classes 0-3, rank 1 classes 4-6


def hand_rows(first: int, last: int, momentum: bool = False) -> np.ndarray:
    """Rows ``first … last-1`` of the hand-built (C·K, D) head weight (or its momentum), in float64: each value
    names its row and column, and is exact in float32."""
    rows = np.arange(first, last, dtype=np.float64)[:, None] * 100 + np.arange(DIM) + 0.25
    return -rows / 8 if momentum else rows


def hand_model(rank: int, world: int, sharded: bool = True, filled: bool = True) -> tuple:
    """Spec, backbone, head (rank's shard, or the whole head) and SGD of the hand-built model; ``filled`` puts
    the hand rows in the weight and momentum, else they stay as initialised (and the momentum empty)."""
    spec = ModelSpec(backbone="tiny", embedding_size=DIM, image_size=16, subcenters=K, scale=16.0, margin=0.5,
                     classes=[f"id{c}" for c in range(CLASSES)])
    backbone = spec.build_backbone()
    head = ShardedSubCenterArcFace(CLASSES, K, DIM, 16.0, 0.5, rank, world) if sharded else spec.build_head()
    start, end = (head.start, head.end) if sharded else (0, CLASSES)
    optimizer = torch.optim.SGD(list(backbone.parameters()) + [head.weight], lr=0.1, momentum=0.9)
    if filled:
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(hand_rows(start * K, end * K)))
        optimizer.state[head.weight]["momentum_buffer"] = torch.from_numpy(hand_rows(start * K, end * K,
                                                                                     True)).float()
    return spec, backbone, head, optimizer


def save_hand_checkpoint(run: Path, rank: int, world: int, sharded: bool = True) -> None:
    spec, backbone, head, optimizer = hand_model(rank, world, sharded)
    run.mkdir(exist_ok=True)
    loop._save_checkpoint(run, spec, backbone, head, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                          torch.Generator(), 1, 0, set(), [], Dist(rank, world), 16)


def assert_loads_hand_rows(run: Path, rank: int, world: int, sharded: bool = True) -> None:
    """A fresh model (rank of world) resumed from ``run`` holds the hand rows of its classes, bit for bit."""
    _, backbone, head, optimizer = hand_model(rank, world, sharded, filled=False)
    loop._load_checkpoint(run / "checkpoint.pt", backbone, head, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                          torch.Generator(), Dist(rank, world), 16)
    start, end = (head.start, head.end) if sharded else (0, CLASSES)
    assert torch.equal(head.weight.detach().double(), torch.from_numpy(hand_rows(start * K, end * K))), (run, rank)
    assert torch.equal(optimizer.state[head.weight]["momentum_buffer"].double(),
                       torch.from_numpy(hand_rows(start * K, end * K, True))), (run, rank)

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

    def shard_checks(tmp):
        """Save the hand-built head on 2 ranks and load it back; load the 1-process and old-format checkpoints."""
        from test_distributed import assert_loads_hand_rows, save_hand_checkpoint

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        tmp = Path(tmp)
        save_hand_checkpoint(tmp / "two", rank, world)
        for run in ("two", "one", "old"):
            assert_loads_hand_rows(tmp / run, rank, world)
        print(f"rank {rank}: shard checks passed", flush=True)

    def train(data, run, epochs, resume):
        """Train on 2 ranks; with crash: killed (FACECLEANER_FAULT) after writing the second checkpoint's shards."""
        from facecleaner import api
        from facecleaner.config import TrainConfig
        from facecleaner.training import loop

        if resume == "crash":
            real_save = loop._save_checkpoint

            def crash_at_the_next_save(*args, **kwargs):
                real_save(*args, **kwargs)
                os.environ["FACECLEANER_FAULT"] = "head shards written"

            loop._save_checkpoint = crash_at_the_next_save
        config = TrainConfig(epochs=int(epochs), backbone="tiny", image_size=16, embedding_size=16, batch_size=8,
                             device="cpu", seed=1)
        api.train(data, Path(run), config, resume=resume == "resume", progress=False)
        print(f"rank {dist.get_rank()}: training passed", flush=True)

    if __name__ == "__main__":
        if sys.argv[1] == "head":
            head_checks()
        elif sys.argv[1] == "shards":
            shard_checks(sys.argv[2])
        elif sys.argv[1] == "train":
            train(*sys.argv[2:])
        else:
            pipeline(sys.argv[2], sys.argv[3])
''')


def _torchrun(tmp_path: Path, *args: str, crash: bool = False) -> None:
    """Run the worker on 2 ranks; both must finish their checks (or, with ``crash``, both be killed)."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    here = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(worker), *args], env=env, capture_output=True, text=True, timeout=300)
    if crash:
        assert result.returncode != 0 and result.stdout.count("passed") == 0, result.stdout + result.stderr[-8000:]
        assert "exitcode  : 137" in result.stderr, result.stderr[-8000:]
        return
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

    # The 2-rank checkpoint: each rank's head rows and momentum in its own file, named with the shard layout; it
    # resumes on 1 process, and so does the same checkpoint in the one-file format of before the shard files.
    checkpoint = torch.load(tmp_path / "run2" / "checkpoint.pt", weights_only=True)
    assert "head" not in checkpoint and checkpoint["epoch"] == 1
    assert checkpoint["shards"]["world"] == 2 and checkpoint["shards"]["ranges"] == [[0, 3], [3, 6]]
    assert head_files(tmp_path / "run2") == checkpoint["shards"]["files"]
    for name in checkpoint["shards"]["files"]:
        shard = torch.load(tmp_path / "run2" / name, weights_only=True)
        assert shard["weight"].shape == shard["momentum_buffer"].shape == (3 * 3, 16)
    old = shutil.copytree(tmp_path / "run2", tmp_path / "old")
    as_old_format(old)
    for run in (tmp_path / "run2", old):
        resumed = api.train(data, run, TrainConfig(epochs=2, **TINY), resume=True, progress=False)
        assert resumed["epochs"] == 2
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
        assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert_same_weights(tmp_path / "run2", old)

    # The 1-process run resumed on 2 ranks: one more epoch, a final model.pt in the one-process format.
    assert len((tmp_path / "run1" / "metrics.jsonl").read_text().splitlines()) == 2
    final = torch.load(tmp_path / "run1" / "model.pt", weights_only=True)
    assert final["head"]["weight"].shape == (6 * 3, 16) and "optimizer" not in final
    assert final["format"] == MODEL_FORMAT and list(final) == ["format", "spec", "backbone", "head"]
    assert [p.name for p in (tmp_path / "run1").iterdir() if p.name.startswith(".")] == []

    # Killed on both ranks after writing the epoch-2 shard files, before checkpoint.pt names them: the epoch-1
    # checkpoint is whole, and --resume on 2 ranks ends bit for bit where the uninterrupted run did.
    crashed = tmp_path / "crashed"
    _torchrun(tmp_path, "train", str(data), str(crashed), "2", "crash", crash=True)
    checkpoint = torch.load(crashed / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and not (crashed / "model.pt").exists()
    unpublished = set(head_files(crashed)) - set(checkpoint["shards"]["files"])
    assert len(unpublished) == 2 and all(name.startswith("checkpoint.head-2-0-") for name in unpublished)
    _torchrun(tmp_path, "train", str(data), str(crashed), "2", "resume")
    assert_same_weights(tmp_path / "straight", crashed)
    assert head_files(crashed) == torch.load(crashed / "checkpoint.pt", weights_only=True)["shards"]["files"]


def head_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("checkpoint.head-*"))


def as_old_format(run: Path) -> None:
    """Rewrite a sharded checkpoint as the code before shard files wrote it: one checkpoint.pt holding the whole
    head, its momentum in the optimizer state, and every rank's RNG states."""
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    shards = [torch.load(run / name, weights_only=True) for name in payload["shards"]["files"]]
    head_index = len(payload["optimizer"]["param_groups"][0]["params"]) - 1
    payload["head"] = {"weight": torch.cat([shard["weight"] for shard in shards])}
    payload["optimizer"]["state"][head_index] = {"momentum_buffer": torch.cat([s["momentum_buffer"] for s in shards])}
    payload["shards"] = {"world": payload["shards"]["world"], "ranges": payload["shards"]["ranges"],
                         "sample_rate": payload["shards"]["sample_rate"],
                         "rank_rng": [{"torch_rng": s["torch_rng"], "augment_rng": s["augment_rng"]} for s in shards]}
    for name in head_files(run):
        (run / name).unlink()
    torch.save(payload, run / "checkpoint.pt")


def test_head_shard_files_hold_their_classes_and_load_on_any_world(tmp_path: Path) -> None:
    """The hand-built head saved on 2 ranks: each shard file holds exactly its classes' rows and momentum, and
    it loads on 1 process (whole head, or partial FC's world of one) and on 2; so do a 1-process checkpoint and
    one in the old one-file format."""
    save_hand_checkpoint(tmp_path / "one", 0, 1, sharded=False)
    save_hand_checkpoint(tmp_path / "old", 0, 1)
    as_old_format(tmp_path / "old")
    _torchrun(tmp_path, "shards", str(tmp_path))
    checkpoint = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert checkpoint["shards"]["ranges"] == [[0, 4], [4, 7]] and "head" not in checkpoint
    head_index = len(checkpoint["optimizer"]["param_groups"][0]["params"]) - 1
    assert head_index not in checkpoint["optimizer"]["state"]
    files = checkpoint["shards"]["files"]
    assert head_files(tmp_path / "two") == sorted(files)
    for rank, (name, (start, end)) in enumerate(zip(files, checkpoint["shards"]["ranges"], strict=True)):
        shard = torch.load(tmp_path / "two" / name, weights_only=True)
        assert name.endswith(f".{rank}-of-2.pt") and shard["classes"] == [start, end]
        assert torch.equal(shard["weight"].double(), torch.from_numpy(hand_rows(start * K, end * K)))
        assert torch.equal(shard["momentum_buffer"].double(), torch.from_numpy(hand_rows(start * K, end * K, True)))
    for run in ("two", "old"):
        assert_loads_hand_rows(tmp_path / run, 0, 1, sharded=False)
        assert_loads_hand_rows(tmp_path / run, 0, 1)
    (tmp_path / "two" / files[1]).unlink()
    with pytest.raises(CheckpointError, match=f"not beside it: {files[1]}"):
        assert_loads_hand_rows(tmp_path / "two", 0, 1)


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
