"""Integration benchmark on real faces with planted label noise (Extended Yale B + ORL as outsiders).

Builds a manifest over ../shared/data/faces (never copied into the repository): every Yale B identity keeps its
images, a share of them get another Yale B identity's label (close-set noise) and ORL faces are added under
random Yale B labels (open-set noise). Then train → score → prune on the CPU with the defaults and print
precision / recall / F1 of the dropped set and the share of clean images kept, for both drop rules.

    python benchmarks/bench_real_faces.py --out /tmp/real-faces [--image-size 32] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import facecleaner
from facecleaner.config import TrainConfig
from facecleaner.pruning.evaluate import kept_detection_metrics

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


def build_manifest(out: Path, close_set: float, open_set: float, seed: int) -> Path:
    """Yale B with ``close_set`` of its images relabelled and ORL outsiders worth ``open_set`` of the total."""
    rng = np.random.default_rng(seed)
    yale = sorted(p for p in (FACES / "extended_yale_b_cropped").glob("yaleB*/*.png"))
    frame = pd.DataFrame({"path": [str(p) for p in yale], "true_identity": [p.parent.name for p in yale]})
    frame["label"] = frame["true_identity"]
    identities = sorted(frame["true_identity"].unique())
    flip = rng.random(len(frame)) < close_set
    for row in np.flatnonzero(flip):
        others = [i for i in identities if i != frame.at[row, "true_identity"]]
        frame.at[row, "label"] = others[rng.integers(len(others))]
    orl = sorted(p for p in (FACES / "orl_att").glob("s*/*") if p.suffix.lower() in (".pgm", ".png", ".jpg"))
    count = int(round(open_set * len(frame) / (1 - open_set)))
    chosen = [orl[i] for i in rng.choice(len(orl), size=min(count, len(orl)), replace=False)]
    outsiders = pd.DataFrame({"path": [str(p) for p in chosen],
                              "true_identity": [f"orl_{p.parent.name}" for p in chosen],
                              "label": [identities[rng.integers(len(identities))] for _ in chosen]})
    frame = pd.concat([frame, outsiders], ignore_index=True)
    frame["noise"] = np.where(frame["true_identity"].str.startswith("orl_"), "open_set",
                              np.where(frame["label"] != frame["true_identity"], "close_set", "clean"))
    frame["is_noise"] = frame["noise"] != "clean"
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.parquet"
    frame[["path", "label", "true_identity", "noise", "is_noise"]].to_parquet(manifest, index=False)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: train's)")
    parser.add_argument("--close-set", type=float, default=0.1)
    parser.add_argument("--open-set", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not FACES.is_dir():
        raise SystemExit(f"{FACES} is absent: this benchmark needs the shared face sets")
    started = time.perf_counter()
    manifest = build_manifest(args.out, args.close_set, args.open_set, args.seed)
    config = TrainConfig(backbone="tiny", image_size=args.image_size, epochs=args.epochs, lr=args.lr, device="cpu",
                         seed=args.seed)
    trained = facecleaner.train(manifest, args.out / "run", config, progress=False)
    scored = facecleaner.score(args.out / "run", manifest, args.out / "scores.parquet", device="cpu", progress=False)
    truth = pd.read_parquet(manifest, columns=["is_noise"])["is_noise"].to_numpy()
    results = {}
    for name, strict in (("paper", False), ("drop_non_dominant", True)):
        clean = args.out / f"clean_{name}.parquet"
        facecleaner.prune(args.out / "scores.parquet", clean, drop_non_dominant=strict, force=True)
        kept = pd.read_parquet(clean, columns=["sample_id"])["sample_id"].to_numpy()
        results[name] = {k: round(v, 3) if isinstance(v, float) else v
                         for k, v in kept_detection_metrics(kept, truth).items()}
    print(json.dumps({"samples": len(truth), "noise": int(truth.sum()), "epochs": trained["epochs"],
                      "train_accuracy": round(trained["final_accuracy"], 3),
                      "median_angle": round(scored["median_angle"], 1), "rules": results,
                      "wall_s": round(time.perf_counter() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()
