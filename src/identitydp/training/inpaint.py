"""Train the v2 IdentityDP renderer (:mod:`identitydp.generate.inpaint`) against a masked PatchGAN.

Usage (from the repository root)::

    identitydp train --bundle .data/v2_128.npz --minutes 60 --out runs/v2-cpu       # this CPU
    scripts/train_gpu.sh OUT 9                                                     # a GPU window

Per step, on a batch of training faces (never LFW): the inner face (landmark hull + forehead) is
erased, the renderer repaints it from the context, the landmark sketch, the coarse colour and an
identity vector, and the composite is judged. The identity source of each face is, at random:
its own identity (``self``: the only case with a pixel target), another photo of the same CelebA
person (``pair``: pixel target at half weight, the identity of a different photo), another face
(``swap``), or its own identity with noise of random strength (``noisy``: what the DP mechanisms
produce; ``--noisy-projection`` of them drawn exactly as the default projection mechanism releases
them at ε from 0.25 to 256, the rest as Laplace noise on the sphere).

Losses (weights in :class:`~identitydp.training.options.InpaintTrainConfig`):

* ``l1``: mean absolute error inside the mask (self / pair), between P×P average-pooled images
  (``--l1-pool``, default 4: coarse colour and layout only; fine detail is left to the other losses);
* ``perc``: L1 between the dlib recognizer's intermediate maps of output and target chips
  (a face-aware perceptual loss; self / pair);
* ``id``: ``1 − cos`` between the centred dlib descriptor of a jittered, degraded copy of the
  output and the source identity (every sample; the noisy rows weighted by ``--w-id-noisy``, since
  a noised vector need not be any face's, and the swap rows by ``--w-id-swap``, since another
  face's identity can contradict the context it is painted into); one recognizer pass serves
  ``perc`` and ``id``;
* ``adv``: hinge loss of a two-scale PatchGAN that sees the composite and the mask; with
  ``--disc-sketch`` also the landmark sketch, and the discriminator is shown real photos with
  another face's sketch and mask as fakes (``--w-mismatch``), so that it checks whether the
  face follows the geometry it was given (mouth open or closed, gaze, pose) — the only loss
  that asks that of the swap and noisy rows, which have no pixel target;
* ``hf`` (``--w-hf``, off by default): a hinge on the repaint's high-frequency energy above the
  photo's (the eval's sharpness measure), over the whole region or per ``--hf-cell`` cell, against
  speckle that is not detail.

Only the dlib port is in the loss. MobileFace and FaceRes never see a training gradient, so both
stay independent judges for the evaluation (``identitydp eval``).

Run folder (``--out``), at most 8 files so that it can come back from a remote machine:
``config.json``, ``log.jsonl``, ``samples_*.png`` (last ``--keep-samples``; rows: target | input
the renderer sees | self | swap | noisy | the default release at ε = 1), ``ckpt_fp16.safetensors`` (G, EMA G and D in fp16: what
the next run needs to continue, ``--init``), ``generator_fp16.safetensors`` (the shippable EMA
renderer). ``--full-ckpt`` (default ``OUT/ckpt_full.safetensors``) holds fp32 weights + Adam
state for exact resumption (``--resume``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..generate.checkpoint import load_generator
from .data import FaceBundle, PairIndex, load_bundle, to_model, to_pixels
from ..generate.identity import (
    CHIP_SIZE,
    centre,
    crop_to_chip_matrices,
    degrade,
    jitter_theta,
    laplace_projection_noise,
    laplace_sphere_noise,
    resample,
    warp_theta,
)
from ..generate.inpaint import (
    SKETCH_CHANNELS,
    InpaintConfig,
    InpaintGenerator,
    MaskedPatchDiscriminator,
    landmark_sketch,
    mask_for,
)
from ..generate.inpaint_conditions import CONDITIONING_PREFIXES, PART_FIELDS, PARTS, part_shape
from ..eval.image_metrics import SHARPNESS_SIGMA
from .options import InpaintTrainConfig, add_arguments, config_from_args
from .loop import TimedTrainer
from .state import flip_theta

log = logging.getLogger("identitydp.training")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16 flags).

    oneDNN also "supports" bf16 on plain AVX-512 by emulation, which is slower than fp32, so the
    capability PyTorch reports is not the test. Off Linux (no ``/proc/cpuinfo``) this says False.
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def sharpness_ratio(images: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor,
                    sigma: float = SHARPNESS_SIGMA) -> float:
    """Fine detail of renderings relative to the photos, inside the repainted region.

    The high-frequency energy Σ (g − GaussianBlur(g, σ))² of the grey image ``g``, summed over the
    mask, of ``images`` divided by that of ``reference`` (the eval's sharpness ratio, measured on
    the training crops: 1 = as much fine detail as the photos, a blur is far below).

    Args:
        images, reference: (N, 3, S, S) in [-1, 1]; mask: (N, 1, S, S) in [0, 1].
    """
    import cv2

    def energy(batch: torch.Tensor) -> float:
        rgb = batch.float().clamp(-1, 1).cpu().numpy()
        grey = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]) * 127.5
        resid = np.stack([g - cv2.GaussianBlur(g, (0, 0), sigma) for g in grey.astype(np.float32)])
        return float((resid ** 2 * mask[:, 0].float().cpu().numpy()).sum())

    ref = energy(reference)
    return energy(images) / ref if ref > 0 else float("nan")


def high_frequency_map(images: torch.Tensor, sigma: float = SHARPNESS_SIGMA) -> torch.Tensor:
    """Differentiable per-pixel high-frequency energy, as :func:`sharpness_ratio` measures it.

    (g − GaussianBlur(g, σ))², ``g`` the grey image in 0–255 units; the blur is cv2's (kernel
    2·round(4σ)+1, reflected border) so that ratios match the eval's.

    Args:
        images: (N, 3, S, S) in [-1, 1].
    Returns:
        (N, 1, S, S) in grey-level².
    """
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=torch.float32)
    grey = (images.float().clamp(-1, 1) * weights[None, :, None, None]).sum(1, keepdim=True) * 127.5
    radius = int(round(4 * sigma))
    t = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    blurred = F.pad(grey, (radius, radius, 0, 0), mode="reflect")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1))
    blurred = F.pad(blurred, (0, 0, radius, radius), mode="reflect")
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1))
    return (grey - blurred) ** 2


def high_frequency_energy(images: torch.Tensor, mask: torch.Tensor, sigma: float = SHARPNESS_SIGMA) -> torch.Tensor:
    """(N,) mean high-frequency energy over the mask (grey-level² per masked pixel); ``images``
    (N, 3, S, S) in [-1, 1], ``mask`` (N, 1, S, S) in [0, 1]."""
    m = mask.float()
    return (high_frequency_map(images, sigma) * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1e-6)


def excess_detail(images: torch.Tensor, photos: torch.Tensor, mask: torch.Tensor, cell: int = 0) -> torch.Tensor:
    """(N,) high-frequency energy of ``images`` above that of ``photos``, as a share of the photos'.

    ``cell`` 0 compares the whole masked region at once (a global sharpness ratio above 1); a cell
    of P pixels compares P×P cells and sums only the cells in excess, so that speckle in one place
    is not paid for by blur in another. All (N, ·, S, S); images in [-1, 1], mask in [0, 1].
    """
    m = mask.float()
    e_y, e_x = high_frequency_map(images) * m, high_frequency_map(photos) * m
    total_x = e_x.sum((1, 2, 3)).clamp_min(1e-6)
    if cell <= 0:
        return F.relu(e_y.sum((1, 2, 3)) - e_x.sum((1, 2, 3))) / total_x
    return F.relu(F.avg_pool2d(e_y, cell) - F.avg_pool2d(e_x, cell)).sum((1, 2, 3)) * cell * cell / total_x


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _render_conditions(lm68: np.ndarray, G: InpaintGenerator) -> tuple[np.ndarray, np.ndarray]:
    """(68, 2) landmarks → (mask (1, S, S) uint8, sketch (5, S, S) uint8) for renderer ``G``."""
    mask = mask_for(G.cfg, lm68)
    sketch = landmark_sketch(G.sketch_geometry(lm68), G.cfg.size)
    return (mask[None] * 255 + 0.5).astype(np.uint8), (sketch * 255 + 0.5).astype(np.uint8)


def precompute_conditions(landmarks68: np.ndarray, G: InpaintGenerator, threads: int = 2,
                          cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Masks (N, 1, S, S) and sketches (N, 5, S, S), uint8, of every bundle face (cached on disk,
    the cache file named after everything that shapes them)."""
    n = len(landmarks68)
    if cache is not None:
        c = G.cfg
        tag = f"l{c.mask_lift:g}g{c.mask_grow:g}c{int(c.mask_convex)}k{c.shape_components}"
        if c.shape_components > 0:
            tag += "-" + hashlib.sha256(G.shape_basis.detach().cpu().numpy().tobytes()).hexdigest()[:10]
        for part, (_, basis) in G.part_models().items():
            tag += f"{part[0]}{c.part_components[part]}-" + hashlib.sha256(basis.tobytes()).hexdigest()[:10]
        cache = cache.with_name(cache.name.replace(".npz", f".{tag}.npz"))
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if z["mask"].shape == (n, 1, G.cfg.size, G.cfg.size):
                return z["mask"], z["sketch"]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        parts = list(pool.map(lambda lm: _render_conditions(lm, G), landmarks68))
    masks = np.stack([p[0] for p in parts])
    sketches = np.stack([p[1] for p in parts])
    if cache is not None:
        try:
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, mask=masks, sketch=sketches)
            os.replace(tmp, cache)
        except OSError as exc:
            log.warning("cannot cache the conditioning maps at %s: %s", cache, exc)
    return masks, sketches


def _principal_modes(flat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) samples → their mean (D,) and k leading principal directions (k, D)."""
    mean = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    return mean, vt[:k]


def fit_shape_model(landmarks68: np.ndarray, size: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (136,) and the k leading principal modes (k, 136) of training-face landmarks, in
    128-px crop coordinates (public training data only)."""
    return _principal_modes(np.asarray(landmarks68, np.float64).reshape(len(landmarks68), -1) * (128.0 / size), k)


def fit_part_model(landmarks68: np.ndarray, size: int, part: str, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (2P,) and the m leading principal modes (m, 2P) of training faces' ``part`` shapes
    (:data:`~identitydp.generate.inpaint_conditions.PARTS`: each relative to its anchor's
    centroid), in 128-px crop units (public training data only). On the v2 bundle the mouth's
    first four are width against opening, a sideways shift, opening with the corners down, and
    the corners' tilt (90 % of the variance)."""
    shapes = part_shape(np.asarray(landmarks68, np.float64) * (128.0 / size), part)
    return _principal_modes(shapes.reshape(len(shapes), -1), m)


class InpaintTrainer(TimedTrainer):
    """One training run of the v2 renderer. Build with an :class:`InpaintTrainConfig`, then :meth:`run`."""

    LOSS_NAMES = ("d", "adv", "l1", "perc", "id", "hf", "g")

    def __init__(self, cfg: InpaintTrainConfig, start_time: float | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        self._start_run(cfg, start_time, echo)
        self.memory_format = torch.channels_last
        # bf16 autocast (--amp): auto = on CUDA, and on CPUs with native bf16 arithmetic, where the
        # v2 trainer ran 1.4x faster on one thread and 1.6x on two here.
        self.bf16 = (self.cuda or (self.device.type == "cpu" and cpu_has_native_bf16())) if cfg.amp == "auto" \
            else cfg.amp == "bf16"

        t0 = time.time()
        threads = max(1, os.cpu_count() or 2)
        self.data: FaceBundle = load_bundle(cfg.bundle, size=cfg.size, device=self.device, limit=cfg.limit, threads=threads)
        if self.data.landmarks68 is None:
            raise ValueError(f"{cfg.bundle} has no 68-point landmarks: rebuild it with scripts/build_train_bundle.py")
        self.event("data", faces=len(self.data), heldout=int(self.data.heldout.sum()), size=self.data.size,
                   margin=self.data.margin, seconds=round(time.time() - t0, 1))
        self.train_idx = torch.nonzero(~self.data.heldout).squeeze(1)
        held = torch.nonzero(self.data.heldout).squeeze(1)
        pick = torch.linspace(0, len(held) - 1, min(cfg.eval_faces, len(held))).round().long().to(held.device)
        self.eval_idx = held[pick]
        self.pairs = PairIndex(self.data.identity, ~self.data.heldout)

        from ..models.dlib_resnet import DlibEncoder

        self.dlib = DlibEncoder.load(device=self.device).to(memory_format=self.memory_format)
        lms = self.data.landmarks.cpu().numpy()
        self.chip_theta = torch.from_numpy(warp_theta(crop_to_chip_matrices(lms), self.data.size, CHIP_SIZE)).to(self.device)
        t0 = time.time()
        raw = self._embed_bundle()
        self.id_mean = raw[~self.data.heldout].mean(0)
        self.z = centre(raw, self.id_mean)
        self.event("embeddings", seconds=round(time.time() - t0, 1))

        # The shipped default domain (public, fitted on training embeddings): noisy identities
        # are also drawn as its mechanism releases them, so the renderer sees what it will get.
        # --gender-consistent: each face's coordinate along the public gender direction (the one
        # --keep gender and the context network use), and its side of the men/women midpoint.
        self.gender_dir = self.gender_coord = self.gender_side = None
        if cfg.gender_consistent:
            from ..models.context_gender import ContextGender
            from ..privacy.keep import AttributeDirections

            direction = AttributeDirections.load().select(("gender",)).directions[0]
            self.gender_dir = torch.from_numpy(direction).float().to(self.device)
            self.gender_coord = self.z @ self.gender_dir
            means = ContextGender.load()
            self.gender_side = self.gender_coord > 0.5 * (means.male_mean + means.female_mean)
            self.event("gender_consistent", women_share=round(float(self.gender_side[self.train_idx].float().mean()), 3))

        self.projection = None
        if cfg.noisy_projection > 0 and cfg.p_noisy > 0:
            from ..generate.anonymizer import PROJECTION_NAME
            from ..models.registry import weight_path
            from ..privacy import Projection

            self.projection = Projection.load(weight_path(PROJECTION_NAME))

        if cfg.l1_pool < 1 or cfg.size % cfg.l1_pool:
            raise ValueError(f"--l1-pool must be >= 1 and divide --size {cfg.size}, got {cfg.l1_pool}")
        self.net_cfg = InpaintConfig(size=cfg.size, **_network_options(cfg))
        self.G = InpaintGenerator(self.net_cfg).to(self.device, memory_format=self.memory_format)
        self.D = MaskedPatchDiscriminator(self.net_cfg, sketch_channels=SKETCH_CHANNELS if cfg.disc_sketch else 0
                                          ).to(self.device, memory_format=self.memory_format)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        fused = {"fused": True} if self.cuda else {}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas), **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas), **fused)
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0
        self._last_eval: dict = {}
        self._last_eval_outputs = None
        self.judge = self._load_judge()
        self._init_has: set[str] = set()
        if cfg.resume:
            self.load_full(cfg.resume)
        elif cfg.init:
            self.load_weights(cfg.init)
        if self.net_cfg.shape_components > 0:
            # The public shape model is fitted here, on the training faces, and ships in the weights;
            # a resumed or initialised run keeps the one it was trained with.
            train_landmarks = self.data.landmarks68[~self.data.heldout].cpu().numpy()
            if not cfg.resume and "shape" not in self._init_has:
                mean, basis = fit_shape_model(train_landmarks, self.data.size, self.net_cfg.shape_components)
                for g in (self.G, self.G_ema):
                    g.shape_mean.copy_(torch.from_numpy(mean))
                    g.shape_basis.copy_(torch.from_numpy(basis))
            for part, count in self.net_cfg.part_components.items():
                if count > 0 and not cfg.resume and part not in self._init_has:
                    mean, basis = fit_part_model(train_landmarks, self.data.size, part, count)
                    for g in (self.G, self.G_ema):
                        getattr(g, f"{part}_mean").copy_(torch.from_numpy(mean))
                        getattr(g, f"{part}_basis").copy_(torch.from_numpy(basis))
        t0 = time.time()
        # On a GPU box the maps take seconds to draw on its many cores, and writing a multi-GB cache
        # would eat a time-boxed window; on the CPU the cache saves a minute per restart.
        cache = None if (cfg.limit or self.cuda) else Path(str(cfg.bundle) + f".cond{self.data.size}.npz")
        masks, sketches = precompute_conditions(self.data.landmarks68.cpu().numpy(), self.G, threads, cache)
        self.masks = torch.from_numpy(masks).to(self.device)
        self.sketches = torch.from_numpy(sketches).to(self.device)
        self.event("conditions", seconds=round(time.time() - t0, 1), mask_area=round(float(self.masks.float().mean() / 255), 3),
                   mask_lift=self.net_cfg.mask_lift, mask_grow=self.net_cfg.mask_grow, mask_convex=self.net_cfg.mask_convex,
                   shape_components=self.net_cfg.shape_components,
                   **{field: getattr(self.net_cfg, field) for field in PART_FIELDS.values()})
        self.G_run, self.D_run = self.G, self.D
        if cfg.compile:
            self.G_run, self.D_run = torch.compile(self.G), torch.compile(self.D)
        self.event("model", g_params=count_params(self.G), d_params=count_params(self.D),
                   net=self.net_cfg.to_dict(), judge=self.judge is not None)
        self._write_config(threads=torch.get_num_threads(), bf16=self.bf16)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # ------------------------------------------------------------------ identity
    # ------------------------------------------------------------------ batches
    def _conditions(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.masks[idx].float() / 255.0, self.sketches[idx].float() / 255.0

    def _batch(self) -> dict:
        c = self.cfg
        b = c.batch
        dev = self.device
        idx = self.train_idx[torch.randint(len(self.train_idx), (b,), device=dev, generator=self.gen)]
        x = to_model(self.data.images[idx])
        mask, sketch = self._conditions(idx)
        theta = self.chip_theta[idx]
        flip = torch.rand(b, device=dev, generator=self.gen) < 0.5
        fl = flip[:, None, None, None]
        x, mask, sketch = (torch.where(fl, t.flip(3), t) for t in (x, mask, sketch))
        theta = torch.where(flip[:, None, None], flip_theta(theta), theta)
        jit = torch.rand(b, 2, device=dev, generator=self.gen) * 2 - 1
        x = (x * (1 + 0.1 * jit[:, :1, None, None]) + 0.1 * jit[:, 1:, None, None]).clamp(-1, 1)

        u = torch.rand(b, device=dev, generator=self.gen)
        total = c.p_self + c.p_pair + c.p_swap + c.p_noisy
        t1 = c.p_self / total
        t2 = (c.p_self + c.p_pair) / total
        t3 = (c.p_self + c.p_pair + c.p_swap) / total
        selfm, pair_req = u < t1, (u >= t1) & (u < t2)
        swap, noisy = (u >= t2) & (u < t3), u >= t3
        partner = self.pairs.partner(idx, self.gen)
        pair = pair_req & (partner != idx)
        selfm = selfm | (pair_req & ~pair)  # no second photo of this person: reconstruct itself
        other = self.train_idx[torch.randint(len(self.train_idx), (b,), device=dev, generator=self.gen)]
        if self.gender_side is not None:
            # The first of 8 random partners on the face's side of the gender midpoint (the first
            # one when none is: about 0.5^8 of rows).
            pool = self.train_idx[torch.randint(len(self.train_idx), (b, 8), device=dev, generator=self.gen)]
            same = self.gender_side[pool] == self.gender_side[idx][:, None]
            other = pool[torch.arange(b, device=dev), same.int().argmax(1)]
        z_self = self.z[idx]
        z_noisy, _ = laplace_sphere_noise(z_self, self.gen)
        if self.projection is not None:
            z_proj, _ = laplace_projection_noise(z_self, self.projection, self.gen)
            as_proj = torch.rand(b, device=dev, generator=self.gen) < c.noisy_projection
            z_noisy = torch.where(as_proj[:, None], z_proj, z_noisy)
        if self.gender_dir is not None:
            # As the default release does with the context's value: the noisy identity's gender
            # coordinate set to the face's own.
            u = self.gender_dir
            z_noisy = F.normalize(z_noisy + (self.gender_coord[idx] - z_noisy @ u)[:, None] * u, dim=1)
        z = torch.where(swap[:, None], self.z[other], z_self)
        z = torch.where(pair[:, None], self.z[partner], z)
        z = torch.where(noisy[:, None], z_noisy, z)
        rec_w = selfm.float() + 0.5 * pair.float()
        cf = self.memory_format
        return {"x": x.contiguous(memory_format=cf), "mask": mask.contiguous(memory_format=cf),
                "sketch": sketch.contiguous(memory_format=cf), "theta": theta, "z": z, "rec_w": rec_w,
                "noisy": noisy, "swap": swap, "idx": idx, "other": other}

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """One discriminator and one generator update on a fresh batch; returns the losses."""
        c = self.cfg
        bt = self._batch()
        x, m, z, w = bt["x"], bt["mask"], bt["z"], bt["rec_w"]
        self.G.train()
        with self._autocast():
            y, raw = self.G_run(x, m, bt["sketch"], z, self.gen)
        # --- discriminator
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            sk = bt["sketch"] if c.disc_sketch else None
            real = self.D_run(x, m, sk)
            fake = self.D_run(y.detach(), m, sk)
            loss_d = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)) / len(real)
            if c.disc_sketch and c.w_mismatch > 0:
                # A real photo with the next row's sketch and mask (consistent with each other, so
                # only the face itself can give the mismatch away) is a fake: the discriminator has
                # to check the geometry, and the generator then has to follow it.
                other = torch.roll(torch.arange(x.shape[0], device=x.device), 1)
                wrong = self.D_run(x, m[other], sk[other])
                loss_d = loss_d + c.w_mismatch * sum(F.relu(1 + f).mean() for f in wrong) / len(wrong)
        loss_d.backward()
        self.opt_d.step()
        # --- generator
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            adv = -sum(f.mean() for f in self.D_run(y, m, sk)) / len(real)
            if c.l1_pool > 1:
                # Only the coarse picture (colour, lighting, layout) has a pixel target: the inner
                # face is never seen, so a per-pixel L1 would pull fine detail to the mean (blur).
                yp, xp, mp = (F.avg_pool2d(t.float(), c.l1_pool) for t in (y, x, m))
                l1 = ((yp - xp).abs().mean(1, keepdim=True) * mp).sum((1, 2, 3)) / mp.sum((1, 2, 3)).clamp_min(1e-6)
            else:
                area = m.sum((1, 2, 3)).clamp_min(1.0)
                l1 = ((y.float() - x.float()).abs().mean(1, keepdim=True) * m).sum((1, 2, 3)) / area
            wsum = w.sum().clamp_min(1.0)
            l1 = (l1 * w).sum() / wsum
            # One recognizer pass on the output serves the identity and the perceptual loss; the
            # target goes through the same jittered warp and the same degradation.
            theta = jitter_theta(bt["theta"], self.gen)
            chips = degrade(torch.cat([resample(to_pixels(y), theta, CHIP_SIZE),
                                       resample(to_pixels(x), theta, CHIP_SIZE)], 1), self.gen)
            chip_y, chip_x = chips[:, :3], chips[:, 3:]
            raw_id, feats_y = self.dlib.forward_features(chip_y.contiguous(memory_format=self.memory_format))
            zid = centre(raw_id, self.id_mean)
            id_w = torch.where(bt["noisy"], c.w_id_noisy, torch.where(bt["swap"], c.w_id_swap, 1.0))
            idl = ((1 - (zid * z).sum(1)) * id_w).sum() / id_w.sum().clamp_min(1e-6)
            rec_rows = w > 0
            if bool(rec_rows.any()):
                with torch.no_grad():
                    _, feats_x = self.dlib.forward_features(chip_x[rec_rows].contiguous(memory_format=self.memory_format))
                ww = w[rec_rows]
                perc = sum(((fy[rec_rows].float() - fx.float()).abs().mean((1, 2, 3)) * ww).sum() / ww.sum()
                           for fy, fx in zip(feats_y, feats_x)) / len(feats_x)
            else:
                perc = torch.zeros((), device=self.device)
            loss_g = c.w_adv * adv + c.w_l1 * l1 + c.w_perc * perc + c.w_id * idl
            hf = torch.zeros((), device=self.device)
            if c.w_hf > 0:
                # Only an excess is penalised: a repaint may be as detailed as the photo it sits in,
                # but speckle that out-textures the photo is not detail.
                hf = excess_detail(y, x, m, c.hf_cell).mean()
                loss_g = loss_g + c.w_hf * hf
        loss_g.backward()
        self.opt_g.step()
        self._update_ema()
        self.step += 1
        self.images_seen += x.shape[0]
        return {"d": loss_d, "adv": adv, "l1": l1, "perc": perc, "id": idl, "hf": hf, "g": loss_g}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out check of the EMA renderer: cosines of outputs to the source and the original
        identity for dlib (in the loss) and MobileFace (never in the loss: the number to watch),
        on self-reconstructions, swaps and noisy identities; masked L1 of the self-reconstruction."""
        idx = self.eval_idx
        n = len(idx)
        x = to_model(self.data.images[idx]).contiguous(memory_format=self.memory_format)
        m, sk = self._conditions(idx)
        z_t = self.z[idx]
        perm = torch.roll(torch.arange(n, device=self.device), n // 2)
        g = torch.Generator(device=self.device)
        g.manual_seed(1234)
        z_n, _ = laplace_sphere_noise(z_t, g, ratio_range=(3.0, 3.0))
        sources = [("self", z_t), ("swap", z_t[perm]), ("noisy", z_n)]
        if self.projection is not None:  # what the default setting (projection, ε = 1) releases
            sources.append(("eps1", laplace_projection_noise(z_t, self.projection, g, epsilon_range=(1.0, 1.0))[0]))
        outs = {}
        for name, zz in sources:
            ys = []
            for s in range(0, n, 32):
                gg = torch.Generator(device=self.device)
                gg.manual_seed(99 + s)
                with self._autocast():
                    ys.append(self.G_ema(x[s : s + 32], m[s : s + 32], sk[s : s + 32], zz[s : s + 32], gg)[0].float())
            outs[name] = torch.cat(ys)
        res: dict = {"step": self.step, "images_seen": self.images_seen}
        theta = self.chip_theta[idx]
        for name, y in outs.items():
            zid = centre(self.dlib(resample(to_pixels(y), theta, CHIP_SIZE)), self.id_mean)
            res[f"dlib_{name}_to_original"] = float((zid * z_t).sum(1).mean())
            if name == "swap":
                res["dlib_swap_to_source"] = float((zid * z_t[perm]).sum(1).mean())
        res["l1_self_masked"] = float(((outs["self"] - x).abs().mean(1, keepdim=True) * m).sum() / m.sum())
        for name in ("self", "eps1"):
            if name in outs:
                res[f"sharpness_{name}"] = sharpness_ratio(outs[name], x, m)
        if self.judge is not None:
            jt = self._judge_embed(x)
            res["judge_random_pair"] = float((jt * jt[perm]).sum(1).mean())
            for name, y in outs.items():
                jy = self._judge_embed(y)
                res[f"judge_{name}_to_original"] = float((jy * jt).sum(1).mean())
                if name == "swap":
                    res["judge_swap_to_source"] = float((jy * jt[perm]).sum(1).mean())
        self.event("eval", **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()})
        self._last_eval_outputs = (x, m, sk, perm, outs)
        self._last_eval = res
        return res

    @torch.no_grad()
    def write_samples(self, columns: int = 8) -> Path:
        """PNG grid, rows: original | what the renderer sees | self | swap | noisy identity (sphere)
        | the default release at ε = 1 (when the projection is loaded)."""
        from PIL import Image

        if self._last_eval_outputs is None:
            self.evaluate()
        x, m, sk, perm, outs = self._last_eval_outputs
        k = min(columns, len(x))
        seen = x[:k] * (1 - m[:k]) + m[:k] * (sk[:k, :3] * 2 - 1).clamp(-1, 1)
        rows = [x[:k], seen, outs["self"][:k], outs["swap"][:k], outs["noisy"][:k]]
        if "eps1" in outs:
            rows.append(outs["eps1"][:k])
        grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
        img = to_pixels(grid).clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()
        path = self.out / f"samples_{self.step:06d}.png"
        Image.fromarray(img).save(path)
        old = sorted(self.out.glob("samples_*.png"))
        for p in old[: max(0, len(old) - self.cfg.keep_samples)]:
            p.unlink()
        return path

    # ------------------------------------------------------------------ checkpoints
    def load_weights(self, path: str | Path) -> None:
        """Start from a ``ckpt_fp16.safetensors`` (G, EMA, D; fresh optimizers, counters kept) or
        an exported v2 generator (G and EMA from it, fresh D)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        with safe_open(str(path), "pt") as fh:
            keys = set(fh.keys())
            meta = fh.metadata() or {}
        if not any(k.startswith("D.") for k in keys):
            model, id_mean, _ = load_generator(path, device=self.device)
            _load_matching(self.G, model.state_dict())
            self._init_has = _load_matching(self.G_ema, model.state_dict())
            self._set_id_mean(id_mean)
            self.event("initialised", path=str(path), discriminator="fresh")
            return
        tensors = load_file(str(path), device=str(self.device))

        def part(prefix: str) -> dict:
            return {k[len(prefix):]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(prefix)}

        _load_matching(self.G, part("G."))
        stored_d, own_d = part("D."), self.D.state_dict()
        self.D.load_state_dict(_fit_disc_inputs(stored_d, own_d))
        first = [k for k in own_d if k.endswith(".0.weight_orig") and k in stored_d]
        if any(stored_d[k].shape[1] != own_d[k].shape[1] for k in first):
            # Visible in the log: a chained run that forgot --disc-sketch drops the sketch inputs.
            self.event("discriminator_inputs", stored=int(stored_d[first[0]].shape[1]), now=int(own_d[first[0]].shape[1]))
        self._init_has = _load_matching(self.G_ema, part("G_ema.") if any(k.startswith("G_ema.") for k in keys) else part("G."))
        self._set_id_mean(tensors["id_mean"])
        self.step = int(meta.get("step", 0))
        self.images_seen = int(meta.get("images_seen", 0))
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        self.event("initialised", path=str(path), step=self.step)


def _fit_disc_inputs(state: dict, own: dict) -> dict:
    """A discriminator state whose first convolutions read more or fewer input channels than
    ``own`` (a run that adds or drops ``--disc-sketch``), made to fit: new channels get zero
    weights (the loaded discriminator's verdicts are unchanged at the start), dropped ones are cut.

    Spectral norm keeps the weight's right singular vector ``weight_v`` over (in_channels × k × k);
    zero columns leave the singular values unchanged, so it is padded or cut the same way.
    """
    out = dict(state)
    for key, target in own.items():
        if not key.endswith(".0.weight_orig") or key not in state or state[key].shape == target.shape:
            continue
        w = state[key]
        if w.shape[0] != target.shape[0] or w.shape[2:] != target.shape[2:]:
            raise ValueError(f"discriminator tensor {key} is {tuple(w.shape)}, expected {tuple(target.shape)}")
        cin, k = target.shape[1], target.shape[2] * target.shape[3]
        fitted = torch.zeros_like(target, dtype=w.dtype)
        n = min(cin, w.shape[1])
        fitted[:, :n] = w[:, :n]
        out[key] = fitted
        v_key = key[: -len("orig")] + "v"
        v = state[v_key].reshape(w.shape[1], k)
        v_fit = torch.zeros(cin, k, dtype=v.dtype, device=v.device)
        v_fit[:n] = v[:n]
        out[v_key] = F.normalize(v_fit.reshape(-1), dim=0)
    return out


def stored_network(path: str | Path) -> dict | None:
    """The network config a training checkpoint was written with (its ``net`` metadata), or None."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        raw = (fh.metadata() or {}).get("net")
    return None if raw is None else json.loads(raw)


def _network_options(cfg: InpaintTrainConfig) -> dict:
    """``--net`` without its size; when no ``--net`` is given, a ``--resume`` / ``--init`` run
    takes the checkpoint's own network, so that continuing a run needs only the checkpoint."""
    net = dict(cfg.net)
    source = cfg.resume or cfg.init
    if not net and source:
        stored = stored_network(source)
        if stored is not None:
            net = stored
            if int(net.get("size", cfg.size)) != cfg.size:
                raise ValueError(f"{source} was trained at {net['size']} px; pass --size {net['size']} "
                                 f"(or --net to change the network)")
    size = net.pop("size", cfg.size)
    if int(size) != cfg.size:
        raise ValueError(f"--net says size {size} but --size is {cfg.size}")
    return net


def _load_matching(module: torch.nn.Module, state: dict) -> set[str]:
    """Load weights whose config may differ only in conditioning (mask, shape and part models):
    every learned tensor must match; the shape- and part-model buffers may be absent (they are
    fitted).

    A checkpoint whose shape (or part) model has more modes than this network's gives its
    leading ones (principal modes are nested: the k-mode model of the same faces is their first
    k rows).

    Returns:
        the conditioning models that came from the checkpoint (``"shape"``, ``"mouth"``,
        ``"brows"``); the caller fits the others.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(CONDITIONING_PREFIXES)]
    if missing:
        raise ValueError(f"checkpoint lacks {missing[:5]}{'…' if len(missing) > 5 else ''}")
    load = {k: state[k].to(own[k].dtype) for k in own if k in state}
    loaded = set()
    for model in ("shape", *PARTS):
        basis, mean = f"{model}_basis", f"{model}_mean"
        if basis in load and load[basis].shape != own[basis].shape:
            if load[basis].shape[0] >= own[basis].shape[0] and load[basis].shape[1:] == own[basis].shape[1:]:
                load[basis] = load[basis][: own[basis].shape[0]].clone()
            else:
                load.pop(basis)
                load.pop(mean, None)
        if basis in load and mean in load:
            loaded.add(model)
    module.load_state_dict(load, strict=False)
    return loaded


def run_from_args(args: argparse.Namespace) -> int:
    start = time.time()
    cfg = config_from_args(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    InpaintTrainer(cfg, start_time=start, echo=lambda line: print(line, flush=True)).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m identitydp.training.inpaint", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
