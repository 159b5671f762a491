"""Diffusion tasks for the one training loop: plain DDPM training (a teacher) and ReDistill distillation.

`DiffusionTask.compute_losses`: clean images -> noise + timesteps (from the checkpointed generator)
-> `task.distillation_forward` (student prediction with features tapped, teacher prediction under
no_grad only when the distiller needs it, the distiller's named losses) -> task MSE + those losses. Building a task (`build_redistill_task`,
`build_teacher_task`) checks every input first (teacher, student derivation, tap pairs, data) and
raises one clear error before any training step; the pieces it is built from are in `task_inputs`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DataArguments, TrainingArguments
from ..training.task import EvalContext, StepContext, TaskLosses, distillation_forward, freeze_teacher
from .arguments import DDPMArguments, StudentArguments, TeacherModelArguments
from .task_inputs import (  # noqa: F401 - SCHEDULE_*, build_noise_scheduler, parse_pairs: importable from here too
    SCHEDULE_DEFAULTS,
    SCHEDULE_FLAGS,
    build_noise_scheduler,
    build_student_and_distiller,
    card_fields,
    check_resolution,
    check_resolution_flag,
    parse_pairs,
    student_card_fields,
    training_data,
)
from .timesteps import sample_timesteps, timestep_weights

if TYPE_CHECKING:
    from ..memory import MemorySummary

logger = logging.getLogger(__name__)

SAMPLES_DIR = "samples"
LATEST_GRID = f"{SAMPLES_DIR}/latest.png"


def _clean_copy(unet):
    """The same weights in a new fp32 module on the CPU, free of any forward wrapper."""
    # "_use_default_values" would make from_config drop keys set after construction (the RED placement).
    config = {k: v for k, v in unet.config.items() if k != "_use_default_values"}
    copy = type(unet).from_config(config)
    state = unet.state_dict()
    copy.load_state_dict(
        {k: v.detach().cpu().float() if v.is_floating_point() else v.cpu() for k, v in state.items()}
    )
    return copy.eval()


def _sample(output) -> torch.Tensor:
    """The prediction in a diffusers UNet's output."""
    return output.sample


def _sample_size(unet) -> int:
    size = unet.config.sample_size
    return int(size if isinstance(size, int) else size[0])


class DiffusionTask:
    """Denoising (epsilon / sample / v) training of ``main`` with an optional frozen teacher + distiller."""

    def __init__(
        self,
        *,
        model: nn.Module,
        noise_scheduler,
        dataset: torch.utils.data.Dataset,
        ddpm_args: DDPMArguments,
        main_module_name: str = "unet",
        teacher: nn.Module | None = None,
        distiller: nn.Module | None = None,
        random_flip: bool = False,
        card: dict[str, Any] | None = None,
        teacher_mode: str = "eval",
        heldout_images: torch.Tensor | None = None,
        timestep_weights: torch.Tensor | None = None,
    ):
        self.main_module_name = main_module_name
        self.model = model
        self.noise_scheduler = noise_scheduler
        self.dataset = dataset
        self.ddpm_args = ddpm_args
        self.teacher = teacher
        self.distiller = distiller
        self.random_flip = random_flip
        self.card = dict(card or {})
        self.last_grid: str | None = None
        self.heldout_images = heldout_images
        self.timestep_weights = timestep_weights  # None: uniform (see diffusion.timesteps)
        self.teacher_mode = freeze_teacher(teacher, teacher_mode)

    # -- contract -------------------------------------------------------------------------------
    def trainable_modules(self) -> dict[str, nn.Module]:
        modules = {self.main_module_name: self.model}
        if self.distiller is not None:
            modules["distiller"] = self.distiller
        return modules

    def train_dataset(self):
        return self.dataset

    def setup(self, accelerator) -> None:
        if self.teacher is not None:
            self.teacher.to(accelerator.device)

    def compute_losses(self, batch, ctx: StepContext) -> TaskLosses:
        images = batch["images"].to(ctx.device)
        generator = ctx.generator
        bsz = images.shape[0]
        if self.random_flip:
            flip = torch.rand(bsz, generator=generator, device=generator.device) < 0.5
            images = torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)
        noise = torch.randn(images.shape, generator=generator, device=generator.device).to(
            images.device, images.dtype
        )
        timesteps = sample_timesteps(
            bsz, self.noise_scheduler.config.num_train_timesteps, self.timestep_weights, generator
        ).to(images.device)
        noisy = self.noise_scheduler.add_noise(images, noise, timesteps)
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "sample":
            target = images
        else:
            target = self.noise_scheduler.get_velocity(images, noise, timesteps)

        model = ctx.modules[self.main_module_name]
        prediction, distillation = distillation_forward(
            model,
            (noisy, timesteps),
            teacher=self.teacher,
            distiller=ctx.modules.get("distiller") if self.distiller is not None else None,
            target=target,
            output=_sample,
            accelerator=ctx.accelerator,
        )
        return TaskLosses(task=F.mse_loss(prediction.float(), target.float()), distillation=distillation)

    # -- evaluation and the final artefact --------------------------------------------------------
    @property
    def final_samples(self) -> bool:
        """Whether the trainer samples a grid after the last step (``--no_final_samples`` turns it off)."""
        return bool(getattr(self.ddpm_args, "final_samples", True))

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        """Held-out denoising loss (with --heldout_data) and a sample grid (EMA weights in place, fixed
        seed) as samples/step_<N>.png and samples/latest.png."""
        import numpy as np
        from diffusers import DDPMPipeline

        from ..evaluation import save_sample_grid
        from ..progress import announce
        from .sampling import sample_images

        unet = ctx.modules[self.main_module_name]
        was_training = unet.training
        unet.eval()
        metrics: dict[str, float] = {}
        args = self.ddpm_args
        announce(
            f"Sample grid at step {ctx.global_step}: {args.eval_batch_size} images x {args.ddpm_num_inference_steps} "
            f"{args.sample_scheduler.upper()} steps (--eval_batch_size, --ddpm_num_inference_steps, --sample_scheduler; "
            "--no_final_samples skips the end-of-training grid)"
        )
        try:
            if self.heldout_images is not None:
                from ..evaluation.denoising import denoising_loss

                scores = denoising_loss(
                    unet,
                    self.noise_scheduler,
                    self.heldout_images,
                    num_timesteps=self.ddpm_args.heldout_timesteps,
                    device=ctx.device,
                )
                metrics = {k: v for k, v in scores.items() if not k.startswith("denoise_loss_t")}
                logger.info(
                    "step %d: held-out denoising loss %.5f (%s)",
                    ctx.global_step,
                    metrics["denoise_loss"],
                    ", ".join(f"{k[13:]} {v:.5f}" for k, v in metrics.items() if k != "denoise_loss"),
                )
            images = sample_images(
                DDPMPipeline(unet=unet, scheduler=self.noise_scheduler),
                args.eval_batch_size,
                sampler=args.sample_scheduler,
                num_inference_steps=args.ddpm_num_inference_steps,
                batch_size=args.eval_batch_size,
                seed=args.sample_seed,
                device=unet.device,  # a model being trained stays on its accelerator
                description=f"sample grid (step {ctx.global_step})",
            ).pil_images()
        finally:
            unet.train(was_training)
        root = Path(ctx.output_dir)
        save_sample_grid(images, root / SAMPLES_DIR / f"step_{ctx.global_step:07d}.png")
        save_sample_grid(images, root / LATEST_GRID)
        self.last_grid = LATEST_GRID
        for tracker in getattr(ctx.accelerator, "trackers", []):
            if tracker.name == "tensorboard":
                array = np.stack([np.asarray(image.convert("RGB")) for image in images])
                tracker.writer.add_images("samples", array, ctx.global_step, dataformats="NHWC")
        return metrics

    def _memory_report(self, unet, output_dir: Path) -> MemorySummary | None:
        """Teacher vs student peak memory in both conventions (memory_report.json + .png), when there is a teacher."""
        if self.teacher is None or not self.ddpm_args.measure_memory:
            return None
        from ..memory import MemorySummary, plot_memory_per_layer
        from ..progress import announce

        shape = (unet.config.in_channels, _sample_size(unet), _sample_size(unet))
        announce(
            "Peak memory report: teacher and student, exact and paper conventions (--measure_memory false skips it)"
        )
        # Measure fresh fp32 copies: under --mixed_precision accelerate wraps the trained model's forward
        # in autocast, whose bf16 casts would be counted as activations.
        summary = MemorySummary.measure(_clean_copy(self.teacher), _clean_copy(unet), shape)
        if not summary:
            return None
        with open(output_dir / "memory_report.json", "w") as handle:
            json.dump(summary.to_dict(), handle, indent=2)
        try:
            plot_memory_per_layer(
                summary.pairs(), output_dir / "memory_report.png", title="Peak activation memory per layer"
            )
        except Exception as error:  # noqa: BLE001
            logger.warning("Memory plot not written: %s", error)
        return summary

    def save_final(self, output_dir: str, ctx: EvalContext) -> None:
        """DDPMPipeline folder (EMA weights) + memory report + README.md model card."""
        from ..progress import announce
        from .card import model_card_description, write_model_card
        from .pipeline_io import save_ddpm_pipeline

        unet = ctx.modules[self.main_module_name]
        root = Path(output_dir)
        announce(f"Saving the pipeline and its model card to {ctx.run_dir or root}")
        save_ddpm_pipeline(unet, self.noise_scheduler, root)
        memory = self._memory_report(unet, root)
        card = self.card
        description = model_card_description(
            title=card.get("title", "ReDistill DDPM"),
            teacher=card.get("teacher"),
            method=card.get("method"),
            stem_stride=card.get("stem_stride"),
            memory=memory,
            metrics={**ctx.metrics, **card.get("metrics", {})},
            sample_grid=self.last_grid,
            details={**card.get("details", {}), "training steps": ctx.global_step},
            command=card.get("command"),
        )
        write_model_card(
            root,
            description,
            base_model=card.get("teacher") if card.get("teacher_is_hub_id") else None,
            tags=card.get("tags", ()),
            repo_id=card.get("hub_model_id"),
            token=card.get("hub_token"),
            training_details=(
                f"Trained for {ctx.global_step} steps on {card.get('details', {}).get('dataset', 'the given data')} "
                "with redistill-diffusion's Accelerate loop (EMA weights saved)."
            ),
        )

    # -- --push_to_hub hooks (training/task.py): the Trainer holds no Hub code -------------------------
    def create_hub_repo(self, repo_id: str, **options) -> str:
        from ..hub import create_hub_repo

        return create_hub_repo(repo_id, **options)

    def push_to_hub(self, output_dir: str, repo_id: str, **options) -> None:
        from ..hub import push_folder_to_hub

        push_folder_to_hub(output_dir, repo_id, **options)


# -------------------------------------------------------------------------------------------------
# Building tasks from arguments (all checks happen here, before training)
# -------------------------------------------------------------------------------------------------
def build_redistill_task(
    student_args: StudentArguments,
    data_args: DataArguments,
    ddpm_args: DDPMArguments,
    training_args: TrainingArguments | None = None,
) -> DiffusionTask:
    """Teacher -> student (+ RED blocks) -> tap pairs -> distiller -> dataset; every check before training.

    The distiller's options come from the one routing of the distillation flags
    (`distillers.distillation_options`).
    """
    from ..distillers import distillation_options, parse_distiller
    from .configs import check_unconditional
    from .pipeline_io import load_teacher

    # An unknown method, or an option it does not take: one clear error before loading anything.
    check_resolution_flag(data_args)
    method = parse_distiller(student_args.distiller)
    options = distillation_options(student_args.distiller, student_args)
    explicit_pairs = parse_pairs(student_args.distill_pairs)
    teacher, teacher_scheduler = load_teacher(
        student_args.teacher_model_name_or_path, cache_dir=data_args.cache_dir
    )
    check_unconditional(teacher.config, f"Teacher {student_args.teacher_model_name_or_path}")
    student, pairs, distiller = build_student_and_distiller(
        student_args, teacher, method, options, explicit_pairs
    )

    resolution = data_args.resolution or _sample_size(teacher)
    check_resolution(resolution, student)
    noise_scheduler = build_noise_scheduler(
        ddpm_args,
        teacher_scheduler.config if teacher_scheduler is not None else None,
        teacher=student_args.teacher_model_name_or_path,
    )
    weights = timestep_weights(ddpm_args, noise_scheduler.config.num_train_timesteps)
    dataset, heldout = training_data(
        data_args, ddpm_args, training_args, resolution, teacher.config.in_channels
    )
    card = student_card_fields(
        student_args,
        data_args,
        training_args,
        method,
        explicit_pairs=bool(explicit_pairs),
        num_pairs=len(pairs),
    )
    return DiffusionTask(
        model=student,
        noise_scheduler=noise_scheduler,
        dataset=dataset,
        ddpm_args=ddpm_args,
        main_module_name="student",
        teacher=teacher,
        distiller=distiller,
        random_flip=data_args.random_flip,
        card=card,
        teacher_mode=student_args.teacher_mode,
        heldout_images=heldout,
        timestep_weights=weights,
    )


def build_teacher_task(
    model_args: TeacherModelArguments,
    data_args: DataArguments,
    ddpm_args: DDPMArguments,
    training_args: TrainingArguments | None = None,
) -> DiffusionTask:
    """A UNet2DModel from a config, trained from scratch as a plain DDPM (a teacher for ReDistill)."""
    from diffusers import UNet2DModel

    from .configs import check_unconditional, load_scheduler_config, load_unet_config

    if not model_args.model_config_name_or_path:
        raise ValueError(
            "Pass --model_config_name_or_path (a UNet config folder/json or a shipped name such as tiny-ddpm-32)."
        )
    check_resolution_flag(data_args)
    config = load_unet_config(model_args.model_config_name_or_path).model_kwargs()
    check_unconditional(config, f"UNet config {model_args.model_config_name_or_path}")
    if data_args.resolution:
        config["sample_size"] = data_args.resolution
    try:
        unet = UNet2DModel.from_config(config)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"UNet config {model_args.model_config_name_or_path!r} is not a valid UNet2DModel config: {error}"
        ) from error
    resolution = _sample_size(unet)
    check_resolution(resolution, unet)
    noise_scheduler = build_noise_scheduler(
        ddpm_args, load_scheduler_config(model_args.model_config_name_or_path)
    )
    weights = timestep_weights(ddpm_args, noise_scheduler.config.num_train_timesteps)
    dataset, heldout = training_data(data_args, ddpm_args, training_args, resolution, unet.config.in_channels)
    card = card_fields(
        data_args,
        training_args,
        title=f"DDPM UNet ({model_args.model_config_name_or_path})",
        tags=["ddpm-teacher"],
    )
    return DiffusionTask(
        model=unet,
        noise_scheduler=noise_scheduler,
        dataset=dataset,
        ddpm_args=ddpm_args,
        main_module_name="unet",
        random_flip=data_args.random_flip,
        card=card,
        heldout_images=heldout,
        timestep_weights=weights,
    )
