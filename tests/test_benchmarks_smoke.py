"""The benchmark harness's own logic (no training: CI runs `benchmarks/run.py --budget smoke` for that)."""

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402
import report  # noqa: E402
import run as bench_run  # noqa: E402
from bench_diffusion import training_seconds_per_step  # noqa: E402


def test_smoke_budget_refuses_to_overwrite_committed_results():
    with pytest.raises(ValueError, match="must not overwrite"):
        bench_run.parse_args(["--budget", "smoke", "--output_dir", str(BENCH_DIR)])


def test_smoke_budget_defaults_outside_the_repository(tmp_path):
    args = bench_run.parse_args(["--budget", "smoke"])
    assert Path(args.output_dir).resolve() != BENCH_DIR
    assert args.work_dir.startswith(args.output_dir)


def test_missing_eval_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--eval_data"):
        bench_run.parse_args(["--budget", "cpu", "--eval_data", str(tmp_path / "nope.parquet")])


def test_seconds_per_step_from_the_final_progress_line(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        "Steps:  50%|#####     | 150/300 [01:00<01:00, 2.5it/s]\r"
        "Steps: 100%|##########| 300/300 [02:30<00:00, 2.0it/s, loss=0.1]\n"
        "Finished at step 300\n"
    )
    assert training_seconds_per_step(log) == pytest.approx(150 / 300)
    log.write_text("Steps:  50%|#####     | 150/300 [01:00<01:00, 2.5it/s]\n")
    assert training_seconds_per_step(log) is None


def test_parquet_slices_hold_out_the_last_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    source = tmp_path / "data.parquet"
    pq.write_table(pa.table({"label": list(range(10))}), source)
    train, val = common.parquet_slices(source, tmp_path / "work", validation_rows=3)
    assert pq.read_table(train)["label"].to_pylist() == list(range(7))
    assert pq.read_table(val)["label"].to_pylist() == [7, 8, 9]
    with pytest.raises(ValueError, match="too few"):
        common.parquet_slices(source, tmp_path / "work2", validation_rows=10)


def test_report_merges_every_part_present(tmp_path):
    results = tmp_path / "results"
    common.write_json(
        results / "classification.json",
        common.part_result("classification", "cpu", markdown="| model | top-1 |\n|---|---|\n| red | 50 |",
                           summary="Classification: red wins.", commands=[{"name": "teacher", "command": "python x.py", "wall_s": 1.0, "returncode": 0, "log": "logs/t.log"}]),
    )
    common.write_json(results / "diffusion.json", common.not_run("diffusion", "cpu", "examples/train_ddpm_redistill.py is not present"))
    text = report.render(tmp_path).read_text()
    assert "| red | 50 |" in text
    assert "Classification: red wins." in text
    assert "**Status: not run.** examples/train_ddpm_redistill.py is not present" in text
    assert "Not run yet: no `results/memory.json`" in text
    assert "`python x.py`" in text
    assert json.loads((results / "classification.json").read_text())["machine"]["logical_cores"] >= 1
