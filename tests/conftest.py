"""Shared fixtures: paths to the real data in ../shared/data (tests skip clearly without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("IDENTITYDP_SHARED_DATA", REPO.parent / "shared" / "data"))
LFW_DIR = SHARED_DATA / "lfw"
LFW_IMAGES = LFW_DIR / "lfw-deepfunneled"
TRAIN_DIR = SHARED_DATA / "train"


def _limit_threads() -> None:
    # Tests share 2 cores with whatever else runs; more threads only thrash.
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


_limit_threads()


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    if not LFW_IMAGES.is_dir():
        pytest.skip(f"LFW not found at {LFW_IMAGES} (set IDENTITYDP_SHARED_DATA to ../shared/data)")
    return LFW_DIR


@pytest.fixture(scope="session")
def lfw_images(lfw_dir: Path) -> list[Path]:
    """Sorted list of every LFW image path (13,233)."""
    return sorted((lfw_dir / "lfw-deepfunneled").glob("*/*.jpg"))


@pytest.fixture(scope="session")
def train_dir() -> Path:
    if not TRAIN_DIR.is_dir():
        pytest.skip(f"training data not found at {TRAIN_DIR}")
    return TRAIN_DIR


@pytest.fixture(scope="session")
def bundle_builder():
    """``scripts/build_train_bundle.py`` as a module (its ``main`` builds real training bundles)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "build_train_bundle.py"
    spec = importlib.util.spec_from_file_location("build_train_bundle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def private_ledger(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own privacy ledger (never the user's ~/.local/share one)."""
    path = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    monkeypatch.setenv("IDENTITYDP_LEDGER", str(path))
    return path


def read_ledger(path: Path) -> dict:
    """The ledger's full export (faces, releases, events)."""
    from identitydp.privacy.store import LedgerStore

    with LedgerStore(path) as store:
        return store.export()
