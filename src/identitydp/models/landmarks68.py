"""68-point facial landmarks (iBUG 300-W markup) with dlib's shape predictor.

Used by IdentityDP to put the generated face back on the original face's geometry (pose,
expression, outline). It is deliberately a *different* landmark model from the evaluation's
FaceMesh judge, so the landmark error the evaluation reports stays an independent measurement.

The weights are dlib's ``shape_predictor_68_face_landmarks.dat`` from the PyPI package
``face-recognition-models`` (an ensemble of regression trees in dlib's own binary format, read by
dlib itself, not a pickle). Its SHA-256 is checked on load.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..align import template_for
from ..errors import WeightsError

#: SHA-256 of shape_predictor_68_face_landmarks.dat in face-recognition-models 0.3.0.
SHAPE_PREDICTOR_68_SHA256 = "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"
_FILENAME = "shape_predictor_68_face_landmarks.dat"
_INSTALL_HINT = "install it with `pip install dlib-bin==20.0.1 face-recognition-models==0.3.0` (a dependency of identitydp)"

#: Index ranges of the 68-point markup.
JAW = slice(0, 17)
BROWS = slice(17, 27)


def _model_file() -> Path:
    # Read the package folder directly: importing face_recognition_models needs pkg_resources.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise WeightsError(f"the 68-point landmark model is missing (package face-recognition-models); {_INSTALL_HINT}")
    path = Path(spec.origin).parent / "models" / _FILENAME
    if not path.is_file():
        raise WeightsError(f"{path} is missing; {_INSTALL_HINT}")
    return path


@lru_cache(maxsize=1)
def _verified_model_file() -> Path:
    path = _model_file()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != SHAPE_PREDICTOR_68_SHA256:
        raise WeightsError(f"{path} has SHA-256 {digest.hexdigest()}, expected {SHAPE_PREDICTOR_68_SHA256}; reinstall: {_INSTALL_HINT}")
    return path


def crop_face_box(size: int, margin: float) -> np.ndarray:
    """The face box dlib's shape predictor expects, in the coordinates of an aligned crop.

    The predictor was trained on dlib HOG detector boxes; on our ArcFace-template crops that
    detector returns, on average, a square box 2.16 mouth-to-eye heights wide, from 0.65 of that
    height above the eyes (measured on LFW crops at 128 px, margin 0.25: [24, 36, 104, 116]).

    Returns:
        (4,) float64 x1, y1, x2, y2 in crop pixels.
    """
    tpl = template_for(size, margin)
    eye_y = tpl[:2, 1].mean()
    face_h = tpl[3:, 1].mean() - eye_y
    cx = tpl[:, 0].mean()
    half = 1.08 * face_h
    top = eye_y - 0.65 * face_h
    return np.array([cx - half, top, cx + half, top + 2 * half])


class Landmarks68:
    """dlib's 68-point shape predictor on aligned face crops.

    Raises:
        WeightsError: dlib or the model file is missing, or the file's checksum is wrong.
    """

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise WeightsError(f"dlib is not installed; {_INSTALL_HINT}") from exc
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(_verified_model_file()))

    def predict(self, crop: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks of the face in ``box``.

        Args:
            crop: (H, W, 3) uint8 RGB image (usually an aligned face crop).
            box: (4,) x1, y1, x2, y2 in pixels, e.g. :func:`crop_face_box`.

        Returns:
            (68, 2) float64 pixel coordinates (pixel centres at +0.5).
        """
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {crop.dtype} {crop.shape}")
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        shape = self._predictor(np.ascontiguousarray(crop), self._dlib.rectangle(x1, y1, x2, y2))
        return np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], np.float64)
