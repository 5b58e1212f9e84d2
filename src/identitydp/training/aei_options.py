"""Options of the generator trainer, importable without torch (``identitydp --help`` stays fast)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field


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
    parser.add_argument("--bundle", default=d.bundle, help="pre-aligned training bundle (.npz)")
    parser.add_argument("--out", default=d.out, help="run folder")
    parser.add_argument("--device", default=d.device, help="cpu, cuda, cuda:0, ...")
    parser.add_argument("--size", type=int, default=d.size, help="crop size (128; 64 for CPU experiments)")
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--minutes", type=float, default=d.minutes, help="wall-time budget from start, incl. final writes")
    parser.add_argument("--max-steps", type=int, default=d.max_steps, help="stop after this many steps (0: time only)")
    parser.add_argument("--lr-g", type=float, default=d.lr_g)
    parser.add_argument("--lr-d", type=float, default=d.lr_d)
    for name in ("adv", "att", "id", "rec"):
        parser.add_argument(f"--w-{name}", type=float, default=getattr(d, f"w_{name}"), help=f"weight of the {name} loss")
    parser.add_argument("--id2", default=d.id2, help="second recognizer in the identity loss ('faceres' or '' for none)")
    parser.add_argument("--w-id2", type=float, default=d.w_id2, help="weight of the second identity loss")
    parser.add_argument("--amp", default=d.amp, choices=["auto", "bf16", "off"], help="bf16 autocast: auto = on CUDA only")
    for name in ("swap", "self", "pair", "noisy"):
        parser.add_argument(f"--p-{name}", type=float, default=getattr(d, f"p_{name}"), help=f"share of {name} sources")
    parser.add_argument("--ema", type=float, default=d.ema)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--limit", type=int, default=d.limit, help="use only this many training faces (tests)")
    parser.add_argument("--eval-faces", type=int, default=d.eval_faces)
    parser.add_argument("--log-every-s", type=float, default=d.log_every_s)
    parser.add_argument("--eval-every-s", type=float, default=d.eval_every_s)
    parser.add_argument("--sample-every-s", type=float, default=d.sample_every_s)
    parser.add_argument("--ckpt-every-s", type=float, default=d.ckpt_every_s)
    parser.add_argument("--keep-samples", type=int, default=d.keep_samples)
    parser.add_argument("--final-reserve-s", type=float, default=d.final_reserve_s)
    parser.add_argument("--full-ckpt", default=d.full_ckpt, help="fp32+Adam checkpoint path (default OUT/ckpt_full.safetensors)")
    parser.add_argument("--resume", default=d.resume, help="resume from a full checkpoint")
    parser.add_argument("--init", default=d.init, help="start from the weights of a ckpt_fp16.safetensors")
    parser.add_argument("--judge", default=d.judge, help="independent judge for the quick evaluation ('' disables)")
    parser.add_argument("--net", default="{}", help="JSON overrides of the network config, e.g. '{\"gen_channels\": [...]}'")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: leave as is)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    fields["net"] = json.loads(args.net) if isinstance(args.net, str) else args.net
    return TrainConfig(**fields)


