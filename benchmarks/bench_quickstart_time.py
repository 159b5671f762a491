"""How long `redistill quickstart` takes, and what it ends with, on both kinds of 2-core CPU (issue 23).

    python benchmarks/bench_quickstart_time.py [--modes bf16 fp32 fp32-avx2] [--work_dir DIR]

Each mode runs the README's command, ``redistill quickstart --output_dir <dir>/<mode>``, in a fresh process
with the default flags, timed from start to exit (the install is not counted):

- ``bf16``: ``--mixed_precision auto`` on this machine (bf16 where the CPU computes it natively);
- ``fp32``: ``--mixed_precision no``, the path of a CPU without native bf16;
- ``fp32-avx2``: the same with oneDNN and ATen limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``,
  ``ATEN_CPU_CAPABILITY=avx2``): the kernels an AVX2-only CPU such as an AMD EPYC runs, on this CPU's cores.
  It emulates the instruction set, not a slower core or a VM's 1-core x 2-thread topology.

Writes benchmarks/results/quickstart_time.{json,md}: wall time, the quickstart's own phase split
(summary.json), both held-out losses and their ratio, the checkerboard shares, the peak-memory ratio, the
CPU model and the load average around each run (a loaded machine is slower: the table says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, checkout_env, git_revision, machine_info, markdown_table, write_json  # noqa: E402

MODES: dict[str, tuple[list[str], dict[str, str]]] = {
    "bf16": ([], {}),
    "fp32": (["--mixed_precision", "no"], {}),
    "fp32-avx2": (["--mixed_precision", "no"], {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}),
}


def run_mode(mode: str, work_dir: Path) -> dict:
    flags, env_extra = MODES[mode]
    out = work_dir / mode
    argv = [str(Path(sys.executable).with_name("redistill")), "quickstart", "--output_dir", str(out)]
    argv += ["--overwrite_output_dir", *flags]
    env = checkout_env({**os.environ, "HF_HUB_OFFLINE": "1", **env_extra})
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the user's default: every CPU
        env.pop(variable, None)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    log = work_dir / f"{mode}.log"
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.run(
            argv, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
        ).returncode
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{mode}: the quickstart failed (exit {code}); see {log}")
    summary = json.loads((out / "summary.json").read_text())
    losses = summary["heldout_denoising_loss"]
    return {
        "mode": mode,
        "command": " ".join(["redistill", *argv[1:]]),
        "env": env_extra,
        "wall_s": round(wall, 1),
        "phase_seconds": summary["phase_seconds"],
        "mixed_precision": summary["mixed_precision"],
        "teacher_loss": losses["teacher"],
        "student_loss": losses["student"],
        "loss_ratio": round(losses["student"] / losses["teacher"], 3),
        "checkerboard_share": summary["checkerboard_share"],
        "mean_brightness": summary.get("mean_brightness"),
        "peak_ratio": {k: v["ratio"] for k, v in summary["peak_memory"].items()},
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--work_dir", default=str(REPO_ROOT / "benchmarks/_work/quickstart_time"))
    parser.add_argument("--results_dir", default=str(REPO_ROOT / "benchmarks/results"))
    args = parser.parse_args()
    rows = []
    for mode in args.modes:
        print(f"[quickstart time] {mode} ...", flush=True)
        rows.append(run_mode(mode, Path(args.work_dir)))
        print(
            f"[quickstart time] {mode}: {rows[-1]['wall_s']:.0f} s, ratio {rows[-1]['loss_ratio']}",
            flush=True,
        )
    result = {
        "command": "python benchmarks/bench_quickstart_time.py --modes " + " ".join(args.modes),
        "git_revision": git_revision(),
        "machine": machine_info(),
        "rows": rows,
    }
    results = Path(args.results_dir)
    write_json(results / "quickstart_time.json", result)
    table = markdown_table(
        [
            "mode",
            "wall time",
            "student training (s)",
            "teacher / student held-out loss",
            "ratio",
            "checkerboard share teacher / student",
            "mean brightness teacher / student / held-out shapes",
            "peak memory ratio",
            "load avg before / after",
        ],
        [
            [
                r["mode"],
                f"{r['wall_s'] / 60:.1f} min",
                r["phase_seconds"]["student"].get("training")
                if isinstance(r["phase_seconds"]["student"], dict)
                else None,
                f"{r['teacher_loss']:.4f} / {r['student_loss']:.4f}",
                f"{r['loss_ratio']:.2f}x",
                f"{r['checkerboard_share']['teacher']:.4f} / {r['checkerboard_share']['student']:.4f}",
                " / ".join(f"{r['mean_brightness'][k]:.0f}" for k in ("teacher", "student", "heldout_images"))
                if r.get("mean_brightness")
                else "-",
                ", ".join(f"{k} {v:.2f}x" for k, v in r["peak_ratio"].items()),
                f"{r['load_average_before']} / {r['load_average_after']}",
            ]
            for r in rows
        ],
    )
    header = (
        f"`{result['command']}` at {result['git_revision']} on {result['machine']['cpu_model']} "
        f"({result['machine']['logical_cores']} cores). fp32-avx2 limits oneDNN/ATen to AVX2 kernels on this CPU.\n\n"
    )
    (results / "quickstart_time.md").write_text(header + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
