"""Apparent gender read from a face's *context* only: hair, ears, neck, clothes, background.

Why: at small ε the v2 renderer draws a random identity, and about half of those disagree with the
gender that the untouched context shows (a man's identity under long hair and make-up-free
shoulders, or the reverse). The renderer handles that mismatch badly: those draws come out with
blotchy, stubbled skin (``samples/group.jpg``, docs/generator_card.md). ``--gender-from-context``
sets the gender coordinate of the released identity from this network instead of from the face.

What it reads: exactly what the v2 renderer reads of the crop, the aligned crop with the
renderer's inner-face mask painted out, plus the mask itself; never the inner face
(``tests/test_context_gender.py`` checks it). Its output is therefore a function of pixels that
the anonymized image publishes unchanged, and using it adds nothing about the face to what the
output already shows: the identity release stays ε-DP between *any* two faces with the same
context (unlike ``--keep gender``, which releases the face's own gender coordinate).

The network: 3×3 stride-2 convolutions (LeakyReLU 0.2) on a 64×64 input, global average pooling,
one linear unit: the logit of "female". The chain of channels is read from the weights (the first
registered network had 4 → 32 → 64 → 128 → 128, :data:`LAYERS`). Inference is plain NumPy (no torch
on the photo path). Trained by ``scripts/train_context_gender.py`` on the
training bundle (never LFW), registered as ``context_gender``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import WeightsError

__all__ = ["CONTEXT_GENDER_NAME", "INPUT_SIZE", "ContextGender", "context_input"]

CONTEXT_GENDER_NAME = "context_gender"
#: Side of the network's input, px; the renderer's crop (128 or 256 px) is average-pooled to it.
INPUT_SIZE = 64
#: (in, out) channels of the stride-2 convolutions of the first network (the training script's default).
LAYERS = ((4, 32), (32, 64), (64, 128), (128, 128))
LEAK = 0.2


def context_input(crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The network's input from aligned crops and the renderer's repaint masks.

    Args:
        crops: (N, S, S, 3) uint8 aligned crops, S a multiple of :data:`INPUT_SIZE`.
        masks: (N, S, S) float, 1 on the region the renderer repaints (the inner face).

    Returns:
        (N, 4, 64, 64) float32: the crop in [-1, 1] times (1 − mask), average-pooled, and the
        pooled mask. Nothing of the inner face survives: where the mask is 1 the pixels are 0.
    """
    crops = np.asarray(crops)
    masks = np.asarray(masks, np.float32)
    if crops.ndim != 4 or crops.shape[-1] != 3 or masks.shape != crops.shape[:3]:
        raise ValueError(f"need crops (N, S, S, 3) and masks (N, S, S); got {crops.shape} and {masks.shape}")
    size = crops.shape[1]
    if crops.shape[2] != size or size % INPUT_SIZE:
        raise ValueError(f"crops must be square with a side that is a multiple of {INPUT_SIZE}, got {crops.shape[1:3]}")
    f = size // INPUT_SIZE
    x = (crops.astype(np.float32) / np.float32(127.5) - 1) * (1 - masks[..., None])
    x = np.concatenate([x, masks[..., None]], axis=-1)
    x = x.reshape(len(x), INPUT_SIZE, f, INPUT_SIZE, f, 4).mean(axis=(2, 4))
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _conv_s2(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3×3 convolution, stride 2, zero padding 1: (N, C, H, W) → (N, O, H/2, W/2)."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (3, 3), axis=(2, 3))[:, :, ::2, ::2]  # (N, C, H/2, W/2, 3, 3)
    ho, wo = windows.shape[2:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * 9)
    out = cols @ weight.reshape(len(weight), c * 9).T + bias
    return out.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)


class ContextGender:
    """The context-only gender network and what its probability maps to in identity space.

    Args:
        params: ``conv{i}.weight`` (O, C, 3, 3), ``conv{i}.bias`` (O,), ``fc.weight`` (1, O_last),
            ``fc.bias`` (1,), float32; conv0 takes 4 channels, each next one the previous one's output.
        info: the file's metadata: held-out accuracy, provenance, and ``gender_means``, the mean
            coordinate along the registered gender direction of training men and women.
    """

    def __init__(self, params: dict[str, np.ndarray], info: dict) -> None:
        depth = 0
        while f"conv{depth}.weight" in params:
            depth += 1
        if depth == 0:
            raise WeightsError("context gender weights: no conv0")
        channels = 4
        for i in range(depth):
            w, b = params[f"conv{i}.weight"], params.get(f"conv{i}.bias")
            if w.ndim != 4 or w.shape[1:] != (channels, 3, 3) or b is None or b.shape != (w.shape[0],):
                raise WeightsError(f"context gender weights: conv{i} has the wrong shape {w.shape}")
            channels = w.shape[0]
        if params["fc.weight"].shape != (1, channels) or params["fc.bias"].shape != (1,):
            raise WeightsError("context gender weights: fc has the wrong shape")
        self.depth = depth
        means = info.get("gender_means")
        if not isinstance(means, dict) or not {"male", "female"} <= set(means):
            raise WeightsError("context gender weights carry no gender_means (male, female) in their metadata")
        self.params = {k: np.asarray(v, np.float32) for k, v in params.items()}
        self.info = info
        self.male_mean = float(means["male"])
        self.female_mean = float(means["female"])

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ContextGender":
        """The registered network (checksum verified), or the file at ``path``."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        from .registry import weight_path

        path = Path(path) if path is not None else weight_path(CONTEXT_GENDER_NAME)
        with safe_open(str(path), "np") as fh:
            meta = fh.metadata() or {}
        try:
            info = json.loads(meta.get("info", "{}"))
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{path}: unreadable metadata ({exc})") from exc
        try:
            return cls(load_file(str(path)), info)
        except KeyError as exc:
            raise WeightsError(f"{path}: missing tensor {exc}") from exc

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """(N, 4, 64, 64) from :func:`context_input` → (N,) float32 logits of "female"."""
        x = np.asarray(inputs, np.float32)
        # One BLAS thread: the products are small, and OpenBLAS's extra threads keep spinning after
        # them, which slowed the renderer's ONNX Runtime pool that runs next by ~40 % on 2 cores
        # (14 ms per face in all, measured on benchmarks/speed.py's photos; 1 ms with one thread).
        with _blas_controller().limit(limits=1, user_api="blas"):
            for i in range(self.depth):
                x = _conv_s2(x, self.params[f"conv{i}.weight"], self.params[f"conv{i}.bias"])
                x = np.where(x > 0, x, LEAK * x)
            pooled = x.mean(axis=(2, 3))
            return (pooled @ self.params["fc.weight"].T + self.params["fc.bias"])[:, 0]

    def p_female(self, crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 crops and (N, S, S) repaint masks → (N,) probability of "female".

        Networks whose metadata says ``flip_average`` (trained with mirrored crops) average the
        logits of the crop and of its mirror image: a face's context has no preferred side."""
        x = context_input(crops, masks)
        logit = self.logits(x).astype(np.float64)
        if self.info.get("flip_average"):
            logit = 0.5 * (logit + self.logits(np.ascontiguousarray(x[..., ::-1])).astype(np.float64))
        return 1.0 / (1.0 + np.exp(-logit))

    def gender_coordinate(self, p_female: np.ndarray) -> np.ndarray:
        """(N,) probabilities → (N, 1) coordinates along the registered gender direction (the
        expected coordinate of a training face given the probability; unsure contexts get an
        in-between face rather than a coin flip)."""
        p = np.asarray(p_female, np.float64).reshape(-1, 1)
        return self.male_mean + p * (self.female_mean - self.male_mean)
