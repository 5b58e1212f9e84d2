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


BUNDLED_FACES = REPO / "tests" / "data" / "faces"


@pytest.fixture(scope="session")
def bundled_faces() -> list[Path]:
    """Four 250x250 photos of one public-domain face, in the repository (tests/data/faces)."""
    return sorted(BUNDLED_FACES.glob("*.jpg"))


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


# Skips that are expected on CI (the rest mean a dependency or the shared data is missing, and
# a green run would hide that most of a module never ran). Match by substring of the reason.
EXPECTED_SKIPS_ON_CI = (
    "a trained generator is registered",  # test of the untrained-generator path; runs when none ships
)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """On CI (``CI`` set), fail the run when a test skipped for a reason not listed above."""
    if not os.environ.get("CI"):
        return
    unexpected = []
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(expected in reason for expected in EXPECTED_SKIPS_ON_CI):
            unexpected.append(f"{report.nodeid}: {reason}")
    if unexpected:
        terminalreporter.section("unexpected skips (CI fails on these)", red=True)
        for line in unexpected:
            terminalreporter.line(line)


def pytest_sessionfinish(session, exitstatus):
    # pytest_terminal_summary runs after this hook in some versions; count the skips here too.
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    for report in reporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(expected in reason for expected in EXPECTED_SKIPS_ON_CI):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return


@pytest.fixture(scope="session")
def real_crop(lfw_images):
    """An aligned 128-px LFW crop at the training template and its 68 landmarks."""
    from identitydp.align import align_face
    from identitydp.detect import CenterFaceDetector
    from identitydp.io import read_image
    from identitydp.models.landmarks68 import Landmarks68, crop_face_box

    image = read_image(lfw_images[0]).pixels
    det = CenterFaceDetector().detect(image)
    crop = align_face(image, det.landmarks[0], size=128, margin=0.25).crop
    lm68 = Landmarks68().predict(crop, crop_face_box(128, 0.25))
    return crop, lm68
