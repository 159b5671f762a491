"""Part 2, protocol 3 (issue 27): a trained CIFAR-10 teacher, students from scratch with its recipe, equal
objectives, >= 3 seeds, paired 95% intervals. Resumable stages; launch them from a frozen worktree so every
row names the commit that trained it:

    python benchmarks/bench_classification.py slices       # train / select / report slices of CIFAR-10
    python benchmarks/bench_classification.py candidates   # images/s of candidate teachers (~1 min) -> estimate
    python benchmarks/bench_classification.py teacher      # train (or resume) the teacher; refuses students below
                                                           # TEACHER_TARGET top-1 on the select slice
    python benchmarks/bench_classification.py park         # before a session ends: keep every unfinished run's
                                                           # newest checkpoint in benchmarks/artefacts (commit it)
    python benchmarks/bench_classification.py select       # one seed per candidate setting, scored on the select
                                                           # slice: RED alpha (1 or 50) and the best other distiller
    python benchmarks/bench_classification.py students [--arm A] [--seed S]   # the arms x seeds (resumable)
    python benchmarks/bench_classification.py summary      # rows -> results/classification.json + RESULTS.md

Every stage takes ``--smoke`` (a few images, 1 epoch, tiny widths, into ``--work_dir``, never benchmarks/_work)
and ``--threads`` (torch threads of the training process). A finished run writes ``row.json`` next to its model
and a rerun skips it; an unfinished one resumes from its newest accelerate checkpoint. Finished rows are also kept
in benchmarks/artefacts/classification_runs (committed; `park` adds unfinished runs' newest checkpoints), and every
stage first copies back what this machine lacks: a fresh machine skips the finished runs and resumes the rest.

Data: the CIFAR-10 training parquet minus the last 500 images of every class (45,000 to train on); those 5,000
cut in two per class: *select* (first 250 per class) monitors training and chooses settings, *report* (last 250
per class) is read once per finished run, for the final-epoch top-1 that the tables report.

Arms (each at seeds 0, 1, 2): the plain student at 1 x CE and at 0.5 x CE (``--task_weight 0.5``), student+
(RED blocks, no RED loss) at 0.5 x CE, RED, KD, RED+KD and the best other distiller (chosen on the select
slice) at 0.5 x CE + 0.5 x distillation (the reference's weights), and a plain student widened to the RED
student's parameter count at 0.5 x CE (does RED win by capacity?). So 'what the RED loss adds' is RED -
student+, 'what the blocks add' is student+ - plain (0.5 x CE), both at equal task weight.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CIFAR10_PARQUET,
    REPO_ROOT,
    CommandRecord,
    fmt_bytes,
    git_revision,
    library_outside_checkout,
    machine_info,
    markdown_table,
    paired_interval,
    part_result,
    python_argv,
    read_json,
    relative,
    run_paper_commands,
    run_segment,
    slug,
    write_json,
)

SCRIPT = REPO_ROOT / "examples/train_classifier_redistill.py"
PROTOCOL = 3
WORK = REPO_ROOT / "benchmarks/_work/classification_v3"
TEACHER_TARGET = 0.85  # top-1 on the select slice before any student starts
SEEDS = (0, 1, 2)
SELECT_SEED = 100  # the selection runs' seed, none of the report seeds


@dataclass(frozen=True)
class Recipe:
    """The teacher's recipe, which every student shares (only the distiller and its options differ)."""

    timm_model_args: dict[str, Any]
    stem_stride: int
    heldout_per_class: int  # held out of training; half select, half report
    train_per_class: int | None  # None: every remaining image
    train_batch_size: int
    num_epochs: int
    learning_rate: float
    warmup_epochs: int
    weight_decay: float
    crop_scale_min: float  # RandomResizedCrop(scale=(s, 1)): the library's crop; plus horizontal flip
    mixed_precision: str
    checkpointing_steps: int
    validation_epochs: int
    eval_batch_size: int
    teacher_target: float
    seeds: tuple[int, ...] = SEEDS
    note: str = ""


RECIPES: dict[str, Recipe] = {
    "cpu": Recipe(
        # The narrow ResNet18 of the earlier protocols (1.24 M parameters). `candidates` measured 119 training
        # images/s at one thread on the shared 2-core Xeon under a diffusion teacher's load (the 2.81 M two-block
        # variant 81, the full-width one-block 4.90 M 71): 30 epochs of 45,000 images = 3.1 h. Estimate of the
        # epochs: ResNet-20-sized CIFAR-10 networks reach ~88-91% with 30-epoch cosine SGD (lr 0.1, momentum 0.9,
        # wd 5e-4, crop + flip, batch 128); this one has 4.6x ResNet-20's parameters and should pass 85% on the
        # select slice by epoch ~20. If it misses, the teacher stage says so: raise num_epochs and retrain (a
        # cosine schedule cannot be extended by resuming).
        timm_model_args={"channels": [32, 64, 128, 256], "stem_width": 32, "layers": [1, 1, 1, 1]},
        stem_stride=4,
        heldout_per_class=500,
        train_per_class=None,
        train_batch_size=128,
        num_epochs=30,
        learning_rate=0.1,
        warmup_epochs=1,
        weight_decay=5e-4,
        crop_scale_min=0.35,
        mixed_precision="bf16",
        checkpointing_steps=350,  # ~1 epoch of 352 steps: a kill loses at most one epoch
        validation_epochs=5,
        eval_batch_size=500,
        teacher_target=TEACHER_TARGET,
    ),
    "smoke": Recipe(
        timm_model_args={"channels": [8, 16, 16, 16], "stem_width": 8, "layers": [1, 1, 1, 1]},
        stem_stride=4,
        heldout_per_class=4,
        train_per_class=12,
        train_batch_size=16,
        num_epochs=1,
        learning_rate=0.05,
        warmup_epochs=0,
        weight_decay=5e-4,
        crop_scale_min=0.35,
        mixed_precision="no",
        checkpointing_steps=4,
        validation_epochs=1,
        eval_batch_size=64,
        teacher_target=0.0,
        seeds=(0, 1),
        note="smoke: checks the harness, not the method",
    ),
}


# ------------------------------------------------------------------------------------------------
# arms
# ------------------------------------------------------------------------------------------------
HALF_CE = ["--task_weight", "0.5"]


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    distiller: str
    flags: tuple[str, ...] = ()
    objective: str = "0.5 CE + 0.5 distillation"
    wide: bool = False  # the student of a widened (random) teacher: a plain student at the RED student's size


# Arms that no select-stage setting changes: they may train while the select runs are still going.
CHOICE_FREE = ("plain", "plain_half", "student_plus_half", "kd", "plain_wide_half")


def arms(choice: dict[str, Any]) -> dict[str, Arm]:
    """The report's arms, with the settings the select stage chose (``choice``). Each choice unlocks only the
    arms it sets: RED and RED+KD once RED's alpha is chosen, the other distiller's arm once it is; before that,
    the CHOICE_FREE arms train (the select runs for alpha finish long before those for the other distillers)."""
    alpha = ["--red_alpha", str(choice.get("red_alpha"))]
    other = choice.get("other_distiller")
    every = (
        Arm("plain", "plain student", "vanilla", objective="1 CE"),
        Arm("plain_half", "plain student", "vanilla", tuple(HALF_CE), "0.5 CE"),
        Arm(
            "student_plus_half",
            "student+ (RED blocks, no RED loss)",
            "student_plus",
            tuple(HALF_CE),
            "0.5 CE",
        ),
        Arm("red", "RED", "red", tuple(alpha)),
        Arm("kd", "KD", "kd"),
        Arm("red_kd", "RED+KD", "red+kd", tuple(alpha)),
        Arm(f"other_{other}", f"{other.upper()} (best other, chosen on select)", other) if other else None,
        Arm(
            "plain_wide_half",
            "plain student widened to RED's parameters",
            "vanilla",
            tuple(HALF_CE),
            "0.5 CE",
            True,
        ),
    )
    needs_alpha = {"red", "red_kd"}
    return {
        a.name: a
        for a in every
        if a is not None and (a.name not in needs_alpha or choice.get("red_alpha") is not None)
    }


# The table's row order ("other" stands for the selected other distiller's arm, other_<name>).
ARM_ORDER = ["plain", "plain_half", "plain_wide_half", "student_plus_half", "red", "red_kd", "kd", "other"]


def _arm_rank(name: str) -> int:
    key = "other" if name.startswith("other_") else name
    return ARM_ORDER.index(key) if key in ARM_ORDER else len(ARM_ORDER)


# What the select stage compares (one seed, SELECT_SEED, scored on the select slice).
SELECT_CANDIDATES = {
    "red_alpha_1": Arm("red_alpha_1", "RED alpha 1", "red", ("--red_alpha", "1")),
    "red_alpha_50": Arm("red_alpha_50", "RED alpha 50", "red", ("--red_alpha", "50")),
    "dkd": Arm("dkd", "DKD", "dkd"),
    "at": Arm("at", "AT", "at"),
    "fitnet": Arm("fitnet", "FitNet", "fitnet"),
}

OTHER_DISTILLERS = ("dkd", "at", "fitnet")  # the select runs among which the best other distiller is chosen

# The paired differences the summary reports: (name, minuend arm, subtrahend arm, what it measures).
CONTRASTS = [
    ("red - plain (1 CE)", "red", "plain", "the headline of the earlier protocols, objectives unequal"),
    ("red - plain (0.5 CE)", "red", "plain_half", "RED (blocks + loss) at equal task weight"),
    ("red - student+ (0.5 CE)", "red", "student_plus_half", "what the RED loss adds"),
    ("student+ - plain (0.5 CE)", "student_plus_half", "plain_half", "what the blocks add"),
    ("red - plain wide (0.5 CE)", "red", "plain_wide_half", "RED against equal parameters without RED"),
    ("plain wide - plain (0.5 CE)", "plain_wide_half", "plain_half", "what the extra parameters add"),
    ("plain (0.5 CE) - plain (1 CE)", "plain_half", "plain", "the effect of halving the task weight"),
    ("kd - plain (0.5 CE)", "kd", "plain_half", "what KD adds"),
    ("red+kd - kd", "red_kd", "kd", "what RED adds to KD"),
    ("red - kd", "red", "kd", "RED against KD"),
    ("other - plain (0.5 CE)", "other_*", "plain_half", "what the best other distiller adds"),
]


# ------------------------------------------------------------------------------------------------
# paths and data
# ------------------------------------------------------------------------------------------------
@dataclass
class Layout:
    work: Path
    results: Path  # where classification.json and RESULTS.md's folder live (results/ under it)
    logs: Path
    recipe: Recipe
    smoke: bool = False

    def run_dir(self, kind: str, name: str, seed: int) -> Path:
        return self.work / kind / f"{name}_seed{seed}"


def slices(layout: Layout, data: Path) -> dict[str, Path]:
    """train / select / report parquets (disjoint; positional per class, so the same on every machine)."""
    import numpy as np
    import pyarrow.parquet as pq

    paths = {k: layout.work / f"{k}.parquet" for k in ("train", "select", "report")}
    if all(p.is_file() for p in paths.values()):
        return paths
    recipe = layout.recipe
    table = pq.read_table(data)
    labels = np.asarray(table["label"].to_pylist())
    role = np.full(len(labels), "", dtype=object)
    half = recipe.heldout_per_class // 2
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) <= recipe.heldout_per_class:
            raise SystemExit(
                f"{data}: class {label} has {len(rows)} rows, too few to hold out {recipe.heldout_per_class}."
            )
        held = rows[-recipe.heldout_per_class :]
        role[held[:half]] = "select"
        role[held[half:]] = "report"
        train = rows[: -recipe.heldout_per_class]
        role[train if recipe.train_per_class is None else train[: recipe.train_per_class]] = "train"
    layout.work.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        tmp = path.with_suffix(".tmp")
        pq.write_table(table.filter(role == name), tmp)
        os.replace(tmp, path)
    return paths


def synthetic_source(work: Path) -> Path:
    """Labelled coloured shapes as a CIFAR-style parquet (run.py's smoke budget, no CIFAR-10 needed)."""
    import datasets
    from PIL import Image

    from redistill_diffusion.data import make_shapes

    path = work / "shapes_labelled.parquet"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        images, labels = make_shapes(num_images=200, resolution=32, seed=0)
        features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
        rows = {"img": [Image.fromarray(a) for a in images], "label": [int(x) for x in labels]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------
def recipe_flags(recipe: Recipe, paths: dict[str, Path]) -> list[Any]:
    """Every setting of the recipe spelled out (none left to a library default that may change)."""
    return [
        "--dataset_name", relative(paths["train"]),
        "--eval_data", relative(paths["select"]),
        "--resolution", 32,
        "--train_batch_size", recipe.train_batch_size,
        "--num_epochs", recipe.num_epochs,
        "--optimizer", "sgd",
        "--learning_rate", recipe.learning_rate,
        "--sgd_momentum", 0.9,
        "--sgd_nesterov", "True",
        "--sgd_weight_decay", recipe.weight_decay,
        "--lr_scheduler", "cosine",
        "--lr_warmup_steps", _warmup_steps(recipe, paths),
        "--max_grad_norm", 0,
        "--use_ema", "False",
        "--mixed_precision", recipe.mixed_precision,
        "--checkpointing_steps", recipe.checkpointing_steps,
        "--checkpoints_total_limit", 2,
        "--validation_epochs", recipe.validation_epochs,
        "--logger", "none",
        "--train_crop_scale_min", recipe.crop_scale_min,
        "--hflip", 0.5,
        "--color_jitter", 0,
        "--mixup_alpha", 0,
        "--cutmix_alpha", 0,
        "--label_smoothing", 0,
        "--eval_crop_pct", 1.0,
        "--eval_batch_size", recipe.eval_batch_size,
        "--dataloader_num_workers", 0,
    ]  # fmt: skip


def _warmup_steps(recipe: Recipe, paths: dict[str, Path]) -> int:
    import pyarrow.parquet as pq

    steps_per_epoch = math.ceil(pq.ParquetFile(paths["train"]).metadata.num_rows / recipe.train_batch_size)
    return max(1, recipe.warmup_epochs * steps_per_epoch)


def model_flags(recipe: Recipe, timm_model_args: dict[str, Any] | None = None) -> list[Any]:
    args = json.dumps(timm_model_args or recipe.timm_model_args, separators=(",", ":"))
    return ["--cifar_stem", "True", "--timm_model_args", args]


def student_flags(
    recipe: Recipe, arm: Arm, teacher: str, timm_model_args: dict[str, Any] | None
) -> list[Any]:
    flags = ["--teacher_model_name_or_path", teacher, *model_flags(recipe, timm_model_args)]
    flags += ["--stem_stride", recipe.stem_stride, "--student_init", "random"]
    flags += ["--teacher_mode", "eval", "--distill_weight", 0.5]
    if parse_uses_red_blocks(arm.distiller):
        flags += [
            "--red_norm",
            "batch",
            "--red_init",
            "paper",
            "--red_kernel_size",
            3,
            "--red_variant",
            "full",
        ]
    return [*flags, "--distiller", arm.distiller, *arm.flags]


def parse_uses_red_blocks(distiller: str) -> bool:
    from redistill_diffusion.distillers import parse_distiller

    return parse_distiller(distiller).uses_red_blocks


# ------------------------------------------------------------------------------------------------
# one resumable run
# ------------------------------------------------------------------------------------------------
def library_defaults() -> dict[str, Any]:
    """Every classification training option's default at this commit (CLASSIFIER_DEFAULTS applied)."""
    from redistill_diffusion.classification.run import CLASSIFIER_ARGUMENTS, CLASSIFIER_DEFAULTS

    defaults: dict[str, Any] = {}
    for cls in CLASSIFIER_ARGUMENTS:
        for f in fields(cls):
            if f.name in ("hub_token",):
                continue
            value = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            defaults[f.name] = (
                value if isinstance(value, (str, int, float, bool, type(None), list)) else str(value)
            )
    defaults.update(CLASSIFIER_DEFAULTS)
    return defaults


def explicit_settings(argv: list[str]) -> dict[str, str]:
    """The ``--flag value`` pairs of a training command (what the row states, whatever the defaults)."""
    out, i = {}, 0
    args = [str(a) for a in argv]
    while i < len(args):
        if args[i].startswith("--"):
            key = args[i][2:]
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[key], i = args[i + 1], i + 2
                continue
            out[key] = "True"
        i += 1
    return out


def _dirty() -> bool:
    """Uncommitted changes to what trains (the library, the scripts, this harness): results and logs the
    stages write into the checkout do not count."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "redistill_diffusion", "examples", "benchmarks/*.py"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except Exception:
        return True
    return bool(status.strip())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def train_run(
    layout: Layout, name: str, argv_flags: list[Any], out: Path, threads: int, score_on: dict[str, Path]
) -> dict[str, Any] | None:
    """Train (or resume) one run to its end, score its final model, write ``row.json``; skip a finished run
    and one another process holds (``.lock`` with a live pid). Returns the row, None when skipped as held."""
    row_path = out / "row.json"
    if row_path.is_file():
        print(f"{relative(out)}: finished, skipped")
        return read_json(row_path)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            holder = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            holder = 0
        if holder and _alive(holder):
            print(f"{relative(out)}: running in process {holder}, skipped")
            return None
        lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        return _train_locked(layout, name, argv_flags, out, threads, score_on)
    finally:
        lock.unlink(missing_ok=True)


def _train_locked(layout, name, argv_flags, out, threads, score_on) -> dict[str, Any]:
    from redistill_diffusion.training.checkpointing import list_checkpoints

    flags = [*argv_flags, "--output_dir", relative(out)]
    canonical = python_argv(SCRIPT, *flags)  # the command a row states (a fresh start of the same run)
    resuming = bool(list_checkpoints(str(out))) or (out / "results.json").is_file()
    argv = (
        [*canonical, "--resume_from_checkpoint", "latest"]
        if resuming
        else [*canonical, "--overwrite_output_dir"]
    )
    segments_path = out / "segments.json"
    segments = (read_json(segments_path) or {}).get("segments", [])
    if not (out / "results.json").is_file():
        segment = {"commit": git_revision(), "dirty": _dirty(), "library_defaults": library_defaults()}
        segments.append(segment | {"threads": threads, "cpu": machine_info()["cpu_model"]})
        write_json(segments_path, {"segments": segments})
        log = layout.logs / f"classification_v{PROTOCOL}_{slug(name)}.log"
        code = run_segment(CommandRecord(name, argv), log, threads)
        if code != 0:
            raise SystemExit(
                f"{name} failed (exit {code}); see {relative(log)}; rerun the stage to resume it."
            )
    results = read_json(out / "results.json") or {}
    scores = {split: top1(out, path) for split, path in score_on.items()}
    row = {
        "protocol": PROTOCOL,
        "name": name,
        "output_dir": relative(out),
        "command": CommandRecord(name, canonical).shell,
        "explicit": explicit_settings(flags),
        "segments": segments,
        "commits": sorted({s["commit"] for s in segments}),
        "dirty": any(s.get("dirty") for s in segments),
        "library_defaults": segments[-1]["library_defaults"] if segments else library_defaults(),
        "final_step": results.get("global_step"),
        "epochs": results.get("epoch"),
        "top1": scores,
        "params": results.get("params"),
        "peak_memory": results.get("peak_memory"),
    }
    write_json(out / "row.json", row)
    return row


def top1(model_dir: Path, data: Path) -> float:
    """Top-1 of the final model in ``model_dir`` on a parquet, with the evaluation transform of training."""
    import timm.data
    import torch

    from redistill_diffusion.classification.data import as_tensor_dataset, build_classification_transform
    from redistill_diffusion.classification.hub import load_classifier
    from redistill_diffusion.data import load_image_dataset

    model = load_classifier(str(model_dir)).eval()
    config = timm.data.resolve_model_data_config(model)
    transform = build_classification_transform(
        (3, 32, 32), False, crop_pct=1.0, interpolation="bilinear", mean=config["mean"], std=config["std"]
    )
    dataset = as_tensor_dataset(load_image_dataset(dataset_name=str(data), require_labels=True), transform)
    correct = count = 0
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(dataset, batch_size=250):
            correct += (model(batch["images"]).argmax(dim=1) == batch["labels"]).sum().item()
            count += batch["labels"].numel()
    return correct / count


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------
def teacher_dir(layout: Layout) -> Path:
    return layout.work / "teacher"


# The finished teacher, committed (weights ~5 MB as safetensors, config, row), so students resume on a fresh
# machine without retraining it; benchmarks/_work is not committed.
TEACHER_ARTEFACT = REPO_ROOT / "benchmarks/artefacts/classification_teacher"


def teacher_artefact(layout: Layout) -> Path:
    return layout.work / "teacher_artefact" if layout.smoke else TEACHER_ARTEFACT


# Resume state that outlives the machine: benchmarks/_work is not committed, and the next session may run on a
# fresh machine. Every finished run's row (kept as soon as it finishes) and, at `park`, every unfinished run's
# newest complete checkpoint (model, optimizer, schedule and RNG state: what exact resume needs) live here, laid out
# as under benchmarks/_work/classification_v3 (teacher/, select/<run>/, students/<run>); the stages copy back what
# a machine lacks before they start.
KEPT_RUNS = REPO_ROOT / "benchmarks/artefacts/classification_runs"


def kept_runs(layout: Layout) -> Path:
    return layout.work.with_name("kept_runs") if layout.smoke else KEPT_RUNS


def _run_folders(root: Path) -> list[Path]:
    """The teacher's and every select and student run's folder under ``root`` (a work or a kept folder)."""
    found = [root / "teacher", *sorted(root.glob("select/*")), *sorted(root.glob("students/*"))]
    return [p for p in found if p.is_dir() and not p.name.endswith(".tmp")]


def _replace_with(target: Path, items: list[Path]) -> None:
    """Make ``target`` hold exactly copies of ``items``, swapping a finished copy in: a failure midway leaves
    what was kept before intact."""
    import shutil

    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for item in items:
        if item.is_dir():
            shutil.copytree(item, staging / item.name)
        elif item.is_file():
            shutil.copy2(item, staging / item.name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def keep_row(layout: Layout, run: Path) -> None:
    """Keep a finished run's row (the summary needs nothing else); it replaces any checkpoint parked for it."""
    _replace_with(kept_runs(layout) / run.relative_to(layout.work), [run / "row.json"])


def park(layout: Layout) -> list[Path]:
    """Copy every finished run's row and every unfinished run's newest complete checkpoint (and its segments)
    into ``kept_runs``, to commit before a session ends; returns what it copied."""
    from redistill_diffusion.training.checkpointing import list_checkpoints

    copied = []
    for run in _run_folders(layout.work):
        target = kept_runs(layout) / run.relative_to(layout.work)
        if (run / "row.json").is_file():
            if run == teacher_dir(layout) or read_json(target / "row.json") == read_json(run / "row.json"):
                continue  # the finished teacher is kept whole by keep_teacher
            keep_row(layout, run)
            copied.append(target / "row.json")
            print(f"park: {relative(run)} finished: its row kept in {relative(target)}")
            continue
        checkpoints = list_checkpoints(str(run))
        if not checkpoints or (target / checkpoints[-1].name).is_dir():
            continue
        _replace_with(target, [checkpoints[-1], run / "segments.json"])
        copied.append(target / checkpoints[-1].name)
        print(f"park: {relative(checkpoints[-1])} -> {relative(target / checkpoints[-1].name)}")
    if copied:
        print(f"park: commit {relative(kept_runs(layout))}")
    else:
        print("park: nothing new to keep")
    return copied


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def finished_row(layout: Layout, run: Path) -> dict[str, Any] | None:
    """A run's row: this machine's, else the kept one (the run finished on another machine)."""
    return read_json(run / "row.json") or read_json(
        kept_runs(layout) / run.relative_to(layout.work) / "row.json"
    )


def finished_rows(layout: Layout, kind: str) -> list[dict[str, Any]]:
    """Every finished run of ``kind`` (select or students), here or kept, in folder-name order."""
    names = {
        p.name
        for root in (layout.work, kept_runs(layout))
        for p in _run_folders(root)
        if p.parent.name == kind
    }
    rows = [finished_row(layout, layout.work / kind / name) for name in sorted(names)]
    return [row for row in rows if row]


def unpark(layout: Layout) -> None:
    """On a machine that lacks them, copy parked checkpoints back into the work folder (a run with a newer
    checkpoint of its own, or finished anywhere, keeps its state), so unfinished runs resume where they were."""
    import shutil

    from redistill_diffusion.training.checkpointing import list_checkpoints

    root = kept_runs(layout)
    for kept in _run_folders(root):
        run = layout.work / kept.relative_to(root)
        if finished_row(layout, run) is not None:
            continue
        parked, have = list_checkpoints(str(kept)), list_checkpoints(str(run))
        if not parked or (have and _step(have[-1]) >= _step(parked[-1])):
            continue
        run.mkdir(parents=True, exist_ok=True)
        shutil.copytree(parked[-1], run / parked[-1].name)
        if (kept / "segments.json").is_file():
            shutil.copy2(kept / "segments.json", run / "segments.json")
        print(f"{relative(run)}: resuming from the parked {relative(parked[-1])}")


def keep_teacher(layout: Layout, row: dict[str, Any]) -> dict[str, Any]:
    """Copy the finished teacher's model folder (model.safetensors, config.json, README.md) and its row into
    the artefact folder; the row there names the artefact as the teacher students load."""
    import shutil

    source, target = Path(REPO_ROOT / row["output_dir"]), teacher_artefact(layout)
    if not (source / "model.safetensors").is_file():
        source = teacher_dir(layout)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", "README.md"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    kept = {**row, "trained_in": row["output_dir"], "output_dir": relative(target)}
    write_json(target / "row.json", kept)
    return kept


def train_teacher(layout: Layout, paths: dict[str, Path], threads: int) -> dict[str, Any] | None:
    recipe = layout.recipe
    kept = read_json(teacher_artefact(layout) / "row.json")
    if kept is not None:
        print(f"teacher: {kept['output_dir']} (top-1 {kept['top1']['select']:.4f} on select), not retrained")
        return kept
    unpark(layout)
    flags = ["--model_name_or_path", "resnet18", *model_flags(recipe), "--distiller", "none"]
    flags += [*recipe_flags(recipe, paths), "--seed", 0]
    row = train_run(
        layout,
        "teacher",
        flags,
        teacher_dir(layout),
        threads,
        {"select": paths["select"], "report": paths["report"]},
    )
    if row is not None:
        verdict = "reaches" if row["top1"]["select"] >= recipe.teacher_target else "MISSES"
        print(
            f"teacher: top-1 {row['top1']['select']:.4f} on select ({verdict} the target {recipe.teacher_target})"
        )
        if verdict == "reaches":
            print(f"teacher kept in {relative(teacher_artefact(layout))} (commit it)")
            row = keep_teacher(layout, row)
    return row


def trained_teacher(layout: Layout, allow_weak: bool) -> dict[str, Any]:
    """The teacher students distil from: the committed artefact where there is one, else the finished run."""
    row = read_json(teacher_artefact(layout) / "row.json") or read_json(teacher_dir(layout) / "row.json")
    if row is None:
        raise SystemExit("No finished teacher: run `bench_classification.py teacher` first.")
    if row["top1"]["select"] < layout.recipe.teacher_target and not allow_weak:
        raise SystemExit(
            f"The teacher reaches {row['top1']['select']:.4f} top-1 on the select slice, below the target "
            f"{layout.recipe.teacher_target}: train it longer (raise Recipe.num_epochs) or pass --allow_weak_teacher."
        )
    return row


def widened_args(recipe: Recipe) -> dict[str, Any]:
    """timm arguments of a teacher whose plain stem-stride student has the RED student's parameter count
    (channels scaled by one factor, rounded; the closest count wins)."""
    from redistill_diffusion.classification import create_student, create_teacher

    def student_params(args: dict[str, Any], red: bool) -> int:
        teacher = create_teacher("resnet18", num_classes=10, cifar_stem=True, input_size=(3, 32, 32), **args)
        student = create_student(
            teacher, stem_stride=recipe.stem_stride, init="random", red_placement="paper" if red else None
        )
        return sum(p.numel() for p in student.parameters())

    base = recipe.timm_model_args
    target = student_params(base, red=True)
    best = None
    for step in range(0, 301):  # factors 1.00 .. 4.00; the count grows with the factor, so stop past it
        factor = 1 + step / 100
        args = dict(base)
        args["channels"] = [max(1, round(c * factor)) for c in base["channels"]]
        args["stem_width"] = max(1, round(base.get("stem_width", base["channels"][0]) * factor))
        params = student_params(args, red=False)
        if best is None or abs(params - target) < best[0]:
            best = (abs(params - target), args)
        if params > target:
            break
    return best[1]


def run_arm(
    layout, arm: Arm, seed: int, paths, threads, teacher_path: str, kind: str
) -> dict[str, Any] | None:
    recipe = layout.recipe
    finished = finished_row(layout, layout.run_dir(kind, arm.name, seed))
    if finished is not None and "arm" in finished:
        print(f"{finished['output_dir']}: finished, skipped")
        return finished
    timm_args = widened_args(recipe) if arm.wide else None
    teacher = "resnet18" if arm.wide else teacher_path
    flags = [*student_flags(recipe, arm, teacher, timm_args), *recipe_flags(recipe, paths), "--seed", seed]
    score_on = (
        {"select": paths["select"]}
        if kind == "select"
        else {"select": paths["select"], "report": paths["report"]}
    )
    row = train_run(
        layout,
        f"{kind} {arm.name} seed {seed}",
        flags,
        layout.run_dir(kind, arm.name, seed),
        threads,
        score_on,
    )
    if row is not None:
        row.update(
            {
                "arm": arm.name,
                "label": arm.label,
                "seed": seed,
                "objective": arm.objective,
                "distiller": arm.distiller,
            }
        )
        row["reproduce"] = (
            f"python benchmarks/bench_classification.py {'select' if kind == 'select' else 'students'} "
            + (f"--arm {arm.name} --seed {seed}" if kind != "select" else f"--candidate {arm.name}")
        )
        write_json(layout.run_dir(kind, arm.name, seed) / "row.json", row)
        keep_row(layout, layout.run_dir(kind, arm.name, seed))
    return row


def select_stage(layout, paths, threads, allow_weak, only: str | None) -> dict[str, Any]:
    teacher = trained_teacher(layout, allow_weak)
    unpark(layout)
    for name, arm in SELECT_CANDIDATES.items():
        if only is None or name == only:
            run_arm(layout, arm, SELECT_SEED, paths, threads, teacher["output_dir"], "select")
    return choose(layout)


def choose(layout: Layout) -> dict[str, Any]:
    """The settings the select runs chose; None until the runs they compare have finished."""
    scores, restated = {}, []
    for name in SELECT_CANDIDATES:
        row = finished_row(layout, layout.run_dir("select", name, SELECT_SEED))
        if row is not None:
            scores[name] = row["top1"]["select"]
            restated += [name] if row.get("reconstructed") else []
    alphas = {n: s for n, s in scores.items() if n.startswith("red_alpha_")}
    others = {n: s for n, s in scores.items() if n in OTHER_DISTILLERS}
    choice = {
        "select_top1": scores,
        "red_alpha": int(max(alphas, key=alphas.get).rsplit("_", 1)[1]) if len(alphas) == 2 else None,
        "other_distiller": max(others, key=others.get) if len(others) == len(OTHER_DISTILLERS) else None,
        "restated": restated,  # rows whose run folder was lost: figures restated from an earlier summary
    }
    write_json(layout.work / "choice.json", choice)
    return choice


def students_stage(layout, paths, threads, allow_weak, arm_filter, seed_filter) -> None:
    teacher = trained_teacher(layout, allow_weak)
    unpark(layout)
    choice = choose(layout)
    plan = arms(choice)
    if choice["red_alpha"] is None or choice["other_distiller"] is None:
        if arm_filter and arm_filter not in plan:
            raise SystemExit(
                f"--arm {arm_filter} needs the select stage's choice (RED alpha, best other distiller), which "
                f"has not finished: run `select` first, or train one of {', '.join(plan)} meanwhile."
            )
        print(
            f"select has not finished: training only the arms its finished choices allow ({', '.join(plan)})"
        )
    if arm_filter and arm_filter not in plan:
        raise SystemExit(f"--arm {arm_filter}: not an arm; choose one of {', '.join(plan)}.")
    for seed in layout.recipe.seeds if seed_filter is None else (seed_filter,):
        for arm in plan.values():
            if arm_filter is None or arm.name == arm_filter:
                run_arm(layout, arm, seed, paths, threads, teacher["output_dir"], "students")


# ------------------------------------------------------------------------------------------------
# summary: paired differences, 95% t-intervals, the refusal to mix library defaults
# ------------------------------------------------------------------------------------------------
class MixedDefaults(ValueError):
    """Rows compared in one table were trained under different library defaults of a setting neither states."""


def check_mixable(rows: list[dict[str, Any]]) -> None:
    """Refuse rows whose recorded library defaults differ for a setting that some of them leave unstated
    (each resumed segment of a row counts as its own record)."""
    records = []
    for row in rows:
        for segment in row.get("segments") or [{"library_defaults": row.get("library_defaults") or {}}]:
            records.append(
                (row.get("name"), row.get("explicit") or {}, segment.get("library_defaults") or {})
            )
    keys = set().union(*(d for _, _, d in records)) if records else set()
    for key in sorted(keys):
        unstated = {
            (name, json.dumps(d.get(key), sort_keys=True)) for name, stated, d in records if key not in stated
        }
        values = {v for _, v in unstated}
        if len(values) > 1:
            which = "; ".join(f"{name}: {v}" for name, v in sorted(unstated))
            raise MixedDefaults(
                f"rows trained under different library defaults of --{key} without stating it ({which}): "
                f"retrain them with --{key} explicit, or report them in separate tables."
            )


def _exact_peak(peak_memory: dict[str, Any] | None) -> dict[str, int]:
    """Teacher and student peak bytes (exact convention) of a row's ``peak_memory``, in the schema of
    ``redistill_diffusion.memory.MemorySummary`` or the flat one earlier runs wrote."""
    from redistill_diffusion.memory import MemorySummary

    summary = MemorySummary.from_dict(peak_memory)
    if "exact" not in summary:
        return {}
    return {"teacher": summary["exact"].teacher.peak_bytes, "student": summary["exact"].student.peak_bytes}


def summarise(
    teacher: dict[str, Any] | None, rows: list[dict[str, Any]], split: str = "report"
) -> dict[str, Any]:
    """Per-arm mean ± s.d. of the final-epoch top-1 and the paired contrasts (``CONTRASTS``)."""
    check_mixable(([teacher] if teacher else []) + rows)
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], {})[int(row["seed"])] = row
    arm_rows = []
    for arm, seeds in by_arm.items():
        values = {s: r["top1"][split] for s, r in seeds.items()}
        first = next(iter(seeds.values()))
        memory = _exact_peak(first.get("peak_memory"))
        arm_rows.append(
            {
                "arm": arm,
                "label": first.get("label"),
                "objective": first.get("objective"),
                "seeds": sorted(values),
                "top1_per_seed": values,
                "top1_mean": statistics.mean(values.values()),
                "top1_sd": statistics.stdev(values.values()) if len(values) > 1 else None,
                "params": first.get("params"),
                "peak_bytes_exact": memory.get("student"),
                "teacher_peak_bytes_exact": memory.get("teacher"),
                "commits": sorted({c for r in seeds.values() for c in r.get("commits", [])}),
                "dirty": any(r.get("dirty") for r in seeds.values()),
            }
        )
    arm_rows.sort(key=lambda a: _arm_rank(a["arm"]))
    values = {a["arm"]: a["top1_per_seed"] for a in arm_rows}
    contrasts = []
    for name, left, right, meaning in CONTRASTS:
        if left.endswith("*"):
            left = next((a for a in values if a.startswith(left[:-1])), left)
        if left in values and right in values:
            interval = paired_interval(values[left], values[right])
            if interval:
                contrasts.append(
                    {"contrast": name, "minuend": left, "subtrahend": right, "meaning": meaning, **interval}
                )
    return {"arms": arm_rows, "contrasts": contrasts}


def _other(choice: dict[str, Any]) -> str:
    other = choice.get("other_distiller")
    if not other:
        return "(not yet: its DKD, AT and FitNet select runs must all finish)"
    scores = {n: v for n, v in (choice.get("select_top1") or {}).items() if n in OTHER_DISTILLERS}
    others = [n for n in scores if n != other]
    if other not in scores or not others:
        return other.upper()
    runner_up = max(others, key=scores.get)
    margin = 100 * (scores[other] - scores[runner_up])
    return f"{other.upper()} (ahead of {runner_up.upper()} by {margin:.2f} points on select, one seed)"


def _restated(choice: dict[str, Any]) -> str:
    names = choice.get("restated") or []
    if not names:
        return ""
    return (
        f"; {', '.join(names)} restated from an earlier committed summary, their run folders lost with an "
        "earlier machine (the rows say from where: benchmarks/artefacts/classification_runs/select)"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _progress(summary: dict[str, Any], recipe: Recipe, choice: dict[str, Any]) -> tuple[int, int]:
    """(runs finished, runs planned): every arm of the protocol times the recipe's seeds."""
    planned = len(arms(choice if choice.get("other_distiller") else {**choice, "other_distiller": "dkd"}))
    return sum(len(a["seeds"]) for a in summary["arms"]), planned * len(recipe.seeds)


def summary_markdown(
    teacher: dict[str, Any] | None, summary: dict[str, Any], recipe: Recipe, choice: dict
) -> str:
    t = (teacher or {}).get("top1") or {}
    args = recipe.timm_model_args
    lines = [
        f"Protocol {PROTOCOL} (issue 27). Teacher: timm resnet18, CIFAR stem, channels {args['channels']}, blocks "
        f"{args['layers']}, trained from scratch for {recipe.num_epochs} epochs at batch {recipe.train_batch_size} "
        f"(SGD momentum 0.9 nesterov, lr {recipe.learning_rate} cosine after {recipe.warmup_epochs} warm-up epoch(s), "
        f"weight decay {recipe.weight_decay:g}, RandomResizedCrop scale ({recipe.crop_scale_min}, 1) + flip, "
        f"{recipe.mixed_precision} autocast, no gradient clipping): top-1 {_pct(t.get('select'))}% on the select slice, "
        f"{_pct(t.get('report'))}% on the report slice. Students: stem stride {recipe.stem_stride}, from scratch, the "
        "teacher's recipe; RED blocks at the paper placement with BatchNorm; RED alpha "
        f"{choice.get('red_alpha')} and the other distiller {_other(choice)} chosen on the select slice "
        f"(select top-1 of the candidates at seed {SELECT_SEED}: "
        + ", ".join(f"{k} {_pct(v)}" for k, v in (choice.get("select_top1") or {}).items())
        + _restated(choice)
        + f"). Top-1: the final epoch's model on the report slice ({10 * (recipe.heldout_per_class - recipe.heldout_per_class // 2)} "
        "images, read once per run). Intervals: "
        "mean and 95% Student-t interval of the per-seed paired differences, in points.",
        "",
    ]
    teacher_peak = next(
        (a["teacher_peak_bytes_exact"] for a in summary["arms"] if a.get("teacher_peak_bytes_exact")), None
    )
    table = [
        [
            a["label"],
            a["objective"],
            len(a["seeds"]),
            _pct(a["top1_mean"]) + ("" if a["top1_sd"] is None else f" ± {_pct(a['top1_sd'])}"),
            ", ".join(_pct(v) for _, v in sorted(a["top1_per_seed"].items())),
            f"{a['params'] / 1e6:.3f} M" if a.get("params") else "-",
            fmt_bytes(a.get("peak_bytes_exact")),
            f"{teacher_peak / a['peak_bytes_exact']:.2f}x"
            if teacher_peak and a.get("peak_bytes_exact")
            else "-",
            ", ".join(a["commits"]) + (" (with uncommitted changes)" if a.get("dirty") else ""),
        ]
        for a in summary["arms"]
    ]
    header = [
        "arm",
        "objective",
        "seeds",
        "top-1 % (mean ± s.d.)",
        "per seed",
        "params",
        "peak (exact)",
        "teacher / arm",
        "trained at",
    ]
    finished, planned = _progress(summary, recipe, choice)
    complete = finished >= planned
    lines += [
        f"Runs finished: {finished} of {planned} ({planned // len(recipe.seeds)} arms x {len(recipe.seeds)} seeds)"
        + ("." if complete else "; an arm with fewer than 2 seeds has no interval yet.")
        + _gap_to_teacher(teacher, summary),
        "",
        markdown_table(header, table),
        "",
    ]
    crows = []
    for c in summary["contrasts"]:
        ci = c["ci95"]
        crows.append(
            [
                c["contrast"],
                c["meaning"],
                f"{100 * c['mean']:+.2f}",
                "-" if ci is None else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]",
                ", ".join(f"{100 * d:+.2f}" for d in c["diffs"]),
            ]
        )
    if crows:
        lines += [
            f"Paired differences over the {len(recipe.seeds)} seeds (95% Student-t intervals; one that includes 0 "
            "does not separate the two arms)."
            if complete
            else f"Paired differences so far; one with fewer than {len(recipe.seeds)} seeds is progress, not a result.",
            "",
            markdown_table(
                ["paired difference", "measures", "mean (points)", "95% interval", "per seed"], crows
            ),
        ]
    return "\n".join(lines)


def _gap_to_teacher(teacher: dict[str, Any] | None, summary: dict[str, Any]) -> str:
    """The 'Best student' sentence: the arm with the highest mean over at least 2 seeds and its distance to the teacher,
    the figure a user weighs against the memory saving."""
    t = (teacher or {}).get("top1", {}).get("report")
    arms = [a for a in summary["arms"] if len(a["seeds"]) >= 2]
    if t is None or not arms:
        return ""
    best = max(arms, key=lambda a: a["top1_mean"])
    return (
        f" Best student: {best['label']} at {100 * best['top1_mean']:.2f}% over {len(best['seeds'])} seeds, "
        f"{100 * (t - best['top1_mean']):.2f} points below the teacher's {100 * t:.2f}%."
    )


def summary_stage(layout: Layout) -> dict[str, Any]:
    # The kept teacher (what students load) first: on a fresh machine its run folder is gone.
    teacher = read_json(teacher_artefact(layout) / "row.json") or read_json(teacher_dir(layout) / "row.json")
    rows = [r for r in finished_rows(layout, "students") if "arm" in r]  # run_arm adds the arm right after
    choice = choose(layout) if finished_rows(layout, "select") else {}
    target = layout.results / "results" / "classification.json"
    previous = read_json(target) or {}
    try:
        summary = summarise(teacher, rows)
    except MixedDefaults as error:
        raise SystemExit(f"summary refused: {error}") from None
    commands = [
        {
            "name": r["name"] + f" (at {', '.join(r['commits'])})",
            "command": r["command"],
            "wall_s": None,
            "returncode": 0,
            "log": r.get("reproduce"),
        }
        for r in ([teacher] if teacher else []) + rows
    ]
    status = "ok" if rows else "not run"
    training_cpus: dict[str, int] = {}  # the machine a row trained on is not the one this summary runs on
    for row in ([teacher] if teacher else []) + rows:
        for cpu in sorted({s.get("cpu") for s in row.get("segments") or [] if s.get("cpu")}):
            training_cpus[cpu] = training_cpus.get(cpu, 0) + 1
    result = part_result(
        "classification",
        "smoke" if layout.smoke else "cpu",
        status=status,
        reason=None
        if rows
        else f"protocol {PROTOCOL}: no student has finished yet (the stages of benchmarks/bench_classification.py).",
        machine=machine_info() | {"training_cpus": training_cpus},
        protocol=PROTOCOL,
        recipe=vars(layout.recipe),
        choice=choice,
        teacher=teacher,
        rows=rows,
        arms=summary["arms"],
        contrasts=summary["contrasts"],
        commands=commands,
        markdown=summary_markdown(teacher, summary, layout.recipe, choice)
        if rows
        else pending_markdown(teacher, choice),
        summary=_answer(teacher, summary, layout.recipe, *_progress(summary, layout.recipe, choice)),
        history=previous.get("history", []),
    )
    write_json(target, result)
    from report import render

    render(layout.results)
    return result


PENDING_MARKDOWN = (
    f"Protocol {PROTOCOL} (issue 27) is under way: a teacher trained to >= 85% top-1, students from scratch with its "
    "recipe, equal task weights, 3 seeds, final-epoch top-1 on a report slice that chooses nothing. No row of it has "
    "finished yet; the earlier protocols' tables are under History below and are not results of this protocol."
)


def pending_markdown(teacher: dict[str, Any] | None, choice: dict[str, Any] | None = None) -> str:
    """PENDING_MARKDOWN, the teacher's figures once it has finished (students wait for it) and the select runs
    finished so far (they choose RED's alpha and the other distiller)."""
    if not teacher or "top1" not in teacher:
        return PENDING_MARKDOWN
    top1 = teacher["top1"]
    scores = (choice or {}).get("select_top1") or {}
    selected = (
        f" Select runs finished (seed {SELECT_SEED}, final-epoch top-1 on the select slice, which only chooses): "
        + ", ".join(f"{SELECT_CANDIDATES[name].label} {100 * score:.2f}%" for name, score in scores.items())
        + f"; of {len(SELECT_CANDIDATES)} ({', '.join(a.label for a in SELECT_CANDIDATES.values())})"
        + _restated(choice or {})
        + "."
        if scores
        else ""
    )
    return PENDING_MARKDOWN + (
        f" The teacher has finished: {teacher.get('final_step')} steps, final-epoch top-1 "
        f"{100 * top1['select']:.2f}% on the select slice and {100 * top1['report']:.2f}% on the report slice, "
        f"{teacher.get('params', 0) / 1e6:.2f} M parameters, trained at {', '.join(teacher.get('commits', []))} "
        f"(`{teacher['output_dir']}`, the teacher every student loads)." + selected
    )


# The contrasts RESULTS.md's answer line states, in this order (issue 27's questions: equal objectives, what the
# RED loss adds, what the blocks add, the capacity control, RED against KD); the rest are counted, not dropped.
ANSWER_CONTRASTS = (
    "red - plain (0.5 CE)",
    "red - student+ (0.5 CE)",
    "student+ - plain (0.5 CE)",
    "red - plain wide (0.5 CE)",
    "red - kd",
)


def _answer(teacher, summary, recipe: Recipe, finished: int, planned: int) -> str:
    """RESULTS.md's one-line answer. A contrast is stated only once both of its arms have every seed of the
    recipe (issue 27: >= 3); before that the line says how far the runs are, not a one-seed difference."""
    ready = {c["contrast"]: c for c in summary["contrasts"] if len(c["seeds"]) >= len(recipe.seeds)}
    if not ready:
        return (
            f"Classification: protocol {PROTOCOL} has no finished comparison yet ({finished} of {planned} runs; a "
            f"difference is stated once both arms have {len(recipe.seeds)} seeds; section 2 shows the runs so far, "
            "History the earlier protocols)."
        )
    stated = [ready[name] for name in ANSWER_CONTRASTS if name in ready]
    stated += [c for name, c in ready.items() if name not in ANSWER_CONTRASTS][
        : len(ANSWER_CONTRASTS) - len(stated)
    ]
    parts = []
    for c in stated:
        ci = c["ci95"]
        parts.append(
            f"{c['contrast']} ({c['meaning']}) {100 * c['mean']:+.2f} points"
            + (
                ""
                if ci is None
                else f" (95% interval [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}], {len(c['seeds'])} seeds)"
            )
        )
    if len(ready) > len(stated):
        parts.append(f"{len(ready) - len(stated)} further contrast(s) in section 2")
    waiting = len(CONTRASTS) - len(ready)
    if waiting:  # a partial answer must not read as the whole comparison
        parts.append(
            f"{waiting} more contrast(s) wait until both of their arms have {len(recipe.seeds)} seeds "
            "(section 2 shows them so far)"
        )
    t = (teacher or {}).get("top1", {}).get("report")
    return (
        f"Classification (protocol {PROTOCOL}, teacher {_pct(t)}% top-1 on the report slice; {finished} of "
        f"{planned} runs): " + "; ".join(parts) + "."
    )


# ------------------------------------------------------------------------------------------------
# candidates: which teacher trains to the target in a few CPU hours
# ------------------------------------------------------------------------------------------------
CANDIDATE_TEACHERS = {
    "narrow resnet18 [32..256] x1": {
        "channels": [32, 64, 128, 256],
        "stem_width": 32,
        "layers": [1, 1, 1, 1],
    },
    "narrow resnet18 [32..256] x2": {
        "channels": [32, 64, 128, 256],
        "stem_width": 32,
        "layers": [2, 2, 2, 2],
    },
    "resnet18 [64..512] x1": {"channels": [64, 128, 256, 512], "stem_width": 64, "layers": [1, 1, 1, 1]},
}


def candidates_stage(layout: Layout, threads: int, seconds: float = 20.0) -> dict[str, Any]:
    """Training images/s of each candidate teacher (batch 128, the recipe's precision, ``threads``), and the
    hours that 30 epochs of 45,000 images would take at that pace."""
    import time

    import torch
    from bench_classification_timing import measure

    from redistill_diffusion.classification import create_teacher

    torch.set_num_threads(threads)
    out = {}
    candidates = {"smoke": layout.recipe.timm_model_args} if layout.smoke else CANDIDATE_TEACHERS
    for name, args in candidates.items():
        model = create_teacher("resnet18", num_classes=10, cifar_stem=True, input_size=(3, 32, 32), **args)
        start = time.perf_counter()
        row = measure({name: model}, 128 if not layout.smoke else 8, steps=2, repeats=1, warmup=1,
                      mixed_precision=layout.recipe.mixed_precision, distillation_pair=None)[0]  # fmt: skip
        per_round = time.perf_counter() - start
        repeats = max(1, int(seconds / max(per_round, 1e-3)))
        row = measure({name: model}, 128 if not layout.smoke else 8, steps=2, repeats=repeats, warmup=0,
                      mixed_precision=layout.recipe.mixed_precision, distillation_pair=None)[0]  # fmt: skip
        rate = row["train_images_per_s"]
        out[name] = {"timm_model_args": args, "params": row["params"], "train_images_per_s": rate,
                     "hours_for_30_epochs": 30 * 45_000 / rate / 3600}  # fmt: skip
        print(
            f"{name}: {row['params'] / 1e6:.2f} M params, {rate:.0f} images/s -> {out[name]['hours_for_30_epochs']:.1f} h for 30 epochs"
        )
    result = {"threads": threads, "machine": machine_info(), "commit": git_revision(), "candidates": out}
    write_json(layout.work / "candidates.json", result)
    return result


# ------------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------------
def make_layout(smoke: bool, work_dir: str | None, output_dir: str | None) -> Layout:
    recipe = RECIPES["smoke" if smoke else "cpu"]
    if smoke:
        base = Path(work_dir or Path(tempfile.gettempdir()) / "redistill-cls-smoke").resolve()
        if (REPO_ROOT / "benchmarks").resolve() in [base, *base.parents]:
            raise SystemExit(
                f"--smoke writes to a temporary folder, not under benchmarks/ (got --work_dir {base})."
            )
        out = Path(output_dir).resolve() if output_dir else base / "out"
        return Layout(base / "work", out, out / "logs", recipe, smoke=True)
    out = Path(output_dir).resolve() if output_dir else REPO_ROOT / "benchmarks"
    return Layout(Path(work_dir).resolve() if work_dir else WORK, out, out / "logs", recipe)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "stage",
        choices=("slices", "candidates", "teacher", "park", "select", "students", "summary", "all"),
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny scale into a temporary folder (checks the harness)"
    )
    parser.add_argument("--data", default=str(CIFAR10_PARQUET), help="CIFAR-10 parquet (columns img, label)")
    parser.add_argument(
        "--synthetic", action="store_true", help="--smoke on labelled shapes instead of CIFAR-10"
    )
    parser.add_argument(
        "--work_dir", default=None, help="models and slices (default benchmarks/_work/classification_v3)"
    )
    parser.add_argument(
        "--output_dir", default=None, help="results/ and RESULTS.md go here (default benchmarks/)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training process")
    parser.add_argument("--arm", default=None, help="students: only this arm")
    parser.add_argument("--seed", type=int, default=None, choices=SEEDS, help="students: only this seed")
    parser.add_argument(
        "--candidate", default=None, choices=list(SELECT_CANDIDATES), help="select: only this one"
    )
    parser.add_argument(
        "--allow_weak_teacher", action="store_true", help="train students under a teacher below the target"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}.")
    every_arm = {n for other in OTHER_DISTILLERS for n in arms({"red_alpha": 1, "other_distiller": other})}
    if args.arm is not None and args.arm not in every_arm:
        parser.error(f"--arm {args.arm}: not an arm; choose one of {', '.join(sorted(every_arm))}.")
    if args.synthetic and not args.smoke:
        parser.error("--synthetic is for --smoke only (the report needs CIFAR-10).")
    problem = library_outside_checkout()
    if problem:
        parser.error(problem)
    layout = make_layout(args.smoke, args.work_dir, args.output_dir)
    if args.stage == "summary":
        result = summary_stage(layout)
        print(result["summary"])
        return 0
    if args.stage == "park":
        park(layout)
        return 0
    if args.stage == "candidates":
        candidates_stage(layout, args.threads, seconds=2.0 if args.smoke else 20.0)
        return 0
    data = synthetic_source(layout.work) if args.synthetic else Path(args.data)
    if not data.is_file():
        print(f"[bench_classification] {data} not found: skipped (pass --data PATH to a CIFAR-10 parquet).")
        return 0
    paths = slices(layout, data)
    allow_weak = args.allow_weak_teacher or args.smoke
    if args.stage in ("teacher", "all"):
        train_teacher(layout, paths, args.threads)
    if args.stage in ("select", "all"):
        print(json.dumps(select_stage(layout, paths, args.threads, allow_weak, args.candidate)))
    if args.stage in ("students", "all"):
        students_stage(layout, paths, args.threads, allow_weak, args.arm, args.seed)
    if args.stage == "all":
        print(summary_stage(layout)["summary"])
    if args.stage == "slices":
        print(json.dumps({k: relative(v) for k, v in paths.items()}))
    return 0


# run.py's classification part --------------------------------------------------------------------
PAPER_RECIPE = "recipes/cls_imagenet_resnet18_red.yaml"
DISTILLERS = ("vanilla", "red", "red+kd", "kd", "dkd", "fitnet", "at", "student_plus")


def run(
    output_dir: Path, work_dir: Path, budget: str, data: Path, dry_run: bool = False, **_: Any
) -> dict[str, Any]:
    """`benchmarks/run.py --only classification`: smoke runs every stage at the smoke scale (synthetic shapes
    without CIFAR-10); cpu only summarises the finished rows (the stages are launched one by one, see the
    module docstring); paper lists or runs the paper's ImageNet commands."""
    if budget == "paper":
        return paper_commands(output_dir, dry_run)
    if budget == "smoke":
        layout = make_layout(True, str(work_dir / "classification"), str(output_dir))
        source = data if data.is_file() else synthetic_source(layout.work)
        layout = replace(layout, logs=output_dir / "logs")
        paths = slices(layout, source)
        train_teacher(layout, paths, 1)
        select_stage(layout, paths, 1, True, None)
        for arm in ("plain_half", "red"):  # two arms at one seed: the CI check stays within minutes
            students_stage(layout, paths, 1, True, arm, 0)
        return summary_stage(layout)
    return summary_stage(make_layout(False, None, str(output_dir)))


def paper_commands(output_dir: Path, dry_run: bool = False) -> dict[str, Any]:
    """The paper's ImageNet ResNet18 comparison (the shipped recipe, one run per distiller): run one after another
    on this machine's GPUs, or with ``dry_run`` only listed."""
    records = [
        CommandRecord(
            name=d,
            argv=[
                "accelerate",
                "launch",
                "examples/train_classifier_redistill.py",
                "--recipe",
                PAPER_RECIPE,
                "--distiller",
                d,
                "--output_dir",
                f"outputs/paper/imagenet_resnet18_{d.replace('+', '_')}",
            ],
        )  # fmt: skip
        for d in DISTILLERS
    ]
    status, failures = run_paper_commands("classification", records, output_dir / "logs", dry_run)
    markdown = (
        f"The paper's ImageNet ResNet18 protocol is `{PAPER_RECIPE}` (pretrained torchvision ResNet18 teacher, student "
        "strides 8-11221, SGD lr 0.2, 300 epochs, RED cosine alpha 1); each baseline swaps `--distiller`. Published top-1 "
        "(the paper: published results): teacher 69.75, aggressive-pool student 61.79, ReviewKD 63.30, MLLD 64.66, RED 65.23."
    )
    return part_result(
        "classification",
        "paper",
        status=status,
        reason="--dry_run: commands listed, not run." if dry_run else ("; ".join(failures) or None),
        commands=[r.to_dict() for r in records],
        markdown=markdown,
    )


__all__ = ["RECIPES", "check_mixable", "main", "paired_interval", "run", "summarise"]

if __name__ == "__main__":
    raise SystemExit(main())
