"""pytorch-fid / TTUR statistics files (``.npz`` with ``mu`` and ``sigma``): read as a FID reference, written
from computed reference statistics, so published statistics can be used and ours shared.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ReferenceStats:
    """FID statistics of a reference that is not at hand as images (FID only: KID needs features)."""

    mu: np.ndarray
    sigma: np.ndarray
    description: str
    identity: str

    def __len__(self) -> int:  # the number of images is not recorded in the file
        return 0

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @property
    def cache_name(self) -> str:
        digest = hashlib.sha1(self.identity.encode()).hexdigest()[:16]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.description).stem)[-40:] or "stats"
        return f"redistill-stats-{stem}-{digest}"


def load_reference_stats(path: str | os.PathLike) -> ReferenceStats:
    """Read and check a statistics file: one-line ``ValueError`` / ``FileNotFoundError`` on a bad file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} do not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ("mu", "sigma") if key not in data.files]
            if missing:
                raise ValueError(
                    f"reference statistics {path} have no {' or '.join(missing)} "
                    f"(keys: {', '.join(data.files) or 'none'}); expected a pytorch-fid/TTUR .npz"
                )
            mu, sigma = np.asarray(data["mu"]), np.asarray(data["sigma"])
    except ValueError:
        raise
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"reference statistics {path} are not a readable .npz file: {first}") from error
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"reference statistics {path}: mu must be (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"reference statistics {path} contain NaN or infinite values")
    digest = hashlib.sha1(mu.tobytes() + sigma.tobytes()).hexdigest()[:16]
    # torch-fidelity keeps mu in the features' dtype (float32) and sigma in float64 and requires both sides alike.
    return ReferenceStats(
        mu=mu.astype(np.float32),
        sigma=sigma.astype(np.float64),
        description=str(path),
        identity=f"npz:{digest}",
    )


def check_stats_output(path: str | os.PathLike) -> Path:
    """A path ``save_reference_stats`` may write: ends in .npz, its folder exists, no file there yet."""
    path = Path(path).expanduser()
    if path.suffix != ".npz":
        raise ValueError(f"--save_reference_stats {path} must end in .npz")
    if path.exists():
        raise ValueError(f"--save_reference_stats {path} exists; remove it or choose another name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--save_reference_stats: folder {path.parent} does not exist")
    return path


def save_reference_stats(path: str | os.PathLike, stats: dict) -> Path:
    """Write ``mu`` / ``sigma`` as a pytorch-fid/TTUR ``.npz`` (written to a temporary file, then renamed)."""
    path = Path(path).expanduser()
    temporary = path.with_name(path.name + ".partial.npz")
    np.savez(temporary, mu=np.asarray(stats["mu"]), sigma=np.asarray(stats["sigma"]))
    os.replace(temporary, path)
    return path
