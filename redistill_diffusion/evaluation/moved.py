"""Earlier spellings of names that moved from evaluation/ to the diffusion task, kept working.

Sampling and evaluating pipelines is the diffusion task's (``diffusion/sampling.py``, ``diffusion/evaluate.py``)
and the core imports no task, so the package ``__init__`` (the composition root, which runs before any
submodule) registers the moved names here; ``redistill_diffusion.evaluation.<name>`` then returns them with
a DeprecationWarning naming the new home.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from types import ModuleType

# (old module, name) -> (the object, its module now)
_MOVED: dict[tuple[str, str], tuple[object, str]] = {}


def register_moved(old_module: str, new_module: ModuleType, names: Iterable[str]) -> None:
    """Keep ``<old_module>.<name>`` working for each of ``names``, now defined in ``new_module``."""
    for name in names:
        _MOVED[(old_module, name)] = (getattr(new_module, name), new_module.__name__)


def moved_attribute(old_module: str, name: str):
    """The module ``__getattr__`` of ``old_module``: a moved name (with a DeprecationWarning), else the usual
    AttributeError."""
    if (old_module, name) not in _MOVED:
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
    value, home = _MOVED[(old_module, name)]
    warnings.warn(f"{old_module}.{name} moved to {home}.{name}", DeprecationWarning, stacklevel=3)
    return value
