"""The demo job: generate a noisy face set with known noise, run the whole pipeline, score the result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from facecleaner.config import DEMO_EPOCHS, DEMO_IDENTITIES, DEMO_IMAGES_PER_IDENTITY, DEMO_LR, TrainConfig
from facecleaner.errors import InputError
from facecleaner.fileio import atomic_output
from facecleaner.jobs.prune import prune
from facecleaner.jobs.score import score
from facecleaner.jobs.train import SUMMARY_FILE, train
from facecleaner.progress import logger
from facecleaner.scoring.workarea import WORK_SUFFIX

#: Marks a folder as a demo's, listing what the demo writes there; a later demo replaces exactly these.
MARKER = ".facecleaner-demo.json"
DATA, RUN, SCORES = "data", "run", "scores.parquet"
#: Each rule the demo reports: its clean manifest and prune's options.
RULES = {"paper": ("clean.parquet", {}),
         "drop_non_dominant": ("clean_strict.parquet", {"drop_non_dominant": True}),
         "auto": ("clean_auto.parquet", {"angle": "auto"})}
ENTRIES = (DATA, RUN, SCORES, "scores.classes.parquet", f"{SCORES}{WORK_SUFFIX}", SUMMARY_FILE,
           *(f"{Path(clean).stem}{part}.parquet" for clean, _ in RULES.values()
             for part in ("", ".dropped", ".classes")))


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

    config = TrainConfig(backbone="tiny", image_size=image_size, epochs=epochs, lr=lr, device="cpu", seed=seed)
    config.validate()  # before anything is generated: the seed also seeds the generator, which needs it in range
    root = Path(out)
    _clear_earlier_demo(root)
    logger.info("generating %d identities × %d images with planted noise in %s", identities,
                images_per_identity, root / "data")
    manifest = generate_noisy_faces(root / DATA, identities=identities, images_per_identity=images_per_identity,
                                    image_size=image_size, seed=seed, progress=progress)
    trained = train(manifest, root / RUN, config, progress=progress)
    scored = score(root / RUN, manifest, root / SCORES, device="cpu", progress=progress)
    truth = pd.read_parquet(manifest, columns=["is_noise"])["is_noise"].to_numpy()
    rules = {}
    for name, (file_name, options) in RULES.items():
        clean_path = root / file_name
        pruned = prune(root / SCORES, clean_path, force=True, **options)
        kept = pd.read_parquet(clean_path, columns=["sample_id"])["sample_id"].to_numpy()
        rules[name] = {**kept_detection_metrics(kept, truth), "angle": pruned["angle"], "clean": pruned["clean"],
                       "dropped_file": pruned["dropped"]}
    summary = {"out": str(root), "samples": len(truth), "identities": identities,
               "train": {key: trained[key] for key in ("final_accuracy", "final_mean_angle", "epochs",
                                                       "images_per_second", "separated")},
               "median_angle": scored["median_angle"], "rules": rules}
    with atomic_output(root / SUMMARY_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _clear_earlier_demo(root: Path) -> None:
    """Make ``root`` ready for a demo: an earlier demo there (its marker says so) is removed, and only what it
    wrote; a folder holding other files under the demo's names is refused rather than overwritten."""
    if (root / MARKER).is_file():
        for name in ENTRIES:
            entry = root / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        logger.info("replacing the earlier demo in %s", root)
    else:
        taken = [name for name in ENTRIES if (root / name).exists() or (root / name).is_symlink()]
        if taken:
            raise InputError(f"{root} holds {', '.join(taken)} and no earlier demo run (no {MARKER})",
                             "give a new or empty --out folder for the demo")
    root.mkdir(parents=True, exist_ok=True)
    with atomic_output(root / MARKER) as tmp:  # first, so that an interrupted demo is replaced next time too
        tmp.write_text(json.dumps({"entries": list(ENTRIES)}, indent=2) + "\n")
