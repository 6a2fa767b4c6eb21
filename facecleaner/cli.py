"""The command line: parse options, call the API, print the result. No work happens here.

stdout carries results only (a human summary, or JSON with --json); logs and progress bars go to stderr.
Exit codes: 0 success, 1 a reported error (``Error: <what> — <how to fix>``), 2 a usage error.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from facecleaner import __version__
from facecleaner.config import (
    DEMO_EPOCHS,
    DEMO_IDENTITIES,
    DEMO_IMAGES_PER_IDENTITY,
    DEMO_LR,
    MAX_MARGIN,
    MAX_SEED,
    MAX_SUBCENTERS,
)
from facecleaner.errors import FaceCleanerError

PATH = click.Path(path_type=Path)
T = TypeVar("T")


class ReportedError(click.ClickException):
    """A FaceCleanerError shown as one line on stderr with exit code 1."""

    exit_code = 1


def _run(function: Callable[..., T]) -> Callable[..., T]:
    """Call the API, turning its errors into ``Error: …`` lines and exit 1, never a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except FaceCleanerError as exc:
            raise ReportedError(str(exc)) from exc
        except OSError as exc:
            where = exc.filename or "a file"
            raise ReportedError(f"{where}: {exc.strerror or exc} — check the path and its permissions") from exc
        except KeyboardInterrupt:
            raise ReportedError("interrupted") from None
        except Exception as exc:  # a bug of ours: one line for the user, the traceback on request
            if os.environ.get("FACECLEANER_DEBUG"):
                raise
            raise ReportedError(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} — "
                                "this is a facecleaner bug: rerun with FACECLEANER_DEBUG=1 for the traceback and "
                                "report it") from exc

    return wrapper


def _emit(summary: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only the first process prints results
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        for line in lines:
            click.echo(line)


def _setup_logging(quiet: bool) -> None:
    log = logging.getLogger("facecleaner")
    if not any(getattr(h, "_facecleaner_cli", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handler._facecleaner_cli = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    for handler in log.handlers:
        if getattr(handler, "_facecleaner_cli", False):
            handler.setStream(sys.stderr)
            handler.setLevel(logging.WARNING if quiet else logging.INFO)
    log.setLevel(logging.INFO)


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses NaN (which compares false with both bounds, so FloatRange lets it through)
    and infinities: no option of ours means anything at either."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class AngleParam(click.ParamType):
    """``--angle``: degrees in (0, 180), or ``auto``."""

    name = "DEGREES|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return FiniteFloatRange(0, 180, min_open=True, max_open=True).convert(value, param, ctx)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars or info logs on stderr.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where to run: auto picks the GPU when there is one.")
precision_option = click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto",
                                show_default=True, help="Mixed precision on CUDA (auto: bf16 where supported).")
workers_option = click.option("--workers", type=click.IntRange(min=0), default=None,
                              help="Image-decoding worker processes [default: 8 on GPU, 0 on CPU].")
bad_option = click.option("--max-bad-fraction", type=FiniteFloatRange(0, 1), default=0.01, show_default=True,
                          help="Abort when more than this share of images is unreadable (or, in score, gives a "
                               "non-finite embedding).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="facecleaner")
def main() -> None:
    """Clean noisy face-recognition datasets with Sub-center ArcFace.

    \b
    The pipeline:
      facecleaner train DATA --out run/             # sub-center model (K=3) on the noisy set
      facecleaner score run/ DATA --out scores.parquet
      facecleaner prune scores.parquet --angle 75 --out clean.parquet
    then train your recogniser on clean.parquet (column new_label). `facecleaner demo` runs it all on a
    generated noisy set in under two minutes on a CPU.

    DATA is a folder of identity folders (<root>/<identity>/<image>), a Parquet/CSV manifest with columns
    path,label, or an insightface train.rec (with train.idx beside it).
    """


@main.command()
@click.argument("data", type=PATH)
@click.option("--out", type=PATH, required=True, help="Run directory for config, logs, checkpoints, model.pt.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML/JSON file of training settings (flags given on the command line win).")
@click.option("--backbone", type=click.Choice(["tiny", "mbf", "r18", "r34", "r50", "r100", "r200"]), default=None,
              help="Network [default: r50 on GPU, tiny on CPU].")
@click.option("--subcenters", type=click.IntRange(1, MAX_SUBCENTERS), default=None,
              help="Sub-centers per class K [default: 3].")
@click.option("--margin", type=FiniteFloatRange(0, MAX_MARGIN, max_open=True), default=None,
              help="Additive angular margin m in radians, below π/2 [default: 0.5].")
@click.option("--scale", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Logit scale s [default: from the class count, 64 for large sets].")
@click.option("--embedding-size", type=click.IntRange(min=2), default=None, help="Embedding size [default: 512].")
@click.option("--image-size", type=click.IntRange(min=16), default=None,
              help="Square input size in pixels [default: 112].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs [default: by dataset size].")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Batch size [default: 128].")
@click.option("--sample-rate", type=FiniteFloatRange(0, 1, min_open=True), default=None,
              help="Partial FC: per step each process scores its classes in the batch plus random others up to "
                   "this share of its classes [default: 1 = all; 0.1-0.3 for millions of identities].")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Peak SGD learning rate [default: 0.1 × batch / 256].")
@click.option("--dropout", type=FiniteFloatRange(0, 1, max_open=True), default=None,
              help="Dropout before the embedding layer [default: 0].")
@click.option("--shift", type=FiniteFloatRange(0, 0.5, max_open=True), default=None,
              help="Random shift/zoom augmentation, as a fraction of the image size [default: 0.1].")
@click.option("--init-backbone", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Start from these backbone weights (an insightface arcface_torch backbone.pth).")
@device_option
@precision_option
@workers_option
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None,
              help="Random seed [default: 0]; recorded in config.json.")
@bad_option
@click.option("--compile/--no-compile", "compile", default=None,
              help="torch.compile the backbone [default: on with CUDA, off on the CPU].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last checkpoint; settings other than --epochs may be "
                   "left out, and must not differ from the run's.")
@click.option("--folds", type=click.IntRange(2, 20), default=None,
              help="Held-out scoring: train this many models, each without one fold of every identity, so that "
                   "score takes each image's angle from a model that never saw it (costs this many trainings).")
@quiet_option
@json_option
def train(data: Path, out: Path, config_file: Path | None, quiet: bool, as_json: bool, resume: bool,
          folds: int | None, **options: Any) -> None:
    """Train a sub-center ArcFace model on DATA.

    Writes OUT/config.json, train.log, metrics.jsonl (loss, accuracy and mean angle per epoch),
    checkpoint.pt every epoch (Ctrl-C or SIGTERM also checkpoint, mid-epoch) and model.pt at the end.
    Continue a stopped run with the same command plus --resume. With --folds K, OUT holds K such runs
    (fold-1 … fold-K) and score takes each image's angles from the one that did not train on it.

    \b
    Example:
      facecleaner train faces/ --out run/ --backbone r50 --epochs 20
    """
    from facecleaner import api
    from facecleaner.config import TrainConfig, config_settings

    _setup_logging(quiet)
    settings = _run(config_settings)(config_file) if config_file else {}
    context = click.get_current_context()
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()
             if v is not None and context.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    settings |= given  # flags win over the file
    summary = _run(api.train)(data, out, TrainConfig(**settings), resume=resume, progress=not quiet,
                              config_file=config_file, given=list(settings), folds=folds or 1)
    if folds:
        _emit(summary, as_json, [f"{folds} held-out models in {out} (fold-1 … fold-{folds}), each trained on "
                                 f"{folds - 1}/{folds} of every identity's images; score {out} to use them"])
        return
    _emit(summary, as_json, [
        f"model: {out / 'model.pt'}",
        f"{summary['samples']} samples ({summary['unreadable']} unreadable), {summary['classes']} identities, "
        f"{summary['epochs']} epochs",
        f"final loss {summary['final_loss']:.3f}, train accuracy {summary['final_accuracy']:.3f}, "
        f"mean angle {summary['final_mean_angle']:.1f}°, {summary['images_per_second']:.0f} img/s",
    ])  # a convergence warning goes to stderr as a log line (shown even with -q), and into --json


@main.command()
@click.argument("run_dir", type=PATH)
@click.argument("data", type=PATH)
@click.option("--out", type=PATH, required=True, help="The scores manifest to write (.parquet).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_option
@precision_option
@workers_option
@click.option("--embeddings", type=PATH, default=None, help="Also save the unit embeddings (float16 .npy).")
@bad_option
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from the measurements it kept in OUT.resume/ (same options).")
@quiet_option
@json_option
def score(run_dir: Path, data: Path, out: Path, batch_size: int, device: str, precision: str, workers: int | None,
          embeddings: Path | None, max_bad_fraction: float, resume: bool, quiet: bool, as_json: bool) -> None:
    """Measure every sample's angle to its class's dominant sub-center.

    Writes one row per input sample (unreadable ones with their status) and OUT's
    .classes.parquet beside it. Measurements are kept in OUT.resume/ as they are made: after a
    crash, the same command with --resume measures only what is missing.

    \b
    Example:
      facecleaner score run/ faces/ --out scores.parquet
    """
    from facecleaner import api

    _setup_logging(quiet)
    summary = _run(api.score)(run_dir, data, out, batch_size=batch_size, device=device, precision=precision,
                              workers=workers, embeddings=embeddings, max_bad_fraction=max_bad_fraction,
                              progress=not quiet, resume=resume)
    _emit(summary, as_json, [
        f"scores: {summary['scores']}",
        f"{summary['samples']} samples ({summary['unreadable']} unreadable, {summary['resized']} resized), "
        f"median angle {summary['median_angle']:.1f}°, {summary['over_75']} over 75°, "
        f"{summary['non_dominant']} nearest a non-dominant sub-center",
        f"suggested threshold (--angle auto): {summary['suggested_angle']:.1f}° — {summary['auto_threshold']['note']}",
    ])


@main.command()
@click.argument("scores", type=PATH)
@click.option("--angle", type=AngleParam(), default="75", show_default=True,
              help="Drop samples more than this many degrees from their class's dominant sub-center (0<x<180); "
                   "'auto' reads it from the scores (the valley between the clean and noise modes, 75 when the "
                   "angles show no noise mode).")
@click.option("--out", type=PATH, required=True, help="The clean manifest to write (.parquet).")
@click.option("--dropped", type=PATH, default=None, help="The dropped manifest [default: OUT's stem + .dropped].")
@click.option("--drop-non-dominant", is_flag=True,
              help="Also drop samples nearest a non-dominant sub-center even within the angle.")
@click.option("--drop-other-class", is_flag=True,
              help="Also drop samples within the angle that are nearer another class (angle_other) than their "
                   "own class's dominant sub-center: the sign of a flipped label (reason other_class).")
@click.option("--min-images", type=click.IntRange(min=1), default=1, show_default=True,
              help="Drop classes left with fewer kept images than this.")
@click.option("--max-drop-fraction", type=FiniteFloatRange(0, 1), default=0.5, show_default=True,
              help="Refuse to drop more than this share of the samples (unless --force).")
@click.option("--force", is_flag=True, help="Drop even past --max-drop-fraction.")
@quiet_option
@json_option
def prune(scores: Path, angle: float | str, out: Path, dropped: Path | None, drop_non_dominant: bool,
          drop_other_class: bool, min_images: int, max_drop_fraction: float, force: bool, quiet: bool,
          as_json: bool) -> None:
    """Keep the clean core of each identity; write clean and dropped manifests.

    The paper's rule: drop every sample over --angle degrees from its class's dominant sub-center
    (a sample exactly at the threshold is kept, one whose angle is not a number is dropped). The clean
    manifest adds new_label (contiguous 0..C'-1), the dropped one adds reason (unreadable, non_dominant,
    angle, other_class, small_class); OUT's .classes.parquet holds the per-class counts. --angle auto
    reads the threshold from the scores: for a small set or model the right one often lies well inside
    75. The three files are published together. SCORES may also be a scores table edited with pandas
    or duckdb (without facecleaner's metadata) that still has the decision columns.

    \b
    Example:
      facecleaner prune scores.parquet --angle 75 --out clean.parquet --min-images 3
      facecleaner prune scores.parquet --angle auto --out clean.parquet
    """
    from facecleaner import api

    _setup_logging(quiet)
    summary = _run(api.prune)(scores, out, angle=angle, dropped=dropped, drop_non_dominant=drop_non_dominant,
                              min_images=min_images, max_drop_fraction=max_drop_fraction, force=force,
                              drop_other_class=drop_other_class)
    reasons = ", ".join(f"{name} {count}" for name, count in summary["by_reason"].items() if count)
    auto = summary["auto_threshold"]
    _emit(summary, as_json, [
        *([f"angle: {summary['angle']:.1f}° (auto: {auto['note']})"] if auto else []),
        f"clean: {summary['clean']} ({summary['kept']} of {summary['samples']} samples, "
        f"{summary['classes_kept']} of {summary['classes']} identities)",
        f"dropped: {summary['dropped']} ({summary['dropped_samples']} samples{': ' + reasons if reasons else ''})",
    ])


@main.command()
@click.argument("scores", type=PATH)
@click.option("--out", type=PATH, required=True,
              help="The report folder to write (new, empty, or an earlier report, which is replaced).")
@click.option("--clean", type=PATH, default=None,
              help="A clean manifest pruned from SCORES: kept = its rows, reasons from its dropped companion "
                   "[default: decide with the paper's rule at --angle].")
@click.option("--angle", type=AngleParam(), default="75", show_default=True,
              help="Without --clean: the threshold to split kept and dropped at (0<x<180), or 'auto'.")
@click.option("--max-thumbnails", type=click.IntRange(min=0), default=600, show_default=True,
              help="At most this many thumbnails in the contact sheets.")
@click.option("--worst-classes", type=click.IntRange(min=0), default=20, show_default=True,
              help="Contact sheets for this many identities losing the largest share of their samples.")
@click.option("--sample-classes", type=click.IntRange(min=0), default=5, show_default=True,
              help="…and for this many other identities drawn at random.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Seed of the random identities.")
@click.option("--root", type=PATH, default=None,
              help="Where the images' relative paths start [default: the input folder in the scores' metadata]; "
                   "for RecordIO rows, the train.rec they come from.")
@quiet_option
@json_option
def report(scores: Path, out: Path, clean: Path | None, angle: float | str, max_thumbnails: int,
           worst_classes: int, sample_classes: int, seed: int, root: Path | None, quiet: bool,
           as_json: bool) -> None:
    """Write an HTML report on a scoring run: figures, contact sheets, numbers.

    OUT gets index.html (open it in a browser; it needs no network), figures/ (angle histograms of
    dominant and non-dominant samples, the share kept against the threshold, per-identity drop
    rates, model health), thumbs/ (the contact sheets: kept and dropped faces side by side for the
    identities losing most, and a random few others) and summary.json with the numbers plotted.
    Works on RecordIO data too (thumbnails from the train.rec).

    \b
    Example:
      facecleaner report scores.parquet --clean clean.parquet --out report/
      facecleaner report scores.parquet --angle auto --out report/
    """
    from facecleaner import api

    _setup_logging(quiet)
    summary = _run(api.report)(scores, out, clean=clean, angle=angle, max_thumbnails=max_thumbnails,
                               worst_classes=worst_classes, sample_classes=sample_classes, seed=seed, root=root,
                               progress=not quiet)
    counts = summary["counts"]
    reasons = ", ".join(f"{name} {n}" for name, n in counts["by_reason"].items() if n)
    _emit(summary, as_json, [
        f"report: {summary['index']}",
        f"{counts['samples']} samples: {counts['kept']} kept, {counts['dropped']} dropped"
        f"{' (' + reasons + ')' if reasons else ''} at {summary['threshold']['angle']:.1f}° "
        f"({summary['threshold']['choice']})",
        f"contact sheets: {len(summary['sheets'])} identities, {summary['thumbnails']['written']} thumbnails",
    ])


@main.command()
@click.option("--out", type=PATH, default=Path("facecleaner-demo"), show_default=True,
              help="Folder for the generated data, the run and the manifests.")
@click.option("--identities", type=click.IntRange(min=2), default=DEMO_IDENTITIES, show_default=True)
@click.option("--images-per-identity", type=click.IntRange(min=2), default=DEMO_IMAGES_PER_IDENTITY,
              show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=DEMO_EPOCHS, show_default=True,
              help="Training epochs.")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=DEMO_LR, show_default=True,
              help="Learning rate: low, so the tiny model keeps unrelated identities near-orthogonal (README).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@quiet_option
@json_option
def demo(out: Path, identities: int, images_per_identity: int, epochs: int, lr: float, seed: int, quiet: bool,
         as_json: bool) -> None:
    """Run the whole pipeline on a generated noisy face set, on the CPU, in under two minutes.

    The set has procedural identities with a clean-but-hard secondary look, close-set label flips and
    open-set outsiders; its manifest's is_noise column is the ground truth, so the figures printed
    (precision, recall and F1 of the dropped set; share of clean samples kept) can be checked.

    \b
    Example:
      facecleaner demo --out /tmp/demo
    """
    from facecleaner import api

    _setup_logging(quiet)
    summary = _run(api.demo)(out, identities=identities, images_per_identity=images_per_identity, epochs=epochs,
                             lr=lr, seed=seed, progress=not quiet)
    lines = [f"demo: {summary['samples']} samples of {summary['identities']} identities in {summary['out']}",
             f"median angle {summary['median_angle']:.1f}°; dropped set against the planted noise:",
             f"  {'rule':<20}{'angle':>7}{'precision':>10}{'recall':>8}{'F1':>7}{'clean kept':>12}"]
    for name, m in summary["rules"].items():
        lines.append(f"  {name:<20}{m['angle']:>6.1f}°{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>7.3f}"
                     f"{m['clean_kept']:>12.3f}")
    _emit(summary, as_json, lines)


@main.command("eval")
@click.argument("run_dir", type=PATH)
@click.option("--pairs", "pairs", type=PATH, required=True,
              help="The pair list: an insightface .bin (lfw.bin, cfp_fp.bin, agedb_30.bin), a .csv with columns "
                   "path1,path2,same[,fold], or an LFW pairs.txt.")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Where the image paths of a .csv or pairs.txt start [default: the pairs file's folder].")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Flip test-time augmentation: embed each image and its mirror image, and add the two.")
@click.option("--roc", type=PATH, default=None, help="Also draw the ROC curve into this PNG.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_option
@precision_option
@workers_option
@click.option("--max-bad-fraction", type=FiniteFloatRange(0, 1), default=0.01, show_default=True,
              help="Abort when more than this share of the images is unreadable (pairs with one are left out).")
@quiet_option
@json_option
def eval_(run_dir: Path, pairs: Path, root: Path | None, flip: bool, roc: Path | None, batch_size: int, device: str,
          precision: str, workers: int | None, max_bad_fraction: float, quiet: bool, as_json: bool) -> None:
    """Face verification with RUN_DIR's backbone on a list of image pairs.

    Each pair is judged by the squared L2 distance between the unit embeddings of its two images.
    Prints the standard 10-fold accuracy (each fold at the threshold that is best on the other nine;
    the folds of a pairs.txt header or a CSV fold column when given), TPR at FPR 1e-3 and 1e-4 (n/a
    with too few mismatched pairs to measure that rate) and the ROC's AUC.

    \b
    Example:
      facecleaner eval run/ --pairs lfw.bin --roc lfw_roc.png
      facecleaner eval run/ --pairs pairs.txt --root lfw/ --json
    """
    from facecleaner import api

    _setup_logging(quiet)
    summary = _run(api.evaluate)(run_dir, pairs, root=root, flip=flip, roc=roc, batch_size=batch_size, device=device,
                                 precision=precision, workers=workers, max_bad_fraction=max_bad_fraction,
                                 progress=not quiet)
    rates = ", ".join(f"TPR@FPR={key} {value:.4f}" if value is not None else
                      f"TPR@FPR={key} n/a (needs {summary['tpr_at_fpr_needs_mismatched'][key]} mismatched pairs)"
                      for key, value in summary["tpr_at_fpr"].items())
    left_out = f", {summary['unreadable_pairs']} left out (unreadable image)" if summary["unreadable_pairs"] else ""
    _emit(summary, as_json, [
        f"{summary['evaluated_pairs']} pairs ({summary['matched_pairs']} matched, {summary['mismatched_pairs']} "
        f"mismatched{left_out}), flip TTA {'on' if flip else 'off'}",
        f"accuracy {summary['accuracy']:.4f} ± {summary['accuracy_std']:.4f} over {summary['folds']} folds "
        f"(threshold {summary['threshold']:.2f} squared L2 = {summary['threshold_angle']:.1f}°)",
        f"{rates}, AUC {summary['auc']:.4f}",
        *([f"roc: {summary['roc']}"] if summary["roc"] else []),
    ])


@main.command()
@click.argument("manifest", type=PATH)
@click.option("--format", "fmt", type=click.Choice(["rec", "folder", "csv", "lst"]), required=True,
              help="rec: insightface train.rec/.idx/property; folder: <label>/<file>; csv: path,label; "
                   "lst: index<TAB>label<TAB>path (mxnet im2rec order).")
@click.option("--out", type=PATH, required=True, help="Destination folder (rec, folder) or file (csv, lst).")
@click.option("--link", type=click.Choice(["hardlink", "symlink", "copy"]), default="hardlink", show_default=True,
              help="How folder exports place images (hardlinks fall back to copies across filesystems).")
@click.option("--label-column", default="new_label", show_default=True,
              help="The column holding each row's class: new_label (contiguous 0..C-1), label (the input's "
                   "identity) or any column of an edited manifest.")
@click.option("--root", type=PATH, default=None,
              help="Where relative paths start [default: the input folder in the manifest's metadata, else the "
                   "manifest's folder]; for RecordIO rows of an edited manifest, the train.rec they come from.")
@quiet_option
@json_option
def export(manifest: Path, fmt: str, out: Path, link: str, label_column: str, root: Path | None, quiet: bool,
           as_json: bool) -> None:
    """Export a clean manifest for another trainer.

    MANIFEST is a clean manifest written by prune, or any Parquet or CSV with a path column and the
    label column (say, a clean manifest filtered with pandas or duckdb). rec writes train.rec, train.idx
    and property in the layout insightface's arcface_torch reads (JPEG bytes copied unchanged where they
    fit, other images re-encoded); folder builds an ImageFolder tree with sanitised label names that never
    escape OUT. Exports are atomic; OUT may not be, or hold, the manifest or its companions.

    \b
    Example:
      facecleaner export clean.parquet --format rec --out clean_rec/
      facecleaner export edited.csv --format folder --out faces/ --label-column label --root /data/faces
    """
    from facecleaner import api

    _setup_logging(quiet)
    summary = _run(api.export)(manifest, fmt, out, link=link, label_column=label_column, progress=not quiet,
                               root=root)
    skipped = f", {summary['skipped']} skipped" if summary["skipped"] else ""
    _emit(summary, as_json, [f"{fmt}: {summary['dest']} ({summary['written']} images, {summary['classes']} "
                             f"classes{skipped})"])


@main.command("export-model")
@click.argument("run_dir", type=PATH)
@click.option("--format", "fmt", type=click.Choice(["pth", "onnx"]), required=True,
              help="pth: the backbone's state dict under arcface_torch's names (what --init-backbone reads); "
                   "onnx: the backbone as an ONNX graph with a dynamic batch axis.")
@click.option("--out", type=PATH, required=True, help="The file to write (a new one: an export never overwrites).")
@quiet_option
@json_option
def export_model(run_dir: Path, fmt: str, out: Path, quiet: bool, as_json: bool) -> None:
    """Export the backbone of a trained model for other tools.

    RUN_DIR is the run directory of a finished `facecleaner train` (or its model.pt). pth writes a plain
    state dict that arcface_torch and `train --init-backbone` load. onnx takes input "input", float32
    [N, 3, S, S] in RGB order normalised as (pixel - 127.5) / 127.5, S the model's image size, and gives
    output "embedding" [N, E], not L2-normalised; the file is checked with onnxruntime against torch before
    it is published (needs pip install "facecleaner[onnx]").

    \b
    Example:
      facecleaner export-model run/ --format pth --out backbone.pth
      facecleaner export-model run/ --format onnx --out backbone.onnx
    """
    from facecleaner import api

    _setup_logging(quiet)
    summary = _run(api.export_model)(run_dir, fmt, out)
    lines = [f"{fmt}: {summary['out']} ({summary['backbone']} backbone, {summary['embedding_size']}-d embeddings, "
             f"{summary['image_size']}×{summary['image_size']} input)"]
    if fmt == "onnx":
        check = summary["check"]
        lines += [f"input {summary['input']['name']!r} float32 [N, 3, {summary['image_size']}, "
                  f"{summary['image_size']}]: {summary['input']['normalisation']}",
                  f"output {summary['output']['name']!r} [N, {summary['embedding_size']}], not L2-normalised; "
                  f"onnxruntime matches torch to {check['max_abs_diff']:.2g} (embeddings up to "
                  f"{check['embedding_scale']:.2g})"]
    _emit(summary, as_json, lines)
