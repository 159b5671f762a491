"""Diffusion tasks for the one training loop: plain DDPM training (a teacher) and ReDistill distillation.

`DiffusionTask.compute_losses`: clean images -> noise + timesteps (from the checkpointed generator)
-> `task.distillation_forward` (student prediction with features tapped, teacher prediction under
no_grad only when the distiller needs it, the distiller's named losses) -> task MSE + those losses. Building a task (`build_redistill_task`,
`build_teacher_task`) checks every input first (teacher, student derivation, tap pairs, data) and
raises one clear error before any training step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DataArguments, TrainingArguments
from ..data import ImageTensorDataset, build_image_transform, load_image_dataset
from ..training.task import EvalContext, StepContext, TaskLosses, distillation_forward, freeze_teacher
from .arguments import DDPMArguments, StudentArguments, TeacherModelArguments

if TYPE_CHECKING:
    from ..memory import MemorySummary

logger = logging.getLogger(__name__)

SAMPLES_DIR = "samples"
LATEST_GRID = f"{SAMPLES_DIR}/latest.png"


SCHEDULE_FLAGS = {  # flag -> DDPMScheduler config key
    "ddpm_num_steps": "num_train_timesteps",
    "ddpm_beta_schedule": "beta_schedule",
    "prediction_type": "prediction_type",
}
SCHEDULE_DEFAULTS = {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"}


def build_noise_scheduler(
    ddpm_args: DDPMArguments, config: dict[str, Any] | None = None, *, teacher: str | None = None
):
    """The DDPM noise scheduler.

    ``config``: the scheduler the model brings. A teacher trained from a config (``teacher`` None) takes the
    schedule flags on top of it; a student (``teacher`` names its teacher) trains on the teacher's schedule,
    and a flag that disagrees with it is a one-line error rather than a flag silently ignored."""
    from diffusers import DDPMScheduler

    requested = {
        key: getattr(ddpm_args, flag)
        for flag, key in SCHEDULE_FLAGS.items()
        if getattr(ddpm_args, flag) is not None
    }
    if config is None:
        return DDPMScheduler(**{**SCHEDULE_DEFAULTS, **requested})
    if teacher is not None:
        clashes = [
            f"--{flag} {requested[key]} (the teacher's: {config.get(key, SCHEDULE_DEFAULTS[key])})"
            for flag, key in SCHEDULE_FLAGS.items()
            if key in requested and requested[key] != config.get(key, SCHEDULE_DEFAULTS[key])
        ]
        if clashes:
            raise ValueError(
                f"{'; '.join(clashes)}: a student trains on its teacher's noise schedule ({teacher}); "
                "drop the flag."
            )
        return DDPMScheduler.from_config(config)
    if requested:
        logger.info("Noise schedule: %s on top of the config's scheduler", requested)
    return DDPMScheduler.from_config(config, **requested)


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
        timesteps = torch.randint(
            0,
            self.noise_scheduler.config.num_train_timesteps,
            (bsz,),
            generator=generator,
            device=generator.device,
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
def _image_dataset(data_args: DataArguments, resolution: int, channels: int, seed: int):
    dataset = load_image_dataset(
        dataset_name=data_args.dataset_name,
        train_data_dir=data_args.train_data_dir,
        data_files=data_args.data_files or None,
        image_column=data_args.image_column,
        cache_dir=data_args.cache_dir,
        max_samples=data_args.max_train_samples,
        dataset_config_name=data_args.dataset_config_name,
        builtin_num_images=data_args.builtin_num_images,
        builtin_resolution=resolution,
        seed=seed,  # --max_train_samples draws a seeded random subset
    )
    return ImageTensorDataset(
        dataset, build_image_transform(resolution, channels, center_crop=data_args.center_crop)
    )


def _heldout_images(ddpm_args: DDPMArguments, resolution: int, channels: int) -> torch.Tensor | None:
    """The fixed held-out set of the denoising loss (--heldout_data), loaded once before training."""
    if not ddpm_args.heldout_data:
        return None
    from ..evaluation.denoising import load_heldout_images

    if ddpm_args.heldout_num_images < 1 or ddpm_args.heldout_timesteps < 1:
        raise ValueError(
            f"--heldout_num_images ({ddpm_args.heldout_num_images}) and --heldout_timesteps "
            f"({ddpm_args.heldout_timesteps}) must be at least 1."
        )
    return load_heldout_images(ddpm_args.heldout_data, resolution, channels, ddpm_args.heldout_num_images)


def _check_resolution_flag(data_args: DataArguments) -> None:
    """--resolution 0 used to fall back to the model's sample_size without a word."""
    if data_args.resolution is not None and data_args.resolution < 1:
        raise ValueError(
            f"--resolution must be a positive number of pixels, got {data_args.resolution}; leave it out to "
            "use the model's sample_size."
        )


def _check_resolution(resolution: int, unet) -> None:
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % factor:
        raise ValueError(
            f"--resolution {resolution} must be divisible by {factor} for this UNet "
            f"({len(unet.config.block_out_channels)} levels); pass a multiple of {factor} such as "
            f"{max(factor, resolution // factor * factor)}."
        )


def parse_pairs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``["conv_in:output=down_blocks.0.downsamplers.0:output", ...]`` -> [(student_tap, teacher_tap)]."""
    pairs = []
    for spec in specs:
        student, sep, teacher = spec.partition("=")
        if not sep or not student.strip() or not teacher.strip():
            raise ValueError(
                f"--distill_pairs entry {spec!r} must look like 'student_module:output=teacher_module:output'."
            )
        pairs.append((student.strip(), teacher.strip()))
    return pairs


def _card_fields(
    data_args: DataArguments,
    training_args: TrainingArguments | None,
    *,
    title: str,
    tags: list[str],
    details: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """`DiffusionTask.card` of either run: its title and fields, its details with the training data last, its
    tags, and the Hub repo and token when it pushes (`save_final` renders the card from them)."""
    dataset = data_args.dataset_name or data_args.train_data_dir or ", ".join(data_args.data_files)
    card = {"title": title, **fields, "details": {**(details or {}), "dataset": dataset}, "tags": tags}
    if training_args is not None and training_args.push_to_hub:
        card["hub_model_id"] = training_args.hub_model_id
        card["hub_token"] = training_args.hub_token
    return card


def build_redistill_task(
    student_args: StudentArguments,
    data_args: DataArguments,
    ddpm_args: DDPMArguments,
    training_args: TrainingArguments | None = None,
) -> DiffusionTask:
    """Teacher -> student (+ RED blocks) -> tap pairs -> distiller -> dataset; every check before training.

    The distiller comes from the builder classification uses too (`distillers.build_model_distiller`),
    its options from the one routing of the distillation flags (`distillers.distillation_options`).
    """
    from ..distillers import build_model_distiller, distillation_options, parse_distiller
    from ..hub import is_hub_id
    from ..red import init_red_blocks
    from .configs import check_unconditional
    from .model import ReDistillUNet2DModel
    from .pipeline_io import load_teacher
    from .unet_taps import red_specs, unet_example_inputs, unet_tap_pairs

    # An unknown method, or an option it does not take: one clear error before loading anything.
    _check_resolution_flag(data_args)
    method = parse_distiller(student_args.distiller)
    options = distillation_options(student_args.distiller, student_args)
    explicit_pairs = parse_pairs(student_args.distill_pairs)
    teacher, teacher_scheduler = load_teacher(
        student_args.teacher_model_name_or_path, cache_dir=data_args.cache_dir
    )
    check_unconditional(teacher.config, f"Teacher {student_args.teacher_model_name_or_path}")
    preset = None if student_args.red_preset == "none" else student_args.red_preset
    try:
        student = ReDistillUNet2DModel.from_teacher(
            teacher,
            stem_stride=student_args.stem_stride,
            init=student_args.student_init,
            output_head=student_args.output_head,
            head_init=student_args.student_head_init,
            red_preset=preset if method.uses_red_blocks and not explicit_pairs else None,
            red_kernel_size=student_args.red_kernel_size,
            red_variant=student_args.red_variant,
            red_norm=student_args.red_norm,
            subpixel_skip=student_args.subpixel_skip,
            refiner_channels=student_args.refiner_channels,
            stem=student_args.stem,
        )
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(
            f"Cannot derive a stride-{student_args.stem_stride} student from this teacher: {error}"
        ) from error
    pairs: list[tuple[str, str]] = []
    if explicit_pairs:
        pairs = explicit_pairs
        if method.uses_red_blocks:
            student.add_red_blocks(red_specs(student, [s for s, _ in pairs]))
    elif preset is not None and (method.uses_pairs or method.uses_red_blocks):
        pairs = unet_tap_pairs(student, teacher, preset)
    init_red_blocks(student, student_args.red_init)
    distiller = build_model_distiller(method.name, student, teacher, pairs, unet_example_inputs, options)

    resolution = data_args.resolution or _sample_size(teacher)
    _check_resolution(resolution, student)
    dataset = _image_dataset(
        data_args, resolution, teacher.config.in_channels, training_args.seed if training_args else 0
    )
    heldout = _heldout_images(ddpm_args, resolution, teacher.config.in_channels)
    noise_scheduler = build_noise_scheduler(
        ddpm_args,
        teacher_scheduler.config if teacher_scheduler is not None else None,
        teacher=student_args.teacher_model_name_or_path,
    )
    teacher_name = student_args.teacher_model_name_or_path
    card = _card_fields(
        data_args,
        training_args,
        title=f"ReDistill student (stem stride {student_args.stem_stride}) of {Path(teacher_name).name or teacher_name}",
        teacher=teacher_name,
        teacher_is_hub_id=is_hub_id(teacher_name),
        method=student_args.distiller,
        stem_stride=student_args.stem_stride,
        details={
            "RED placement": "explicit pairs" if explicit_pairs else (preset or "-"),
            "distillation pairs": len(pairs),
            "student init": student_args.student_init,
            "head init": student_args.student_head_init,
            "RED norm": student_args.red_norm if method.uses_red_blocks else "-",
            "teacher mode": student_args.teacher_mode,
            "distill weight": training_args.distill_weight if training_args else "-",
        },
        tags=["redistill-student", f"stem-stride-{student_args.stem_stride}"],
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
    _check_resolution_flag(data_args)
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
    _check_resolution(resolution, unet)
    dataset = _image_dataset(
        data_args, resolution, unet.config.in_channels, training_args.seed if training_args else 0
    )
    heldout = _heldout_images(ddpm_args, resolution, unet.config.in_channels)
    noise_scheduler = build_noise_scheduler(
        ddpm_args, load_scheduler_config(model_args.model_config_name_or_path)
    )
    card = _card_fields(
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
    )
