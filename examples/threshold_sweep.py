"""How the angle threshold trades precision for recall, on a generated set whose noise is known.

Generates a noisy face set (the demo's generator), trains and scores it once through the Python API, then
prunes at several thresholds with both rules and prints precision and recall of the dropped set against the
planted noise. The scores are computed once; pruning is cheap, so sweeping thresholds costs seconds.

    python examples/threshold_sweep.py --out /tmp/sweep            # the demo's data and recipe, ~70 s on 2 cores
    python examples/threshold_sweep.py --out /tmp/sweep --angles 60 70 75 80 90
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import facecleaner
from facecleaner.config import DEMO_EPOCHS, DEMO_IDENTITIES, DEMO_IMAGES_PER_IDENTITY, DEMO_LR, TrainConfig
from facecleaner.pruning.evaluate import kept_detection_metrics
from facecleaner.sources.synthetic import generate_noisy_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the data, run and manifests")
    parser.add_argument("--identities", type=int, default=DEMO_IDENTITIES)
    parser.add_argument("--images-per-identity", type=int, default=DEMO_IMAGES_PER_IDENTITY)
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--lr", type=float, default=DEMO_LR)
    parser.add_argument("--angles", type=float, nargs="+", default=[60.0, 70.0, 75.0, 80.0, 90.0])
    args = parser.parse_args()

    manifest = generate_noisy_faces(args.out / "data", identities=args.identities,
                                    images_per_identity=args.images_per_identity)
    config = TrainConfig(backbone="tiny", image_size=32, epochs=args.epochs, lr=args.lr, device="cpu")
    facecleaner.train(manifest, args.out / "run", config, progress=False)
    scores = args.out / "scores.parquet"
    facecleaner.score(args.out / "run", manifest, scores, device="cpu", progress=False)

    truth = pd.read_parquet(manifest, columns=["is_noise"])["is_noise"].to_numpy()
    print(f"{'angle':>6} {'rule':<18} {'precision':>9} {'recall':>7} {'clean kept':>10}")
    for angle in args.angles:
        for rule, strict in (("paper", False), ("drop_non_dominant", True)):
            clean = args.out / f"clean_{rule}_{angle:g}.parquet"
            facecleaner.prune(scores, clean, angle=angle, drop_non_dominant=strict, force=True)
            m = kept_detection_metrics(pd.read_parquet(clean, columns=["sample_id"])["sample_id"], truth)
            print(f"{angle:>6g} {rule:<18} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['clean_kept']:>10.3f}")


if __name__ == "__main__":
    main()
