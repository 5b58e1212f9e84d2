"""Options of the generator trainer, importable without torch (``identitydp --help`` stays fast)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from .options import add_run_arguments, config_from_args as _config_from_args


@dataclass
class TrainConfig:
    """Every training option; the resolved values are written to ``config.json``."""

    bundle: str = ".data/train128.npz"
    out: str = "runs/train"
    device: str = "cpu"
    size: int = 128
    batch: int = 16
    minutes: float = 10.0
    max_steps: int = 0
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    w_adv: float = 1.0
    w_att: float = 10.0
    w_id: float = 5.0
    w_rec: float = 10.0
    id2: str = "faceres"
    w_id2: float = 5.0
    amp: str = "auto"
    p_swap: float = 0.45
    p_self: float = 0.2
    p_pair: float = 0.1
    p_noisy: float = 0.25
    ema: float = 0.999
    seed: int = 0
    threads: int = 0
    limit: int = 0
    eval_faces: int = 64
    log_every_s: float = 15.0
    eval_every_s: float = 120.0
    sample_every_s: float = 180.0
    ckpt_every_s: float = 180.0
    keep_samples: int = 3
    final_reserve_s: float = 25.0
    full_ckpt: str = ""
    resume: str = ""
    init: str = ""
    judge: str = "mobileface"
    net: dict = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    add_run_arguments(parser, d, bundle_help="pre-aligned training bundle (.npz)",
                      size_help="crop size (128; 64 for CPU experiments)",
                      init_help="start from the weights of a ckpt_fp16.safetensors",
                      net_help="JSON overrides of the network config, e.g. '{\"gen_channels\": [...]}'")
    for name in ("adv", "att", "id", "rec"):
        parser.add_argument(f"--w-{name}", type=float, default=getattr(d, f"w_{name}"), help=f"weight of the {name} loss")
    parser.add_argument("--id2", default=d.id2, help="second recognizer in the identity loss ('faceres' or '' for none)")
    parser.add_argument("--w-id2", type=float, default=d.w_id2, help="weight of the second identity loss")
    parser.add_argument("--amp", default=d.amp, choices=["auto", "bf16", "off"], help="bf16 autocast: auto = on CUDA only")
    for name in ("swap", "self", "pair", "noisy"):
        parser.add_argument(f"--p-{name}", type=float, default=getattr(d, f"p_{name}"), help=f"share of {name} sources")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return _config_from_args(args, TrainConfig)
