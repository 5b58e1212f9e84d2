"""Training state shared by the v1 and v2 trainers: exact fp32 + Adam checkpoints, and small
warp helpers. Training code only (inference never imports it)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_full_state(path: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    extra: dict[str, torch.Tensor], meta: dict) -> None:
    """Write fp32 module weights (keys ``prefix + name``), every Adam state tensor
    (``prefix + index.name``), ``extra`` tensors and string ``meta`` atomically to ``path``."""
    from safetensors.torch import save_file

    tensors = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().contiguous().cpu()
    for prefix, opt in optimizers.items():
        for i, state in opt.state_dict()["state"].items():
            for k, v in state.items():
                tensors[f"{prefix}{i}.{k}"] = torch.as_tensor(v).detach().contiguous().cpu()
    tensors.update({k: v.detach().contiguous().cpu() for k, v in extra.items()})
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)


def load_full_state(path: str | Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """Load what :func:`save_full_state` wrote into ``modules`` and ``optimizers``.

    Returns:
        (all tensors of the file, its metadata) — for the caller's extra tensors and counters.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path), device=str(device))
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    for prefix, module in modules.items():
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for prefix, opt in optimizers.items():
        sd = opt.state_dict()
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith(prefix):
                i, name = k[len(prefix):].split(".", 1)
                state.setdefault(int(i), {})[name] = v if name != "step" else v.cpu()
        sd["state"] = state
        opt.load_state_dict(sd)
        match_param_strides(opt)
    return tensors, meta


def match_param_strides(opt: torch.optim.Optimizer) -> None:
    """Give every Adam moment its parameter's memory format (channels_last on CUDA).

    Moments read back from a checkpoint are contiguous; fused Adam refuses moments whose strides
    differ from their parameter's ("must have same dtype, device, and layout")."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                v = state.get(name)
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[name] = torch.empty_like(p).copy_(v)


def flip_theta(theta: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) warp of the mirrored crop to the mirrored chip: x_n → −x_n on both sides of the warp."""
    flipped = theta.clone()
    flipped[:, 0, 1] = -theta[:, 0, 1]
    flipped[:, 1, 0] = -theta[:, 1, 0]
    flipped[:, 0, 2] = -theta[:, 0, 2]
    return flipped
