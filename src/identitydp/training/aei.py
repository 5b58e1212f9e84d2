"""Train the IdentityDP generator (attribute encoder + AAD generator) against a PatchGAN.

Usage (from the repository root; needs only torch, numpy, safetensors, opencv, pillow)::

    PYTHONPATH=src python3 -m identitydp.training.aei --bundle .data/train128.npz \
        --device cuda --minutes 9 --out runs/gpu1

or ``identitydp train ...`` with the same options. ``--minutes`` is a wall-time budget from
process start: training stops early enough to write the final checkpoint, samples, the exported
fp16 generator and a final evaluation.

Losses (docs/design.md#the-renderer; FaceShifter's weights): hinge adversarial + 10·attribute + 5·identity +
10·reconstruction. Identity is ``1 − cos`` between the centred dlib descriptor of a *degraded,
jittered* copy of the output (differentiable dlib port, chip warp by ``grid_sample``) and the
source identity. Each sample's source is, at random: another face (swap), the face itself
(reconstruction), another image of the same CelebA person (reconstruction weight ½), or its own
identity with Laplace-shaped noise at a random noise level (what the DP mechanisms produce).

Run folder (``--out``), at most 8 files so that it can come back from a remote machine:
``config.json`` (resolved), ``log.jsonl`` (losses, throughput, evaluations), ``samples_*.png``
(last ``--keep-samples``; rows: target | source | swap | self | noisy), ``ckpt_fp16.safetensors``
(G + D weights, fp16, with the step counters in its metadata), ``generator_fp16.safetensors``
(the shippable EMA generator + attribute encoder + identity mean). ``--full-ckpt`` (default
``OUT/ckpt_full.safetensors``) holds fp32 weights + Adam state for exact resumption.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import FaceBundle, PairIndex, load_bundle, to_model, to_pixels
from ..generate.identity import (
    CHIP_SIZE,
    centre,
    crop_to_chip_matrices,
    crop_to_template_matrices,
    degrade,
    jitter_theta,
    laplace_sphere_noise,
    resample,
    warp_theta,
)
from ..generate.checkpoint import load_generator
from ..generate.networks import FaceGenerator, MultiScalePatchDiscriminator, NetConfig, count_params
from .aei_options import TrainConfig, add_arguments, config_from_args
from .loop import TimedTrainer
from .state import flip_theta

log = logging.getLogger("identitydp.train")


class Trainer(TimedTrainer):
    """One training run. Build with a :class:`TrainConfig`, then :meth:`run`."""

    def __init__(self, cfg: TrainConfig, start_time: float | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        """``echo`` receives every log record as a JSON line (the CLI prints them)."""
        self._start_run(cfg, start_time, echo)

        t0 = time.time()
        self.data: FaceBundle = load_bundle(cfg.bundle, size=cfg.size, device=self.device, limit=cfg.limit,
                                            threads=max(1, (os.cpu_count() or 2)))
        self.event("data", faces=len(self.data), heldout=int(self.data.heldout.sum()), size=self.data.size,
                   margin=self.data.margin, seconds=round(time.time() - t0, 1))
        self.train_idx = torch.nonzero(~self.data.heldout).squeeze(1)
        held = torch.nonzero(self.data.heldout).squeeze(1)
        # Spread over the held-out set so that both UTKFace and CelebA faces are evaluated.
        pick = torch.linspace(0, len(held) - 1, min(cfg.eval_faces, len(held))).round().long().to(held.device)
        self.eval_idx = held[pick]
        self.pairs = PairIndex(self.data.identity, ~self.data.heldout)

        from ..models.dlib_resnet import DlibEncoder

        self.dlib = DlibEncoder.load(device=self.device)
        self.memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        self.dlib = self.dlib.to(memory_format=self.memory_format)
        # Chip warps are fixed per face: precompute their thetas once.
        lms = self.data.landmarks.cpu().numpy()
        self.chip_theta = torch.from_numpy(warp_theta(crop_to_chip_matrices(lms), self.data.size, CHIP_SIZE)).to(self.device)
        t0 = time.time()
        raw = self._embed_bundle()
        self.id_mean = raw[~self.data.heldout].mean(0)
        self.z = centre(raw, self.id_mean)
        self.event("embeddings", seconds=round(time.time() - t0, 1),
                   random_pair_cos=round(float((self.z[:256] @ self.z[256:512].T).mean()), 4) if len(self.z) >= 512 else None)

        self.id2 = None
        if cfg.id2 and cfg.w_id2 > 0:
            t0 = time.time()
            try:
                self._setup_id2()
            except (RuntimeError, ValueError, OSError) as exc:
                # A time-boxed remote run must not die here: train on dlib alone, and say so loudly.
                self.id2 = None
                self.event("id2_disabled", model=cfg.id2, reason=f"{type(exc).__name__}: {exc}")
            else:
                self.event("id2", model=cfg.id2, seconds=round(time.time() - t0, 1))

        net_cfg = NetConfig(size=cfg.size, **cfg.net)
        self.net_cfg = net_cfg
        self.G = FaceGenerator(net_cfg).to(self.device, memory_format=self.memory_format)
        self.D = MultiScalePatchDiscriminator(net_cfg).to(self.device, memory_format=self.memory_format)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        # Fused Adam on CUDA: one kernel per step instead of one per parameter tensor.
        fused = {"fused": True} if self.cuda else {}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas), **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas), **fused)
        self.step = 0
        self.images_seen = 0
        self._last_eval: dict = {}
        self.train_seconds = 0.0
        self.judge = self._load_judge()
        if cfg.resume:
            self.load_full(cfg.resume)
        elif cfg.init:
            self.load_weights(cfg.init)
        self.event("model", g_params=count_params(self.G), d_params=count_params(self.D),
                   encoder_params=count_params(self.G.encoder), net=net_cfg.to_dict(), judge=self.judge is not None)
        self._write_config()

    # ------------------------------------------------------------------ identity
    def _autocast(self):
        on = self.cfg.amp == "bf16" or (self.cfg.amp == "auto" and self.cuda)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def _setup_id2(self) -> None:
        """Second recognizer for the identity loss (docs/design.md: one recognizer in the loss gets gamed).
        FaceRes features are centred by their training mean, like dlib's."""
        if self.cfg.id2 != "faceres":
            raise ValueError(f"unknown second recognizer {self.cfg.id2!r} (known: faceres)")
        from ..models.judges import FACERES_SIZE, FACERES_TEMPLATE, FaceRes

        self.id2 = FaceRes.load(device=self.device)
        self.id2_size = FACERES_SIZE
        lms = self.data.landmarks.cpu().numpy()
        self.id2_theta = torch.from_numpy(
            warp_theta(crop_to_template_matrices(lms, FACERES_TEMPLATE), self.data.size, FACERES_SIZE)).to(self.device)
        n = len(self.data)
        cache = Path(str(self.cfg.bundle) + f".faceres{self.data.size}.npy")
        raw = None
        if cache.is_file() and not self.cfg.limit:
            arr = np.load(cache, allow_pickle=False)
            if arr.shape[0] == n:
                raw = torch.from_numpy(arr).float().to(self.device)
        if raw is None:
            out = []
            bs = 256 if self.cuda else 32
            with torch.no_grad():
                for s in range(0, n, bs):
                    x = resample(to_pixels(to_model(self.data.images[s : s + bs])), self.id2_theta[s : s + bs], FACERES_SIZE)
                    with self._autocast():
                        out.append(self.id2(x).features.float())
            raw = torch.cat(out)
            if not self.cfg.limit:
                try:
                    np.save(cache, raw.cpu().numpy().astype(np.float16))
                except OSError as exc:
                    log.warning("cannot cache FaceRes features at %s: %s", cache, exc)
        self.id2_mean = raw[~self.data.heldout].mean(0)
        self.f2 = centre(raw, self.id2_mean)

    def identity2_of(self, images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Centred unit FaceRes features (N, 1024) of jittered, degraded (N, 3, S, S) crops."""
        x = resample(to_pixels(images), jitter_theta(theta, self.gen), self.id2_size)
        return centre(self.id2(degrade(x, self.gen)).features, self.id2_mean)

    def identity_of(self, images: torch.Tensor, theta: torch.Tensor, augment: bool) -> torch.Tensor:
        """Centred unit dlib identity (N, 128) of (N, 3, S, S) [-1, 1] crops, differentiable."""
        if augment:
            theta = jitter_theta(theta, self.gen)
        chips = resample(to_pixels(images), theta, CHIP_SIZE)
        if augment:
            chips = degrade(chips, self.gen)
        chips = chips.contiguous(memory_format=self.memory_format)
        return centre(self.dlib(chips), self.id_mean)

    # ------------------------------------------------------------------ batches
    def _augment(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target crops (B, 3, S, S) in [-1, 1] and their chip thetas, with random flips and a mild
        brightness/contrast jitter (attributes must survive both)."""
        x = to_model(self.data.images[idx])
        theta = self.chip_theta[idx]
        flip = torch.rand(len(idx), device=self.device, generator=self.gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        theta = torch.where(flip[:, None, None], flip_theta(theta), theta)
        jit = torch.rand(len(idx), 2, device=self.device, generator=self.gen) * 2 - 1
        x = (x * (1 + 0.1 * jit[:, :1, None, None]) + 0.1 * jit[:, 1:, None, None]).clamp(-1, 1)
        return x.contiguous(memory_format=self.memory_format), theta, flip

    def _batch(self) -> dict:
        b = self.cfg.batch
        pick = torch.randint(len(self.train_idx), (b,), device=self.device, generator=self.gen)
        idx = self.train_idx[pick]
        target, theta, flip = self._augment(idx)
        z_self = self.z[idx]
        u = torch.rand(b, device=self.device, generator=self.gen)
        c = self.cfg
        total = c.p_swap + c.p_self + c.p_pair + c.p_noisy
        t1, t2, t3 = c.p_swap / total, (c.p_swap + c.p_self) / total, (c.p_swap + c.p_self + c.p_pair) / total
        swap, selfm = u < t1, (u >= t1) & (u < t2)
        pair_req, noisy = (u >= t2) & (u < t3), u >= t3
        other = self.train_idx[torch.randint(len(self.train_idx), (b,), device=self.device, generator=self.gen)]
        partner = self.pairs.partner(idx, self.gen)
        pair = pair_req & (partner != idx)
        selfm = selfm | (pair_req & ~pair)  # faces without a second image reconstruct themselves
        z_noisy, _ = laplace_sphere_noise(z_self, self.gen)
        z_src = torch.where(swap[:, None], self.z[other], z_self)
        z_src = torch.where(pair[:, None], self.z[partner], z_src)
        z_src = torch.where(noisy[:, None], z_noisy, z_src)
        # Another photo of the same person is a near-reconstruction: half weight.
        rec_w = selfm.float() + 0.5 * pair.float()
        batch = {"target": target, "theta": theta, "z": z_src, "rec_w": rec_w, "swap": swap, "idx": idx, "flip": flip}
        if self.id2 is not None:
            # FaceRes targets exist for real faces only; noisy identities are dlib-space vectors.
            src = torch.where(swap, other, torch.where(pair, partner, idx))
            batch["f2"] = self.f2[src]
            batch["id2_w"] = (~noisy).float()
            flip = batch.pop("flip")
            theta2 = self.id2_theta[idx]
            batch["theta2"] = torch.where(flip[:, None, None], flip_theta(theta2), theta2)
        else:
            batch.pop("flip")
        return batch

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """One discriminator and one generator update on a fresh batch; returns float losses."""
        c = self.cfg
        batch = self._batch()
        x, z = batch["target"], batch["z"]
        self.G.train()
        with self._autocast():
            y, attrs_x = self.G(x, z)
        # --- discriminator
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            real = self.D(x)
            fake = self.D(y.detach())
            loss_d = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)) / len(real)
        loss_d.backward()
        self.opt_d.step()
        # --- generator
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            adv = -sum(f.mean() for f in self.D(y)) / len(real)
            attrs_y = self.G.encoder(y)
            att = 0.5 * sum(F.mse_loss(a.float(), b.float()) for a, b in zip(attrs_y, attrs_x))
            zid = self.identity_of(y, batch["theta"], augment=True)
            idl = (1 - (zid * z).sum(1)).mean()
            w = batch["rec_w"]
            per = 0.5 * ((y.float() - x.float()) ** 2).mean(dim=(1, 2, 3))
            rec = (per * w).sum() / w.sum().clamp_min(1.0)
            loss_g = c.w_adv * adv + c.w_att * att + c.w_id * idl + c.w_rec * rec
            if self.id2 is not None:
                f = self.identity2_of(y, batch["theta2"])
                w2 = batch["id2_w"]
                id2 = ((1 - (f * batch["f2"]).sum(1)) * w2).sum() / w2.sum().clamp_min(1.0)
                loss_g = loss_g + c.w_id2 * id2
            else:
                id2 = torch.zeros((), device=self.device)
        loss_g.backward()
        self.opt_g.step()
        self._update_ema()
        self.step += 1
        self.images_seen += x.shape[0]
        return {"d": loss_d, "adv": adv, "att": att, "id": idl, "id2": id2, "rec": rec, "g": loss_g}

    LOSS_NAMES = ("d", "adv", "att", "id", "id2", "rec", "g")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _eval_batch(self) -> dict:
        idx = self.eval_idx
        n = len(idx)
        x = to_model(self.data.images[idx]).contiguous(memory_format=self.memory_format)
        z_t = self.z[idx]
        # Source = the held-out face half a set away: a different person for CelebA identities
        # (held out whole), and a different UTKFace photo otherwise.
        perm = torch.roll(torch.arange(n, device=self.device), n // 2)
        z_s = z_t[perm]
        g = torch.Generator(device=self.device)
        g.manual_seed(1234)
        z_n, _ = laplace_sphere_noise(z_t, g, ratio_range=(3.0, 3.0))
        return {"idx": idx, "x": x, "perm": perm, "z_t": z_t, "z_s": z_s, "z_n": z_n}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Quick held-out evaluation of the EMA generator: mean cosine of outputs to the source and
        the target identity, for dlib (trained through) and the independent judge (the number to
        watch), on swaps and self-reconstructions."""
        e = self._eval_batch()
        G = self.G_ema
        res: dict = {"step": self.step, "images_seen": self.images_seen}
        outs = {}
        for name, z in (("swap", e["z_s"]), ("self", e["z_t"]), ("noisy", e["z_n"])):
            ys = []
            for s in range(0, len(e["x"]), 32):
                with self._autocast():
                    ys.append(G(e["x"][s : s + 32], z[s : s + 32])[0].float())
            outs[name] = torch.cat(ys)
        theta = self.chip_theta[e["idx"]]
        for name, y in outs.items():
            zid = self.identity_of(y, theta, augment=False)
            res[f"dlib_{name}_to_target"] = float((zid * e["z_t"]).sum(1).mean())
            if name == "swap":
                res["dlib_swap_to_source"] = float((zid * e["z_s"]).sum(1).mean())
            res[f"l1_{name}"] = float((y - e["x"]).abs().mean())
        if self.judge is not None:
            try:
                res.update(self._judge_scores(e, outs))
            except (RuntimeError, ValueError) as exc:
                # The quick evaluation must not end a time-boxed run; report and carry on without it.
                self.judge = None
                self.event("judge_disabled", reason=f"{type(exc).__name__}: {exc}")
        self.event("eval", **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()})
        self._last_eval_outputs = (e, outs)
        self._last_eval = res
        return res

    @torch.no_grad()
    def _judge_scores(self, e: dict, outs: dict) -> dict:
        """Independent-judge cosines of outputs to target and source identities."""
        res = {}
        jt = self._judge_embed(e["x"])
        js = jt[e["perm"]]
        res["judge_target_to_source"] = float((jt * js).sum(1).mean())
        for name, y in outs.items():
            jy = self._judge_embed(y)
            res[f"judge_{name}_to_target"] = float((jy * jt).sum(1).mean())
            if name == "swap":
                res["judge_swap_to_source"] = float((jy * js).sum(1).mean())
        return res

    @torch.no_grad()
    def write_samples(self, columns: int = 8) -> Path:
        """PNG grid, rows: target | source | swap output | self-reconstruction | noisy identity."""
        from PIL import Image

        if not hasattr(self, "_last_eval_outputs") or self._last_eval_outputs[0] is None:
            self.evaluate()
        e, outs = self._last_eval_outputs
        k = min(columns, len(e["x"]))
        rows = [e["x"][:k], e["x"][e["perm"][:k]], outs["swap"][:k], outs["self"][:k], outs["noisy"][:k]]
        grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, 5S, kS)
        img = to_pixels(grid).clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()
        path = self.out / f"samples_{self.step:06d}.png"
        Image.fromarray(img).save(path)
        old = sorted(self.out.glob("samples_*.png"))
        for p in old[: max(0, len(old) - self.cfg.keep_samples)]:
            p.unlink()
        return path

    # ------------------------------------------------------------------ checkpoints
    def load_weights(self, path: str | Path) -> None:
        """Start from the weights of a ``ckpt_fp16.safetensors`` (fresh optimizers). The EMA starts
        from the ``generator_fp16.safetensors`` beside it when there is one, else from G.

        ``path`` may also be an exported generator (``generator_fp16.safetensors`` or the shipped
        ``identitydp_generator.safetensors``): G and its EMA start from it, D starts fresh."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        with safe_open(str(path), "pt") as fh:
            has_discriminator = any(k.startswith("D.") for k in fh.keys())
        if not has_discriminator:
            model, id_mean, _ = load_generator(path, device=self.device)
            self.G.load_state_dict(model.state_dict())
            self.G_ema.load_state_dict(model.state_dict())
            self._set_id_mean(id_mean)
            self.event("initialised", path=str(path), ema_from="G", discriminator="fresh")
            return
        tensors = load_file(str(path), device=str(self.device))

        def part(prefix: str) -> dict:
            return {k[len(prefix):]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(prefix)}

        self.G.load_state_dict(part("G."))
        self.D.load_state_dict(part("D."))
        ema = path.parent / "generator_fp16.safetensors"
        if ema.is_file():
            model, _, _ = load_generator(ema, device=self.device)
            self.G_ema.load_state_dict(model.state_dict())
        else:
            self.G_ema.load_state_dict(self.G.state_dict())
        if "id_mean" in tensors:
            self._set_id_mean(tensors["id_mean"])
        self.event("initialised", path=str(path), ema_from=str(ema) if ema.is_file() else "G")


def run_from_args(args: argparse.Namespace) -> int:
    start = time.time()
    cfg = config_from_args(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    Trainer(cfg, start_time=start, echo=lambda line: print(line, flush=True)).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m identitydp.training.aei", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
