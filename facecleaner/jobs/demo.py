"""The demo job: generate a noisy face set with known noise, run the whole pipeline, score the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from facecleaner.config import DEMO_EPOCHS, DEMO_IDENTITIES, DEMO_IMAGES_PER_IDENTITY, DEMO_LR, TrainConfig
from facecleaner.errors import InputError
from facecleaner.jobs.prune import prune
from facecleaner.jobs.score import score
from facecleaner.jobs.train import SUMMARY_FILE, train
from facecleaner.progress import logger


def demo(out: str | Path = "facecleaner-demo", identities: int = DEMO_IDENTITIES,
         images_per_identity: int = DEMO_IMAGES_PER_IDENTITY, image_size: int = 32, epochs: int = DEMO_EPOCHS,
         lr: float = DEMO_LR, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The embedded default: generate a noisy face set with known noise, train, score, prune, evaluate.

    Runs on the CPU with the tiny backbone and the demo recipe of :mod:`facecleaner.config`; reports
    precision, recall and F1 of the dropped set against the injected noise, and the share of clean samples
    kept, for the paper's rule and ``--drop-non-dominant``.
    """
    import pandas as pd

    from facecleaner.pruning.evaluate import kept_detection_metrics
    from facecleaner.sources.synthetic import generate_noisy_faces

    root = Path(out)
    if (root / "run").exists():
        raise InputError(f"{root} already holds a demo run", "remove it or give another --out")
    logger.info("generating %d identities × %d images with planted noise in %s", identities,
                images_per_identity, root / "data")
    manifest = generate_noisy_faces(root / "data", identities=identities, images_per_identity=images_per_identity,
                                    image_size=image_size, seed=seed, progress=progress)
    config = TrainConfig(backbone="tiny", image_size=image_size, epochs=epochs, lr=lr, device="cpu", seed=seed)
    trained = train(manifest, root / "run", config, progress=progress)
    scored = score(root / "run", manifest, root / "scores.parquet", device="cpu", progress=progress)
    truth = pd.read_parquet(manifest, columns=["is_noise"])["is_noise"].to_numpy()
    rules = {}
    for name, strict in (("paper", False), ("drop_non_dominant", True)):
        clean_path = root / ("clean_strict.parquet" if strict else "clean.parquet")
        pruned = prune(root / "scores.parquet", clean_path, drop_non_dominant=strict, force=True)
        kept = pd.read_parquet(clean_path, columns=["sample_id"])["sample_id"].to_numpy()
        rules[name] = {**kept_detection_metrics(kept, truth), "clean": pruned["clean"],
                       "dropped_file": pruned["dropped"]}
    summary = {"out": str(root), "samples": len(truth), "identities": identities,
               "train": {key: trained[key] for key in ("final_accuracy", "final_mean_angle", "epochs",
                                                       "images_per_second", "separated")},
               "median_angle": scored["median_angle"], "rules": rules}
    (root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
