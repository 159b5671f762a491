"""`ClassificationTask`: timm classifiers in the one training loop (`redistill_diffusion.training.Trainer`).

One batch: (optional mixup/cutmix) -> `training.task.distillation_forward` (student forward with its
taps recorded, frozen teacher forward under no_grad with its taps, the distiller's named losses; the
same call as the diffusion task) -> cross-entropy + those losses. The loop weights them
``(1 - a) * CE + a * distillation`` (``--distill_weight`` a, default 0.5; ``--task_weight`` sets CE's weight
explicitly, e.g. 0.5 for a plain student at the distillers' task weight; docs/architecture.md). The same task
trains a plain classifier (a teacher): no teacher, no distiller.

Evaluation (every epoch with ``--validation_epochs 1``) reports top-1/top-5 and keeps the best
student in ``<output_dir>/best_model`` (a `save_classifier` folder); the end of training writes
the final model, its card and ``results.json`` to ``output_dir``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distillers import Distiller, build_model_distiller, parse_distiller
from ..training import EvalContext, StepContext, TaskLosses
from ..training.task import distillation_forward, freeze_teacher
from .hub import card_for, save_classifier
from .placement import classifier_example_inputs, paper_pairs
from .spec import build_classifier, spec_of

if TYPE_CHECKING:
    from ..memory import MemorySummary

logger = logging.getLogger(__name__)

PLAIN_TRAINING = "none"
BEST_DIR = "best_model"
RESULTS_FILE = "results.json"


def build_classification_distiller(
    name: str,
    student: nn.Module,
    teacher: nn.Module | None,
    input_size: Sequence[int],
    pairs: Sequence[tuple[str, str]] | None = None,
    **options: Any,
) -> Distiller | None:
    """The shared distiller ``name`` wired to a classifier pair (`distillers.build_model_distiller`,
    the builder of the diffusion task too); None for plain training.

    Feature methods (red, fitnet, at) compare the paper's placement by default: the student's RED
    sites (or, without RED blocks, its stem output and downsampling-layer inputs/outputs) paired by
    resolution with the teacher. With RED blocks, the student side of every pair is the block's
    output (`red.red_feature_tap`). The raw pairs are recorded in the student's spec.
    """
    if name == PLAIN_TRAINING:
        return None
    method = parse_distiller(name)
    spec = spec_of(student)
    if method.uses_pairs and teacher is not None:
        if pairs is None:
            sites = [block["tap"] for block in spec.red_blocks] or None
            pairs = paper_pairs(student, teacher, input_size, student_taps=sites)
        spec.distillation_pairs = [tuple(p) for p in pairs]
    return build_model_distiller(
        method.name,
        student,
        teacher,
        [tuple(p) for p in pairs or ()],
        classifier_example_inputs(input_size),
        options,
    )


def _seeded_numpy(generator: torch.Generator):
    """A context in which numpy's global RNG (used by timm's Mixup) is seeded from the task's
    checkpointed generator, so mixup draws are reproduced exactly after a resume."""
    import contextlib

    import numpy as np

    @contextlib.contextmanager
    def context():
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)

    return context()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class ClassificationTask:
    """Train ``student`` (optionally against a frozen ``teacher`` through ``distiller``)."""

    main_module_name = "student"

    def __init__(
        self,
        student: nn.Module,
        train_dataset: torch.utils.data.Dataset,
        *,
        teacher: nn.Module | None = None,
        distiller: Distiller | None = None,
        distiller_name: str | None = None,
        eval_dataset: torch.utils.data.Dataset | None = None,
        eval_batch_size: int = 256,
        label_smoothing: float = 0.0,
        mixup: Any = None,
        label_names: Sequence[str] | None = None,
        data_config: Mapping[str, Any] | None = None,
        dataset_description: str | None = None,
        measure_memory: bool = True,
        resume_step: int | None = None,
        teacher_mode: str = "eval",
    ):
        if distiller is not None and distiller.requires_teacher and teacher is None:
            raise ValueError(f"Distiller {distiller.name!r} needs a teacher.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"--label_smoothing must lie in [0, 1), got {label_smoothing}.")
        self.student = student
        self.teacher = teacher
        self.distiller = distiller
        self.distiller_name = distiller_name or (distiller.name if distiller is not None else PLAIN_TRAINING)
        self._train = train_dataset
        self.eval_dataset = eval_dataset
        self.eval_batch_size = int(eval_batch_size)
        self.label_smoothing = float(label_smoothing)
        self.mixup = mixup
        self.label_names = list(label_names) if label_names else None
        self.data_config = dict(data_config or {})
        self.dataset_description = dataset_description
        self.measure_memory = measure_memory
        self.best_top1: float | None = None
        self.resume_step = resume_step  # step of the checkpoint this run resumes from (None: a fresh run)
        self._teacher_metrics: dict[str, float] | None = None
        self.teacher_mode = freeze_teacher(teacher, teacher_mode)

    # -- the contract of the training loop -----------------------------------------------------
    def trainable_modules(self) -> dict[str, nn.Module]:
        modules = {"student": self.student}
        if self.distiller is not None and any(p.requires_grad for p in self.distiller.parameters()):
            modules["distiller"] = self.distiller  # FitNet regressors train with the student
        return modules

    def train_dataset(self) -> torch.utils.data.Dataset:
        return self._train

    def setup(self, accelerator) -> None:
        if self.teacher is not None:
            self.teacher.to(accelerator.device).train(self.teacher_mode == "train")
        if self.distiller is not None and "distiller" not in self.trainable_modules():
            self.distiller.to(accelerator.device)

    def compute_losses(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> TaskLosses:
        images = batch["images"].to(ctx.device, non_blocking=True)
        labels = batch["labels"].to(ctx.device, non_blocking=True)
        targets = None
        if (
            self.mixup is not None and images.shape[0] % 2 == 0
        ):  # timm's Mixup pairs samples: even batches only
            with _seeded_numpy(ctx.generator):
                images, targets = self.mixup(images, labels)

        logits, distillation = distillation_forward(
            ctx.modules["student"],
            (images,),
            teacher=self.teacher,
            distiller=ctx.modules.get("distiller", self.distiller) if self.distiller is not None else None,
            target=labels,
            accelerator=ctx.accelerator,
        )
        if targets is not None:
            task_loss = soft_cross_entropy(logits, targets)
        else:
            task_loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        logs = {}
        if targets is None:
            logs["train_top1"] = (logits.detach().argmax(dim=1) == labels).float().mean().item()
        return TaskLosses(task=task_loss, distillation=distillation, logs=logs)

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def _accuracy(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        loader = torch.utils.data.DataLoader(
            self.eval_dataset, batch_size=self.eval_batch_size, shuffle=False
        )
        was_training = model.training
        model.eval()
        top1 = top5 = loss = 0.0
        count = 0
        try:
            for batch in loader:
                images = batch["images"].to(device)
                labels = batch["labels"].to(device)
                logits = model(images).float()
                k = min(5, logits.shape[1])
                top = logits.topk(k, dim=1).indices
                top1 += (top[:, 0] == labels).sum().item()
                top5 += (top == labels[:, None]).any(dim=1).sum().item()
                loss += F.cross_entropy(logits, labels, reduction="sum").item()
                count += labels.numel()
        finally:
            model.train(was_training)
        return {"top1": top1 / count, "top5": top5 / count, "eval_loss": loss / count}

    def _load_best(self, output_dir: str) -> None:
        """A resumed run keeps competing with the best model its earlier part saved (one saved at or
        before the checkpoint it resumed from); a fresh run ignores a best_model left by another run."""
        if self.best_top1 is not None or self.resume_step is None:
            return
        path = Path(output_dir) / BEST_DIR / "metrics.json"
        if path.is_file():
            with open(path, encoding="utf-8") as handle:
                saved = json.load(handle)
            if int(saved.get("global_step", self.resume_step + 1)) <= self.resume_step:
                self.best_top1 = float(saved.get("top1", float("-inf")))

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        if self.eval_dataset is None or len(self.eval_dataset) == 0:
            return {}
        student = ctx.modules["student"]
        metrics = self._accuracy(student, ctx.device)
        if self.teacher is not None and self._teacher_metrics is None:
            self._teacher_metrics = {
                f"teacher_{k}": v for k, v in self._accuracy(self.teacher, ctx.device).items()
            }
        if self._teacher_metrics:
            metrics.update({"teacher_top1": self._teacher_metrics["teacher_top1"]})
        self._load_best(ctx.run_dir or ctx.output_dir)
        if self.best_top1 is None or metrics["top1"] > self.best_top1:
            self.best_top1 = metrics["top1"]
            folder = save_classifier(
                student,
                Path(ctx.output_dir) / BEST_DIR,
                label_names=self.label_names,
                data_config=self.data_config,
            )
            with open(folder / "metrics.json", "w", encoding="utf-8") as handle:
                json.dump({**metrics, "global_step": ctx.global_step, "epoch": ctx.epoch}, handle, indent=2)
        metrics["best_top1"] = self.best_top1
        logger.info(
            "step %d: top1 %.4f (best %.4f)%s",
            ctx.global_step,
            metrics["top1"],
            self.best_top1,
            f", teacher {metrics['teacher_top1']:.4f}" if "teacher_top1" in metrics else "",
        )
        return metrics

    # -- the final artefact -------------------------------------------------------------------
    def _memory(self, student: nn.Module) -> MemorySummary:
        """Teacher vs student peak memory in both conventions (results.json's ``peak_memory``, the card)."""
        from ..memory import MemorySummary

        spec = spec_of(student)
        if self.teacher is None or spec.input_size is None:
            return MemorySummary()
        # Measure a fresh fp32 copy: accelerate patches a prepared model's forward with autocast under
        # --mixed_precision, and the exact tracer would count autocast's weight casts as activations.
        return MemorySummary.measure(self.teacher, build_classifier(spec).eval(), tuple(spec.input_size))

    def save_final(self, output_dir: str, ctx: EvalContext) -> None:
        student = ctx.modules["student"]
        student.eval()
        memory = self._memory(student) if self.measure_memory else None
        metrics = {k: v for k, v in ctx.metrics.items() if isinstance(v, (int, float))}
        card = card_for(
            student,
            distiller=self.distiller_name,
            dataset=self.dataset_description,
            metrics=metrics,
            memory=memory,
            command=getattr(self, "command", None),
        )
        save_classifier(
            student, output_dir, label_names=self.label_names, data_config=self.data_config, model_card=card
        )
        results = {
            "distiller": self.distiller_name,
            "global_step": ctx.global_step,
            "epoch": ctx.epoch,
            "metrics": metrics,
            "peak_memory": memory.to_dict() if memory else {},
            "params": sum(p.numel() for p in student.parameters()),
            "spec": spec_of(student).to_dict(),
        }
        with open(Path(output_dir) / RESULTS_FILE, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)

    # -- --push_to_hub hooks (training/task.py): the Trainer holds no Hub code -------------------------
    def create_hub_repo(self, repo_id: str, **options) -> str:
        from ..hub import create_hub_repo

        return create_hub_repo(repo_id, **options)

    def push_to_hub(self, output_dir: str, repo_id: str, **options) -> None:
        from ..hub import push_folder_to_hub

        push_folder_to_hub(output_dir, repo_id, **options)


__all__ = [
    "ClassificationTask",
    "build_classification_distiller",
    "soft_cross_entropy",
]
