"""Anonymize a stream of frames (a video, a camera, any iterator) with tracking.

:meth:`identitydp.pipeline.Anonymizer.stream` is the public entry point::

    anon = Anonymizer("blur")
    stream = anon.stream(frames, detect_every=1, max_missing=12)
    for frame, report in stream:      # frames come out in order
        ...
    stream.tracks                     # list[Track], complete once the iterator is exhausted

Per frame: detect (every ``detect_every`` frames), track (:class:`~identitydp.track.FaceTracker`),
anonymize every live track's face through the pipeline's fail-closed path. Detection runs in a
worker thread, ahead of the frames being tracked and anonymized (``detect_ahead``), so the two
overlap on two cores. Memory is constant: at most ``lookback + 1`` frames are held, plus
``detect_ahead × detect_every`` read ahead.

**Lookback.** A face is usually first detected a few frames after it becomes visible (entering
through the frame edge, turning towards the camera; with ``detect_every = N``, up to N − 1 frames
late). Frames are therefore emitted ``lookback`` frames late, and when a track is born its face
is also anonymized in the held frames before it (at its first box, dilated), so those first frames
do not show it either.

**Per-track state (one identity per track).** An anonymizer that implements
:class:`TrackAware` gets the track id of every face and is told when a track ends; IdentityDP uses
that to draw the noisy identity once per track and reuse it on every frame, so a track is one
privacy release. Other anonymizers (blur, pixelate, DP-Pix) work per frame, unchanged.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from .anonymizers import FaceOutcome, FrameResult
from .detect import Detections
from .track import BACKFILLED, FaceTracker, Track, TrackedFace, faces_to_detections

if TYPE_CHECKING:
    from .pipeline import Anonymizer

# Backfilled boxes grow by this fraction of the face size per frame before the first detection
# (the face moved by an unknown amount), capped at BACKFILL_MAX_DILATION.
BACKFILL_DILATE_PER_FRAME = 0.08
BACKFILL_MAX_DILATION = 1.8


@runtime_checkable
class TrackAware(Protocol):
    """Optional interface of anonymizers that keep per-track state.

    A :class:`~identitydp.anonymizers.FaceAnonymizer` that also implements these two methods is
    called through :meth:`anonymize_tracked` by :meth:`Anonymizer.stream` instead of
    ``anonymize_frame``. Contract:

    * ``track_ids[i]`` is the track of ``faces[i]``; ids are unique for the whole stream and a
      track's frames arrive in order (with other tracks' frames interleaved).
    * Draw whatever must be drawn once per track (IdentityDP: the noisy identity) on the track's
      first face, cache it under the id and reuse it. Return the release record in
      ``FaceOutcome.privacy`` only on the face where a draw happened (``None`` on the frames that
      reuse it): the stream counts every record as one release, so a track costs one release.
    * :meth:`end_track` is called once after the track's last frame has been anonymized: drop the
      cached state there (the id is never used again).
    """

    def anonymize_tracked(
        self, image: np.ndarray, faces: Detections, track_ids: Sequence[int], rng: np.random.Generator
    ) -> FrameResult: ...

    def end_track(self, track_id: int) -> None: ...


@dataclass
class FrameReport:
    """What the stream did to one frame.

    Attributes:
        index: frame index in the stream (0-based).
        faces: the faces anonymized in this frame, one per live track (boxes in frame pixels).
        outcomes: one :class:`FaceOutcome` per entry of ``faces`` (``anonymized`` or ``masked``).
        detections: the detector's raw output, or ``None`` when it did not run on this frame.
        seconds: wall time of this frame's stages (detect, track, anonymize).
    """

    index: int
    faces: list[TrackedFace]
    outcomes: list[FaceOutcome]
    detections: Detections | None
    seconds: dict = field(default_factory=dict)

    @property
    def track_ids(self) -> list[int]:
        return [f.track_id for f in self.faces]

    @property
    def num_masked(self) -> int:
        return sum(1 for o in self.outcomes if o.status != "anonymized")

    def to_json(self) -> dict:
        return {
            "frame": self.index,
            "detector_ran": self.detections is not None,
            "faces": [
                {**f.to_json(), "status": o.status, **({"error": o.error} if o.error else {})}
                for f, o in zip(self.faces, self.outcomes)
            ],
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


@dataclass
class _Pending:
    index: int
    image: np.ndarray
    faces: list[TrackedFace]
    detections: Detections | None
    seconds: dict


class AnonymizedStream:
    """Iterator of ``(anonymized frame, FrameReport)``, with the tracks as they complete.

    Built by :meth:`identitydp.pipeline.Anonymizer.stream`; iterate it once. ``tracks`` holds
    every finished track (all of them once the iterator is exhausted), in order of id.

    Args:
        anonymizer: the pipeline :class:`~identitydp.pipeline.Anonymizer` (detector + method).
        frames: iterable of (H, W, 3) uint8 RGB frames, all of the same size.
        detect_every: run the detector on every N-th frame (1 = every frame); frames in between
            are tracked (predicted and refined by template matching).
        max_missing: frames a track is still anonymized after its last detection.
        lookback: frames of delay used to anonymize a face before its first detection; ``None``
            picks ``max(4, detect_every)``.
        tracker: a configured :class:`FaceTracker` (overrides ``max_missing``).
        before_anonymize: optional ``callable(frame_index, faces: list[TrackedFace])`` called just
            before a frame's faces go to the anonymizer, i.e. before any noise is drawn for them (the
            job layer charges the privacy ledger there); if it raises, the stream stops.
        detect_ahead: detector runs (each ``detect_every`` frames) that may be under way in a
            background thread while the frames before them are tracked and anonymized (the
            detector's network and the renderer release the GIL, so on two cores the two
            overlap); 0 runs the detector inline. Results are identical either way: a frame's
            detections are waited for before it is tracked. Holds up to
            ``detect_ahead × detect_every`` more frames.
    """

    def __init__(
        self,
        anonymizer: "Anonymizer",
        frames: Iterable[np.ndarray],
        *,
        detect_every: int = 1,
        max_missing: int = 12,
        lookback: int | None = None,
        tracker: FaceTracker | None = None,
        before_anonymize=None,
        detect_ahead: int = 1,
    ) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if lookback is not None and lookback < 0:
            raise ValueError(f"lookback must be >= 0, got {lookback}")
        if detect_ahead < 0:
            raise ValueError(f"detect_ahead must be >= 0, got {detect_ahead}")
        self.detect_ahead = int(detect_ahead)
        self.anonymizer = anonymizer
        self.detect_every = int(detect_every)
        self.lookback = max(4, self.detect_every) if lookback is None else int(lookback)
        self.tracker = tracker if tracker is not None else FaceTracker(max_missing=max_missing)
        self._frames = frames
        self._tracks: dict[int, Track] = {}
        self._finished: list[Track] = []
        self._ended_pending: list[Track] = []
        self._started = False
        self.track_aware = isinstance(anonymizer.method, TrackAware)
        self.before_anonymize = before_anonymize

    @property
    def tracks(self) -> list[Track]:
        """Finished tracks, by id (all tracks once the stream is exhausted)."""
        return sorted(self._finished, key=lambda t: t.id)

    def __iter__(self) -> Iterator[tuple[np.ndarray, FrameReport]]:
        if self._started:
            raise RuntimeError("an AnonymizedStream can be iterated only once")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[tuple[np.ndarray, FrameReport]]:
        try:
            yield from self._frames_out()
        finally:
            # Stopped early (error, or the consumer closed the iterator): a track-aware method
            # must still drop its per-track state, or a later stream's track 0 would reuse it.
            if self.track_aware:
                for tid in list(self._tracks):
                    self.anonymizer.method.end_track(tid)
            self._tracks.clear()

    def _checked_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        shape = None
        for index, image in enumerate(self._frames):
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"frame {index}: expected an (H, W, 3) uint8 RGB array, got "
                    f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image))}"
                )
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise ValueError(f"frame {index}: size {image.shape[:2]} differs from the first frame's {shape[:2]}")
            yield index, image

    def _timed_detect(self, image: np.ndarray) -> tuple[Detections, float]:
        t0 = time.perf_counter()
        detections = self.anonymizer.detector.detect(image)
        return detections, time.perf_counter() - t0

    def _detected_frames(self) -> Iterator[tuple[int, np.ndarray, Detections | None, dict]]:
        """Frames in order with their detections (None where the detector does not run), the
        detection of later frames (``detect_ahead`` detector runs) under way in one worker thread."""
        frames = self._checked_frames()
        if self.detect_ahead == 0:
            for index, image in frames:
                if index % self.detect_every:
                    yield index, image, None, {}
                else:
                    detections, seconds = self._timed_detect(image)
                    yield index, image, detections, {"detect": seconds}
            return
        from concurrent.futures import ThreadPoolExecutor

        queued: deque = deque()
        ahead = self.detect_ahead * self.detect_every
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="identitydp-detect")
        try:
            for index, image in frames:
                job = pool.submit(self._timed_detect, image) if index % self.detect_every == 0 else None
                queued.append((index, image, job))
                # Read ahead far enough that the next detection is running while the frames before
                # it are tracked and anonymized; at most detect_ahead × detect_every + 1 frames held.
                while queued and (len(queued) > ahead or queued[0][2] is None):
                    yield self._collect(queued.popleft())
            while queued:
                yield self._collect(queued.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _collect(entry) -> tuple[int, np.ndarray, Detections | None, dict]:
        index, image, job = entry
        if job is None:
            return index, image, None, {}
        detections, seconds = job.result()
        return index, image, detections, {"detect": seconds}

    def _frames_out(self) -> Iterator[tuple[np.ndarray, FrameReport]]:
        pending: deque[_Pending] = deque()
        index = -1
        for index, image, detections, seconds in self._detected_frames():
            t0 = time.perf_counter()
            step = self.tracker.step(index, detections, image)
            seconds["track"] = time.perf_counter() - t0
            if step.born:
                live = {t.id: t for t in self.tracker.live_tracks}
                for tid in step.born:
                    self._tracks[tid] = live[tid]
            if step.born:
                self._backfill(pending, step)
            self._ended_pending.extend(step.ended)
            pending.append(_Pending(index, image, step.faces, detections, seconds))
            while len(pending) > self.lookback:
                yield self._emit(pending.popleft())
        self._ended_pending.extend(self.tracker.finish())
        while pending:
            yield self._emit(pending.popleft())
        self._close_tracks(last_emitted=index, final=True)

    def _backfill(self, pending: deque[_Pending], step) -> None:
        born = {f.track_id: f for f in step.faces if f.track_id in step.born}
        for item in pending:
            k = step.frame_index - item.index
            scale = min(BACKFILL_MAX_DILATION, 1.0 + BACKFILL_DILATE_PER_FRAME * k)
            for tid, face in born.items():
                cx, cy = (face.box[:2] + face.box[2:]) / 2
                hw, hh = (face.box[2:] - face.box[:2]) * scale / 2
                box = np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float32)
                item.faces.append(
                    TrackedFace(tid, box, face.landmarks.copy(), face.score, BACKFILLED, frames_since_detection=-k)
                )
                track = self._tracks[tid]
                track.first_frame = min(track.first_frame, item.index)

    def _emit(self, item: _Pending) -> tuple[np.ndarray, FrameReport]:
        h, w = item.image.shape[:2]
        # A predicted face that has left the picture has nothing to anonymize (its track lives on).
        faces = sorted(
            (f for f in item.faces if min(f.box[2], w) - max(f.box[0], 0) >= 2 and min(f.box[3], h) - max(f.box[1], 0) >= 2),
            key=lambda f: f.track_id,
        )
        t0 = time.perf_counter()
        if faces and self.before_anonymize is not None:
            self.before_anonymize(item.index, faces)
        if faces:
            dets = faces_to_detections(faces)
            ids = [f.track_id for f in faces]
            out, outcomes = self.anonymizer._anonymize_fail_closed(item.image, dets, track_ids=ids if self.track_aware else None)
        else:
            out, outcomes = item.image.copy(), []
        item.seconds["anonymize"] = time.perf_counter() - t0
        for face, outcome in zip(faces, outcomes):
            self._account(self._tracks[face.track_id], outcome)
        self._close_tracks(last_emitted=item.index)
        return out, FrameReport(item.index, faces, outcomes, item.detections, item.seconds)

    def _account(self, track: Track, outcome: FaceOutcome) -> None:
        # Every record is a release: a track-aware method returns one on the track's first face
        # only (and again only if it had to draw again, e.g. after failing on that first face);
        # a per-frame DP method (DP-Pix) returns one per face per frame.
        if not outcome.privacy:
            return
        if track.privacy is None:
            track.privacy = dict(outcome.privacy)
        track.releases += 1

    def _close_tracks(self, last_emitted: int, final: bool = False) -> None:
        still = []
        for track in self._ended_pending:
            if final or track.last_frame <= last_emitted:
                if self.track_aware:
                    self.anonymizer.method.end_track(track.id)
                self._tracks.pop(track.id, None)
                self._finished.append(track)
            else:
                still.append(track)
        self._ended_pending = still

    def ledger_json(self) -> dict:
        """Tracks and their privacy releases, for the run's ledger (complete after iteration).

        A track-aware DP method makes one release per track; a per-frame DP method (DP-Pix)
        makes one per frame of the track, and the track's ε adds up (basic composition).
        """
        tracks = self.tracks
        out = {
            "method": self.anonymizer.method.describe(),
            "track_aware": self.track_aware,
            "detect_every": self.detect_every,
            "max_missing": self.tracker.max_missing,
            "lookback": self.lookback,
            "num_tracks": len(tracks),
            "tracks": [],
        }
        total_eps = 0.0
        for t in tracks:
            entry = t.to_json()
            eps = (t.privacy or {}).get("epsilon")
            if eps is not None:
                entry["epsilon_total"] = float(eps) * t.releases
                total_eps = max(total_eps, float(eps) * t.releases)
            out["tracks"].append(entry)
        out["releases"] = sum(t.releases for t in tracks)
        out["max_epsilon_per_track"] = total_eps
        return out
