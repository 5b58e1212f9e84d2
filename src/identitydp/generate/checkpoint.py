"""Exported generators: write and read the shippable safetensors files (no training code here).

Two formats, told apart by the ``format`` metadata key:

* ``identitydp-generator-v1``: attribute encoder + AAD generator
  (:class:`identitydp.generate.networks.FaceGenerator`);
* ``identitydp-generator-v2``: the inpainting renderer
  (:class:`identitydp.generate.inpaint.InpaintGenerator`), which never sees the inner face.

Each file holds fp16 weights, the fp32 identity mean (128,) the generator was trained with
(identities are centred by it), for v2 optionally the fp32 mean style ``style_mean`` (w_dim,) of
the training identities (the truncation trick's centre), and in its metadata the network config (``net``, JSON) and the
alignment ``margin``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported inside the functions that need it: the anonymizer reads EXPORT_FORMAT_V2 from
# here on its torch-free ONNX Runtime path.

EXPORT_FORMAT = "identitydp-generator-v1"
EXPORT_FORMAT_V2 = "identitydp-generator-v2"


def export_generator(model: nn.Module, id_mean: torch.Tensor, path: str | Path, meta: dict) -> None:
    """Write a shippable generator (v1 :class:`FaceGenerator` or v2 :class:`InpaintGenerator`):
    fp16 weights, the fp32 identity mean, its config and ``meta`` (must hold ``margin``) as metadata."""
    from safetensors.torch import save_file  # torch-backed

    from .inpaint import InpaintGenerator

    tensors = {k: (v.half() if keeps_fp16(k, v) else v).detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors["id_mean"] = id_mean.float().cpu().contiguous()
    style_mean = getattr(model, "style_mean", None)
    if style_mean is not None:  # v2: the truncation trick's centre (InpaintGenerator.forward)
        tensors["style_mean"] = style_mean.float().cpu().contiguous()
    info = {k: str(v) for k, v in meta.items()}
    info["format"] = EXPORT_FORMAT_V2 if isinstance(model, InpaintGenerator) else EXPORT_FORMAT
    info["net"] = json.dumps(model.cfg.to_dict())
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=info)
    os.replace(tmp, path)


def keeps_fp16(name: str, value: torch.Tensor) -> bool:
    """Whether an exported tensor is stored in fp16: weights are; the v2 shape and part models
    (a few kB, used in geometry) stay exact."""
    from .inpaint_conditions import CONDITIONING_PREFIXES

    return value.is_floating_point() and not name.split(".")[-1].startswith(CONDITIONING_PREFIXES)


def read_metadata(path: str | Path) -> dict:
    """The metadata of a safetensors file (empty dict when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), "numpy") as fh:
        return dict(fh.metadata() or {})


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, torch.Tensor, dict]:
    """Load an exported generator (v1 or v2) in fp32, eval mode, frozen.

    Returns:
        (model, identity mean (128,) float32, metadata dict incl. ``margin``, ``net``, ``format``).

    Raises:
        ValueError: the file is not an exported identitydp generator.
    """
    from safetensors.torch import load_file

    meta = read_metadata(path)
    model: nn.Module
    fmt = meta.get("format")
    if fmt == EXPORT_FORMAT:
        from .networks import FaceGenerator, NetConfig

        model = FaceGenerator(NetConfig(**json.loads(meta["net"])))
    elif fmt == EXPORT_FORMAT_V2:
        from .inpaint import InpaintConfig, InpaintGenerator

        model = InpaintGenerator(InpaintConfig(**json.loads(meta["net"])))
    else:
        raise ValueError(f"{path} is not an exported identitydp generator (format {fmt!r})")
    tensors = load_file(str(path), device=str(device))
    id_mean = tensors.pop("id_mean").float()
    style_mean = tensors.pop("style_mean", None)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in tensors.items()})
    if style_mean is not None:
        model.style_mean = style_mean.float()
    return model.to(device).eval().requires_grad_(False), id_mean, meta
