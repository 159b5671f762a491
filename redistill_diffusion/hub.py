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


def upload_command(repo_id: str, folder: str | os.PathLike) -> str:
    """The huggingface_hub CLI command that uploads a saved folder as --push_to_hub would (same exclusions)."""
    return f'hf upload {repo_id} {folder} . --exclude "checkpoint-*" --exclude "logs/*" --exclude "*.tmp"'


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


class HubUnavailableError(OSError):
    """A Hub call failed for a reason the user can fix (no network, offline mode, a missing or refused
    token); the message says which, never the token."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures of the HTTP clients huggingface_hub has used: httpx2 now, httpx and requests before
    (none of their connection errors is an OSError)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import httpx2

        found.append(httpx2.TransportError)
    except ImportError:
        pass
    try:
        import httpx

        found.append(httpx.TransportError)
    except ImportError:
        pass
    try:
        import requests

        found.extend([requests.ConnectionError, requests.Timeout])
    except ImportError:
        pass
    return tuple(found)


def hub_failure(error: BaseException) -> str | None:
    """Why a Hub call failed, in words, or None when ``error`` is no Hub or network failure."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return f"the Hub refused the token (HTTP {status}: missing, invalid or without write access)"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"the Hub answered HTTP {status}: {first_line[:200]}"
    if isinstance(error, _transport_errors()):
        return "the Hub cannot be reached (no network?)"
    return None


def _hub_call(what: str, call, *args, **kwargs):
    """``call(*args, **kwargs)``, with a Hub or network failure raised as one `HubUnavailableError` line."""
    try:
        return call(*args, **kwargs)
    except Exception as error:
        reason = hub_failure(error)
        if reason is None:
            raise
        raise HubUnavailableError(f"{what}: {reason}") from None


def create_hub_repo(repo_id: str, token: str | None = None, private: bool = False, api=None) -> str:
    """Create (or reuse) the model repo; returns its id. ``api``: a huggingface_hub.HfApi or stand-in.

    No network, offline mode or a refused token is a `HubUnavailableError` saying which."""
    check_repo_id(repo_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = _hub_call(
        f"cannot create the Hub repo {repo_id}",
        api.create_repo,
        repo_id=repo_id,
        private=private,
        exist_ok=True,
        repo_type="model",
    )
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
    return _hub_call(
        f"cannot upload to the Hub repo {repo_id}",
        api.upload_folder,
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=list(ignore_patterns),
        repo_type="model",
    )


__all__ = [
    "FILE_SUFFIXES",
    "HUB_IGNORE_PATTERNS",
    "HubUnavailableError",
    "hub_failure",
    "UNET_SUBFOLDERS",
    "check_repo_id",
    "create_hub_repo",
    "is_hub_id",
    "upload_command",
    "local_unet_folder",
    "push_folder_to_hub",
]
