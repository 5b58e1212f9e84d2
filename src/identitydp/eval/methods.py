"""Method runners: every pipeline anonymizer, the no-op anchor, and ``deface`` as an external tool.

A runner anonymizes a batch of images given each image's faces (the evaluation hands every
method the *same* detections of the original image, so that methods are compared on the same
faces; ``deface`` is the exception: it is run as users run it, with its own detector).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..detect import Detections
from ..errors import IdentityDPError
from .config import Setting


class MethodUnavailable(IdentityDPError):
    """A method cannot run here (e.g. the ``deface`` CLI is not installed)."""


@dataclass
class BatchResult:
    """Anonymized images of one batch.

    Attributes:
        images: (H, W, 3) uint8 RGB outputs, one per input.
        anonymize_s: wall seconds spent anonymizing each image (the method only, detections given).
        masked: number of faces the pipeline masked solid because the method failed (fail closed).
        faces: number of faces handed to the method.
    """

    images: list[np.ndarray]
    anonymize_s: list[float]
    masked: int = 0
    faces: int = 0


class MethodRunner:
    """Runs one :class:`Setting` on batches of images."""

    setting: Setting
    #: True when the method has no randomness (diversity is 0 by construction).
    deterministic: bool | None = None

    def run(self, images: list[np.ndarray], detections: list[Detections]) -> BatchResult:
        raise NotImplementedError

    def run_again(self, image: np.ndarray, detections: Detections) -> np.ndarray:
        """One more anonymization of ``image`` (diversity): successive calls draw fresh randomness
        from one persistent instance (seeded once), so a randomized method gives different outputs
        while the model (e.g. a generator) is loaded only once."""
        raise NotImplementedError

    def run_end_to_end(self, images: list[np.ndarray]) -> dict:
        """Detect and anonymize ``images`` as a user would; returns timing (see :func:`_timing`)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What actually ran, with the defaults the setting left out (recorded with the results,
        so that a setting string keeps its meaning when a default changes)."""
        return {"method": self.setting.method, **self.setting.kwargs()}


class NoopRunner(MethodRunner):
    """The identity: returns the image unchanged (sanity anchor: everything is re-identified)."""

    deterministic = True

    def __init__(self, setting: Setting, threshold: float) -> None:
        self.setting = setting
        self.threshold = threshold

    def run(self, images, detections):
        return BatchResult([im.copy() for im in images], [0.0] * len(images), 0, sum(len(d) for d in detections))

    def run_again(self, image, detections):
        return image.copy()

    def run_end_to_end(self, images):
        from ..detect import CenterFaceDetector

        detector = CenterFaceDetector(threshold=self.threshold)
        faces, det_s = 0, 0.0
        t0 = time.perf_counter()
        for im in images:
            t = time.perf_counter()
            faces += len(detector.detect(im))
            det_s += time.perf_counter() - t
        return _timing(len(images), faces, det_s, 0.0, time.perf_counter() - t0)


class PipelineRunner(MethodRunner):
    """Any method of :func:`identitydp.anonymizers.make_anonymizer`, through :class:`identitydp.Anonymizer`."""

    def __init__(self, setting: Setting, threshold: float, seed: int) -> None:
        from ..pipeline import Anonymizer

        self.setting = setting
        self.threshold = threshold
        self.seed = seed
        self._params = setting.kwargs()
        self._anon = Anonymizer(setting.method, threshold=threshold, seed=seed, **self._params)
        self._again = None

    def describe(self) -> dict:
        describe = getattr(self._anon.method, "describe", None)
        resolved = describe() if callable(describe) else super().describe()
        if self._anon.config is not None:  # the weights' checksums, as a batch job records them
            resolved = {**resolved, "weights": dict(self._anon.config.weights)}
        return resolved

    def _fresh(self, seed: int):
        from ..pipeline import Anonymizer

        return Anonymizer(self.setting.method, threshold=self.threshold, seed=seed, detector=self._anon.detector, **self._params)

    def run(self, images, detections):
        outs, secs, masked, faces = [], [], 0, 0
        for im, det in zip(images, detections):
            out, report = self._anon.anonymize(im, det)
            outs.append(out)
            secs.append(report.seconds.get("anonymize", 0.0))
            masked += report.num_masked
            faces += report.num_faces
        return BatchResult(outs, secs, masked, faces)

    def run_again(self, image, detections):
        if self._again is None:
            self._again = self._fresh(self.seed + 1000)
        return self._again.anonymize(image, detections)[0]

    def run_end_to_end(self, images):
        anon = self._fresh(self.seed + 1)
        faces, det_s, anon_s = 0, 0.0, 0.0
        t0 = time.perf_counter()
        for im in images:
            _, report = anon.anonymize(im)
            faces += report.num_faces
            det_s += report.seconds.get("detect", 0.0)
            anon_s += report.seconds.get("anonymize", 0.0)
        return _timing(len(images), faces, det_s, anon_s, time.perf_counter() - t0)


def deface_executable() -> str | None:
    """Path of the ``deface`` CLI: beside this Python (a venv) or on PATH; None if absent."""
    local = Path(sys.executable).parent / "deface"
    if local.is_file():
        return str(local)
    return shutil.which("deface")


class DefaceRunner(MethodRunner):
    """``deface`` (ORB-HD, PyPI) run as an external tool, in its default blur mode.

    The batch is written as lossless PNG into a temporary folder and ``deface <folder>`` is run
    once with its defaults (``--replacewith blur``, threshold 0.2, mask scale 1.3, its own
    CenterFace detection); outputs (``*_anonymized.png``) are read back. ``detections`` are
    ignored: deface finds faces itself. Per-image time = wall time of the call / images
    (process start-up included, as a user pays it).
    """

    deterministic = True

    def __init__(self, setting: Setting, extra_args: list[str] | None = None) -> None:
        exe = deface_executable()
        if exe is None:
            raise MethodUnavailable("the `deface` CLI is not installed (pip install deface); skipping method deface")
        self.setting = setting
        self.exe = exe
        # --backend opencv: what a plain `pip install deface` runs (deface prefers onnxruntime when
        # it is importable, and identitydp now installs it; the model and its outputs are the same).
        self.args = ["--replacewith", "blur", "--backend", "opencv", *(extra_args or [])]

    def _call(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="identitydp-deface-") as tmp:
            folder = Path(tmp) / "in"
            folder.mkdir()
            names = []
            for i, im in enumerate(images):
                name = f"{i:06d}"
                Image.fromarray(im).save(folder / f"{name}.png")
                names.append(name)
            t0 = time.perf_counter()
            proc = subprocess.run(
                [self.exe, *self.args, str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise MethodUnavailable(f"deface exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
            outs = []
            for name, im in zip(names, images):
                path = folder / f"{name}_anonymized.png"
                if not path.is_file():
                    raise MethodUnavailable(f"deface wrote no output for {name}.png: {proc.stderr.strip()[-300:]}")
                out = np.asarray(Image.open(path).convert("RGB"))
                if out.shape != im.shape:
                    raise MethodUnavailable(f"deface changed the image size {im.shape} -> {out.shape}")
                outs.append(out)
        return outs, wall

    def run(self, images, detections):
        outs, wall = self._call(images)
        return BatchResult(outs, [wall / max(1, len(images))] * len(images), 0, sum(len(d) for d in detections if d is not None))

    def run_again(self, image, detections):
        return self._call([image])[0][0]

    def run_end_to_end(self, images):
        _, wall = self._call(images)
        # deface does not report its faces; count the evaluation's own detections is not possible
        # here, so per-face figures use one face per image (LFW: one target face per image).
        return _timing(len(images), len(images), float("nan"), wall, wall)


def _timing(n_images: int, n_faces: int, detect_s: float, anonymize_s: float, wall_s: float) -> dict:
    faces = max(1, n_faces)
    return {
        "images": n_images,
        "faces": n_faces,
        "ms_detect_per_face": 1000.0 * detect_s / faces,
        "ms_anonymize_per_face": 1000.0 * anonymize_s / faces,
        "images_per_s": n_images / wall_s if wall_s > 0 else float("nan"),
    }


def make_runner(setting: Setting, threshold: float, seed: int) -> MethodRunner:
    """Runner of a setting.

    Raises:
        MethodUnavailable: ``deface`` not installed.
        ValueError: unknown method or bad parameters (from the anonymizer factory).
    """
    if setting.method == "noop":
        return NoopRunner(setting, threshold)
    if setting.method == "deface":
        return DefaceRunner(setting)
    return PipelineRunner(setting, threshold, seed)
