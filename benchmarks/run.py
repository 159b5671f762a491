"""One entry point for the benchmarks: memory, classification, diffusion (and cuda, on a GPU), at three budgets.

    python benchmarks/run.py --budget smoke --output_dir /tmp/redistill-smoke   # < 3 min, CI, synthetic data
    python benchmarks/run.py --budget cpu                                       # the committed tables (2 CPU cores)
    python benchmarks/run.py --budget cpu --only classification                 # one part; RESULTS.md merges all parts
    python benchmarks/run.py --budget paper                                     # the paper's recipes (needs CUDA GPUs)
    python benchmarks/run.py --budget paper --dry_run                           # ... only list those commands
    REDISTILL_BENCH_THREADS=1 python benchmarks/run.py --budget cpu --only diffusion &  # two parts side by side,
    REDISTILL_BENCH_THREADS=1 python benchmarks/run.py --budget cpu --only classification  # one core each

Classification at ``--budget cpu`` trains nothing here: it summarises the finished rows of the resumable stages of
``benchmarks/bench_classification.py`` (protocol 3, hours of CPU; launched one by one); ``--budget smoke`` runs
those stages at a tiny scale.

Each part writes ``<output_dir>/results/<part>.json`` (+ PNGs); ``<output_dir>/RESULTS.md`` is
regenerated from every part's JSON present. Models and data slices go to ``--work_dir``
(default ``benchmarks/_work``, ignored by git), so a later run can reuse a finished teacher.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import (  # noqa: E402
    BUDGETS,
    CIFAR10_PARQUET,
    PARTS,
    REPO_ROOT,
    not_run,
    part_result,
    relative,
    require_gpu_for_paper,
    write_json,
)
from report import render  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--budget",
        choices=BUDGETS,
        required=True,
        help="smoke: seconds, synthetic data; cpu: the reported tables; paper: the paper's recipes.",
    )
    parser.add_argument(
        "--only", nargs="+", choices=PARTS, default=None, help="Run only these parts (default: all)."
    )
    parser.add_argument(
        "--output_dir",
        type=str,
        default=None,
        help="Where results/, RESULTS.md and logs/ go (default: benchmarks/ for cpu, benchmarks/paper/ for paper, a temp dir for smoke).",
    )
    parser.add_argument(
        "--work_dir",
        type=str,
        default=None,
        help="Models, checkpoints and data slices (default: <output_dir>/_work).",
    )
    parser.add_argument(
        "--data",
        type=str,
        default=str(CIFAR10_PARQUET),
        help="CIFAR-10 parquet (columns img, label); the last 500 images of every class are held out for validation.",
    )
    parser.add_argument(
        "--eval_data",
        type=str,
        default=None,
        help="Another parquet to report classification top-1 on (default: the held-out slice of --data).",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="Classification seeds (default: the budget's)."
    )
    parser.add_argument(
        "--reuse_runs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Reuse a finished run found in work_dir (the same command) instead of training it again.",
    )
    parser.add_argument(
        "--no_new_runs",
        action="store_true",
        help="Report finished runs (and evaluate them) but train nothing new: runs without a finished identical run are listed as not run.",
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="Only regenerate RESULTS.md from the JSON in <output_dir>/results.",
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="--budget paper only: list the paper's commands in RESULTS.md instead of running them.",
    )
    args = parser.parse_args(argv)
    if args.output_dir is None:
        defaults = {
            "cpu": str(BENCH_DIR),
            "paper": str(BENCH_DIR / "paper"),
            "smoke": os.path.join(tempfile.gettempdir(), "redistill-bench-smoke"),
        }
        args.output_dir = defaults[args.budget]
    if args.budget == "smoke" and Path(args.output_dir).resolve() == BENCH_DIR:
        parser.error(
            "--budget smoke must not overwrite the committed results in benchmarks/: pass another --output_dir."
        )
    if args.work_dir is None:
        args.work_dir = os.path.join(args.output_dir, "_work")
    if args.eval_data is not None and not Path(args.eval_data).is_file():
        parser.error(f"--eval_data {args.eval_data} not found: give a parquet file with columns img, label.")
    if args.dry_run and args.budget != "paper":
        parser.error(
            "--dry_run applies to --budget paper only (smoke and cpu run their commands); drop it or use --budget paper."
        )
    if args.budget == "paper" and not args.report_only:
        require_gpu_for_paper(args.dry_run)
    if args.seeds is not None and not args.seeds:
        parser.error("--seeds needs at least one seed.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    (output_dir / "results").mkdir(parents=True, exist_ok=True)
    (output_dir / "logs").mkdir(parents=True, exist_ok=True)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    if args.report_only:
        print(f"[benchmarks] wrote {relative(render(output_dir))}")
        return 0
    common.ALLOW_NEW_RUNS = not args.no_new_runs
    entry = " ".join(
        shlex.quote(a) for a in ["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]
    )
    parts = args.only or list(PARTS)
    failures = []
    for part in parts:
        start = time.perf_counter()
        print(f"[benchmarks] {part} ({args.budget}) ...", flush=True)
        try:
            module = importlib.import_module(f"bench_{part}")
        except Exception as error:  # a part whose module cannot be imported is reported, not fatal
            result = not_run(
                part,
                args.budget,
                f"benchmarks/bench_{part}.py could not be imported: {type(error).__name__}: {error}",
            )
        else:
            try:
                result = run_part(part, module, args, output_dir)
            except Exception as error:
                traceback.print_exc()
                result = not_run(part, args.budget, f"{type(error).__name__}: {error}")
        result.setdefault("part", part)
        result["budget"] = args.budget
        result["entry_command"] = entry
        result["total_wall_s"] = round(time.perf_counter() - start, 1)
        if result.get("status") not in ("ok", "dry run", "skipped"):
            failures.append(f"{part}: {result.get('status')}: {result.get('reason')}")
        write_json(output_dir / "results" / f"{part}.json", result)
        print(f"[benchmarks] {part}: {result.get('status')} in {result['total_wall_s']:.0f} s", flush=True)
        render(output_dir)
    report = render(output_dir)
    print(f"[benchmarks] wrote {relative(report)}")
    for failure in failures:
        print(f"[benchmarks] NOT OK {failure}", file=sys.stderr)
    return 1 if failures else 0


def run_part(part: str, module, args: argparse.Namespace, output_dir: Path) -> dict:
    if part == "memory":
        returned = dict(module.run(str(output_dir), args.budget))
        result = part_result("memory", args.budget)
        machine = result["machine"]
        result.update(returned)
        result["machine"] = machine  # one description of the machine for every part
        return result
    return module.run(
        output_dir=output_dir,
        work_dir=Path(args.work_dir).resolve(),
        budget=args.budget,
        data=Path(args.data),
        eval_data=None if args.eval_data is None else Path(args.eval_data),
        seeds=args.seeds,
        reuse_runs=args.reuse_runs,
        dry_run=args.dry_run,
    )


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    sys.exit(main())
