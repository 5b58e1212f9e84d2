"""Face tracking across video frames: association, smoothing and bridging of detector misses.

A detector run on each frame independently misses faces now and then (motion blur, a turned
head, a face shrinking below the detection size, a brief occlusion), and per-frame output then
*shows* the face in exactly those frames. The :class:`FaceTracker` links detections into tracks
and keeps anonymizing a track for ``max_missing`` frames after its last detection, at its
predicted position with a dilated box, so a dropped face stays hidden.

Model, per track (frame units, pixels):

* state ``(cx, cy, w, h)`` of the box and its velocity, updated by an alpha-beta filter (a
  fixed-gain Kalman filter): it smooths jitter without the lag of a plain moving average, so the
  anonymized region does not trail a moving face;
* landmarks stored relative to the box (offset / box size) and smoothed by an exponential moving
  average, so they follow the box when the face is predicted;
* a small colour thumbnail of the face (cheap appearance), used to break ties when two faces
  cross, and a grey template used, on frames where the detector does not run
  (``detect_every > 1``), to refine the predicted position by template matching.

Association is greedy on a cost that mixes IoU with the predicted box, centre distance relative
to the face size and appearance distance, with a gate on distance and on size change.

Privacy over aesthetics: on a detected frame the output box is the smoothed box enlarged to
contain the raw detection; predicted boxes are never smaller than the last detected size and
grow with every frame without a detection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .detect import Detections, box_iou

# Sources of a tracked face's box in one frame.
DETECTED = "detected"  # matched to a detection of this frame
TRACKED = "tracked"  # no detector run this frame; position refined by template matching
PREDICTED = "predicted"  # no detection (miss, or no detector run); constant-velocity prediction
BACKFILLED = "backfilled"  # a frame before the track's first detection (see stream lookback)

_THUMB = 8  # appearance thumbnail side (pixels); 8x8x3 = 192-d, cheap and enough to tell two faces apart
_TEMPLATE_MAX = 24  # template matching works on faces downscaled to at most this height (speed)


@dataclass
class TrackedFace:
    """One face of one frame, as the tracker places it.

    Attributes:
        track_id: id of the track (unique within a stream, starting at 0).
        box: (4,) float32 x1, y1, x2, y2 in frame pixels: the region to anonymize (dilated when
            the face was predicted rather than detected; may extend past the frame border).
        landmarks: (5, 2) float32 pixels: left eye, right eye, nose, left/right mouth corner.
        score: detector score of the matched detection, or the last one for predicted faces.
        source: ``detected``, ``tracked``, ``predicted`` or ``backfilled``.
        frames_since_detection: frames since the track's last detection (0 when detected).
    """

    track_id: int
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    source: str
    frames_since_detection: int = 0

    def to_json(self) -> dict:
        return {
            "track": self.track_id,
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "source": self.source,
        }


@dataclass
class Track:
    """The life of one tracked face.

    Attributes:
        id: track id (unique within a stream).
        first_frame: first frame index where the face was anonymized (backfilled frames included).
        last_frame: last frame index where it was anonymized (bridged frames included).
        first_detected, last_detected: first and last frame index with a matching detection.
        num_detections: frames in which a detection was matched to this track.
        privacy: the privacy release of the track (filled in by the stream for DP methods).
        releases: number of privacy releases spent on this track (1 for a track-aware DP method,
            one per frame for per-frame DP methods such as DP-Pix, 0 for non-DP methods).
    """

    id: int
    first_frame: int
    last_frame: int
    first_detected: int
    last_detected: int
    num_detections: int = 0
    privacy: dict | None = None
    releases: int = 0

    @property
    def frame_range(self) -> tuple[int, int]:
        """Inclusive (first, last) frame indices."""
        return self.first_frame, self.last_frame

    @property
    def num_frames(self) -> int:
        return self.last_frame - self.first_frame + 1

    def to_json(self) -> dict:
        out = {
            "track": self.id,
            "frames": [self.first_frame, self.last_frame],
            "num_frames": self.num_frames,
            "detected": [self.first_detected, self.last_detected],
            "num_detections": self.num_detections,
            "releases": self.releases,
        }
        if self.privacy:
            out["privacy"] = self.privacy
        return out


@dataclass
class TrackStep:
    """What the tracker did with one frame.

    Attributes:
        frame_index: the frame.
        faces: every live track's face in this frame (what must be anonymized).
        born: ids of the tracks started in this frame.
        ended: tracks that ended in this frame (their last frame is an earlier one).
    """

    frame_index: int
    faces: list[TrackedFace]
    born: list[int] = field(default_factory=list)
    ended: list[Track] = field(default_factory=list)


def _xyxy_to_cxcywh(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = [float(v) for v in box]
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0)])


def _cxcywh_to_xyxy(state: np.ndarray, scale: float = 1.0) -> np.ndarray:
    cx, cy, w, h = state
    hw, hh = w * scale / 2, h * scale / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float32)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), x1y1x2y2. Returns (N, M)."""
    return box_iou(a, b)


def _inner_patch(image: np.ndarray, box: np.ndarray, frac: float = 0.6) -> np.ndarray | None:
    """The central ``frac`` of a face box (less background, less of a neighbouring face)."""
    h, w = image.shape[:2]
    cx, cy, bw, bh = _xyxy_to_cxcywh(box)
    x0, x1 = int(max(0, cx - bw * frac / 2)), int(min(w, cx + bw * frac / 2))
    y0, y1 = int(max(0, cy - bh * frac / 2)), int(min(h, cy + bh * frac / 2))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    return image[y0:y1, x0:x1]


def appearance_descriptor(image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """Cheap appearance: an 8×8 colour thumbnail of the inner face box, zero-mean, unit norm (192,)."""
    patch = _inner_patch(image, box)
    if patch is None:
        return None
    thumb = cv2.resize(patch, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    return thumb / norm if norm > 1e-6 else None


class _TrackState:
    """Filter state of one live track (internal)."""

    def __init__(self, track: Track, box: np.ndarray, landmarks: np.ndarray, score: float) -> None:
        self.track = track
        self.state = _xyxy_to_cxcywh(box)
        self.velocity = np.zeros(4)
        self.last_size = self.state[2:].copy()
        size = self._size()
        self.rel_landmarks = (landmarks.astype(np.float64) - self.state[:2]) / size
        self.score = float(score)
        self.appearance: np.ndarray | None = None
        self.template: np.ndarray | None = None
        self.template_scale = 1.0
        self.updated_frame = track.first_detected  # frame of the last state update (detection or refinement)

    def _size(self) -> float:
        return float(np.sqrt(self.state[2] * self.state[3]))

    def predict_state(self, frame_index: int) -> np.ndarray:
        dt = frame_index - self.updated_frame
        pred = self.state + self.velocity * dt
        # Never predict a face smaller than it was last detected: a shrinking prediction could
        # uncover it, a too-large one only hides a little more background.
        pred[2:] = np.maximum(pred[2:], self.last_size)
        return pred

    def landmarks_for(self, state: np.ndarray) -> np.ndarray:
        size = float(np.sqrt(state[2] * state[3]))
        return (state[:2] + self.rel_landmarks * size).astype(np.float32)


class FaceTracker:
    """Link per-frame face detections into tracks, smooth them and bridge misses.

    Call :meth:`step` once per frame, in order, with the frame's detections (or ``None`` on frames
    where the detector was not run), then :meth:`finish` at the end of the stream.

    Args:
        max_missing: frames a track is kept (and anonymized at its predicted position) after its
            last detection. A track is only ended on a frame where the detector ran, so with
            ``detect_every = N`` a track lives at least until the next detection.
        alpha: position gain of the alpha-beta filter (1 = follow detections exactly; lower
            smooths more).
        beta: velocity gain of the alpha-beta filter.
        landmark_smoothing: weight of the previous landmarks in their moving average (0 = none).
        dilate_per_frame: the predicted box grows by this fraction of its size per frame without
            a detection (motion uncertainty); ``max_dilation`` caps the growth.
        refined_dilate_per_frame: the same for positions refined by template matching.
        max_center_distance: association gate: largest distance between predicted and detected
            box centres, in units of the face size (grows with the frames since detection).
        max_size_ratio: association gate on the ratio of box sizes.
        appearance_weight: weight of the appearance term in the association cost (0 disables
            the appearance thumbnails).
        refine: on frames without a detector run, refine predicted positions by template
            matching against the last detected face (cheap; ``TM_CCOEFF_NORMED``).
        refine_min_score: template-matching correlation needed to accept a refinement.
    """

    def __init__(
        self,
        *,
        max_missing: int = 12,
        alpha: float = 0.6,
        beta: float = 0.2,
        landmark_smoothing: float = 0.5,
        dilate_per_frame: float = 0.04,
        refined_dilate_per_frame: float = 0.02,
        max_dilation: float = 1.6,
        max_center_distance: float = 1.0,
        max_size_ratio: float = 2.5,
        appearance_weight: float = 0.5,
        refine: bool = True,
        refine_min_score: float = 0.5,
    ) -> None:
        if max_missing < 0:
            raise ValueError(f"max_missing must be >= 0, got {max_missing}")
        if not (0 < alpha <= 1 and 0 <= beta <= 1):
            raise ValueError(f"need 0 < alpha <= 1 and 0 <= beta <= 1, got alpha={alpha}, beta={beta}")
        if not 0 <= landmark_smoothing < 1:
            raise ValueError(f"landmark_smoothing must be in [0, 1), got {landmark_smoothing}")
        if dilate_per_frame < 0 or refined_dilate_per_frame < 0 or max_dilation < 1:
            raise ValueError("dilation rates must be >= 0 and max_dilation >= 1")
        self.max_missing = int(max_missing)
        self.alpha = alpha
        self.beta = beta
        self.landmark_smoothing = landmark_smoothing
        self.dilate_per_frame = dilate_per_frame
        self.refined_dilate_per_frame = refined_dilate_per_frame
        self.max_dilation = max_dilation
        self.max_center_distance = max_center_distance
        self.max_size_ratio = max_size_ratio
        self.appearance_weight = appearance_weight
        self.refine = refine
        self.refine_min_score = refine_min_score
        self._live: dict[int, _TrackState] = {}
        self._next_id = 0
        self._last_frame = -1

    @property
    def live_tracks(self) -> list[Track]:
        return [s.track for s in self._live.values()]

    # -- one frame -----------------------------------------------------------------------------

    def step(self, frame_index: int, detections: Detections | None, image: np.ndarray | None = None) -> TrackStep:
        """Advance the tracker by one frame.

        Args:
            frame_index: index of this frame; must increase by one per call.
            detections: the detector's faces in this frame, or ``None`` when the detector was not
                run on it (then tracks are predicted, and refined when ``refine`` and ``image``).
            image: (H, W, 3) uint8 RGB frame, for appearance and refinement (optional).

        Returns:
            A :class:`TrackStep` with one :class:`TrackedFace` per live track.
        """
        if frame_index != self._last_frame + 1:
            raise ValueError(f"frames must be stepped in order: expected {self._last_frame + 1}, got {frame_index}")
        self._last_frame = frame_index
        if detections is None:
            crowded = self._crowded(frame_index)
            return TrackStep(
                frame_index,
                [self._coast(s, frame_index, None if s.track.id in crowded else image) for s in self._live.values()],
            )

        if image is not None and len(detections):
            detections = unclip_border_faces(detections, image.shape[:2])
        ids = list(self._live)
        preds = {tid: self._live[tid].predict_state(frame_index) for tid in ids}
        descriptors = (
            [appearance_descriptor(image, b) for b in detections.boxes]
            if image is not None and self.appearance_weight > 0
            else [None] * len(detections)
        )
        matches = self._associate(ids, preds, detections, descriptors, frame_index)
        faces: list[TrackedFace] = []
        matched_dets = set()
        overlap = self._overlaps(ids, preds, detections, matches)
        for tid, j in matches:
            matched_dets.add(j)
            faces.append(
                self._correct(self._live[tid], preds[tid], detections, j, descriptors[j], frame_index, image, overlap[j])
            )
        ended: list[Track] = []
        matched_tracks = {tid for tid, _ in matches}
        for tid in ids:
            if tid in matched_tracks:
                continue
            state = self._live[tid]
            if frame_index - state.track.last_detected > self.max_missing:
                ended.append(self._live.pop(tid).track)
            else:
                faces.append(self._coast(state, frame_index, None))
        born = []
        for j in range(len(detections)):
            if j in matched_dets:
                continue
            state = self._birth(detections, j, descriptors[j], frame_index, image)
            born.append(state.track.id)
            faces.append(self._face(state, state.state, DETECTED, 1.0, detections.boxes[j]))
        faces.sort(key=lambda f: f.track_id)
        return TrackStep(frame_index, faces, born=born, ended=ended)

    def finish(self) -> list[Track]:
        """End every live track (end of stream) and return them."""
        ended = [s.track for s in self._live.values()]
        self._live.clear()
        return ended

    # -- internals -----------------------------------------------------------------------------

    def _associate(self, ids, preds, detections: Detections, descriptors, frame_index: int) -> list[tuple[int, int]]:
        if not ids or not len(detections):
            return []
        pred_boxes = np.stack([_cxcywh_to_xyxy(preds[t]) for t in ids])
        iou = iou_matrix(pred_boxes, detections.boxes)
        det_states = np.stack([_xyxy_to_cxcywh(b) for b in detections.boxes])
        candidates = []
        for a, tid in enumerate(ids):
            state = self._live[tid]
            p = preds[tid]
            size = float(np.sqrt(p[2] * p[3]))
            missing = frame_index - state.track.last_detected
            gate = self.max_center_distance * (1.0 + 0.1 * min(missing, self.max_missing))
            for j in range(len(detections)):
                d = float(np.hypot(*(det_states[j, :2] - p[:2]))) / max(size, 1.0)
                ratio = float(np.sqrt(det_states[j, 2] * det_states[j, 3])) / max(size, 1.0)
                if d > gate or not (1 / self.max_size_ratio <= ratio <= self.max_size_ratio):
                    continue
                cost = (1.0 - iou[a, j]) + 0.5 * d
                if state.appearance is not None and descriptors[j] is not None:
                    cost += self.appearance_weight * (1.0 - float(state.appearance @ descriptors[j])) / 2
                candidates.append((cost, tid, j))
        # Greedy on ascending cost: with the few faces of a frame this equals the optimal
        # assignment in practice, and it needs no solver.
        candidates.sort()
        used_t, used_d, matches = set(), set(), []
        for _, tid, j in candidates:
            if tid in used_t or j in used_d:
                continue
            used_t.add(tid)
            used_d.add(j)
            matches.append((tid, j))
        return matches

    def _crowded(self, frame_index: int) -> set[int]:
        """Tracks whose predicted box touches another's: template matching there may lock onto
        the other face (crossings), so they are only predicted."""
        ids = list(self._live)
        if len(ids) < 2:
            return set()
        boxes = np.stack([_cxcywh_to_xyxy(self._live[t].predict_state(frame_index)) for t in ids])
        iou = iou_matrix(boxes, boxes)
        np.fill_diagonal(iou, 0.0)
        return {t for t, row in zip(ids, iou) if row.max() > 0.0}

    @staticmethod
    def _overlaps(ids, preds, detections: Detections, matches) -> dict[int, bool]:
        """For each matched detection: does it touch another face (detection or other track)?

        Such a detection is often of a partly occluded face (two faces crossing): its box shrinks
        and shifts, so it must not steer the track's velocity and size.
        """
        out = {}
        owner = dict((j, tid) for tid, j in matches)
        for j, tid in owner.items():
            box = detections.boxes[j : j + 1]
            others = [detections.boxes[k] for k in range(len(detections)) if k != j]
            others += [_cxcywh_to_xyxy(preds[t]) for t in ids if t != tid]
            out[j] = bool(others) and float(iou_matrix(box, np.stack(others)).max()) > 0.02
        return out

    def _birth(self, detections: Detections, j: int, descriptor, frame_index: int, image) -> _TrackState:
        track = Track(
            id=self._next_id,
            first_frame=frame_index,
            last_frame=frame_index,
            first_detected=frame_index,
            last_detected=frame_index,
            num_detections=1,
        )
        self._next_id += 1
        state = _TrackState(track, detections.boxes[j], detections.landmarks[j], float(detections.scores[j]))
        state.appearance = descriptor
        if image is not None and self.refine:
            self._set_template(state, image, detections.boxes[j])
        self._live[track.id] = state
        return state

    def _correct(
        self, state: _TrackState, pred: np.ndarray, detections: Detections, j: int, descriptor, frame_index, image, occluded: bool
    ) -> TrackedFace:
        meas = _xyxy_to_cxcywh(detections.boxes[j])
        dt = max(1, frame_index - state.updated_frame)
        residual = meas - pred
        # pred's size was floored at the last detected size; filter on the unfloored prediction.
        raw_pred = state.state + state.velocity * dt
        residual[2:] = meas[2:] - raw_pred[2:]
        if occluded:
            # A detection probably cut by another face: follow its position, but let it steer
            # neither the velocity nor the size.
            state.state = np.concatenate([pred[:2] + self.alpha * residual[:2], raw_pred[2:]])
        else:
            state.state = np.concatenate([pred[:2], raw_pred[2:]]) + self.alpha * residual
            state.velocity = state.velocity + self.beta * residual / dt
            # Size velocity is mostly detector noise: damp it.
            state.velocity[2:] *= 0.5
            state.last_size = state.state[2:].copy()
        state.updated_frame = frame_index
        size = state._size()
        rel = (detections.landmarks[j].astype(np.float64) - state.state[:2]) / size
        state.rel_landmarks = self.landmark_smoothing * state.rel_landmarks + (1 - self.landmark_smoothing) * rel
        state.score = float(detections.scores[j])
        if descriptor is not None:
            # Only update appearance from a detection that does not overlap another one (crossings).
            others = np.delete(detections.boxes, j, axis=0)
            if not len(others) or iou_matrix(detections.boxes[j : j + 1], others).max() < 0.05:
                state.appearance = descriptor if state.appearance is None else _normalize(0.7 * state.appearance + 0.3 * descriptor)
        if image is not None and self.refine:
            self._set_template(state, image, detections.boxes[j])
        track = state.track
        track.last_detected = frame_index
        track.last_frame = frame_index
        track.num_detections += 1
        return self._face(state, state.state, DETECTED, 1.0, detections.boxes[j])

    def _coast(self, state: _TrackState, frame_index: int, image) -> TrackedFace:
        """Place a track without a detection: predict, optionally refine, dilate."""
        pred = state.predict_state(frame_index)
        missing = frame_index - state.track.last_detected
        source, rate = PREDICTED, self.dilate_per_frame
        if image is not None and self.refine and state.template is not None:
            refined = self._refine(state, pred, image)
            if refined is not None:
                # Position only: a template match is weaker evidence than a detection, and letting
                # it steer the velocity can drag a track along a neighbouring face.
                state.state = pred.copy()
                state.state[:2] = pred[:2] + self.alpha * (refined - pred[:2])
                state.updated_frame = frame_index
                pred = state.state
                source, rate = TRACKED, self.refined_dilate_per_frame
        scale = min(self.max_dilation, 1.0 + rate * missing)
        state.track.last_frame = frame_index
        return self._face(state, pred, source, scale, None, missing)

    def _face(self, state: _TrackState, s: np.ndarray, source: str, scale: float, raw_box, missing: int = 0) -> TrackedFace:
        box = _cxcywh_to_xyxy(s, scale)
        if raw_box is not None:
            # Smoothing must never uncover a detected face: contain the raw detection.
            box = np.concatenate([np.minimum(box[:2], raw_box[:2]), np.maximum(box[2:], raw_box[2:])]).astype(np.float32)
        return TrackedFace(
            track_id=state.track.id,
            box=box,
            landmarks=state.landmarks_for(s),
            score=state.score,
            source=source,
            frames_since_detection=missing,
        )

    def _set_template(self, state: _TrackState, image: np.ndarray, box: np.ndarray) -> None:
        patch = _inner_patch(image, box, frac=0.8)
        if patch is None:
            state.template = None
            return
        scale = min(1.0, _TEMPLATE_MAX / patch.shape[0])
        grey = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, (max(4, round(grey.shape[1] * scale)), max(4, round(grey.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        state.template, state.template_scale = grey, scale

    def _refine(self, state: _TrackState, pred: np.ndarray, image: np.ndarray) -> np.ndarray | None:
        """Centre (cx, cy) of the best template match around the prediction, or None."""
        h, w = image.shape[:2]
        cx, cy, bw, bh = pred
        margin = 0.3
        x0, x1 = int(max(0, cx - bw * (0.4 + margin))), int(min(w, cx + bw * (0.4 + margin)))
        y0, y1 = int(max(0, cy - bh * (0.4 + margin))), int(min(h, cy + bh * (0.4 + margin)))
        scale = state.template_scale
        th, tw = state.template.shape
        if x1 - x0 < tw / scale + 2 or y1 - y0 < th / scale + 2:
            return None
        window = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            window = cv2.resize(window, (max(tw, round(window.shape[1] * scale)), max(th, round(window.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        if window.shape[0] < th or window.shape[1] < tw:
            return None
        result = cv2.matchTemplate(window, state.template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = cv2.minMaxLoc(result)
        if not np.isfinite(best) or best < self.refine_min_score:
            return None
        return np.array([x0 + (bx + tw / 2) / scale, y0 + (by + th / 2) / scale])


def _normalize(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else v


FACE_ASPECT = 0.75  # typical CenterFace box width / height


def unclip_border_faces(detections: Detections, shape: tuple[int, int], aspect: float = FACE_ASPECT) -> Detections:
    """Extend boxes cut by the frame border to a whole face's extent beyond it.

    The detector clips its boxes to the frame, so a face half out of the picture gets a narrow box
    whose centre sits off the face, and an ellipse inscribed in it misses the visible part near the
    border. The cut side is pushed out until the box has the usual face aspect ratio.

    Args:
        detections: boxes in frame pixels.
        shape: (H, W) of the frame.
        aspect: face box width / height.
    """
    h, w = shape
    boxes = detections.boxes.astype(np.float32).copy()
    for b in boxes:
        bw, bh = b[2] - b[0], b[3] - b[1]
        if b[0] <= 1 and b[2] - bh * aspect < b[0]:
            b[0] = b[2] - bh * aspect
        elif b[2] >= w - 1 and b[0] + bh * aspect > b[2]:
            b[2] = b[0] + bh * aspect
        if b[1] <= 1 and b[3] - bw / aspect < b[1]:
            b[1] = b[3] - bw / aspect
        elif b[3] >= h - 1 and b[1] + bw / aspect > b[3]:
            b[3] = b[1] + bw / aspect
    return Detections(boxes, detections.scores, detections.landmarks)


def faces_to_detections(faces: list[TrackedFace]) -> Detections:
    """Pack tracked faces into a :class:`Detections` (same order) for an anonymizer."""
    if not faces:
        return Detections()
    return Detections(
        np.stack([f.box for f in faces]).astype(np.float32),
        np.array([f.score for f in faces], np.float32),
        np.stack([f.landmarks for f in faces]).astype(np.float32),
    )
