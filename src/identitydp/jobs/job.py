"""Running work items: anonymize, charge the ledger before each draw, write atomically, report.

Every front end (``identitydp anonymize``, ``identitydp batch``, the web UI) goes through
:class:`Job`. Per item, in this order:

1. The output already exists (and ``overwrite`` is off): *skipped* — a rerun resumes.
2. Decode; a DP method hashes the input (pixels for an image, bytes for a video) and skips it if
   the ledger knows it as one of our outputs.
3. Detect; resolve each face's ledger key from the input's hash and the face's box.
4. Charge every face that is about to be drawn (pending, durable) — refused over budget: nothing
   is drawn or written. Video: each track is charged when its first face is about to be drawn.
5. Anonymize; write to a temporary file (mode from the umask), record its hash as an output,
   rename it into place; mark the releases *released*. On any failure the temporary file is
   removed and the releases are marked *void* (never published).

A crash between 4 and 5 leaves pending releases; the next job on the ledger settles them
(:meth:`LedgerStore.recover`): released if the output exists, void if it does not.

:meth:`Job.results` (what :meth:`Job.run` and the CLI use) reads ahead: while one photo is charged,
anonymized and written, the next photo is decoded and its faces detected on a worker thread, so
detection (OpenCV) and rendering (ONNX Runtime), which both release the GIL, overlap on two cores.
Only decoding and detection move to the thread; the ledger, the draw and the write stay in order
on the caller's thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BudgetExceededError, IdentityDPError
from ..exempt import ExemptionError
from ..io import MAX_PIXELS
from ..privacy.store import Charge, LedgerStore
from .config import AnonymizerConfig
from .plan import WorkItem

log = logging.getLogger(__name__)

__all__ = ["ItemResult", "Job", "JobSummary", "VideoOptions", "file_digest", "pixel_digest"]


_TEMP_NAME = re.compile(r"^\.identitydp-(\d+)-")


def remove_stale_temporaries(folder: Path) -> int:
    """Delete our temporary files (``.identitydp-<pid>-*``) left in ``folder`` by processes that
    died (``kill -9``, power loss); a live process's files are left alone. Returns how many."""
    removed = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for path in entries:
        match = _TEMP_NAME.match(path.name)
        if not match or not path.is_file():
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # alive (or another user's process): not ours to remove
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def file_digest(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes (the weights registry's own hash function)."""
    from ..models.registry import sha256_of

    return sha256_of(Path(path))


def pixel_digest(pixels: np.ndarray) -> str:
    """SHA-256 (hex) of decoded pixels and their shape: the content of an image, whatever its
    file name, container or metadata."""
    h = hashlib.sha256(repr(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def timing_from(stamps: list[float]) -> dict | None:
    """Seconds from the start to the first and last result, and the steady rate in between
    (items/s once workers are up, start-up excluded: what a run of millions of files sees)."""
    if not stamps:
        return None
    span = stamps[-1] - stamps[0]
    steady = round((len(stamps) - 1) / span, 3) if len(stamps) > 1 and span > 0 else None
    return {"first_result_s": round(stamps[0], 2), "last_result_s": round(stamps[-1], 2), "steady_items_per_s": steady}


@dataclass(frozen=True)
class VideoOptions:
    """Tracking and audio options of video items (see :meth:`Anonymizer.stream`)."""

    audio: bool = True
    detect_every: int = 1
    max_missing: int = 12
    lookback: int | None = None


@dataclass
class ItemResult:
    """What a job did with one item.

    Attributes:
        item: the work item.
        status: ``done``, ``skipped``, ``failed`` or ``refused`` (over budget: nothing written).
        reason: why, for every status but ``done``.
        faces: faces (image) or face tracks (video) found.
        masked: faces masked solid because they could not be anonymized (fail closed).
        exempt: faces kept as they were because they matched a consenting person (no release).
        releases: privacy releases charged and released for this item.
        epsilon: the largest ε charged to one face of this item in this run.
        report: the pipeline's JSON report (image) or the video report.
        seconds: wall time of the item.
        uncertain: possible faces scored below the detector's threshold (masked solid when the
            configuration is ``paranoid``, else left as they are).
    """

    item: WorkItem
    status: str
    reason: str | None = None
    faces: int = 0
    masked: int = 0
    releases: int = 0
    epsilon: float = 0.0
    report: dict | None = None
    seconds: float = 0.0
    exempt: int = 0
    uncertain: int = 0

    def to_dict(self) -> dict:
        out = {**self.item.to_dict(), "status": self.status, "faces": self.faces, "masked": self.masked,
               "releases": self.releases, "epsilon": self.epsilon, "seconds": round(self.seconds, 3), "exempt": self.exempt,
               "uncertain": self.uncertain}
        if self.reason:
            out["reason"] = self.reason
        if self.report is not None:
            out["report"] = self.report
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ItemResult":
        return cls(item=WorkItem.from_dict(data), status=data["status"], reason=data.get("reason"), faces=data["faces"],
                   masked=data["masked"], releases=data["releases"], epsilon=data["epsilon"], report=data.get("report"),
                   seconds=data["seconds"], exempt=data.get("exempt", 0), uncertain=data.get("uncertain", 0))


@dataclass
class JobSummary:
    """Totals over the items of a job."""

    results: list[ItemResult] = field(default_factory=list)
    ledger: dict | None = None
    timing: dict | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def faces(self) -> int:
        return sum(r.faces for r in self.results if r.status == "done")

    @property
    def masked(self) -> int:
        return sum(r.masked for r in self.results if r.status == "done")

    @property
    def releases(self) -> int:
        return sum(r.releases for r in self.results)

    def to_dict(self) -> dict:
        return {
            "done": self.count("done"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "refused": self.count("refused"),
            "faces": self.faces,
            "masked": self.masked,
            "releases": self.releases,
            "ledger": self.ledger,
            "timing": self.timing,
            "items": [r.to_dict() for r in self.results],
        }


class Job:
    """Runs work items with one anonymizer and one ledger.

    Args:
        config: what to build (models load on the first item that needs them).
        ledger: path of the durable ledger (required for DP methods; ignored otherwise), or an
            object with :class:`~identitydp.privacy.store.LedgerStore`'s methods.
        budget: ε budget per face to apply (lowers the stored one; cannot raise it).
        overwrite: replace existing outputs (never inputs); each replacement is a new release.
        video: options of video items.
        anonymizer: an already built :class:`~identitydp.pipeline.Anonymizer` for ``config`` (the
            web UI shares one between requests).
        max_pixels: largest image decoded (pixels); larger ones fail with a message that says so.

    Raises:
        PrivacyError: a DP method without a ledger, or a budget the ledger refuses.
    """

    def __init__(
        self,
        config: AnonymizerConfig,
        *,
        ledger: str | os.PathLike | None = None,
        budget: float | None = None,
        overwrite: bool = False,
        video: VideoOptions | None = None,
        anonymizer=None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        from ..errors import PrivacyError

        self.config = config
        self.overwrite = bool(overwrite)
        self.max_pixels = int(max_pixels)
        self.video = video or VideoOptions()
        self._anonymizer = anonymizer
        self._detector = None  # built ahead of the anonymizer by results(), then shared with it
        self._video_anonymizer = None
        self.ledger: LedgerStore | None = None
        self.recovered = {"released": 0, "void": 0}
        self._cleaned: set[Path] = set()
        if config.is_dp:
            if ledger is None:
                raise PrivacyError(f"{config.method} makes privacy releases: give the job a ledger path")
            # A path, or a ledger object with the LedgerStore methods (the Ray runner's proxy).
            self.ledger = ledger if hasattr(ledger, "charge") else LedgerStore(ledger)
            if budget is not None:
                self.ledger.set_budget(budget)
            self.recovered = self.ledger.recover()
        elif budget is not None:
            raise PrivacyError(f"a budget applies to dp-pix and identitydp, not {config.method}")

    # -- anonymizers (built lazily: planning and skipping need no model) -------------------
    @property
    def anonymizer(self):
        if self._anonymizer is None:
            self._anonymizer = self.config.build(detector=self._detector)
        return self._anonymizer

    @property
    def detector(self):
        """The photo detector: the anonymizer's, or (before it is built) one built alone from the
        configuration, which the anonymizer then takes over."""
        if self._anonymizer is not None:
            return self._anonymizer.detector
        if self._detector is None:
            self._detector = self.config.build_detector()
        return self._detector

    def _build_detector_for(self, photos: int) -> None:
        """Build the detector for a run of ``photos`` photos read ahead: with one photo nothing
        runs beside it (the renderer waits for its faces), so it takes every core — a 12-MP
        photo's full-resolution tiles took 6.2 s on one of two cores."""
        if self._anonymizer is None and self._detector is None:
            from ..models.onnx_graph import default_threads

            self._detector = self.config.build_detector(threads=default_threads() if photos == 1 else None)

    @property
    def video_anonymizer(self):
        # Video frames are rarely tight face crops: no padded detector pass (about 5x faster).
        if self._video_anonymizer is None:
            from dataclasses import replace

            self._video_anonymizer = replace(self.config, pad_tight=False).build()
        return self._video_anonymizer

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running ------------------------------------------------------------------------------
    def run(self, items, *, progress: Callable[[ItemResult], None] | None = None) -> JobSummary:
        """Run every item in order; ``progress(result)`` after each. One failure never stops the rest."""
        summary = JobSummary()
        t0 = time.perf_counter()
        stamps = []
        for result in self.results(items):
            stamps.append(time.perf_counter() - t0)
            summary.results.append(result)
            if progress is not None:
                progress(result)
        if self.ledger is not None:
            summary.ledger = self.ledger.summary()
        summary.timing = timing_from(stamps)
        return summary

    def results(
        self,
        items: Iterable[WorkItem],
        *,
        frame_progress: Callable[[WorkItem], Callable[[int, int | None], None] | None] | None = None,
        read_ahead: bool = True,
    ) -> Iterator[ItemResult]:
        """Process ``items`` in order and yield each one's :class:`ItemResult` as it is done.

        With ``read_ahead`` the next photo is decoded and its faces detected on a worker thread
        while the current one is anonymized and written (results, ledger and outputs are the same
        as without it; at most one decoded photo is held ahead). ``frame_progress(item)`` may
        return a per-frame callback for a video item (see :meth:`run_item`).
        """
        items = list(items)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="identitydp-read-ahead") if read_ahead else None
        ahead: dict[int, Future] = {}

        def submit(k: int) -> None:
            # Photo after photo only: a video's own detector thread already fills the second core.
            if pool is not None and k < len(items) and self._reads_ahead(items[k]) and (k == 0 or self._reads_ahead(items[k - 1])):
                ahead[k] = pool.submit(self._decode_and_detect, items[k])

        try:
            photos = sum(self._reads_ahead(item) for item in items)
            if pool is not None and photos:
                # The detector first (~0.1 s), so that the worker decodes and detects the first
                # photo while the method's models load here (~0.3 s of a cold start).
                try:
                    self._build_detector_for(photos)
                    submit(0)
                    self.anonymizer
                except IdentityDPError:
                    pass  # raised again per item, inside run_item: each becomes a "failed" result, as without read-ahead
            if 0 not in ahead:
                submit(0)
            for k, item in enumerate(items):
                submit(k + 1)
                callback = frame_progress(item) if frame_progress is not None else None
                yield self.run_item(item, frame_progress=callback, _prefetched=ahead.pop(k, None))
        finally:
            for future in ahead.values():
                future.cancel()
            if pool is not None:
                pool.shutdown(wait=True)

    def _reads_ahead(self, item: WorkItem) -> bool:
        return item.kind == "image" and (self.overwrite or not item.output.exists())

    def _decode_and_detect(self, item: WorkItem):
        """(decoded image, detections) of a photo: the part of an item that may run ahead on a thread."""
        from ..io import read_image

        loaded = read_image(item.source, max_pixels=self.max_pixels)
        return loaded, self.detector.detect(loaded.pixels)

    def run_item(self, item: WorkItem, *, frame_progress: Callable[[int, int | None], None] | None = None,
                 _prefetched: Future | None = None) -> ItemResult:
        """Process one item; errors become a ``failed`` result, budget refusals ``refused``."""
        t0 = time.perf_counter()
        folder = item.output.parent
        if folder not in self._cleaned:
            self._cleaned.add(folder)
            remove_stale_temporaries(folder)
        try:
            if item.output.exists() and not self.overwrite:
                result = ItemResult(item, "skipped", f"{item.output} exists (done before; --overwrite to redo it)")
            elif item.kind == "video":
                result = self._run_video(item, frame_progress)
            else:
                result = self._run_image(item, _prefetched)
        except BudgetExceededError as exc:
            result = ItemResult(item, "refused", f"{item.source}: {exc}; nothing written")
        except IdentityDPError as exc:
            result = ItemResult(item, "failed", str(exc))
        except OSError as exc:
            result = ItemResult(item, "failed", f"{item.source}: {exc.strerror or exc}")
        result.seconds = time.perf_counter() - t0
        return result

    def _kept_note(self, kept: dict | None) -> str | None:
        """The ledger note of a release with kept attributes (None without)."""
        if not kept:
            return None
        values = ", ".join(f"{k}={v:+.6f}" for k, v in kept.items())
        base = self.release_note
        return (f"{base}; " if base else "") + f"released without DP (kept attributes, coordinates along the public directions): {values}"

    @property
    def release_note(self) -> str | None:
        """Why this job's releases are not private, if they are not (recorded with each)."""
        import math

        notes = []
        eps = self.config.params.get("epsilon")
        if eps is not None and math.isinf(float(eps)):
            notes.append("epsilon = inf: no noise, no privacy (the true identity / pixels are released)")
        if self.config.seed is not None:
            notes.append("seeded noise: reproducible by anyone who knows the seed, not private against them")
        return "; ".join(notes) or None

    def _item_id(self, digest: str, item: WorkItem) -> str:
        return f"{digest[:16]}->{item.output}"

    def _protected(self, item: WorkItem) -> set[Path]:
        return {item.source.resolve()}

    def _record_output(self, item_id: str) -> Callable[[Path], None] | None:
        if self.ledger is None:
            return None
        ledger = self.ledger

        def record(tmp: Path, item_id=item_id) -> None:
            ledger.record_output(file_digest(tmp), tmp, item_id)

        return record

    def _run_image(self, item: WorkItem, prefetched: Future | None = None) -> ItemResult:
        from ..io import write_image

        # The read-ahead worker's exception (an unreadable file, a detector error) is raised here.
        loaded, detections = prefetched.result() if prefetched is not None else self._decode_and_detect(item)
        anonymizer = self.anonymizer
        ids: list[int] = []
        item_id = None
        if self.ledger is not None:
            if self.ledger.is_output(file_digest(item.source)):
                return ItemResult(item, "skipped", f"{item.source} is an identitydp output (its hash is on the ledger)")
            digest = pixel_digest(loaded.pixels)
            item_id = self._item_id(digest, item)
        matches = (anonymizer.exemptions.match(loaded.pixels, detections) if anonymizer.exemptions is not None
                   else [None] * len(detections))
        released = [i for i, m in enumerate(matches) if m is None]  # exempt faces are no release
        cost = anonymizer.method.release_cost()
        keys: list[str] = []
        if self.ledger is not None and cost is not None and released:
            keys = self.ledger.face_keys(digest, detections.boxes[released].tolist(), source_name=item.source.name)
        try:
            if keys:
                ids = self.ledger.charge(item_id, [Charge(k, cost) for k in keys], output=item.output.resolve(),
                                         config=self.config.to_dict(), note=self.release_note)
            out, report = anonymizer.anonymize(loaded.pixels, detections, exempt_matches=matches)
            report.source = item.source
            write_image(item.output, out, loaded.alpha, protected=self._protected(item), overwrite=self.overwrite,
                        before_commit=self._record_output(item_id) if ids else None)
            report.output = item.output
        except BaseException as exc:
            if ids:
                self.ledger.settle(ids, "void", note=f"not written: {type(exc).__name__}: {exc}")
            raise
        if ids:
            # --keep: what each face released without DP goes on the ledger with its release.
            notes = {rid: self._kept_note((report.faces[i].privacy or {}).get("released_without_dp")) for rid, i in zip(ids, released)}
            self.ledger.settle(ids, "released", notes={k: v for k, v in notes.items() if v})
        data = report.to_json()
        data["config"] = self.config.fingerprint
        if ids:
            for i, key in zip(released, keys):
                data["faces"][i]["ledger_key"] = key
        return ItemResult(item, "done", faces=report.num_faces, masked=report.num_masked, releases=len(ids),
                          epsilon=cost.epsilon if ids else 0.0, report=data, exempt=report.num_exempt,
                          uncertain=report.num_uncertain)

    def _run_video(self, item: WorkItem, frame_progress) -> ItemResult:
        from ..video import anonymize_video, probe_video

        if self.config.exempt is not None:
            raise ExemptionError(f"{item.source}: --exempt applies to photos; videos are not supported with it yet")
        if self.config.paranoid:
            from .config import ConfigError

            raise ConfigError(f"{item.source}: --paranoid applies to photos; for a video, lower --threshold instead")
        anonymizer = self.video_anonymizer
        method = anonymizer.method
        cost = method.release_cost()
        ledger = self.ledger if cost is not None else None
        ids: list[int] = []
        track_keys: dict[int, str] = {}
        track_release: dict[int, list[int]] = {}
        if ledger is not None:
            digest = file_digest(item.source)
            if ledger.is_output(digest):
                return ItemResult(item, "skipped", f"{item.source} is an identitydp output (its hash is on the ledger)")
            item_id = self._item_id(digest, item)
            will_draw = getattr(method, "will_draw", None)

            def charge(frame_index: int, faces: list) -> None:
                # Called before the frame's faces reach the anonymizer, so before any draw.
                drawing = [f for f in faces if will_draw is None or will_draw(f.track_id)]
                if not drawing:
                    return
                new = [f for f in drawing if f.track_id not in track_keys]
                if new:
                    keys = ledger.face_keys(digest, [f.box.tolist() for f in new], kind="track",
                                            frames=[frame_index] * len(new), source_name=item.source.name)
                    track_keys.update({f.track_id: k for f, k in zip(new, keys)})
                got = ledger.charge(item_id, [Charge(track_keys[f.track_id], cost, (frame_index, frame_index)) for f in drawing],
                                    output=item.output.resolve(), config=self.config.to_dict(), note=self.release_note)
                ids.extend(got)
                for f, rid in zip(drawing, got):
                    track_release.setdefault(f.track_id, []).append(rid)
        else:
            charge = None
        total = probe_video(item.source).expected_frames or None
        try:
            report = anonymize_video(
                anonymizer, item.source, item.output,
                audio=self.video.audio, detect_every=self.video.detect_every, max_missing=self.video.max_missing,
                lookback=self.video.lookback, overwrite=self.overwrite, protected=self._protected(item),
                progress=(lambda n: frame_progress(n, total)) if frame_progress is not None else None,
                before_anonymize=charge,
                before_commit=self._record_output(item_id) if ledger is not None else None,
            )
        except BaseException as exc:
            if ids:
                ledger.settle(ids, "void", note=f"not written: {type(exc).__name__}: {exc}")
            raise
        if ids:
            spans = {}
            for track in report.tracks:
                for rid in track_release.get(track.id, []):
                    if len(track_release[track.id]) == 1:  # one draw for the whole track (IdentityDP)
                        spans[rid] = track.frame_range
            notes = {}
            for track in report.tracks:
                note = self._kept_note((track.privacy or {}).get("released_without_dp"))
                for rid in track_release.get(track.id, []) if note else []:
                    notes[rid] = note
            ledger.settle(ids, "released", frames=spans, notes=notes)
        data = report.to_json()
        data["config"] = self.config.fingerprint
        data["video_options"] = {"detect_every": self.video.detect_every, "max_missing": self.video.max_missing,
                                 "lookback": self.video.lookback, "audio": self.video.audio}
        if track_keys:
            data["ledger_keys"] = {str(t): k for t, k in track_keys.items()}
        eps = 0.0
        if ids:
            eps = max(len(v) for v in track_release.values()) * cost.epsilon
        return ItemResult(item, "done", faces=len(report.tracks), masked=report.masked, releases=len(ids), epsilon=eps,
                          report=data)
