"""Render RESULTS.md from every part's JSON present in ``<output_dir>/results/``.

Parts run separately (``--only memory``, ...) each leave their own JSON; the report is regenerated
from all of them, so it always shows the latest run of each part together with the machine, the
exact commands and their wall times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import PARTS, markdown_table, read_json

TITLES = {
    "memory": "1. Peak activation memory: teacher vs student",
    "classification": "2. Classification on CIFAR-10: one aggressively downsampled student, every distiller",
    "diffusion": "3. Diffusion on CIFAR-10: the stem-stride-2 DDPM student, every distiller",
    "cuda": "4. On a GPU: torch.cuda.max_memory_allocated, teacher vs student",
    "deploy": "5. Deployed: memory and latency in ExecuTorch, onnxruntime and eager PyTorch, teacher vs student",
}
# Sections written by a benchmark script of their own (not a run.py part): rendered after the part they follow.
EXTRA_SECTIONS = {
    "parity": (
        "diffusion",
        "3b. Denoiser students against a teacher at its plateau (bench_parity.py, issue 22)",
    ),
    "classification_timing": (
        "classification",
        "2b. Step time and images/s of the classification models (one process, median of repeats)",
    ),
    "teacher_layout": (
        "cuda",
        "4b. The frozen teacher's forward in channels_last (bench_teacher_layout.py)",
    ),
}

INTRO = """# ReDistill benchmarks

The question (the paper's): at the same aggressively downsampled student, does ReDistill (RED) keep
quality better than the other distillation methods, and at what peak memory?

Every number below was produced by the commands listed with it (section "Commands"), on the machine
named in "Machine". Regenerate with `python benchmarks/run.py --budget cpu` (all parts) or
`--only memory|classification|diffusion` (one part; the report merges the JSON of every part present
in `benchmarks/results/`). `--budget paper` runs the paper's recipes (GPUs).
"""


CPU_CAVEATS = """## How far these numbers go

- The `cpu` budget is a sanity-scale reproduction, not the paper's experiment: models of 0.1-1.3 M
  parameters, where the paper trains larger models for hundreds of epochs. Diffusion: 1-3 thousand
  optimizer steps; regime (a) follows the paper's protocol at that scale (students from scratch, the
  teacher's recipe and number of steps), regime (b) is what a user with a trained teacher does; spreads
  over 2 seeds where a row says so. Classification (protocol 3): a teacher trained to >= 85% top-1, students
  from scratch with its recipe, equal task weights, 3 seeds, 95% intervals of paired differences.
- Diffusion quality is judged by the held-out denoising loss (the quantity the models are trained on,
  on images they never saw, at fixed timesteps and noise: deterministic and cheap) and by the sample
  grids; a student whose grid shows no images has not learnt to generate at this budget, whatever its
  numbers. FID/KID with the real TF-FID Inception appear where the table says so; at a few hundred
  samples FID is strongly biased (compare it only within a table, next to KID and the real-data floor).
- Wall times are from this 2-core machine, measured while other jobs ran; compare them only within a table.
  Step time and images/s of the classification models come from a dedicated timing benchmark (section 2b:
  one process, warm-up, median of repeats, every model in the same run), not from the accuracy runs.
- Peak memory is a property of the architecture (batch 1, fp32, weights excluded) and does not depend
  on the budget: those figures hold as they are.
"""


def _machine_section(parts: dict[str, dict[str, Any]]) -> str:
    lines = ["## Machine", ""]
    seen = set()
    for data in parts.values():
        machine = data.get("machine") or {}
        key = tuple(sorted((k, str(v)) for k, v in machine.items()))
        if key in seen:
            continue
        seen.add(key)
        parts_with = [
            n
            for n, d in parts.items()
            if tuple(sorted((k, str(v)) for k, v in (d.get("machine") or {}).items())) == key
        ]
        lines.append(f"Parts {', '.join(parts_with)}:")
        lines.append("")
        lines.append(
            f"- CPU: {machine.get('cpu_model')} ({machine.get('logical_cores')} logical cores, "
            f"{machine.get('memory_gib')} GiB), GPU: {machine.get('cuda', 'none')}, torch threads {machine.get('torch_threads')}"
        )
        lines.append(
            f"- Python {machine.get('python')}, torch {machine.get('torch')}, diffusers {machine.get('diffusers')}, "
            f"accelerate {machine.get('accelerate')}, timm {machine.get('timm')}, torch-fidelity {machine.get('torch_fidelity')}"
        )
        lines.append(f"- {machine.get('platform')}")
        if machine.get("training_cpus"):  # runs that trained elsewhere than the report ran
            trained = ", ".join(f"{cpu} ({n} runs)" for cpu, n in machine["training_cpus"].items())
            lines.append(f"- the runs it reports trained on: {trained}")
        lines.append("")
    return "\n".join(lines)


def _part_section(name: str, data: dict[str, Any] | None, results_dir: Path, report_dir: Path) -> str:
    title = TITLES.get(name) or next(t for k, (_, t) in EXTRA_SECTIONS.items() if k == name)
    lines = [f"## {title}", ""]
    if data is None:
        lines += ["Not run yet: no `results/" + name + ".json`.", ""]
        return "\n".join(lines)
    header = (
        f"Budget `{data.get('budget')}`, run {data.get('started')} at revision `{data.get('git_revision')}`"
    )
    if data.get("total_wall_s") is not None:
        header += f", {data['total_wall_s'] / 60:.1f} min wall"
        commands = data.get("commands") or []
        reused = [c for c in commands if "(reused" in (c.get("name") or "")]
        if reused:
            total = sum(c.get("wall_s") or 0 for c in commands)
            header += (
                f" ({len(reused)} of {len(commands)} runs reused from earlier identical runs; "
                f"the commands' own wall times add up to {total / 60:.1f} min)"
            )
    lines += [header + ".", ""]
    if data.get("status") != "ok":
        lines += [f"**Status: {data.get('status')}.** {data.get('reason') or ''}", ""]
    if data.get("markdown"):
        lines += [data["markdown"].strip(), ""]
    for plot in data.get("plots") or []:
        path = Path(plot["path"]) if isinstance(plot, dict) else Path(plot)
        title = plot.get("title", path.stem) if isinstance(plot, dict) else path.stem
        lines += [f"![{title}]({_plot_link(path, report_dir).as_posix()})", ""]
    if data.get("notes"):
        lines += ["Notes:", ""] + [f"- {note}" for note in data["notes"]] + [""]
    if data.get("history"):
        lines += [
            f"### History: earlier protocols of {name}",
            "",
            "Superseded tables, kept so the record shows what was measured before and why it was replaced; "
            "they are not results of the current protocol and their commands need the commits they ran at.",
            "",
        ]
        for entry in data["history"]:
            lines += [entry.get("markdown", "").strip(), ""]
    return "\n".join(lines)


def _plot_link(path: Path, report_dir: Path) -> Path:
    """A plot's link relative to RESULTS.md; a plot recorded in another checkout (an absolute path there)
    links to the same file under this report's folder, ``results/...``, when it is there."""
    try:
        return path.resolve().relative_to(report_dir.resolve())
    except ValueError:
        pass
    if "results" in path.parts:
        tail = Path(*path.parts[len(path.parts) - 1 - path.parts[::-1].index("results") :])
        if (report_dir / tail).exists():
            return tail
    return path


def _commands_section(parts: dict[str, dict[str, Any]]) -> str:
    lines = ["## Commands", "", "Run from the repository root; wall times on the machine above.", ""]
    for name, data in parts.items():
        commands = data.get("commands") or []
        if not commands:
            continue
        lines.append(f"### {name}")
        lines.append("")
        if data.get("entry_command"):
            lines += [f"Entry point: `{data['entry_command']}`", ""]
        rows = [
            [c.get("name"), f"`{c.get('command')}`", c.get("wall_s"), c.get("returncode"), c.get("log")]
            for c in commands
        ]
        lines.append(markdown_table(["step", "command", "wall s", "exit", "log"], rows))
        lines.append("")
    return "\n".join(lines)


def render(output_dir: Path) -> Path:
    """Write ``<output_dir>/RESULTS.md`` from ``<output_dir>/results/*.json`` and return its path."""
    results_dir = output_dir / "results"
    parts = {name: read_json(results_dir / f"{name}.json") for name in PARTS}
    extras = {name: read_json(results_dir / f"{name}.json") for name in EXTRA_SECTIONS}
    present = {k: v for k, v in {**parts, **extras}.items() if v is not None}
    sections = [INTRO]
    summary = [v.get("summary") for v in present.values() if v.get("summary")]
    discussion = results_dir / "discussion.md"  # written by a person after reading the tables
    if summary or discussion.is_file():
        text = "## Answer\n\n" + "\n\n".join(s.strip() for s in summary) + "\n"
        if discussion.is_file():
            text += "\n" + discussion.read_text(encoding="utf-8").strip() + "\n"
        sections.append(text)
    if present:
        sections.append(_machine_section(present))
    if any(d.get("budget") == "cpu" for d in present.values()):
        sections.append(CPU_CAVEATS)
    for name in PARTS:
        sections.append(_part_section(name, parts[name], results_dir, output_dir))
        for extra, (after, _) in EXTRA_SECTIONS.items():
            if after == name and extras[extra] is not None:
                sections.append(_part_section(extra, extras[extra], results_dir, output_dir))
    if present:
        sections.append(_commands_section(present))
    path = output_dir / "RESULTS.md"
    path.write_text("\n".join(sections).rstrip() + "\n", encoding="utf-8")
    return path
