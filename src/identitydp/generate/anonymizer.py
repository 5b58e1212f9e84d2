"""IdentityDP: replace each face by the generator's rendering of a differentially private identity.

Two renderers can be loaded (told apart by the exported file's ``format``):

* **v2** (:mod:`identitydp.generate.inpaint`): per face, align to the renderer's crop, predict the
  68 landmarks, erase the inner face (landmark hull + forehead), and let the renderer repaint it
  from the context, the landmark sketch, the coarse colour and the noisy identity only; paste
  the composite back with the feathered, face-shaped mask (no rectangle), clipped to the detector
  box enlarged by :data:`PASTE_REGION` per side. No mirror fusion and no geometry warp: the
  renderer draws the geometry it is given. Video: one identity *and* one texture-noise seed per
  track, so the face does not flicker.
* **v1** (AEI-Net, :mod:`identitydp.generate.networks`), described below.

v1, per face: align to the generator's crop (same template margin as training), embed with dlib (its
150-px chip cut from the frame), centre by the generator's training mean, perturb with the chosen
mechanism on the centred unit sphere (:mod:`identitydp.privacy`), render the noisy identity on the
crop's attributes, put the rendering back on the original face's geometry (a piecewise-affine warp
from its 68 landmarks to the original's), and paste it back with a colour-matched, feathered mask
clipped to the detector box enlarged by :data:`PASTE_REGION` per side: every pixel outside that
rectangle stays bit-identical. Any failure on a face masks that face (fail closed).

The guarantee covers the identity channel only (docs/privacy.md#what-is-protected).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
from pathlib import Path

import numpy as np

from ..anonymizers.base import FaceAnonymizer, FaceOutcome, FrameResult
from ..detect import Detections
from ..errors import AnonymizationError, PrivacyError, WeightsError
from .checkpoint import EXPORT_FORMAT_V2, read_metadata

log = logging.getLogger(__name__)

#: Registry name of the v1 generator (attribute encoder + AAD generator, fp16 safetensors):
#: opt-in since 2026-12-06 (``weights=WEIGHTS_NAME``, ``--renderer v1``); it reads the original face.
WEIGHTS_NAME = "identitydp_generator"
#: The registered v2 (inpainting) renderer, the default: it never sees the original inner face.
RENDERER_V2_NAME = "identitydp_renderer_v2"
#: The renderers a user picks by name (CLI ``--renderer``, web form, job config).
RENDERERS = {"v1": WEIGHTS_NAME, "v2": RENDERER_V2_NAME}
DEFAULT_RENDERER = "v2"
DEFAULT_WEIGHTS_NAME = RENDERERS[DEFAULT_RENDERER]
#: Leading modes of the public shape model that the v2 renderer's sketch gets by default. The
#: shipped v2 was trained with 4: mode 1 follows yaw, 2 pitch and face length, 3 jaw width (with
#: some mouth), 4 the mouth and pitch. Dropping 3 and 4 cut MobileFace's acceptance of ε = 1
#: outputs on full LFW from 3.5 % to 1.2 % (docs/results/lfw-full-shape-modes).
DEFAULT_SHAPE_MODES = 2
#: Mouth-model modes a v2 renderer with a mouth model gets by default (capped at what it was
#: trained with): on full LFW with v2zm at ε = 1, 1, 2 and 4 modes gave the same expression
#: agreement (44.0 / 44.6 / 44.0 %) and 4 modes three more accepted pairs (20 vs 17 of 1,680).
DEFAULT_MOUTH_MODES = 2
#: Modes of each part model (mouth, brows: InpaintConfig.mouth_components, …) a v2 renderer
#: with that model gets by default, capped at what it was trained with.
DEFAULT_PART_MODES = {"mouth": DEFAULT_MOUTH_MODES, "brows": 2}
#: The anonymizer argument that sets each part model's modes.
PART_MODE_ARGUMENTS = {"mouth": "mouth_modes", "brows": "brow_modes"}
PROJECTION_NAME = "identity_projection_k16"
#: The paste may change pixels only inside the detector box enlarged by this fraction per side.
PASTE_REGION = 0.25
#: Skip the geometry warp when the generated face's landmarks are further than this (mean
#: distance, in units of the crop's template inter-ocular distance) from the original's after
#: a similarity fit: the landmark model has failed on the rendering, and warping it would tear it.
MAX_GEOMETRY_RESIDUAL = 0.35
#: Width of the seam between the direct and the mirrored rendering (logistic scale, fraction of
#: the crop): narrow enough that the artefacts of the other half (from about 0.65 of the crop
#: on) get weight < 3 %, wide enough to hide the seam.
MIRROR_SEAM = 0.045


#: Crops per ONNX Runtime call of the v1 renderer. One: on ten 1080p photos (30 faces, with the
#: read-ahead) the peak is ~580 MB instead of ~670 MB with two, at the same wall and CPU time.
ONNX_CHUNK = 1
#: ``auto``: the int8 renderer on ONNX Runtime where one was quantized from the weights in use
#: (docs/results/lfw300-int8: the evaluation's figures within their noise of fp32), else fp32.
PRECISIONS = ("auto", "int8", "fp32")


def _read_generator_header(path: Path) -> tuple[dict, np.ndarray]:
    """(metadata, (128,) identity mean) of an exported generator, without torch.

    Raises:
        WeightsError: not an exported identitydp generator.
    """
    from safetensors import safe_open

    meta = read_metadata(path)
    with safe_open(str(path), framework="numpy") as fh:
        if "net" not in meta or "margin" not in meta or "id_mean" not in fh.keys():
            raise WeightsError(f"{path} is not an exported identitydp generator (format {meta.get('format')!r})")
        return meta, fh.get_tensor("id_mean")


def _weights_path(weights: str | Path | None) -> Path:
    """The file of a renderer given as None (the default), a registered name or a path."""
    from ..models.registry import registry, weight_path

    if weights is None:
        return weight_path(DEFAULT_WEIGHTS_NAME)
    if isinstance(weights, str) and weights in registry():
        return weight_path(weights)  # a registered renderer by name, e.g. "identitydp_renderer_v2"
    return Path(weights)


def trained_shape_modes(weights: str | Path) -> int:
    """How many shape-model modes a v2 renderer was trained with (0: it draws the face's own
    landmarks, or it is a v1 generator): the most ``shape_modes`` it accepts. Reads the metadata
    only.

    Args:
        weights: a registered renderer's name (e.g. ``"identitydp_renderer_v2"``) or a file.

    Raises:
        WeightsError: missing, corrupt or not an identitydp generator.
    """
    meta = read_metadata(_weights_path(weights))
    if meta.get("format") != EXPORT_FORMAT_V2:
        return 0
    return int(json.loads(meta["net"]).get("shape_components", 0))


def _modes_argument(name: str, value, trained: int, default: int, absent: str, weights_name: str) -> int:
    """A validated count of public modes (``shape_modes``, ``mouth_modes``, …): ``value`` from 1 to
    ``trained``; None gives ``min(default, trained)``. Raises ValueError (``absent`` says why when
    the renderer has no such model)."""
    if value is None:
        return min(default, trained)
    if trained == 0:
        raise ValueError(f"{absent}: {name} does not apply")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= trained:
        raise ValueError(f"{name} must be an integer from 1 to {trained} (the modes {weights_name} was trained with), got {value!r}")
    return int(value)


class IdentityDPAnonymizer(FaceAnonymizer):
    """ε-IdentityDP face anonymizer.

    Args:
        epsilon: privacy parameter ε > 0 per face (``math.inf``: no noise, the face's own identity
            is re-rendered — no privacy).
        mechanism: ``"laplace"`` (pure ε-DP, default), ``"gaussian"`` ((ε, δ)-DP, needs ``delta``)
            or ``"metric"`` (d_χ-privacy).
        delta: δ of the Gaussian mechanism.
        seed: seeded, reproducible noise for tests and experiments (NOT private against an adversary
            who knows or guesses the seed); ``None`` (default) uses the vetted secure sampler.
        weights: path or registry name of an exported generator (v1 or v2); default: the
            registered v2 renderer ``identitydp_renderer_v2`` (``identitydp_generator``: v1).
        device: torch device for the networks.
        color_match: match the generated face's colours to the original inside the mask.
        projection: the domain of the noise. ``None`` (default): the registered public
            16-d projection ``identity_projection_k16`` (fitted on training identities), or with
            ``keep`` the 16-d projection of the rest of the identity given the kept values
            (:class:`~identitydp.privacy.keep.ConditionalProjection`); ``True``: the same; a path:
            another fitted projection (not with ``keep``); ``False``: the whole 128-d unit sphere. Same ε-DP guarantee in
            every domain; the projection needs far less noise per ε, so ε is a knob there (on
            300 LFW people MobileFace rank-1 1.3 / 1.7 / 3.3 / 14.3 / 27.0 % at ε = 1 / 4 / 16 /
            64 / ∞ with v2 and 2 shape modes, docs/results/lfw300-knob-v2-modes2; 1.7 / 2.0 / 6.3 /
            22.3 / 33.0 % with v1),
            while on the sphere (v1) every ε ≤ 16 gives a random identity (1.3-2.7 %) and ε = ∞
            gives the person back (58 %).
        geometry: warp the rendering onto the original face's 68 landmarks (dlib's shape
            predictor), so pose, expression and outline follow the original. Off by default:
            the face's shape carries identity, and on 300 LFW people at ε = 1
            (docs/results/lfw300-geometry) the warp raised MobileFace acceptance of (original,
            anonymized) pairs from 1.0 % to 9.3 % and rank-1 from 1.3 % to 2.3 %, for a landmark
            error of 0.060 instead of 0.097 inter-ocular, gender agreement 60.7 % instead of
            49.0 % and expression agreement 45.7 % instead of 37.7 %; and dlib's 68-point model
            is trained on iBUG 300-W, licensed for non-commercial use only. The geometry is an
            *attribute*: when kept, it is kept, not privatised (docs/privacy.md).
        geometry_strength: how far the rendering's landmarks move towards the original's, in
            [0, 1] (1: all the way). Face shape carries identity: on 300 LFW people at ε = 1,
            moving half way (default) cut MobileFace rank-1 re-identification from 6.0 % to
            4.0 % while the landmark error stayed at 0.06 inter-ocular (0.04 at 1).
        mirror_fusion: also render the mirrored crop and take the right half of the face from
            that (mirrored back) rendering (default). The shipped generator paints torn,
            streaky texture over the right half of almost every face (image right, the subject's
            left eye) and clean texture on the left; the mirrored rendering has it on the other
            side, so the fused face is clean on both. Costs a second rendering in the same batch.
            v1 only (v2 renders both halves cleanly).
        grain: v2: add luminance grain to the rendering up to the level measured on the photo
            just around the repainted region (a clean face on a noisy photo looks pasted).
        sharpen: v2: unsharp-mask amount in [0, 2] on the rendering where it is magnified into
            the frame (:func:`identitydp.blend.paste_face`); it reads the crop that is pasted (the
            rendering, and the unchanged context at its feathered edge), never the original inner face.
        backend: renderer runtime: ``"auto"`` (ONNX Runtime on CPU when installed and the
            registered graph was exported from these weights, else torch; v2 with truncation
            below 1 runs on torch), ``"onnxruntime"`` (required: a clear error otherwise) or
            ``"torch"``. Same network and weights, and no torch import on the ORT path; ORT is
            ~1.5-2x faster on CPU for v1. v2's texture noise is drawn with NumPy for both, so a
            seeded run renders the same face on either (to a level or two of 255).
        render_every: video: render a tracked face on every N-th frame of its track only and,
            in between, paste its last rendering at the face's current position (aligned to the
            current frame's landmarks, colour-matched to the current frame), so a track costs
            1/N of the renderer's time. The face follows the head's motion at once, its
            expression with up to N − 1 frames of delay. 1 (default): render every frame.
            Photos and untracked faces always render. Same privacy: the reused rendering is the
            track's own release.
        keep: attributes of the identity to release as they are, e.g. ``("gender", "age")``
            (:mod:`identitydp.privacy.keep`): their coordinates along public directions fitted on
            training data are kept exactly (NOT private; each face's values go into its privacy
            record and the ledger), and the noise goes on the rest of identity space (by default
            on its public projection given the kept values, see ``projection``).
        truncation: v2: ψ in [0, 1] of the truncation trick, w ← w̄ + ψ (w − w̄) on the
            renderer's style (w̄: the training identities' mean style, in weights exported since
            2026-12-06). Rare styles, where the renderer paints blotchy texture, move towards
            common ones; a function of the released identity only, so post-processing of the DP
            release. 1 (default): off. Measured on 300 LFW people (docs/generator_card.md) at
            ψ = 0.7: fewer blotchy faces to the eye, but sharpness ratio 0.87 → 0.76, MobileFace
            Fréchet distance 0.372 → 0.394 and less diversity, so it is not the default.
        gender_from_context: v2: set the released identity's gender coordinate from the context
            around the face (hair, ears, neck, clothes; the crop with the renderer's repaint mask
            painted out, :mod:`identitydp.models.context_gender`) instead of drawing it with the
            rest, so that the new face agrees with the hair and clothes it is pasted into. A
            function of pixels the output shows unchanged: the release stays ε-DP between any
            two identities (unlike ``keep=("gender",)``). Not with ``keep``. Off here by default;
            the front ends (CLI, web, batch) turn it on up to ε = 16 through
            :func:`identitydp.jobs.with_product_defaults`, and record it.
        shape_modes: v2: how many leading modes of the public shape model (fitted on training
            faces, part of the weights) the landmark sketch is projected onto; the face's own
            geometry beyond them is not given to the renderer. None (default):
            ``DEFAULT_SHAPE_MODES`` (2: yaw, pitch and face length), capped at what the renderer was
            trained with (4 for the shipped v2: adds jaw width and the mouth, which identify:
            MobileFace accepted 3.5 % of ε = 1 outputs on full LFW with 4, 1.2 % with 2, at a
            landmark error of 0.064 vs 0.075 inter-ocular). Not a privacy mechanism: the modes
            kept are released as they are, like the context.
        mouth_modes: v2 renderer trained with a mouth model (``mouth_components`` > 0; not the
            registered one): how many of its leading modes the sketch's mouth shape is projected
            onto (1 to what it was trained with; None: ``DEFAULT_MOUTH_MODES`` capped at that).
            Released as they are, not private, like ``shape_modes``.
        brow_modes: the same for a renderer trained with a brow model (the brows relative to the
            eyes: raised, lowered, knitted); default in ``DEFAULT_PART_MODES``.
        precision: v1 renderer arithmetic on ONNX Runtime: ``"auto"`` (default: int8
            convolutions where ``scripts/quantize_renderer.py`` quantized the weights in use,
            else fp32), ``"int8"`` (required: a clear error otherwise) or ``"fp32"``. int8 is
            ~1.4x faster on our test CPU (AVX-512 VNNI; less without VNNI); its renderings are ~2 levels of 255 from fp32 on average, and
            the privacy and utility figures of the evaluation are within their noise of fp32's
            (docs/results/lfw300-int8).

    Raises:
        WeightsError: the generator (or dlib) weights are missing or corrupt — never a silently
            untrained network.
        PrivacyError: invalid ε / δ / mechanism.
    """

    name = "identitydp"

    def __init__(
        self,
        *,
        epsilon: float,
        mechanism: str = "laplace",
        delta: float | None = None,
        seed: int | None = None,
        weights: str | Path | None = None,
        device: str = "cpu",
        color_match: bool = True,
        projection: bool | str | Path | None = None,
        geometry: bool = False,
        geometry_strength: float = 0.5,
        mirror_fusion: bool = True,
        grain: bool = True,
        backend: str = "auto",
        keep=(),
        render_every: int = 1,
        precision: str = "auto",
        truncation: float = 1.0,
        shape_modes: int | None = None,
        mouth_modes: int | None = None,
        brow_modes: int | None = None,
        gender_from_context: bool = False,
        sharpen: float = 0.0,
    ) -> None:
        from ..align import face_mask, template_for
        from ..models.registry import weight_path
        from ..privacy import Projection, ReproducibleRNG, UnitSphere, make_mechanism

        if isinstance(render_every, bool) or not isinstance(render_every, (int, np.integer)) or render_every < 1:
            raise ValueError(f"render_every must be an integer >= 1, got {render_every!r}")
        self.render_every = int(render_every)
        self.epsilon = float(epsilon)
        self.mechanism_name = mechanism
        self.delta = delta
        self.seed = seed
        rng = ReproducibleRNG(seed) if seed is not None else None
        if isinstance(keep, str):  # "gender", "gender,age" or "gender+age" (an evaluation spec)
            keep = [k for k in keep.replace("+", ",").split(",") if k]
        keep = tuple(keep or ())
        if projection is None:  # the default: a public projection, where ε is a knob (docs/privacy.md)
            projection = True
        self.keep = keep
        self.gender_from_context = bool(gender_from_context)
        self.context_gender = None
        if self.gender_from_context and self.keep:
            raise PrivacyError("gender_from_context sets the gender from the context; it cannot be combined with keep")
        # Both split the identity along attribute directions; the gender from the context is a kept
        # value that the caller supplies instead of one read from the identity.
        split = ("gender",) if self.gender_from_context else self.keep
        if split:
            from ..privacy.keep import KeptAttributesMechanism

            option = "gender_from_context" if self.gender_from_context else "keep"
            if projection is not True and projection is not False:
                raise PrivacyError(f"with {option}, projection is True (the projection of the rest given the kept values, "
                                   "fitted with the attribute directions) or False (the sphere); not a file")
            self.mechanism = KeptAttributesMechanism(mechanism, epsilon=self.epsilon, delta=delta, rng=rng, keep=split,
                                                     projection=projection,
                                                     kept_from="context" if self.gender_from_context else "identity")
            given = "the context's gender" if self.gender_from_context else "kept"
            self.projection = f"attribute_directions, rest given {given} (k={self.mechanism.conditional.k})" if projection else None
            if self.gender_from_context:
                from ..models.context_gender import ContextGender

                self.context_gender = ContextGender.load()
        elif projection:
            proj_path = weight_path(PROJECTION_NAME) if projection is True else Path(projection)
            self.projection = proj_path.name
            self.mechanism = make_mechanism(mechanism, epsilon=self.epsilon, delta=delta, domain=Projection.load(proj_path), rng=rng)
        else:
            self.projection = None
            self.mechanism = make_mechanism(mechanism, epsilon=self.epsilon, delta=delta, domain=UnitSphere(128), rng=rng)
        path = _weights_path(weights)
        self.weights = path
        if backend not in ("auto", "onnxruntime", "torch"):
            raise ValueError(f"backend must be auto, onnxruntime or torch, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "int8" and backend == "torch":
            raise ValueError("precision='int8' runs on ONNX Runtime, not backend='torch'")
        self.precision = "fp32"
        self.meta, id_mean = _read_generator_header(path)
        self.id_mean_np = id_mean.astype(np.float64)
        self.inpainting = self.meta.get("format") == EXPORT_FORMAT_V2
        if self.inpainting and precision == "int8":
            raise ValueError("precision='int8' is for the v1 renderer; the v2 renderer runs in fp32")
        if self.inpainting and geometry:
            raise ValueError("geometry warps the v1 renderer's output; the v2 renderer draws the pose and "
                             "expression from the face's landmarks itself")
        self.device = device
        self.model = self.dlib = self._onnx = self._dlib_onnx = self._loader = self.landmarks68 = None
        self.color_match = color_match
        self.backend = "torch"
        self.shape_modes: int | None = None
        self.part_modes: dict[str, int] = {}
        part_modes = {"mouth": mouth_modes, "brows": brow_modes}
        if self.inpainting:
            self._load_v2_conditioning(path, shape_modes, part_modes)
        elif shape_modes is not None or any(v is not None for v in part_modes.values()):
            raise ValueError("shape_modes, mouth_modes and brow_modes are for the v2 renderer; "
                             "v1 reads the whole face")
        elif self.gender_from_context:
            raise ValueError("gender_from_context reads what the v2 renderer reads of the crop; v1 reads the whole face")
        # v2 on ORT renders without truncation only (the graph has no style mean input).
        if backend != "torch" and device == "cpu" and self.inpainting and truncation == 1.0:
            self._load_onnx_v2()
            if self._onnx is None and backend == "onnxruntime":
                raise WeightsError("backend='onnxruntime' needs onnxruntime and a v2 graph exported from these weights "
                                   "(scripts/export_onnx.py --only v2)")
        elif backend != "torch" and device == "cpu" and not self.inpainting:
            self._load_onnx(int8=precision != "fp32")
            if precision == "int8" and self.precision != "int8":
                raise WeightsError(f"precision='int8' needs an int8 renderer quantized from {path.name} "
                                   "(scripts/quantize_renderer.py) and onnxruntime")
            if self._onnx is None and backend == "onnxruntime":
                raise WeightsError("backend='onnxruntime' needs onnxruntime and graphs exported from these weights "
                                   "(scripts/export_onnx.py)")
        if self._onnx is None:
            self._load_torch()
        self.truncation = self._resolve_truncation(truncation)
        self.size = int(json.loads(self.meta["net"])["size"])
        self.margin = float(self.meta["margin"])
        self.mask = face_mask(self.size, self.margin)
        self.grain = bool(grain)
        if isinstance(sharpen, bool) or not isinstance(sharpen, (int, float, np.floating)) or not 0.0 <= sharpen <= 2.0:
            raise ValueError(f"sharpen must be a number in [0, 2], got {sharpen!r}")
        if sharpen and not self.inpainting:
            raise ValueError("sharpen is for the v2 renderer; v1 mirror-fuses its own size")
        self.sharpen = float(sharpen)
        # Video: track id -> (1, 128) released identity, reused on every frame of the track.
        self._tracks: dict[int, np.ndarray] = {}
        # v2 video: track id -> seed of the renderer's texture noise (same texture every frame).
        self._track_noise: dict[int, int] = {}
        # Video with render_every > 1: track id -> (its last rendering, frames it has been used on);
        # v1 keeps the rendered crop, v2 the (composite crop, paste mask) pair.
        self._track_render: dict[int, tuple] = {}
        # Seeded runs reproduce the texture too; otherwise it is fresh every call.
        self._texture_rng = np.random.default_rng(seed) if seed is not None else None
        if self.inpainting:
            from ..models.landmarks68 import Landmarks68, crop_face_box

            # The v2 renderer needs no mirror fusion (on by default for v1): ignored, describe() says so.
            self.mirror_fusion = False
            self.geometry = False
            self.geometry_strength = 0.0
            if self._loader is None:  # else the loading thread reads it (~0.5 s, ~100 MB), beside detection
                self.landmarks68 = Landmarks68()
            self._lm_box = crop_face_box(self.size, self.margin)
            return
        self.geometry = bool(geometry)
        self.geometry_strength = float(geometry_strength)
        if not 0.0 <= self.geometry_strength <= 1.0:
            raise ValueError(f"geometry_strength must be in [0, 1], got {geometry_strength}")
        self.mirror_fusion = bool(mirror_fusion)
        # Weight of the direct rendering per column: 1 on the image-left half, 0 on the right,
        # a logistic seam (width MIRROR_SEAM of the crop) at the template's face midline.
        tpl = template_for(self.size, self.margin)
        centre_x = float(tpl[:, 0].mean())
        columns = np.arange(self.size, dtype=np.float64) + 0.5
        self._left_weight = (1.0 / (1.0 + np.exp((columns - centre_x) / (MIRROR_SEAM * self.size)))).astype(np.float32)
        self.landmarks68 = None
        if self.geometry:
            from ..models.landmarks68 import Landmarks68, crop_face_box

            self.landmarks68 = Landmarks68()
            self._lm_box = crop_face_box(self.size, self.margin)
            self._template_iod = float(np.linalg.norm(tpl[1] - tpl[0]))

    def _load_onnx(self, int8: bool) -> None:
        """Renderer and dlib on ONNX Runtime (no torch import); leaves ``_onnx`` None if unavailable.
        ``int8``: the int8 renderer where one was quantized from these weights (sets ``precision``)."""
        from ..models.onnx_graph import default_threads
        from .onnx_backend import load_int8_renderer, load_renderer

        threads = default_threads()
        # Checksums, and whether the registered graphs were exported from these weights, are
        # checked here; the initializers and ORT sessions (~0.5 s together) are built on a
        # thread, so that they load while the detector runs on the first image.
        renderer = load_int8_renderer(self.weights, threads=threads, defer=True) if int8 else None
        if renderer is not None:
            self.precision = "int8"
        else:
            renderer = load_renderer(self.weights, threads=threads, defer=True)
        self._start_onnx(renderer, threads)

    def _start_onnx(self, renderer, threads: int) -> None:
        """Run ``renderer`` (None: not available) and dlib on ONNX Runtime, their sessions built on
        a loading thread; leaves ``_onnx`` None when either is unavailable."""
        from ..models.dlib_onnx import DlibOnnxEncoder

        encoder = DlibOnnxEncoder.load(threads=threads, defer=True) if renderer is not None else None
        if renderer is not None and encoder is not None:
            self._onnx, self._dlib_onnx, self.backend = renderer, encoder, "onnxruntime"
            # Not a daemon: a process that exits while ORT is still building a session would
            # abort ("terminate called without an active exception"); exit waits for it instead.
            self._loader = threading.Thread(target=self._load_in_background, name="identitydp-load")
            self._loader.start()

    def _load_v2_conditioning(self, path: Path, shape_modes: int | None = None,
                              part_modes: dict[str, int | None] | None = None) -> None:
        """The v2 renderer's config, public shape model (its first ``shape_modes`` modes) and part
        models (mouth, brows: the first ``part_modes[part]`` modes of each), read with
        NumPy (no torch)."""
        from safetensors import safe_open

        from .inpaint_conditions import InpaintConfig

        self.v2_config = InpaintConfig(**json.loads(self.meta["net"]))
        trained = self.v2_config.part_components
        self._shape_model = None
        self._part_models: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.v2_config.shape_components > 0:
            with safe_open(str(path), framework="numpy") as fh:
                for model, count in {"shape": self.v2_config.shape_components, **trained}.items():
                    if count <= 0:
                        continue
                    if f"{model}_mean" not in fh.keys() or f"{model}_basis" not in fh.keys():
                        raise WeightsError(f"{path} declares a {model} model but does not hold it")
                    pair = (fh.get_tensor(f"{model}_mean").astype(np.float64),
                            fh.get_tensor(f"{model}_basis").astype(np.float64))
                    if model == "shape":
                        self._shape_model = pair
                    else:
                        self._part_models[model] = pair
        if self.v2_config.shape_components or shape_modes is not None:
            self.shape_modes = _modes_argument("shape_modes", shape_modes, self.v2_config.shape_components,
                                               DEFAULT_SHAPE_MODES, f"{path.name} draws the face's own landmarks (no shape model)",
                                               path.name)
        for part, argument in PART_MODE_ARGUMENTS.items():
            self.part_modes[part] = _modes_argument(argument, (part_modes or {}).get(part), trained[part],
                                                    DEFAULT_PART_MODES[part], f"{path.name} has no {part} model", path.name)
        if self._shape_model is not None:
            self._shape_model = (self._shape_model[0], self._shape_model[1][: self.shape_modes])
        self._part_models = {part: (mean, basis[: self.part_modes[part]]) for part, (mean, basis) in self._part_models.items()}

    def _load_onnx_v2(self) -> None:
        """The v2 renderer and dlib on ONNX Runtime (no torch import); ``_onnx`` stays None if unavailable."""
        from ..models.onnx_graph import default_threads
        from .onnx_backend import load_inpaint_renderer

        threads = default_threads()
        self._start_onnx(load_inpaint_renderer(self.weights, threads=threads, defer=True), threads)

    def _v2_noise(self, seed: int) -> list[np.ndarray]:
        """The v2 renderer's texture noise for one face: (1, 1, s, s) float32 standard normal maps,
        drawn with NumPy from ``seed`` so that both backends render the same face."""
        rng = np.random.default_rng([int(seed), 2])  # a stream of its own: the grain uses ``seed`` itself
        return [rng.standard_normal((1, 1, side, side), dtype=np.float32) for side in self.v2_config.noise_sides]

    def _load_in_background(self) -> None:
        try:
            self._onnx.graph.build()
            self._dlib_onnx.graph.build()
            if self.inpainting:
                from ..models.landmarks68 import Landmarks68

                self.landmarks68 = Landmarks68()
        except WeightsError:
            return  # ready() builds again on the caller's thread and raises it there
        if self.color_match:
            # OpenCV fills its 8-bit Lab tables on the first conversion (~0.1 s): do it here too.
            from ..blend import warm_up_color_tables

            warm_up_color_tables()

    def ready(self) -> None:
        """Wait for the background loading; raises its :class:`WeightsError` if it failed."""
        loader = self._loader
        if loader is not None:
            loader.join()
            self._loader = None
            self._onnx.graph.build()
            self._dlib_onnx.graph.build()
            if self.inpainting and self.landmarks68 is None:
                from ..models.landmarks68 import Landmarks68

                self.landmarks68 = Landmarks68()

    def _resolve_truncation(self, truncation: float) -> float:
        """Check ψ: a number in [0, 1]; below 1 only for a v2 renderer whose weights carry a style mean."""
        has_mean = self.inpainting and getattr(self.model, "style_mean", None) is not None
        if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not 0.0 <= truncation <= 1.0:
            raise ValueError(f"truncation must be a number in [0, 1], got {truncation!r}")
        if truncation != 1.0 and not has_mean:
            raise ValueError("truncation is for a v2 renderer exported with its style mean (scripts/add_style_mean.py); "
                             f"{self.weights.name} has none")
        return float(truncation)

    def _load_torch(self) -> None:
        import torch

        from ..models.dlib_resnet import DlibEncoder
        from .checkpoint import load_generator

        self.device = torch.device(self.device)
        self.model, self.id_mean, self.meta = load_generator(self.weights, device=self.device)
        self.dlib = DlibEncoder.load(device=self.device)

    def describe(self) -> dict:
        return {
            "method": self.name,
            "epsilon": self.epsilon,
            "mechanism": self.mechanism_name,
            "delta": self.delta,
            "seeded": self.seed is not None,
            "projection": self.projection,
            "keep": list(self.keep) or None,
            "geometry": self.geometry,
            "geometry_strength": self.geometry_strength,
            "mirror_fusion": self.mirror_fusion,
            "render_every": self.render_every,
            "generator": self.weights.name,
            "renderer": "v2-inpainting" if self.inpainting else "v1-aei",
            "grain": self.grain if self.inpainting else None,
            "sharpen": self.sharpen if self.inpainting else None,
            "truncation": self.truncation if self.inpainting else None,
            "shape_modes": self.shape_modes if self.inpainting else None,
            # Each part's own shape on this many public modes (0: it follows the shape modes).
            **{argument: self.part_modes.get(part) if self.inpainting else None
               for part, argument in PART_MODE_ARGUMENTS.items()},
            # The drawn eyes opened to the face's own opening (one number), as the renderer was trained.
            "eye_opening": self.v2_config.eye_opening if self.inpainting else None,
            "gender_from_context": self.gender_from_context or None,
            "backend": self.backend,
            "precision": self.precision,
        }

    def _identities(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(N, 5, 2) landmarks → (N, 128) float64 centred unit dlib identities."""
        from ..models.dlib_chip import dlib_chip
        from ..privacy import centre

        chips = [dlib_chip(image, lm) for lm in landmarks]
        if self._dlib_onnx is not None:
            raw = self._dlib_onnx(chips)
        else:
            import torch

            from ..models.dlib_resnet import chips_to_tensor

            with torch.inference_mode():
                raw = self.dlib(chips_to_tensor(chips, device=self.device)).cpu().numpy()
        return centre(raw.astype(np.float64), self.id_mean_np)

    def render(self, crops: np.ndarray, identities: np.ndarray) -> np.ndarray:
        """Generate faces: (N, S, S, 3) uint8 aligned crops + (N, 128) unit identities → (N, S, S, 3) uint8.

        With ``mirror_fusion`` the mirrored crops are rendered in the same batch (the identity
        descriptor is mirror-invariant: the generator was trained with flipped crops and the same
        identity) and the two renderings are fused across the face midline.

        Raises:
            RuntimeError: on a v2 renderer (it repaints one crop at a time: :meth:`inpaint`).
        """
        if self.inpainting:
            raise RuntimeError("render() is the v1 renderer's; a v2 renderer repaints crops with inpaint()")
        if self._onnx is not None:
            return self._render_onnx(crops, identities)
        import torch

        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1
        z = torch.from_numpy(np.asarray(identities, np.float32)).to(self.device)
        n = x.shape[0]
        if self.mirror_fusion:
            x, z = torch.cat([x, x.flip(3)]), torch.cat([z, z])
        with torch.inference_mode():
            y = self.model(x, z)[0].float()
            if self.mirror_fusion:
                w = torch.from_numpy(self._left_weight).to(y.device).view(1, 1, 1, -1)
                y = w * y[:n] + (1 - w) * y[n:].flip(3)
        return ((y + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()

    def _render_onnx(self, crops: np.ndarray, identities: np.ndarray) -> np.ndarray:
        """:meth:`render` on ONNX Runtime (the same arithmetic in NumPy around the network)."""
        x = np.ascontiguousarray(crops).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
        z = np.asarray(identities, np.float32)
        n = x.shape[0]
        if self.mirror_fusion:
            x, z = np.concatenate([x, x[..., ::-1]]), np.concatenate([z, z])
        # One crop per run: the network's activations (~40 MB per crop) set the peak memory, and
        # on a CPU larger batches are not faster.
        y = np.concatenate([self._onnx(x[i : i + ONNX_CHUNK], z[i : i + ONNX_CHUNK]) for i in range(0, len(x), ONNX_CHUNK)])
        if self.mirror_fusion:
            w = self._left_weight.reshape(1, 1, 1, -1)
            y = w * y[:n] + (1 - w) * y[n:, ..., ::-1]
        return np.clip(np.round((y + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

    def inpaint(self, crop: np.ndarray, identity: np.ndarray, noise_seed: int | None = None,
                landmarks68: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """v2: repaint the inner face of one aligned crop with a new identity.

        Args:
            crop: (S, S, 3) uint8 aligned crop (the renderer's template and margin).
            identity: (128,) or (1, 128) unit identity (the DP release).
            noise_seed: seed of the renderer's texture noise (video: one per track); None draws
                a fresh one. This noise is not a privacy mechanism, only texture.
            landmarks68: (68, 2) landmarks of this crop when already predicted, else None.

        Returns:
            ((S, S, 3) uint8 composite crop, (S, S) float32 paste mask in [0, 1]).
        """
        from ..blend import match_grain, multiband_blend
        from .inpaint_conditions import landmark_sketch, mask_for, sketch_geometry

        if not self.inpainting:
            raise RuntimeError("inpaint() needs a v2 renderer")
        self.ready()
        lm68 = self.landmarks68.predict(crop, self._lm_box) if landmarks68 is None else landmarks68
        # The region and the geometry exactly as the renderer was trained with (its config).
        mask = mask_for(self.v2_config, lm68)
        sketch = landmark_sketch(sketch_geometry(lm68, self.size, self._shape_model, self._part_models,
                                                 self.v2_config.eye_opening), self.size)
        if noise_seed is None:
            noise_seed = secrets.randbits(62)
        x = (np.ascontiguousarray(crop, np.float32).transpose(2, 0, 1)[None] / np.float32(127.5) - 1).astype(np.float32)
        z = np.asarray(identity, np.float32).reshape(1, -1)
        noise = self._v2_noise(noise_seed)
        if self._onnx is not None:
            raw = self._onnx(x, mask[None, None].astype(np.float32), sketch[None].astype(np.float32), z, noise)[0]
        else:
            import torch

            def t(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

            with torch.inference_mode():
                raw = self.model(t(x), t(mask[None, None]), t(sketch[None]), t(z), truncation=self.truncation,
                                 noise=[t(n) for n in noise])[1][0].float().cpu().numpy()
        rendered = np.clip(np.round((raw + 1) * 127.5), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        # Multi-band blend into the crop's own context, then grain like the photo's around the face.
        # The "outside" image must not contain the original inner face: its pyramid's coarse
        # levels would carry the original's eyes and brows into the blend (a double exposure).
        hard = (mask >= 0.999)[..., None]
        context_only = np.where(hard, rendered, crop)
        out = multiband_blend(rendered, context_only, mask)
        if self.grain:
            out = match_grain(out, crop, mask, np.random.default_rng(int(noise_seed)))
        return out, mask

    def _context_gender(self, crops: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Gender coordinates read from the crops' context only, each (S, S, 3) uint8 crop with the
        renderer's own repaint mask painted out (:mod:`identitydp.models.context_gender`): ((N, 1)
        coordinates, the crops' (68, 2) landmarks, which :meth:`inpaint` then reuses)."""
        from .inpaint_conditions import mask_for

        self.ready()
        lm68 = [self.landmarks68.predict(crop, self._lm_box) for crop in crops]
        masks = np.stack([mask_for(self.v2_config, lm) for lm in lm68])
        return self.context_gender.gender_coordinate(self.context_gender.p_female(np.stack(crops), masks)), lm68

    def match_geometry(self, generated: np.ndarray, original: np.ndarray) -> np.ndarray:
        """Warp a generated crop so its 68 landmarks land on the original crop's.

        Args:
            generated, original: (S, S, 3) uint8 aligned crops (same template).

        Returns:
            (S, S, 3) uint8 warped crop; ``generated`` unchanged when the landmark model has
            visibly failed on it (residual above :data:`MAX_GEOMETRY_RESIDUAL`).
        """
        from ..align import estimate_similarity, transform_points
        from ..blend import warp_piecewise_affine

        if self.landmarks68 is None:
            raise RuntimeError("geometry matching is off for this anonymizer")
        target = self.landmarks68.predict(original, self._lm_box)
        source = self.landmarks68.predict(generated, self._lm_box)
        fitted = transform_points(source, estimate_similarity(source, target))
        residual = float(np.linalg.norm(fitted - target, axis=1).mean()) / self._template_iod
        if residual > MAX_GEOMETRY_RESIDUAL:
            log.debug("landmarks of the rendering are off (residual %.2f); pasting it unwarped", residual)
            return generated
        return warp_piecewise_affine(generated, source, source + self.geometry_strength * (target - source))

    def anonymize_frame(self, image: np.ndarray, faces: Detections, rng: np.random.Generator) -> FrameResult:
        """Every face gets its own fresh release (one per face per call)."""
        return self._anonymize(image, faces, [None] * len(faces))

    def anonymize_tracked(self, image: np.ndarray, faces: Detections, track_ids, rng: np.random.Generator) -> FrameResult:
        """Video: the noisy identity is drawn once per track and reused on every frame of it, so a
        track is one privacy release (its record is returned on the track's first face only)."""
        if len(track_ids) != len(faces):
            raise ValueError(f"{len(track_ids)} track ids for {len(faces)} faces")
        return self._anonymize(image, faces, list(track_ids))

    def release_cost(self):
        return self.mechanism.privacy_cost()

    def will_draw(self, track_id: int) -> bool:
        """Whether the next face of ``track_id`` draws a new noisy identity (the track has none yet)."""
        return track_id not in self._tracks

    def end_track(self, track_id: int) -> None:
        self._tracks.pop(track_id, None)
        self._track_noise.pop(track_id, None)
        self._track_render.pop(track_id, None)

    def _privacy_record(self, release) -> dict:
        privacy = release.cost.to_dict()
        privacy["seeded"] = self.seed is not None
        warnings = []
        if math.isinf(self.epsilon):
            warnings.append("epsilon = inf: the true identity was rendered, no privacy")
        if self.seed is not None:
            warnings.append("seeded noise: reproducible by anyone who knows the seed, not private against them")
        if warnings:
            privacy["warnings"] = warnings
        return privacy

    def _anonymize(self, image: np.ndarray, faces: Detections, track_ids: list) -> FrameResult:
        """All faces of a frame go through the recognizer, the mechanism and the v1 renderer as one
        batch each (one forward pass per network, not one per face); a batch that fails is
        retried face by face, and a face that still fails is masked solid (fail closed)."""
        from ..align import align_face
        from ..anonymizers.classical import solid_mask

        out = image.copy()
        outcomes: dict[int, FaceOutcome] = {}
        aligned: dict[int, object] = {}

        def fail(i: int, exc: BaseException) -> None:
            nonlocal out
            log.warning("identitydp could not anonymize face %d (%s); masking it", i, exc)
            out = solid_mask(out, faces.boxes[i])
            outcomes[i] = FaceOutcome(index=i, status="masked", error=f"{type(exc).__name__}: {exc}")
            aligned.pop(i, None)

        for i in range(len(faces)):
            try:
                lm = faces.landmarks[i]
                if not np.all(np.isfinite(lm)):
                    raise AnonymizationError(f"non-finite landmarks for face {i}")
                aligned[i] = align_face(image, lm, size=self.size, margin=self.margin)
            except Exception as exc:  # noqa: BLE001 - any failure on a face must hide that face (fail closed)
                fail(i, exc)
        noisy: dict[int, np.ndarray] = {}
        privacy: dict[int, dict] = {}
        landmarks68: dict[int, np.ndarray] = {}  # v2 crops' landmarks, where already predicted
        draw = []
        for i in aligned:
            track = track_ids[i]
            if track is not None and track in self._tracks:
                noisy[i] = self._tracks[track]
            else:
                draw.append(i)
        # Embeddings carry no privacy cost: a failed batch is retried face by face.
        identities: dict[int, np.ndarray] = {}

        def embed(group: list[int]) -> None:
            z = self._identities(image, faces.landmarks[group])
            for row, i in enumerate(group):
                identities[i] = z[row]

        self._batched(draw, embed, fail)
        draw = [i for i in draw if i in identities]
        if draw:
            # One draw per face, never retried: a second draw would be a second, uncharged release.
            try:
                if self.gender_from_context:
                    kept, lm68 = self._context_gender([aligned[i].crop for i in draw])
                    landmarks68.update(zip(draw, lm68))
                    release = self.mechanism.perturb(np.stack([identities[i] for i in draw]), kept)
                else:
                    release = self.mechanism.perturb(np.stack([identities[i] for i in draw]))
                z = np.asarray(release.embeddings, np.float64).reshape(len(draw), -1)
                if not np.all(np.isfinite(z)):
                    raise AnonymizationError("mechanism returned a non-finite identity")
                record = self._privacy_record(release)
            except Exception as exc:  # noqa: BLE001 - fail closed on every face of the draw
                for i in draw:
                    fail(i, exc)
            else:
                for row, i in enumerate(draw):
                    noisy[i] = z[row : row + 1]
                    privacy[i] = dict(record)
                    if self.keep:  # exactly what this face released without DP
                        privacy[i]["released_without_dp"] = release.kept_dict(row)
                    elif self.gender_from_context:  # a function of the published context, not of the face
                        privacy[i]["set_from_context"] = release.kept_dict(row)
                    if track_ids[i] is not None:
                        self._tracks[track_ids[i]] = noisy[i]
        rendered: dict[int, np.ndarray] = {}
        if not self.inpainting:
            def render(group: list[int]) -> None:
                crops = np.stack([aligned[i].crop for i in group])
                for i, face in zip(group, self.render(crops, np.concatenate([noisy[i] for i in group]))):
                    rendered[i] = face

            fresh = []
            for i in aligned:
                if i not in noisy:
                    continue
                cached = self._track_render.get(track_ids[i]) if track_ids[i] is not None else None
                if cached is not None and cached[1] < self.render_every:
                    rendered[i] = cached[0]
                    self._track_render[track_ids[i]] = (cached[0], cached[1] + 1)
                else:
                    fresh.append(i)
            self._batched(fresh, render, fail)
            if self.render_every > 1:
                for i in fresh:
                    if track_ids[i] is not None and i in rendered:
                        self._track_render[track_ids[i]] = (rendered[i], 1)
        for i in sorted(aligned):
            if i not in noisy:
                continue
            try:
                out = self._paste(out, faces, i, aligned[i], noisy[i], rendered.get(i), track_ids[i], landmarks68.get(i))
                outcomes[i] = FaceOutcome(index=i, privacy=privacy.get(i))
            except Exception as exc:  # noqa: BLE001 - any failure on a face must hide that face (fail closed)
                fail(i, exc)
        for i in range(len(faces)):
            if i not in outcomes:
                fail(i, AnonymizationError("face was not rendered"))
        return FrameResult(image=out, faces=[outcomes[i] for i in range(len(faces))])

    @staticmethod
    def _batched(indices: list[int], work, fail) -> None:
        """Run ``work(indices)`` as one batch; if it raises, run it on each index alone and report
        the ones that still fail to ``fail`` (one bad face costs only itself)."""
        if not indices:
            return
        try:
            work(list(indices))
            return
        except Exception:  # noqa: BLE001 - retried one by one below, where each failure is reported
            log.debug("batch of %d faces failed; retrying one by one", len(indices))
        for i in indices:
            try:
                work([i])
            except Exception as exc:  # noqa: BLE001 - fail closed on this face
                fail(i, exc)

    def _paste(self, out, faces: Detections, i: int, aligned, noisy: np.ndarray, rendered, track, landmarks68=None):
        from ..blend import enlarged_box, paste_face

        region = enlarged_box(faces.boxes[i], PASTE_REGION)
        if self.inpainting:
            cached = self._track_render.get(track) if track is not None and self.render_every > 1 else None
            if cached is not None and cached[1] < self.render_every:
                face, mask = cached[0]
                self._track_render[track] = (cached[0], cached[1] + 1)
            else:
                seed = None if self._texture_rng is None else int(self._texture_rng.integers(2**62))
                if track is not None:
                    seed = self._track_noise.setdefault(track, secrets.randbits(62) if seed is None else seed)
                face, mask = self.inpaint(aligned.crop, noisy, noise_seed=seed, landmarks68=landmarks68)
                if track is not None and self.render_every > 1:
                    self._track_render[track] = ((face, mask), 1)
            return paste_face(out, face, aligned.inverse, mask, color_match=self.color_match,
                              original_crop=aligned.crop, region=region, sharpen=self.sharpen)
        face = rendered
        if self.geometry:
            face = self.match_geometry(face, aligned.crop)
        return paste_face(out, face, aligned.inverse, self.mask, color_match=self.color_match,
                          original_crop=aligned.crop, region=region)
