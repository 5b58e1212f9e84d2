"""Options of the v2 (inpainting) renderer's trainer, importable without torch."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field


@dataclass
class InpaintTrainConfig:
    """Every training option; the resolved values are written to ``config.json``."""

    bundle: str = ".data/v2_128.npz"
    out: str = "runs/v2"
    device: str = "cpu"
    size: int = 128
    batch: int = 8
    minutes: float = 10.0
    max_steps: int = 0
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.99)
    w_adv: float = 1.0
    w_l1: float = 10.0
    w_perc: float = 4.0
    w_id: float = 5.0
    w_id_noisy: float = 1.0
    w_id_swap: float = 1.0
    w_hf: float = 0.0
    hf_cell: int = 16
    gender_consistent: bool = False
    disc_sketch: bool = False
    w_mismatch: float = 0.5
    l1_pool: int = 4
    amp: str = "auto"
    p_self: float = 0.45
    p_pair: float = 0.15
    p_swap: float = 0.2
    p_noisy: float = 0.2
    noisy_projection: float = 0.5
    ema: float = 0.998
    seed: int = 0
    threads: int = 0
    limit: int = 0
    eval_faces: int = 64
    log_every_s: float = 30.0
    eval_every_s: float = 600.0
    sample_every_s: float = 600.0
    ckpt_every_s: float = 300.0
    keep_samples: int = 3
    final_reserve_s: float = 25.0
    full_ckpt: str = ""
    resume: str = ""
    init: str = ""
    judge: str = "mobileface"
    compile: bool = False
    net: dict = field(default_factory=dict)


def add_run_arguments(parser: argparse.ArgumentParser, d, *, bundle_help: str, size_help: str, init_help: str,
                      net_help: str) -> None:
    """The options every trainer has (data, run folder, time budget, optimizer, logging,
    checkpoints), with ``d``'s values as defaults."""
    parser.add_argument("--bundle", default=d.bundle, help=bundle_help)
    parser.add_argument("--out", default=d.out, help="run folder")
    parser.add_argument("--device", default=d.device, help="cpu, cuda, cuda:0, ...")
    parser.add_argument("--size", type=int, default=d.size, help=size_help)
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--minutes", type=float, default=d.minutes, help="wall-time budget from start, incl. final writes")
    parser.add_argument("--max-steps", type=int, default=d.max_steps, help="stop when the step counter, which --init and --resume carry on from the checkpoint, reaches this (0: time only); at or below the checkpoint's own step nothing is trained: it evaluates and writes the generator and checkpoints (an export)")
    parser.add_argument("--lr-g", type=float, default=d.lr_g)
    parser.add_argument("--lr-d", type=float, default=d.lr_d)
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
    parser.add_argument("--resume", default=d.resume, help="resume from a full checkpoint (exact: weights, Adam, counters)")
    parser.add_argument("--init", default=d.init, help=init_help)
    parser.add_argument("--judge", default=d.judge, help="independent judge for the quick evaluation ('' disables)")
    parser.add_argument("--net", default="{}", help=net_help)
    parser.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: leave as is)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = InpaintTrainConfig()
    add_run_arguments(
        parser, d, bundle_help="pre-aligned training bundle with 68-point landmarks (.npz)",
        size_help="crop size (128 on a CPU, 256 on a GPU)",
        init_help="start from a ckpt_fp16.safetensors (G, D, EMA; fresh Adam): chains GPU runs",
        net_help="JSON overrides of the network config, e.g. '{\"channels\": [...]}' "
                 "(default: the --resume / --init checkpoint's own network, else the defaults)")
    for name in ("adv", "l1", "perc", "id"):
        parser.add_argument(f"--w-{name}", type=float, default=getattr(d, f"w_{name}"), help=f"weight of the {name} loss")
    parser.add_argument("--w-id-noisy", type=float, default=d.w_id_noisy,
                        help="factor on the identity loss of the noisy-identity rows (a noised vector is off the face "
                             "manifold: chasing it exactly rewards texture that fools the recognizer)")
    parser.add_argument("--w-id-swap", type=float, default=d.w_id_swap,
                        help="factor on the identity loss of the swap rows (another face's identity in this face's "
                             "context: where they disagree, e.g. in gender, a full-strength loss forces stubble-like "
                             "blotches into the repaint)")
    parser.add_argument("--w-hf", type=float, default=d.w_hf,
                        help="weight of a hinge on excess fine detail: the repaint's high-frequency energy (the eval's "
                             "sharpness measure) above the photo's, per face (0 = off; aimed at speckle that "
                             "raises sharpness without being detail)")
    parser.add_argument("--hf-cell", type=int, default=d.hf_cell,
                        help="--w-hf compares P x P cells (0: the whole region at once, which a run here answered by "
                             "blurring everything)")
    parser.add_argument("--gender-consistent", action="store_true", default=d.gender_consistent,
                        help="train on what the product renders by default (the gender from the context up to ε 16): "
                             "swap partners of the same apparent gender, and noisy identities that keep the face's own "
                             "coordinate along the public gender direction")
    parser.add_argument("--disc-sketch", action="store_true", default=d.disc_sketch,
                        help="the discriminator also reads the landmark sketch (conditional), and real photos shown "
                             "with another face's sketch and mask count as fakes (matching-aware): a render must "
                             "follow the sketch's mouth, eyes and pose, not only look real; a checkpoint without it "
                             "is extended with zero weights on the new channels")
    parser.add_argument("--w-mismatch", type=float, default=d.w_mismatch,
                        help="with --disc-sketch: weight of the mismatched (photo, other sketch) pairs in the "
                             "discriminator's loss")
    parser.add_argument("--l1-pool", type=int, default=d.l1_pool,
                        help="L1 between PxP average-pooled output and target (1: per pixel); the inner face is never "
                             "seen, so a per-pixel target pulls fine detail to the mean")
    parser.add_argument("--amp", default=d.amp, choices=["auto", "bf16", "off"], help="bf16 autocast: auto = on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX)")
    for name in ("self", "pair", "swap", "noisy"):
        parser.add_argument(f"--p-{name}", type=float, default=getattr(d, f"p_{name}"), help=f"share of {name} identity sources")
    parser.add_argument("--noisy-projection", type=float, default=d.noisy_projection,
                        help="of the noisy identities, the share drawn as the default projection mechanism releases "
                             "them (the rest: Laplace noise on the sphere)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the generator and discriminator (CUDA)")


def config_from_args(args: argparse.Namespace, cls=InpaintTrainConfig):
    """A ``cls`` config from parsed arguments (``--net`` JSON decoded)."""
    fields = {k: v for k, v in vars(args).items() if k in cls.__dataclass_fields__}
    fields["net"] = json.loads(args.net) if isinstance(args.net, str) else args.net
    return cls(**fields)
