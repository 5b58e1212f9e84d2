"""Judges applied to faces at a *fixed* geometry, batched, with a cache for original images.

Every measurement of a face uses the geometry (box and 5 landmarks) of the face found in the
**original** image: the anonymized probe is embedded at the place where the original face was,
so a method that destroys the face (mask, strong pixelation) is still judged on the right pixels
instead of "escaping" because no face is detected on its output. (Detection of the anonymized
face is measured separately, by BlazeFace.)

Fields (per face):

================  =====================================================  ===================
field             value                                                  model
================  =====================================================  ===================
``dlib``          (128,) raw dlib descriptor (150 px dlib chip)          pipeline encoder
``mobileface``    (256,) unit features (ArcFace 112 px)                  black-box judge
``faceres``       (1024,) unit features (ArcFace 224 px)                 second judge
``age``           () years (expected value of faceres' age softmax)      faceres
``male``          () probability of "male" (faceres' gender head)        faceres
``emotion``       (7,) expression probabilities                          emotion
``mesh``          (468, 2) FaceMesh landmarks, frame pixels               facemesh
``blaze_score``   () score of the best BlazeFace box overlapping the face
                  box (IoU ≥ 0.3), 0 when BlazeFace finds nothing there  blazeface_back
================  =====================================================  ===================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from .cache import ArrayCache, geometry_digest
from ..detect import box_iou

#: Per group; bump when the way a group is computed changes (invalidates its cached originals).
MEASURE_VERSION = {"dlib": "1", "mobileface": "1", "faceres": "1", "emotion": "1", "mesh": "1", "blaze": "2"}

#: field -> weights registry name (the cache namespace includes its checksum).
FIELD_MODEL = {
    "dlib": "dlib_resnet",
    "mobileface": "mobileface",
    "faceres": "faceres",
    "age": "faceres",
    "male": "faceres",
    "emotion": "emotion",
    "mesh": "facemesh",
    "blaze_score": "blazeface_back",
}
#: fields computed together (one forward pass).
GROUPS = {
    "dlib": ("dlib",),
    "mobileface": ("mobileface",),
    "faceres": ("faceres", "age", "male"),
    "emotion": ("emotion",),
    "mesh": ("mesh",),
    "blaze": ("blaze_score",),
}
_FIELD_GROUP = {f: g for g, fs in GROUPS.items() for f in fs}

#: BlazeFace boxes below this score are ignored when matching the face (decisions use higher
#: thresholds, see :data:`identitydp.eval.runner.BLAZE_THRESHOLDS`).
BLAZE_MIN_SCORE = 0.1
#: A BlazeFace box must overlap the original face box by this IoU to count as that face.
BLAZE_MATCH_IOU = 0.3


@dataclass(frozen=True)
class FaceGeometry:
    """Where the judged face is, from the original image.

    Attributes:
        box: (4,) float x1, y1, x2, y2 frame pixels.
        landmarks: (5, 2) float CenterFace points, frame pixels.
        source: ``"detected"`` (CenterFace at the pipeline threshold), ``"low"`` (only at the
            lower threshold 0.2) or ``"fixed"`` (no detection: the median geometry of the data).
    """

    box: np.ndarray
    landmarks: np.ndarray
    source: str = "detected"

    @property
    def interocular(self) -> float:
        """Distance between the two eye landmarks, pixels."""
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    def digest(self) -> str:
        return geometry_digest(self.box, self.landmarks)


def groups_for(fields: Iterable[str]) -> list[str]:
    out: list[str] = []
    for f in fields:
        if f not in _FIELD_GROUP:
            raise ValueError(f"unknown measurement field {f!r}")
        g = _FIELD_GROUP[f]
        if g not in out:
            out.append(g)
    return out


class Measurer:
    """Loads the judges lazily and measures batches of faces.

    Args:
        threads: not set here (the CLI's ``--threads`` sets torch's); kept for clarity.
    """

    def __init__(self) -> None:
        self._models: dict[str, object] = {}

    def _model(self, group: str):
        if group not in self._models:
            if group == "dlib":
                from ..models.dlib_resnet import DlibEncoder

                self._models[group] = DlibEncoder.load()
            else:
                from ..models import judges

                cls = {
                    "mobileface": judges.MobileFace,
                    "faceres": judges.FaceRes,
                    "emotion": judges.Emotion,
                    "mesh": judges.FaceMesh,
                    "blaze": judges.BlazeFace,
                }[group]
                self._models[group] = cls.load()
        return self._models[group]

    @staticmethod
    def namespace(group: str) -> str:
        """Cache folder name: group, weights checksum, digest of the model code (its alignment
        and preprocessing live there), and :data:`MEASURE_VERSION`."""
        import hashlib
        from pathlib import Path

        from ..models import dlib_resnet, judges, tfgraph
        from ..models.registry import registry

        sha = registry()[FIELD_MODEL[GROUPS[group][0]]].sha256[:8]
        sources = [dlib_resnet] if group == "dlib" else [judges, tfgraph]
        code = hashlib.sha1(b"".join(Path(m.__file__).read_bytes() for m in sources)).hexdigest()[:8]
        return f"{group}-{sha}-{code}-m{MEASURE_VERSION[group]}"

    def measure(self, images: list[np.ndarray], faces: list[FaceGeometry], groups: Iterable[str]) -> dict[str, np.ndarray]:
        """Measure one face per image.

        Args:
            images: (H, W, 3) uint8 RGB frames.
            faces: the face geometry in each frame (from the original image).
            groups: measurement groups (keys of :data:`GROUPS`).

        Returns:
            field -> (N, ...) array (float32).
        """
        import torch

        if len(images) != len(faces):
            raise ValueError(f"{len(images)} images but {len(faces)} faces")
        out: dict[str, np.ndarray] = {}
        if not images:
            return out
        lms = [f.landmarks for f in faces]
        with torch.inference_mode():
            for group in groups:
                model = self._model(group)
                if group == "dlib":
                    from ..models.dlib_resnet import chips_to_tensor, dlib_chip

                    chips = np.stack([dlib_chip(im, lm) for im, lm in zip(images, lms)])
                    out["dlib"] = model(chips_to_tensor(chips)).numpy().astype(np.float32)
                elif group == "mobileface":
                    crops = np.concatenate([model.align(im, lm[None]) for im, lm in zip(images, lms)])
                    out["mobileface"] = model.embed_crops(crops).astype(np.float32)
                elif group == "faceres":
                    crops = np.concatenate([model.align(im, lm[None]) for im, lm in zip(images, lms)])
                    res = model.predict_crops(crops)
                    out["faceres"] = np.asarray(res.features, np.float32)
                    out["age"] = np.asarray(res.age, np.float32)
                    out["male"] = np.asarray(res.male, np.float32)
                elif group == "emotion":
                    from ..models.judges import to_nchw

                    crops = np.concatenate([model.align(im, lm[None]) for im, lm in zip(images, lms)])
                    out["emotion"] = model(to_nchw(crops)).numpy().astype(np.float32)
                elif group == "mesh":
                    pts = [
                        model.predict(im, f.box[None], f.landmarks[None]).points[0, :, :2] for im, f in zip(images, faces)
                    ]
                    out["mesh"] = np.stack(pts).astype(np.float32)
                elif group == "blaze":
                    scores = []
                    for im, f in zip(images, faces):
                        det = model.detect(im, threshold=BLAZE_MIN_SCORE)
                        match = box_iou(f.box[None], det.boxes)[0] >= BLAZE_MATCH_IOU if len(det) else np.zeros(0, bool)
                        scores.append(float(det.scores[match].max()) if match.any() else 0.0)
                    out["blaze_score"] = np.asarray(scores, np.float32)
                else:
                    raise ValueError(f"unknown measurement group {group!r}")
        return out

    def measure_originals(
        self,
        keys: list[str],
        faces: list[FaceGeometry],
        groups: Iterable[str],
        load: Callable[[str], np.ndarray],
        cache_root,
        batch: int = 32,
        use_cache: bool = True,
        progress: str | None = None,
    ) -> dict[str, np.ndarray]:
        """:meth:`measure` for original images, through the cache (key: image + geometry).

        Args:
            keys: image keys (``load(key)`` returns the RGB image).
            faces: geometry per key.
            groups: measurement groups.
            load: image loader.
            cache_root: cache folder.
            batch: images per forward batch.
            use_cache: read and write the cache.
            progress: tqdm description (None: no bar).

        Returns:
            field -> (N, ...) array, in ``keys`` order.
        """
        from tqdm import tqdm

        groups = list(groups)
        caches = {g: ArrayCache(cache_root, self.namespace(g), enabled=use_cache) for g in groups}
        ckeys = [f"{k}|{f.digest()}" for k, f in zip(keys, faces)]
        results: dict[str, list] = {}
        missing: dict[str, list[int]] = {g: [i for i, ck in enumerate(ckeys) if ck not in caches[g]] for g in groups}
        todo = sorted(set(i for idx in missing.values() for i in idx))
        bar = tqdm(total=len(todo), desc=progress, unit="img", disable=progress is None or not todo, leave=False)
        for start in range(0, len(todo), batch):
            idx = todo[start : start + batch]
            images = [load(keys[i]) for i in idx]
            for g in groups:
                need = [j for j, i in enumerate(idx) if ckeys[i] not in caches[g]]
                if not need:
                    continue
                vals = self.measure([images[j] for j in need], [faces[idx[j]] for j in need], [g])
                for n, j in enumerate(need):
                    caches[g].put(ckeys[idx[j]], {f: v[n] for f, v in vals.items()})
            bar.update(len(idx))
            if (start // batch) % 20 == 19:
                for c in caches.values():
                    c.flush()
        bar.close()
        for c in caches.values():
            c.flush()
        for g in groups:
            for f in GROUPS[g]:
                results[f] = [caches[g].get(ck)[f] for ck in ckeys]
        return {f: np.stack(v) if v else np.zeros((0,), np.float32) for f, v in results.items()}
