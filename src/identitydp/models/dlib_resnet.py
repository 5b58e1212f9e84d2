"""dlib's face-recognition ResNet (v1, 128-d descriptors) in PyTorch, plus the alignment it expects.

The network is dlib's ``dlib_face_recognition_resnet_model_v1`` (Davis E. King, CC0) as packaged
by ``@vladmandic/face-api`` 1.7.15 (``face_recognition_model``: uint8-quantised tensors that
are dequantised at load exactly as tfjs does). Architecture (face-api ``FaceRecognitionNet``,
itself a transcription of dlib's ``anet_type``)::

    150x150x3 -> conv7x7/2 (32) -> maxpool3/2 -> 3 x res(32)
              -> res_down(64) + 3 x res(64) -> res_down(128) + 2 x res(128)
              -> res_down(256) + 2 x res(256) -> res_down(256) -> global mean -> fc 256->128

Every convolution is followed by dlib's affine "batch-norm" (per-channel scale and bias). In a
down-sampling block the shortcut is a 2x2 average pool, zero-padded in channels (and, where the
strided convolution's output is one pixel smaller, in the bottom row / right column) before the
sum — dlib's ``add_prev`` semantics.

The descriptors are dlib's raw ones (norm about 1.3-1.6), *not* renormalised: dlib's usual rule
is "same person when the Euclidean distance < 0.6". For cosine losses and thresholds, centre
them first (docs/design.md#the-renderer) or use :class:`identitydp.embed.IdentityEmbedder`.

Alignment: dlib computes descriptors on a 150x150 "face chip" (``dlib.get_face_chip(img, shape,
150, padding=0.25)`` from its own 5-point shape predictor). :func:`dlib_chip` produces the same
framing from CenterFace's 5 landmarks with the template :data:`DLIB_CHIP_150`, which was fitted on
training images (see its comment and ``scripts/fit_dlib_template.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from .dlib_chip import (  # noqa: F401  (re-exported: the chip geometry lives in a torch-free module)
    DLIB_CHIP_150,
    DLIB_CHIP_WEIGHTS,
    EMBEDDING_DIM,
    INPUT_DIVISOR,
    INPUT_SIZE,
    MEAN_RGB,
    dlib_chip,
    dlib_chip_matrix,
    weighted_similarity,
)
from .registry import load_tensors

WEIGHTS_NAME = "dlib_resnet"
_BLOCKS = [
    # name, in channels, out channels, down-sampling
    ("conv32_1", 32, 32, False),
    ("conv32_2", 32, 32, False),
    ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True),
    ("conv64_1", 64, 64, False),
    ("conv64_2", 64, 64, False),
    ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True),
    ("conv128_1", 128, 128, False),
    ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True),
    ("conv256_1", 256, 256, False),
    ("conv256_2", 256, 256, False),
    ("conv256_down_out", 256, 256, True),
]


class _ConvScale(nn.Module):
    """Convolution + bias followed by dlib's per-channel affine layer (frozen batch norm)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        # TF "same" at stride 1 and "valid" at stride 2, as in dlib (no padding when strided).
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0)
        self.scale = nn.Parameter(torch.ones(cout))
        self.shift = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale[:, None, None] + self.shift[:, None, None]


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = _ConvScale(cin, cout, 3, 2 if down else 1)
        self.conv2 = _ConvScale(cout, cout, 3, 1)
        self.cout = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        if not self.down:
            return F.relu(out + x)
        shortcut = F.avg_pool2d(x, 2, 2)
        dh = shortcut.shape[2] - out.shape[2]
        dw = shortcut.shape[3] - out.shape[3]
        if dh or dw:
            out = F.pad(out, (0, dw, 0, dh))
        if shortcut.shape[1] != out.shape[1]:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, out.shape[1] - shortcut.shape[1]))
        return F.relu(out + shortcut)


class DlibEncoder(nn.Module):
    """dlib ResNet v1 face descriptor.

    ``forward(x)``: ``x`` is (N, 3, 150, 150) float RGB in 0..255 (an aligned dlib face chip,
    see :func:`dlib_chip`); returns (N, 128) float32 raw dlib descriptors (not renormalised).
    Differentiable with respect to ``x``. 0.27 G multiply-adds per face.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv32_down = _ConvScale(3, 32, 7, 2)
        self.blocks = nn.ModuleDict({name: _Residual(cin, cout, down) for name, cin, cout, down in _BLOCKS})
        self.fc = nn.Linear(256, EMBEDDING_DIM, bias=False)
        self.register_buffer("mean_rgb", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) RGB, got {tuple(x.shape)}")
        out = (x - self.mean_rgb) / INPUT_DIVISOR
        out = F.relu(self.conv32_down(out))
        out = F.max_pool2d(out, 3, 2)
        for block in self.blocks.values():
            out = block(out)
        return self.fc(out.mean(dim=(2, 3)))

    #: Blocks whose outputs :meth:`forward_features` returns (35, 18 and 9 px maps at 150 px).
    FEATURE_BLOCKS = ("conv32_3", "conv64_3", "conv128_2")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Descriptor and intermediate maps in one pass (a face-aware perceptual space).

        Args:
            x: (N, 3, 150, 150) float RGB in 0..255.

        Returns:
            ((N, 128) raw descriptors, [(N, 32, 35, 35), (N, 64, 18, 18), (N, 128, 9, 9)]).
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) RGB, got {tuple(x.shape)}")
        out = (x - self.mean_rgb) / INPUT_DIVISOR
        out = F.relu(self.conv32_down(out))
        out = F.max_pool2d(out, 3, 2)
        feats = []
        for name, block in self.blocks.items():
            out = block(out)
            if name in self.FEATURE_BLOCKS:
                feats.append(out)
        return self.fc(out.mean(dim=(2, 3))), feats

    @classmethod
    def load(cls, device: str | torch.device = "cpu", trainable: bool = False) -> "DlibEncoder":
        """Build the network with the registered weights (checksum verified).

        Args:
            device: torch device.
            trainable: keep ``requires_grad`` on the weights (default: frozen, eval mode; gradients
                still flow to the input).

        Raises:
            WeightsError: weights missing, corrupt or not matching the architecture.
        """
        raw = load_tensors(WEIGHTS_NAME)
        net = cls()
        net.load_state_dict(_state_dict_from_faceapi(raw))
        net.eval().requires_grad_(trainable)
        return net.to(device)


def _dequantise(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """face-api names -> float32 tensors (TF layouts), undoing the uint8 quantisation."""
    values: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        if key.endswith(".q"):
            name = key[:-2]
            scale, minimum = raw[f"{name}.scale"], raw[f"{name}.min"]
            values[name] = (tensor.double() * scale + minimum).float()
        elif not key.endswith((".scale", ".min")):
            values[key] = tensor.float()
    return values


def _state_dict_from_faceapi(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    values = _dequantise(raw)
    state: dict[str, torch.Tensor] = {}

    def conv_scale(prefix: str, target: str) -> None:
        # TF filters are (kh, kw, in, out); torch wants (out, in, kh, kw).
        state[f"{target}.conv.weight"] = values.pop(f"{prefix}/conv/filters").permute(3, 2, 0, 1).contiguous()
        state[f"{target}.conv.bias"] = values.pop(f"{prefix}/conv/bias")
        state[f"{target}.scale"] = values.pop(f"{prefix}/scale/weights")
        state[f"{target}.shift"] = values.pop(f"{prefix}/scale/biases")

    try:
        conv_scale("conv32_down", "conv32_down")
        for name, *_ in _BLOCKS:
            conv_scale(f"{name}/conv1", f"blocks.{name}.conv1")
            conv_scale(f"{name}/conv2", f"blocks.{name}.conv2")
        state["fc.weight"] = values.pop("fc").t().contiguous()
    except KeyError as exc:
        raise WeightsError(f"dlib ResNet weights lack tensor {exc}; rebuild with scripts/convert_weights.py") from exc
    if values:
        raise WeightsError(f"unexpected tensors in dlib ResNet weights: {sorted(values)[:5]}")
    return state


def chips_to_tensor(chips: np.ndarray | list[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, 150, 150, 3) uint8 RGB chips -> (N, 3, 150, 150) float32 in 0..255."""
    array = np.ascontiguousarray(np.stack(list(chips)) if isinstance(chips, list) else chips)
    if array.ndim != 4 or array.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) chips, got {array.shape}")
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).float()


def embed_faces(image_rgb: np.ndarray, detections, encoder: DlibEncoder | None = None) -> np.ndarray:
    """Raw dlib descriptors of every detected face.

    Args:
        image_rgb: (H, W, 3) uint8 RGB frame.
        detections: :class:`identitydp.detect.Detections` (uses its ``landmarks``, (N, 5, 2)).
        encoder: a loaded :class:`DlibEncoder` (loaded on first use when omitted).

    Returns:
        (N, 128) float32 raw dlib descriptors; (0, 128) when there are no faces.
    """
    if len(detections) == 0:
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    encoder = encoder if encoder is not None else DlibEncoder.load()
    chips = [dlib_chip(image_rgb, lm) for lm in detections.landmarks]
    with torch.inference_mode():
        return encoder(chips_to_tensor(chips)).numpy().astype(np.float32)
