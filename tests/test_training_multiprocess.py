"""Two CPU processes (gloo) really train together: same weights on both ranks, one writer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers_training import fast_args, make_tiny_teacher
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

_DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from safetensors.torch import save_file
    from redistill_diffusion.diffusion import task as diffusion
    from redistill_diffusion.diffusion.run import run_redistill
    from redistill_diffusion.training.trainer import Trainer

    probe = Path(sys.argv[1])
    seen = []
    compute = diffusion.DiffusionTask.compute_losses
    def recording(self, batch, ctx):
        seen.append(float(batch["images"].sum()))
        return compute(self, batch, ctx)
    diffusion.DiffusionTask.compute_losses = recording

    train = Trainer.train
    def train_and_dump(self, task):
        result = train(self, task)
        rank = self.accelerator.process_index
        # Parameters only: DDP broadcasts BatchNorm buffers from rank 0 before each forward, so after
        # the last forward they legitimately differ until the next one (rank 0's are the saved ones).
        state = {k: v.detach().contiguous() for k, v in self._main_module.named_parameters()}
        save_file(state, str(probe / f"rank{rank}.safetensors"))
        info = {"world_size": self.accelerator.num_processes, "distributed_type": str(self.accelerator.distributed_type),
                "batch_sums": seen, "steps": result.global_step}
        (probe / f"rank{rank}.json").write_text(json.dumps(info))
        return result
    Trainer.train = train_and_dump
    run_redistill(sys.argv[2:])
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_in_sync_and_only_rank0_writes(tmp_path):
    teacher = make_tiny_teacher(tmp_path / "teacher")
    out, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    args = fast_args(out, steps=3, batch=4, images=32) + [
        "--teacher_model_name_or_path",
        str(teacher),
        "--distiller",
        "red",
        "--logger",
        "tensorboard",
        "--checkpointing_steps",
        "3",
        "--validation_steps",
        "2",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        "--main_process_port",
        str(_free_port()),
        str(driver),
        str(probe),
        *args,
    ]
    completed = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]

    infos = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world_size"] for i in infos] == [2, 2]
    assert all("MULTI_CPU" in i["distributed_type"] for i in infos)
    assert [i["steps"] for i in infos] == [3, 3]
    # Each rank trained on its own shard of every batch ...
    assert infos[0]["batch_sums"] != infos[1]["batch_sums"]
    # ... yet both end with identical weights: the gradients were all-reduced.
    rank0, rank1 = load_file(str(probe / "rank0.safetensors")), load_file(str(probe / "rank1.safetensors"))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    # One writer: a single tensorboard writer process, one pipeline, one complete checkpoint.
    pids = {path.name.split(".")[-2] for path in (out / "logs").rglob("events.out.tfevents.*")}
    assert len(pids) == 1
    assert (out / "model_index.json").is_file() and (out / "checkpoint-3" / "training_state.json").is_file()
    # Both ranks stored their own generator state in the checkpoint (needed for an exact resume).
    assert {p.name for p in (out / "checkpoint-3").glob("generator_state_*")} == {
        "generator_state_0.safetensors",
        "generator_state_1.safetensors",
    }
