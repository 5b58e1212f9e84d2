"""What the v1 (AEI-Net) and v2 (inpainting) trainers share: the timed training loop with a clean
stop on SIGINT/SIGTERM, the JSON-lines log, the EMA update and the exact fp32 + Adam checkpoint.

Training code only (inference never imports it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..generate.checkpoint import export_generator, keeps_fp16
from ..generate.identity import CHIP_SIZE, centre, crop_to_template_matrices, resample, warp_theta
from .data import to_model, to_pixels
from .state import load_full_state, save_full_state

log = logging.getLogger("identitydp.train")


class TimedTrainer:
    """Base of a GAN trainer that runs for a wall-time budget.

    A subclass sets, in its ``__init__``: ``cfg`` (minutes, final_reserve_s, max_steps, batch, ema
    and the ``*_every_s`` periods), ``start_time``, ``echo``, ``out``, ``_log_file``, ``full_ckpt``,
    ``device``, ``cuda``, ``data``, ``net_cfg``, the networks ``G``, ``G_ema``, ``D`` and optimizers
    ``opt_g``, ``opt_d``, the counters ``step``, ``images_seen``, ``train_seconds`` and
    ``_last_eval``; and implements ``train_step`` (returns the losses named in ``LOSS_NAMES``),
    ``evaluate`` and ``write_samples``; the dlib encoder ``dlib`` with the bundle's ``chip_theta``
    and ``memory_format``, and ``eval_idx`` (held-out faces the judge looks at), are used here.
    """

    LOSS_NAMES: tuple[str, ...] = ()
    echo: Callable[[str], None] | None

    def _start_run(self, cfg, start_time: float | None, echo: Callable[[str], None] | None) -> None:
        """Device, seeds, run folder and log file: the first thing every trainer's ``__init__`` does."""
        self.start_time = start_time or time.time()
        self.echo = echo
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(cfg.seed)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.full_ckpt = Path(cfg.full_ckpt) if cfg.full_ckpt else self.out / "ckpt_full.safetensors"
        self._log_file = open(self.out / "log.jsonl", "a")

    def event(self, kind: str, **fields) -> None:
        """Append one JSON line ``{"event": kind, "t": seconds since start, **fields}`` to the log."""
        record = {"event": kind, "t": round(time.time() - self.start_time, 2), **fields}
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()
        if self.echo is not None:
            self.echo(json.dumps(record))

    def _write_config(self, **extra) -> None:
        resolved = asdict(self.cfg)
        resolved["net"] = self.net_cfg.to_dict()
        resolved["margin"] = self.data.margin
        resolved["torch"] = torch.__version__
        resolved["device_name"] = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        resolved.update(extra)
        resolved["bundle_meta"] = self.data.meta
        (self.out / "config.json").write_text(json.dumps(resolved, indent=2))

    def _set_id_mean(self, id_mean: torch.Tensor) -> None:
        # Identities must be centred exactly as the weights were trained.
        self.id_mean = id_mean.float().to(self.device)
        self.z = centre(self._embed_bundle(), self.id_mean)

    def _update_ema(self) -> None:
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
            pe.lerp_(p.detach(), 1 - decay)
        for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
            be.copy_(b)

    # ------------------------------------------------------------------ identity
    @torch.no_grad()
    def _embed_bundle(self) -> torch.Tensor:
        """Raw dlib descriptors (N, 128) of every bundle crop, from its chip (cached on disk)."""
        n = len(self.data)
        cache = Path(str(self.cfg.bundle) + f".dlib{self.data.size}.npy")
        if cache.is_file() and not self.cfg.limit:
            arr = np.load(cache, allow_pickle=False)
            if arr.shape == (n, 128):
                return torch.from_numpy(arr).float().to(self.device)
        out = []
        bs = 512 if self.cuda else 64
        for s in range(0, n, bs):
            x = to_pixels(to_model(self.data.images[s : s + bs]))
            chips = resample(x, self.chip_theta[s : s + bs], CHIP_SIZE).contiguous(memory_format=self.memory_format)
            with self._autocast():
                out.append(self.dlib(chips).float())
        raw = torch.cat(out)
        if not self.cfg.limit:
            try:
                np.save(cache, raw.cpu().numpy())
            except OSError as exc:
                log.warning("cannot cache embeddings at %s: %s", cache, exc)
        return raw

    def _load_judge(self):
        """MobileFace (never in the loss) as (net, theta of the eval faces, size); None if absent."""
        if not self.cfg.judge:
            return None
        from ..models import judges

        try:
            net = judges.MobileFace.load(device=self.device)
        except (OSError, ValueError, RuntimeError) as exc:
            self.event("judge_missing", reason=f"{type(exc).__name__}: {exc}")
            return None
        lms = self.data.landmarks[self.eval_idx].cpu().numpy()
        size = judges.MOBILEFACE_SIZE
        theta = warp_theta(crop_to_template_matrices(lms, np.asarray(judges.MOBILEFACE_TEMPLATE)), self.data.size, size)
        return net, torch.from_numpy(theta).to(self.device), size

    def _judge_embed(self, images: torch.Tensor) -> torch.Tensor:
        net, theta, size = self.judge
        x = resample(to_pixels(images), theta[: images.shape[0]], size)
        return F.normalize(net(x).float(), dim=1)

    # ------------------------------------------------------------------ checkpoints
    def _counters(self) -> dict:
        return {"step": self.step, "images_seen": self.images_seen, "train_seconds": round(self.train_seconds, 1),
                "net": json.dumps(self.net_cfg.to_dict()), "margin": self.data.margin}

    def save_full(self) -> None:
        """fp32 G, EMA G, D and both Adam states (exact resumption)."""
        save_full_state(self.full_ckpt, {"G.": self.G, "G_ema.": self.G_ema, "D.": self.D},
                        {"opt_g.": self.opt_g, "opt_d.": self.opt_d}, {"id_mean": self.id_mean.float()}, self._counters())

    def load_full(self, path: str | Path) -> None:
        tensors, meta = load_full_state(path, {"G.": self.G, "G_ema.": self.G_ema, "D.": self.D},
                                        {"opt_g.": self.opt_g, "opt_d.": self.opt_d}, self.device)
        self._set_id_mean(tensors["id_mean"])
        self.step = int(meta.get("step", 0))
        self.images_seen = int(meta.get("images_seen", 0))
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        self.event("resumed", path=str(path), step=self.step)

    def save_compact(self) -> None:
        """``ckpt_fp16.safetensors`` (G, EMA G, D in fp16) and ``generator_fp16.safetensors`` (EMA G)."""
        from safetensors.torch import save_file

        def half(sd: dict, prefix: str) -> dict:
            return {prefix + k: (v.half() if keeps_fp16(k, v) else v).detach().contiguous().cpu() for k, v in sd.items()}

        meta = {k: str(v) for k, v in self._counters().items()}
        tensors = {**half(self.G.state_dict(), "G."), **half(self.G_ema.state_dict(), "G_ema."), **half(self.D.state_dict(), "D.")}
        tensors["id_mean"] = self.id_mean.float().cpu()
        tmp = self.out / "ckpt_fp16.tmp"
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, self.out / "ckpt_fp16.safetensors")
        if hasattr(self.G_ema, "mean_style"):  # v2: the truncation trick's centre ships with the weights
            self.G_ema.style_mean = self.G_ema.mean_style(self.z[~self.data.heldout.to(self.z.device)]).cpu()
        export_generator(self.G_ema, self.id_mean, self.out / "generator_fp16.safetensors", {
            **meta,
            "device": torch.cuda.get_device_name(self.device) if self.cuda else "cpu",
            "bundle": Path(self.cfg.bundle).name,
        })

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        """Train until the wall-time budget (or ``max_steps``, or SIGTERM/SIGINT) ends; a stop
        request finishes the step, writes the checkpoints and returns the final evaluation."""
        stop = {"asked": False}

        def _ask(signum, _frame):  # noqa: ANN001 - signal handler signature
            stop["asked"] = True
            self.event("stop_requested", signal=int(signum))

        old = {s: signal.signal(s, _ask) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._loop(stop)
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _loop(self, stop: dict) -> dict:
        c = self.cfg
        deadline = self.start_time + c.minutes * 60 - c.final_reserve_s
        last = {k: time.time() for k in ("log", "eval", "sample", "ckpt")}
        window_imgs, window_t = 0, time.time()
        # Losses are summed on the device and read once per log line: no per-step host sync.
        sums = torch.zeros(len(self.LOSS_NAMES), device=self.device)
        nsum = 0
        self.evaluate()
        self.write_samples()
        self.event("start", step=self.step, deadline_s=round(deadline - self.start_time, 1))
        t_loop = time.time()
        while time.time() < deadline and not stop["asked"] and (not c.max_steps or self.step < c.max_steps):
            losses = self.train_step()
            sums += torch.stack([losses[k].detach().float() for k in self.LOSS_NAMES])
            nsum += 1
            window_imgs += c.batch
            now = time.time()
            if now - last["log"] >= c.log_every_s:
                means = (sums / nsum).tolist()
                if not all(math.isfinite(v) for v in means):
                    raise FloatingPointError(f"non-finite losses before step {self.step}: {dict(zip(self.LOSS_NAMES, means))}")
                self.event("train", step=self.step, images_seen=self.images_seen,
                           images_per_s=round(window_imgs / (now - window_t), 2),
                           **{k: round(v, 4) for k, v in zip(self.LOSS_NAMES, means)})
                sums.zero_()
                nsum, window_imgs, window_t = 0, 0, now
                last["log"] = now
            if now - last["eval"] >= c.eval_every_s:
                self.evaluate()
                last["eval"] = time.time()
            if now - last["sample"] >= c.sample_every_s:
                self.write_samples()
                last["sample"] = time.time()
            if now - last["ckpt"] >= c.ckpt_every_s:
                self.train_seconds += time.time() - t_loop
                t_loop = time.time()
                self.save_compact()
                self.save_full()
                last["ckpt"] = time.time()
        self.train_seconds += time.time() - t_loop
        # No step since the last evaluation (e.g. start-up ate the budget): don't repeat it.
        final = self._last_eval if self._last_eval.get("step") == self.step else self.evaluate()
        self.write_samples()
        self.save_compact()
        self.save_full()
        self.event("done", step=self.step, images_seen=self.images_seen, train_seconds=round(self.train_seconds, 1),
                   images_per_s=round(self.images_seen / max(self.train_seconds, 1e-6), 1),
                   wall_s=round(time.time() - self.start_time, 1))
        self._log_file.close()
        return final
