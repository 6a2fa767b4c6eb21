"""Does cleaning pay off? Verification accuracy on held-out identities, trained on the noisy set and on the cleaned one.

For each real set (ORL, Extended Yale B, with the planted noise of `noise_recovery.py`, whose set builders this
imports), a share of the identities (`--holdout`, 20%) is held out: every image of those people — whatever label
the noise gave it — leaves the training set, and their images, under their true identities, make the
verification set: all matched pairs and as many mismatched pairs drawn at random, as a CSV pair list
(`path1,path2,same`, shuffled, so the 10 folds in order mix both). On the rest, through the public API:

- `noisy K=1`: plain ArcFace (`train --subcenters 1`) on the noisy set — the "before";
- `noisy K=3`: sub-center ArcFace on the noisy set — the cleaner's own model, then `score` and `prune` with the
  paper's 75° and with `--angle auto`;
- `clean-75 K=1`, `clean-auto K=1`: retrained on each clean manifest — the "after";
- `truth K=1`: trained on the noisy set less its planted noise (ground truth): the upper bound.

Every model is evaluated with `facecleaner eval` (flip TTA, 10-fold accuracy, TPR at FPR 1e-2, 1e-3, 1e-4, AUC).
Training uses `train`'s defaults (tiny backbone on the CPU, epochs by size) at `--image-size` (32).

    python benchmarks/clean_payoff.py --work /tmp/clean-payoff [--sets orl,yale] [--seeds 0,1,2]
        [--holdout 0.2] [--image-size 32] [--noise CLOSE,OPEN] [--faces ../shared/data/faces] [--json results.json]

Everything is cached under --work (data, pair lists, runs, scores): a rerun only evaluates. Prints a markdown
table: one row per set × seed × model, then the mean over seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import noise_recovery  # noqa: E402 - the set builders, beside this script

import facecleaner  # noqa: E402
from facecleaner.config import TrainConfig  # noqa: E402
from facecleaner.pruning.evaluate import kept_detection_metrics  # noqa: E402

SETS = ("orl", "yale")
#: The shared folders behind each set (base, outsiders), for --noise, which replaces the set's planted noise.
FOLDERS = {"orl": ("orl_att", "extended_yale_b_cropped"), "yale": ("extended_yale_b_cropped", "orl_att")}
FPR = (1e-2, 1e-3, 1e-4)
MODELS = ("noisy K=1", "noisy K=3", "clean-75 K=1", "clean-auto K=1", "truth K=1")


def split(work: Path, name: str, seed: int, holdout: float,
          noise: tuple[float, float] | None) -> tuple[Path, Path, dict]:
    """The noisy set less the held-out people (train.parquet) and their pairs (pairs.csv); cached."""
    folder = work / "data" / (f"{name}-s{seed}" + (f"-n{noise[0]:g}-{noise[1]:g}" if noise else ""))
    train, pairs, info = folder / "train.parquet", folder / "pairs.csv", folder / "split.json"
    if info.is_file():
        return train, pairs, json.loads(info.read_text())
    if noise:
        manifest = noise_recovery.real_set(folder, *FOLDERS[name], *noise, seed)
    else:
        manifest = noise_recovery.SETS[name](folder, seed)
    frame = pd.read_parquet(manifest)
    people = sorted(p for p in frame["true_identity"].unique() if not p.startswith("outsider_"))
    rng = np.random.default_rng(1000 + seed)
    held = set(rng.choice(people, size=max(2, round(holdout * len(people))), replace=False).tolist())
    kept = ~frame["true_identity"].isin(held) & ~frame["label"].isin(held)
    frame[kept].reset_index(drop=True).to_parquet(train, index=False)
    test = frame[frame["true_identity"].isin(held)].drop_duplicates("path").reset_index(drop=True)
    by_person = test.groupby("true_identity")["path"].apply(list)
    matched = [(a, b, 1) for paths in by_person for a, b in itertools.combinations(paths, 2)]
    mismatched_pool = [(a, b) for p, q in itertools.combinations(by_person.index, 2)
                       for a in by_person[p] for b in by_person[q]]
    chosen = rng.choice(len(mismatched_pool), size=min(len(matched), len(mismatched_pool)), replace=False)
    rows = matched + [(*mismatched_pool[i], 0) for i in chosen]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    pd.DataFrame(rows, columns=["path1", "path2", "same"]).to_csv(pairs, index=False)
    stats = {"identities_held_out": len(held), "held_out_images": len(test), "matched_pairs": len(matched),
             "mismatched_pairs": len(chosen), "train_images": int(kept.sum()),
             "train_identities": int(frame.loc[kept, "label"].nunique()),
             "train_noise": round(float(frame.loc[kept, "is_noise"].mean()), 4),
             "dropped_with_held_out": int((~kept).sum())}
    info.write_text(json.dumps(stats, indent=1))
    return train, pairs, stats


def trained(run: Path, data: Path, subcenters: int, seed: int, image_size: int) -> float:
    """Train (cached: summary.json is written last); returns the seconds it took, 0 when cached."""
    if (run / "summary.json").is_file():
        return json.loads((run / "timing.json").read_text())["train_s"] if (run / "timing.json").is_file() else 0.0
    started = time.perf_counter()
    config = TrainConfig(backbone="tiny", image_size=image_size, subcenters=subcenters, device="cpu", seed=seed)
    facecleaner.train(data, run, config, resume=(run / "checkpoint.pt").is_file(), progress=False)
    seconds = round(time.perf_counter() - started, 1)
    (run / "timing.json").write_text(json.dumps({"train_s": seconds}))
    return seconds


def one_set(work: Path, name: str, seed: int, args: argparse.Namespace) -> list[dict]:
    train, pairs, stats = split(work, name, seed, args.holdout, args.noise)
    noise = f"-n{args.noise[0]:g}-{args.noise[1]:g}" if args.noise else ""
    runs = work / "runs" / f"{name}-s{seed}{noise}-px{args.image_size}"
    truth_manifest = runs / "truth.parquet"
    runs.mkdir(parents=True, exist_ok=True)
    noisy = pd.read_parquet(train)
    if not truth_manifest.is_file():
        noisy[~noisy["is_noise"]].to_parquet(truth_manifest, index=False)
    data = {"noisy K=1": (train, 1), "noisy K=3": (train, 3), "truth K=1": (truth_manifest, 1)}
    seconds = {model: trained(runs / model.replace(" ", "_").replace("=", ""), path, k, seed, args.image_size)
               for model, (path, k) in data.items()}
    scores = runs / "scores.parquet"
    if not scores.is_file():
        facecleaner.score(runs / "noisy_K3", train, scores, device="cpu", progress=False)
    cleaning = {}
    for rule, angle in (("75", 75.0), ("auto", "auto")):
        clean = runs / f"clean-{rule}.parquet"
        pruned = facecleaner.prune(scores, clean, angle=angle, force=True)
        kept = pd.read_parquet(clean, columns=["sample_id"])["sample_id"].to_numpy()
        detection = kept_detection_metrics(kept, noisy["is_noise"].to_numpy())
        cleaning[rule] = {"angle": round(pruned["angle"], 1), "kept": int(len(kept)),
                          "noise_left": round(float(noisy["is_noise"].to_numpy()[kept].mean()), 4),
                          **{k: round(detection[k], 3) for k in ("precision", "recall", "f1", "clean_kept")}}
        model = f"clean-{rule} K=1"
        seconds[model] = trained(runs / f"clean-{rule}_K1", clean, 1, seed, args.image_size)
    rows = []
    for model in MODELS:
        run = runs / model.replace(" ", "_").replace("=", "")
        summary = facecleaner.evaluate(run, pairs, device="cpu", fpr_targets=FPR, progress=False)
        epochs = json.loads((run / "config.json").read_text())["train"]["epochs"]
        train_summary = json.loads((run / "summary.json").read_text())
        rule = model.split(" ")[0].removeprefix("clean-") if model.startswith("clean") else None
        rows.append({"set": name + noise, "seed": seed, "model": model, "image_size": args.image_size,
                     "train_images": train_summary["samples"],
                     "train_noise": (cleaning[rule]["noise_left"] if rule else
                                     0.0 if model.startswith("truth") else stats["train_noise"]),
                     "epochs": epochs, "train_accuracy": round(train_summary["final_accuracy"], 3),
                     "accuracy": summary["accuracy"], "accuracy_std": summary["accuracy_std"],
                     "tpr_at_fpr": summary["tpr_at_fpr"], "auc": summary["auc"],
                     "pairs": summary["evaluated_pairs"], "train_s": seconds[model],
                     **({"cleaning": cleaning[rule]} if rule else {}), "split": stats})
    return rows


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="cache of data, pair lists, runs and scores")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0", help="each seed: other noise, another held-out split, other init")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of the identities held out")
    parser.add_argument("--image-size", type=int, default=noise_recovery.IMAGE_SIZE)
    parser.add_argument("--noise", default=None, help="CLOSE,OPEN: planted noise shares replacing the set's own "
                        "(ORL 0.15,0; Yale B 0.10,0.10, as in noise_recovery.py)")
    parser.add_argument("--faces", type=Path, default=noise_recovery.FACES, help="the shared real face sets")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args()
    noise_recovery.FACES = args.faces  # the builders read it
    args.noise = tuple(float(v) for v in args.noise.split(",")) if args.noise else None
    if not args.faces.is_dir():
        sys.exit(f"{args.faces} is absent: give --faces the folder holding orl_att and extended_yale_b_cropped")
    from facecleaner.verification.metrics import fpr_key

    names = [fpr_key(t) for t in FPR]
    results = []
    print("| set | seed | model | train images | noise | epochs | train acc | accuracy | "
          + " | ".join(f"TPR@{n}" for n in names) + " | AUC | pairs | train s |")
    print("| --- " * (11 + len(names)) + "|")
    for name in args.sets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for row in one_set(args.work, name, seed, args):
                results.append(row)
                print(f"| {row['set']} | {seed} | {row['model']} | {row['train_images']} | {row['train_noise']:.3f} | "
                      f"{row['epochs']} | {row['train_accuracy']:.3f} | {row['accuracy']:.3f} ± "
                      f"{row['accuracy_std']:.3f} | " + " | ".join(fmt(row["tpr_at_fpr"][n]) for n in names)
                      + f" | {row['auc']:.3f} | {row['pairs']} | {row['train_s']} |", flush=True)
            cleaning = {r["model"]: r["cleaning"] for r in results[-len(MODELS):] if "cleaning" in r}
            for model, c in cleaning.items():
                print(f"<!-- {name} seed {seed} {model}: angle {c['angle']}, kept {c['kept']}, noise left "
                      f"{c['noise_left']}, P {c['precision']} R {c['recall']} F1 {c['f1']} clean kept "
                      f"{c['clean_kept']} -->", flush=True)
    frame = pd.DataFrame(results)
    print("\nmean over seeds\n\n| set | model | accuracy | " + " | ".join(f"TPR@{n}" for n in names) + " | AUC |")
    print("| --- " * (4 + len(names)) + "|")
    for (name, model), group in frame.groupby(["set", "model"], sort=False):
        rates = [group["tpr_at_fpr"].map(lambda r, n=n: r[n]) for n in names]
        print(f"| {name} | {model} | {group['accuracy'].mean():.3f} | "
              + " | ".join("n/a" if r.isna().any() else f"{r.mean():.3f}" for r in rates)
              + f" | {group['auc'].mean():.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
