"""Shared test setup: never touch the network, keep CPU threads modest."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO_ROOT.parent / "shared" / "data" / "cifar10" / "train.parquet"


@pytest.fixture
def cifar10_parquet() -> Path:
    """The real CIFAR-10 parquet from ../shared; tests that need it skip cleanly when it is absent."""
    if not SHARED_CIFAR10.exists():
        pytest.skip("../shared/data/cifar10/train.parquet is not present")
    return SHARED_CIFAR10
