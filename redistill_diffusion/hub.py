"""The Hugging Face Hub, in one place: what counts as a Hub id, where a UNet sits in a repo, pushing folders.

Every entry point that takes "a local path or a Hub id" (teachers, UNet configs, datasets,
classifiers, pipelines to evaluate) asks `is_hub_id`, so a name means the same thing everywhere;
every loader that looks for a UNet in a folder or repo tries `UNET_SUBFOLDERS` in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .progress import announce

HUB_IGNORE_PATTERNS = ("checkpoint-*", "checkpoint-*/**", "logs/**", "*.tmp", "*.tmp/**")
# Where a UNet's config.json sits in a folder or repo, tried in this order: a pipeline's unet/
# (what diffusers saves and what the Hub's DDPM repos are), then the folder itself (a bare UNet).
UNET_SUBFOLDERS: tuple[str | None, ...] = ("unet", None)
# A name ending in one of these is a file the user meant, never a repo.
FILE_SUFFIXES = frozenset(
    {
        ".json",
        ".jsonl",
        ".yaml",
        ".yml",
        ".parquet",
        ".csv",
        ".arrow",
        ".npz",
        ".npy",
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".ckpt",
        ".png",
        ".jpg",
        ".jpeg",
    }
)


def is_hub_id(name: str | os.PathLike | None) -> bool:
    """Whether ``name`` can only mean a Hub repo id (``name`` or ``owner/name``), never a local path.

    Not a Hub id: an existing file or folder; anything written like a path (starting with ``.``, ``/``
    or ``~``, with more than one ``/``, a backslash, or a file suffix such as ``.json``/``.parquet``);
    anything huggingface_hub's ``validate_repo_id`` rejects. Callers check local paths first, so a
    folder named ``owner/name`` in the working directory wins over the repo.
    """
    if name is None:
        return False
    text = os.fspath(name)
    if not text or text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return False
    if Path(text).suffix.lower() in FILE_SUFFIXES or Path(text).expanduser().exists():
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def local_unet_folder(folder: str | os.PathLike) -> Path | None:
    """The UNet folder inside a local ``folder``: the first of `UNET_SUBFOLDERS` holding a config.json."""
    folder = Path(folder).expanduser()
    for subfolder in UNET_SUBFOLDERS:
        candidate = folder / subfolder if subfolder else folder
        if (candidate / "config.json").is_file():
            return candidate
    return None


def check_repo_id(repo_id: str) -> str:
    """One-line ValueError for a malformed Hub repo id (huggingface_hub's own rules), before any upload."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"malformed Hub repo id {repo_id!r}: {str(error).splitlines()[0]}") from None
    return repo_id


def create_hub_repo(repo_id: str, token: str | None = None, private: bool = False, api=None) -> str:
    """Create (or reuse) the model repo; returns its id. ``api``: a huggingface_hub.HfApi or stand-in."""
    check_repo_id(repo_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    return getattr(url, "repo_id", None) or repo_id


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload ReDistill model",
    api=None,
    ignore_patterns: Sequence[str] = HUB_IGNORE_PATTERNS,
):
    """Create the repo and upload ``folder`` (checkpoints and logs left out). The token is never logged.

    A malformed repo id or a folder that is no saved pipeline/model is a one-line ValueError, before
    anything is created or uploaded.
    """
    from .model_cards import check_card_folder

    check_repo_id(repo_id)
    check_card_folder(folder, needs_card=False)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    repo_id = create_hub_repo(repo_id, private=private, api=api)
    announce(f"Uploading {folder} to the Hub repo {repo_id}")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=list(ignore_patterns),
        repo_type="model",
    )


__all__ = [
    "FILE_SUFFIXES",
    "HUB_IGNORE_PATTERNS",
    "UNET_SUBFOLDERS",
    "check_repo_id",
    "create_hub_repo",
    "is_hub_id",
    "local_unet_folder",
    "push_folder_to_hub",
]
