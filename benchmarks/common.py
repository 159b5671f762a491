"""Shared plumbing of the benchmark parts: budgets' bookkeeping, logged subprocesses, JSON, machine info.

Every part (memory, classification, diffusion) writes ``<output_dir>/results/<part>.json`` with the
same top-level keys (``part``, ``budget``, ``status``, ``reason``, ``commands``, ``markdown``,
``plots``, ...); `benchmarks/report.py` renders RESULTS.md from whatever JSON is present, so parts
run separately merge into one report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BUDGETS = ("smoke", "cpu", "paper")
PARTS = ("memory", "classification", "diffusion", "cuda", "deploy")
CIFAR10_PARQUET = Path(
    os.environ.get("REDISTILL_CIFAR10", REPO_ROOT.parent / "shared/data/cifar10/train.parquet")
)


class ComponentMissing(RuntimeError):
    """A component this part calls (a script, an API) is not there yet: the part is reported as not run."""


class CommandFailed(RuntimeError):
    """A logged subprocess exited non-zero; the message names its log file."""


@dataclass
class CommandRecord:
    """One command the benchmark ran (or, for the paper budget, would run), as reported in RESULTS.md."""

    name: str
    argv: list[str]
    log: str | None = None
    wall_s: float | None = None
    returncode: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def shell(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        argv = ["python" if a == sys.executable else a for a in self.argv]
        command = " ".join(shlex.quote(str(a)) for a in argv)
        return f"{prefix} {command}".strip()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": self.shell,
            "log": self.log,
            "wall_s": None if self.wall_s is None else round(self.wall_s, 2),
            "returncode": self.returncode,
        }


def relative(path: str | os.PathLike) -> str:
    """A path as the reader of RESULTS.md would type it from the repository root."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def python_argv(script: str | os.PathLike, *args: Any) -> list[str]:
    """``python <script> args...`` with the interpreter running the benchmark (the project's venv)."""
    return [sys.executable, relative(script), *[str(a) for a in args]]


def require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise ComponentMissing(f"{relative(path)} is not present ({what})")
    return path


@dataclass
class Variant:
    """One student run of a benchmark part: a label for the table, the distiller, its regime and seed, and any
    extra flags (ablations)."""

    label: str
    distiller: str
    regime: str = "scratch"
    flags: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def key(self) -> str:
        """Unique run name: regime, label and seed."""
        return f"{self.regime} {self.label} seed {self.seed}"


# run.py --no_new_runs: report what has finished; a run that would have to train is reported as not run.
ALLOW_NEW_RUNS = True


def bench_threads(default: int | None) -> int | None:
    """Torch threads for a benchmark process: ``REDISTILL_BENCH_THREADS`` (two parts side by side, one core
    each) or the budget's ``default``."""
    return int(os.environ.get("REDISTILL_BENCH_THREADS", 0)) or default


def run_logged(
    record: CommandRecord, log_path: Path, threads: int | None = None, timeout_s: float | None = None
) -> CommandRecord:
    """Run ``record.argv`` from the repository root, stdout+stderr to ``log_path``; fill wall time and rc.

    Raises `CommandFailed` (naming the log and its last line) when the command fails, or without running it
    under ``--no_new_runs``.
    """
    if not ALLOW_NEW_RUNS:
        raise CommandFailed(f"{record.name}: not run (--no_new_runs and no finished identical run to reuse)")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = bench_threads(threads)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    env = checkout_env({**env, **record.env})
    record.log = relative(log_path)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {record.shell}\n")
        log.flush()
        try:
            completed = subprocess.run(
                record.argv,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
            record.returncode = completed.returncode
        except subprocess.TimeoutExpired:
            record.returncode = -9
    record.wall_s = time.perf_counter() - start
    if record.returncode != 0:
        raise CommandFailed(
            f"{record.name} failed (exit {record.returncode}): {last_error_line(log_path)} [log: {record.log}]"
        )
    return record


def last_error_line(log_path: Path) -> str:
    """The most telling line of a failed run's log: the last exception line, else the last line."""
    try:
        lines = [
            line.strip()
            for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()
        ]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if "Error" in line or "error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else "empty log"


def machine_info() -> dict[str, Any]:
    """What the numbers ran on: CPU model, cores, memory, library versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
    }
    for module in ("torch", "diffusers", "accelerate", "timm", "torch_fidelity", "datasets"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # a missing library is reported, never fatal
            info[module] = "not installed"
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return "unknown"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def part_result(part: str, budget: str, **fields: Any) -> dict[str, Any]:
    """The skeleton every part's JSON follows."""
    result: dict[str, Any] = {
        "part": part,
        "budget": budget,
        "status": "ok",
        "reason": None,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git_revision": git_revision(),
        "machine": machine_info(),
        "commands": [],
        "markdown": "",
        "plots": [],
        "notes": [],
    }
    result.update(fields)
    return result


def slug(text: str) -> str:
    """A run label as a file name: every run of other characters becomes one underscore."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def run_paper_commands(
    part: str, records: list[CommandRecord], log_dir: Path, dry_run: bool
) -> tuple[str, list[str]]:
    """Run the paper budget's commands one after another (logged), or with ``dry_run`` only list them.

    Returns the part's status and the failures; a failed run does not stop the others."""
    if dry_run:
        return "dry run", []
    failures = []
    for record in records:
        try:
            run_logged(record, log_dir / f"paper_{part}_{slug(record.name)}.log")
        except CommandFailed as error:
            failures.append(str(error))
    return ("ok" if not failures else "partial"), failures


def require_gpu_for_paper(dry_run: bool) -> None:
    """The paper budget trains for days on GPUs: refuse before anything starts on a machine without one."""
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise SystemExit(
            "--budget paper trains the paper's recipes and needs CUDA GPUs (none found): add --dry_run to list the commands."
        )


def not_run(part: str, budget: str, reason: str, **fields: Any) -> dict[str, Any]:
    return part_result(part, budget, status="not run", reason=reason, **fields)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_bytes(num_bytes: int | float | None) -> str:
    if num_bytes is None:
        return "-"
    if num_bytes >= 1024**2:
        return f"{num_bytes / 1024**2:.3f} MB"
    return f"{num_bytes / 1024:.1f} KB"


def stratified_slices(
    source: Path, work_dir: Path, validation_per_class: int, label_column: str = "label"
) -> tuple[Path, Path]:
    """Split a labelled parquet into train and a held-out slice of the last ``validation_per_class`` rows of
    every class (positional within each class, so the same on every machine).

    The shared CIFAR-10 parquet is sorted by label: its last 5,000 rows are all one class, so a plain
    tail slice cannot serve as a validation set.
    """
    import numpy as np
    import pyarrow.parquet as pq

    if not source.is_file():
        raise FileNotFoundError(
            f"{source} not found: pass --data PATH to a CIFAR-10 parquet (columns img, label)."
        )
    train_path = work_dir / f"{source.stem}_train_minus_{validation_per_class}_per_class.parquet"
    val_path = work_dir / f"{source.stem}_last_{validation_per_class}_per_class.parquet"
    if train_path.exists() and val_path.exists():
        return train_path, val_path
    work_dir.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(source)
    labels = np.asarray(table[label_column].to_pylist())
    held_out = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) <= validation_per_class:
            raise ValueError(
                f"{source}: class {label} has {len(rows)} rows, too few to hold out {validation_per_class}."
            )
        held_out[rows[-validation_per_class:]] = True
    pq.write_table(table.filter(~held_out), train_path)
    pq.write_table(table.filter(held_out), val_path)
    return train_path, val_path


def checkout_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this checkout first on PYTHONPATH: a benchmark's training subprocesses import the library
    of the checkout that launches them, not whatever the venv's editable install points at (a frozen
    worktree's results must belong to its own commit)."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])}


def run_segment(record: CommandRecord, log_path: Path, threads: int) -> int:
    """One (re)start of a training in the foreground: the log grows by one segment headed by the commit and
    the machine, so a run resumed across sessions says what trained each part. The subprocess imports the
    library of this checkout (PYTHONPATH), whatever the venv's editable install points at: a frozen
    worktree's runs are trained by the worktree's commit, not by a main that moved on meanwhile."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["TQDM_MININTERVAL"] = "60"  # one progress line a minute, not one a step
    env = checkout_env(env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(
            f"\n# segment started at commit {git_revision()} ({machine_info()['cpu_model']}, {threads} threads, "
            f"library from {REPO_ROOT})\n"
        )
        log.write(f"$ OMP_NUM_THREADS={threads} {record.shell}\n")
        log.flush()
        return subprocess.run(
            record.argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        ).returncode


def library_outside_checkout() -> str | None:
    """A one-line error when ``redistill_diffusion`` is imported from elsewhere than this checkout (then the
    figures would not belong to this checkout's commit), else None."""
    import redistill_diffusion

    library = Path(redistill_diffusion.__file__).resolve()
    if REPO_ROOT.resolve() in library.parents:
        return None
    return (
        f"redistill_diffusion is imported from {library.parent}, not from this checkout {REPO_ROOT}: run with "
        f"PYTHONPATH={REPO_ROOT} so the results record the commit whose library produced them."
    )


# ------------------------------------------------------------------------------------------------
# paired comparisons over training seeds (classification and diffusion parity)
# ------------------------------------------------------------------------------------------------
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_quantile(df: int) -> float:
    """Two-sided 95% Student-t quantile (scipy when present, else the table)."""
    try:
        from scipy import stats

        return float(stats.t.ppf(0.975, df))
    except ImportError:
        return T_975.get(df, 1.96 + 2.4 / df)


def paired_interval(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean and 95% t-interval of the per-seed differences a - b over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.mean(diffs)
    out = {"seeds": seeds, "diffs": diffs, "mean": mean, "sd": None, "ci95": None}
    if len(diffs) > 1:
        sd = statistics.stdev(diffs)
        half = t_quantile(len(diffs) - 1) * sd / math.sqrt(len(diffs))
        out.update(sd=sd, ci95=[mean - half, mean + half])
    return out


# ------------------------------------------------------------------------------------------------
# timing benchmarks (bench_classification_timing.py, bench_teacher_layout.py)
# ------------------------------------------------------------------------------------------------
def timing_parser(description: str, steps_help: str, smoke_help: str) -> argparse.ArgumentParser:
    """The flags every timing benchmark shares; `check_timing_args` checks them after parsing."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output_dir", default=str(REPO_ROOT / "benchmarks"), help="results/ and RESULTS.md go here"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help=steps_help)
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument(
        "--machine_note", default="", help="what else ran on the machine meanwhile (stated with the table)"
    )
    return parser


def check_timing_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, positive: tuple[str, ...]
) -> Path:
    """One-line errors for counts below 1 and for --smoke aimed at the committed results; the output folder."""
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}.")
    output_dir = Path(args.output_dir).resolve()
    if args.smoke and output_dir == (REPO_ROOT / "benchmarks").resolve():
        parser.error(
            "--smoke must not overwrite the committed results in benchmarks/: pass another --output_dir."
        )
    return output_dir


def round_robin_times(jobs: dict[Any, Any], steps: int, repeats: int, warmup: int) -> dict[Any, list[float]]:
    """Seconds per call of every job: ``warmup`` calls each, then ``repeats`` rounds that time ``steps`` calls of
    every job in turn, so a burst of load from another process hits every job alike."""
    for job in jobs.values():  # warm-up: allocator, oneDNN kernels, autocast caches
        for _ in range(warmup):
            job()
    times: dict[Any, list[float]] = {key: [] for key in jobs}
    for _ in range(repeats):
        for key, job in jobs.items():
            start = time.perf_counter()
            for _ in range(steps):
                job()
            times[key].append((time.perf_counter() - start) / steps)
    return times
