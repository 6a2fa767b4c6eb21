"""How well facecleaner finds planted label noise, across sets, sub-center counts, held-out scoring and rules.

Each set gets known noise — close-set flips (an image filed under another identity of the set) and open-set
outsiders (people not in the set) — then `train` (its defaults: tiny backbone on the CPU, 32 px) → `score` →
`prune` with every rule, through the public API. A row reports precision, recall and F1 of the dropped set
against the planted noise and the share of clean images kept; `best fixed` is the oracle: the single angle
threshold (30°–120°, paper rule) with the best F1 on that row's scores, which `auto` is measured against.

Sets: `demo30`, `demo100`, `demo300` (the demo generator: 100 identities × 30 or 100 images, 40 × 300; 10%
close-set + 10% open-set noise, 15% clean-but-hard images), `orl` (ORL, 40 × 10, 15% of images moved to another
identity's folder), `yale` (Extended Yale B, 38 × ~64, 10% flips + ORL outsiders as 10% of the set), and the
noise-free controls `demo30-clean`, `yale-clean` (their rows show what each rule costs clean data). ORL and
Yale B come from ../shared/data/faces (research data: never copied into the repository); those sets are skipped
when the folder is absent.

    python benchmarks/noise_recovery.py --work /tmp/noise-recovery [--sets demo30,orl] [--subcenters 3,1]
        [--folds 0,5] [--epochs N] [--lr X] [--image-size 32] [--seed 0] [--json results.json]

Everything is cached under --work (data, runs, scores): a rerun only evaluates, and an interrupted run resumes
where it stopped. Prints one markdown table row per set × K × folds × rule × threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import facecleaner
from facecleaner.config import TrainConfig
from facecleaner.pruning.evaluate import detection_metrics, kept_detection_metrics

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
IMAGE_SIZE = 32
RULES = {"paper": {}, "non-dominant": {"drop_non_dominant": True}, "other-class": {"drop_other_class": True}}
SWEEP = np.arange(30.0, 120.5, 1.0)


def real_set(out: Path, base: str, outsiders: str, close_set: float, open_set: float, seed: int) -> Path:
    """A manifest over a shared face set: ``close_set`` of its images relabelled to another of its identities and
    outsiders from ``outsiders`` added under random labels, ``open_set`` of the total."""
    rng = np.random.default_rng(seed)

    def images(name: str) -> list[Path]:
        return sorted(p for p in (FACES / name).glob("*/*") if p.suffix.lower() in (".pgm", ".png", ".jpg"))

    own = images(base)
    frame = pd.DataFrame({"path": [str(p) for p in own], "true_identity": [p.parent.name for p in own]})
    frame["label"] = frame["true_identity"]
    identities = sorted(frame["true_identity"].unique())
    for row in np.flatnonzero(rng.random(len(frame)) < close_set):
        others = [i for i in identities if i != frame.at[row, "true_identity"]]
        frame.at[row, "label"] = others[rng.integers(len(others))]
    if open_set > 0:
        pool = images(outsiders)
        count = min(int(round(open_set * len(frame) / (1 - open_set))), len(pool))
        chosen = [pool[i] for i in rng.choice(len(pool), size=count, replace=False)]
        frame = pd.concat([frame, pd.DataFrame({
            "path": [str(p) for p in chosen], "true_identity": [f"outsider_{p.parent.name}" for p in chosen],
            "label": [identities[rng.integers(len(identities))] for _ in chosen]})], ignore_index=True)
    frame["noise"] = np.where(frame["true_identity"].str.startswith("outsider_"), "open_set",
                              np.where(frame["label"] != frame["true_identity"], "close_set", "clean"))
    frame["is_noise"] = frame["noise"] != "clean"
    out.mkdir(parents=True, exist_ok=True)
    frame[["path", "label", "true_identity", "noise", "is_noise"]].to_parquet(out / "manifest.parquet", index=False)
    return out / "manifest.parquet"


def demo_set(out: Path, identities: int, images: int, noise: float, seed: int) -> Path:
    from facecleaner.sources.synthetic import generate_noisy_faces

    return generate_noisy_faces(out, identities=identities, images_per_identity=images, image_size=IMAGE_SIZE,
                                close_set_noise=noise, open_set_noise=noise, seed=seed)


SETS = {
    "demo30": lambda out, seed: demo_set(out, 100, 30, 0.1, seed),
    "demo100": lambda out, seed: demo_set(out, 100, 100, 0.1, seed),
    "demo300": lambda out, seed: demo_set(out, 40, 300, 0.1, seed),
    "orl": lambda out, seed: real_set(out, "orl_att", "extended_yale_b_cropped", 0.15, 0.0, seed),
    "yale": lambda out, seed: real_set(out, "extended_yale_b_cropped", "orl_att", 0.10, 0.10, seed),
    "demo30-clean": lambda out, seed: demo_set(out, 100, 30, 0.0, seed),
    "yale-clean": lambda out, seed: real_set(out, "extended_yale_b_cropped", "orl_att", 0.0, 0.0, seed),
}
NEEDS_FACES = {"orl", "yale", "yale-clean"}


def scores_of(work: Path, name: str, subcenters: int, folds: int, args: argparse.Namespace) -> tuple[Path, dict]:
    """Train and score one configuration (cached); returns the scores file and what it cost."""
    data = work / "data" / f"{name}-s{args.seed}"
    manifest = data / "manifest.parquet"
    if not manifest.is_file():
        SETS[name](data, args.seed)
    recipe = "" if args.epochs is None and args.lr is None else f"-e{args.epochs}-lr{args.lr}"
    recipe += "" if args.image_size == IMAGE_SIZE else f"-px{args.image_size}"
    run = work / "runs" / f"{name}-s{args.seed}-k{subcenters}-f{folds}{recipe}"
    scores = run / "scores.parquet"
    timing_file = run / "timing.json"
    if not scores.is_file():
        config = TrainConfig(backbone="tiny", image_size=args.image_size, subcenters=subcenters, device="cpu",
                             seed=args.seed, epochs=args.epochs, lr=args.lr)
        model = run / "model"
        started = time.perf_counter()
        if not (model / "summary.json").is_file():  # written last, by one run and by all folds alike
            resume = (model / "folds.json").is_file() or (model / "checkpoint.pt").is_file()
            facecleaner.train(manifest, model, config, folds=max(folds, 1), resume=resume, progress=False)
        middle = time.perf_counter()
        facecleaner.score(model, manifest, scores, device="cpu", progress=False)
        settings = json.loads((model / ("fold-1" if folds > 1 else "") / "config.json").read_text())["train"]
        timing_file.write_text(json.dumps({"train_s": round(middle - started, 1), "epochs": settings["epochs"],
                                           "score_s": round(time.perf_counter() - middle, 1)}))
    return scores, json.loads(timing_file.read_text())


def best_fixed(scores: pd.DataFrame, truth: np.ndarray) -> tuple[float, float]:
    """The oracle: the paper rule's best F1 over thresholds 30°–120°, and that threshold."""
    angle = scores["angle"].to_numpy(dtype=np.float64)
    readable = (scores["status"] == "ok").to_numpy()
    best = max((detection_metrics(~readable | ~(angle <= t), truth)["f1"], t) for t in SWEEP)
    return best[1], best[0]


def evaluate(scores_path: Path, truth: np.ndarray, work: Path) -> list[dict]:
    scores = pd.read_parquet(scores_path)
    threshold, best_f1 = best_fixed(scores, truth)
    rows = []
    for angle in (75.0, "auto"):
        for rule, options in RULES.items():
            clean = work / "clean.parquet"
            pruned = facecleaner.prune(scores_path, clean, angle=angle, force=True, **options)
            kept = pd.read_parquet(clean, columns=["sample_id"])["sample_id"].to_numpy()
            metrics = kept_detection_metrics(kept, truth)
            rows.append({"threshold": "auto" if angle == "auto" else "75", "angle": round(pruned["angle"], 1),
                         "rule": rule, **{k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()},
                         "best_fixed_angle": threshold, "best_fixed_f1": round(best_f1, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="cache of data, runs and scores")
    parser.add_argument("--sets", default="demo30,demo100,demo300,orl,yale,demo30-clean,yale-clean")
    parser.add_argument("--subcenters", default="3,1")
    parser.add_argument("--folds", default="0,5", help="0: in-sample scores; K: train --folds K")
    parser.add_argument("--epochs", type=int, default=None, help="override train's default")
    parser.add_argument("--lr", type=float, default=None, help="override train's default")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="the model's input size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args()
    results = []
    print("| set | K | folds | epochs | threshold | rule | angle | P | R | F1 | clean kept | best fixed | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.sets.split(","):
        if name in NEEDS_FACES and not FACES.is_dir():
            print(f"skipping {name}: {FACES} is absent", file=sys.stderr)
            continue
        for subcenters in (int(k) for k in args.subcenters.split(",")):
            for folds in (int(f) for f in args.folds.split(",")):
                scores, timing = scores_of(args.work, name, subcenters, folds, args)
                truth = pd.read_parquet(args.work / "data" / f"{name}-s{args.seed}" / "manifest.parquet",
                                        columns=["is_noise"])["is_noise"].to_numpy()
                for row in evaluate(scores, truth, args.work):
                    row |= {"set": name, "subcenters": subcenters, "folds": folds, **timing}
                    results.append(row)
                    best = (f"{row['best_fixed_angle']:.0f}°: {row['best_fixed_f1']:.3f}"
                            if row["noise"] else "—")
                    print(f"| {name} | {subcenters} | {folds or '—'} | {row['epochs']} | {row['threshold']} | "
                          f"{row['rule']} | {row['angle']} | {row['precision']:.3f} | {row['recall']:.3f} | "
                          f"{row['f1']:.3f} | {row['clean_kept']:.3f} | {best} | {row['train_s']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
