#!/usr/bin/env python
"""Train the context-only gender network (``identitydp.models.context_gender``) and register it.

Data: the training bundle (UTKFace + CelebA crops, never LFW or user images), each crop with the
registered v2 renderer's inner-face mask painted out, exactly as ``--gender-from-context`` sees it
at inference; the mask is grown by a random amount in [the renderer's grow, 0.15] so that a renderer
trained with a larger repaint region can use the same network. Labels: UTKFace's own (file names,
gender 1 = female); CelebA faces, which carry none, get the sign of their dlib descriptor's
coordinate along the registered gender direction (96 % accurate on held-out UTKFace), only where
that coordinate is clearly on one side. Held out: the bundle's held-out faces and a seeded 10 % of
the labelled UTKFace faces (accuracy reported on both).

The file's metadata also carries the mean gender coordinate of the training men and women, which
``ContextGender.gender_coordinate`` maps the probability onto.

    python scripts/train_context_gender.py --bundle .data/v2_128.npz -o src/identitydp/weights/context_gender.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn


def build_net(channels: tuple[int, ...] | None = None, dropout: float = 0.0) -> nn.Sequential:
    """The torch twin of :class:`identitydp.models.context_gender.ContextGender` (same names):
    stride-2 convolutions with ``channels`` outputs (default: the first network's, LAYERS)."""
    from identitydp.models.context_gender import LAYERS, LEAK

    channels = tuple(channels) if channels else tuple(cout for _, cout in LAYERS)
    layers: list[tuple[str, nn.Module]] = []
    cin = 4
    for i, cout in enumerate(channels):
        layers += [(f"conv{i}", nn.Conv2d(cin, cout, 3, stride=2, padding=1)), (f"act{i}", nn.LeakyReLU(LEAK))]
        cin = cout
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten())]
    if dropout > 0:  # training only: no parameters, so the NumPy forward is unchanged
        layers += [("drop", nn.Dropout(dropout))]
    layers += [("fc", nn.Linear(cin, 1))]
    return nn.Sequential(OrderedDict(layers))


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each (C, H, W) sample of ``x`` moved by a random whole-pixel offset in [−max_shift, max_shift]
    on both axes, zero-filled: alignment is never exact, and the network should not count on it."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,))
    dx = torch.randint(0, 2 * max_shift + 1, (n,))
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def rebuild_command(args: argparse.Namespace) -> str:
    """The command line that trains these weights again (the registry's ``rebuild``)."""
    parts = ["python scripts/train_context_gender.py --bundle .data/v2_128.npz", f"--epochs {args.epochs}"]
    if args.channels:
        parts.append(f"--channels {args.channels}")
    if args.dropout:
        parts.append(f"--dropout {args.dropout:g}")
    if args.weight_decay:
        parts.append(f"--weight-decay {args.weight_decay:g}")
    if args.shift:
        parts.append(f"--shift {args.shift}")
    if args.no_flip_average:
        parts.append("--no-flip-average")
    parts.append("-o src/identitydp/weights/context_gender.safetensors")
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path(".data/v2_128.npz"))
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-grow", type=float, default=0.15)
    ap.add_argument("--pseudo-margin", type=float, default=0.1,
                    help="CelebA pseudo-labels only where |gender coordinate − midpoint| exceeds this")
    ap.add_argument("--channels", default="", help="output channels of the stride-2 convolutions, e.g. 32,64,128,256,256 "
                    "(default: the first network's 32,64,128,128)")
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout before the linear unit (training only)")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--shift", type=int, default=0,
                    help="random translation of up to this many input pixels (of 64) per crop, zero-filled")
    ap.add_argument("--no-flip-average", action="store_true",
                    help="do not mark the network for averaging with the mirrored crop at inference")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-register", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from safetensors.numpy import save_file

    from identitydp.generate.anonymizer import DEFAULT_WEIGHTS_NAME, WEIGHTS_NAME
    from identitydp.generate.checkpoint import load_generator, read_metadata
    from identitydp.generate.inpaint import InpaintConfig
    from identitydp.generate.inpaint_conditions import mask_for
    from identitydp.models.context_gender import ContextGender, context_input
    from identitydp.models.registry import register_entries, sha256_of, weight_path
    from identitydp.privacy import centre
    from identitydp.privacy.keep import AttributeDirections
    from identitydp.training.data import load_bundle

    t0 = time.time()
    # The attribute directions were fitted on descriptors centred with this mean (scripts/fit_attributes.py).
    id_mean = load_generator(weight_path(WEIGHTS_NAME))[1]
    cfg = InpaintConfig(**json.loads(read_metadata(weight_path(DEFAULT_WEIGHTS_NAME))["net"]))
    data = load_bundle(args.bundle, size=cfg.size, threads=args.threads)
    n = len(data)
    images = data.images.numpy()
    lm68 = data.landmarks68.numpy()
    heldout = data.heldout.numpy().astype(bool)
    grows = np.random.default_rng(1).uniform(cfg.mask_grow, args.max_grow, n)
    masks = np.stack([mask_for(dataclasses.replace(cfg, mask_grow=float(g)), lm) for g, lm in zip(grows, lm68)]).astype(np.float32)
    inputs = context_input(images, masks)  # (N, 4, 64, 64); the inner face is gone from here on
    del images, masks
    print(f"inputs {inputs.shape} in {time.time() - t0:.0f} s", flush=True)

    # Labels.
    directions = AttributeDirections.load()
    w_gender = directions.select(("gender",)).directions[0]
    midpoint = float(directions.info["gender_midpoint"])
    raw = np.load(f"{args.bundle}.dlib128.npy").astype(np.float64)
    coord = centre(raw, id_mean.cpu().numpy().astype(np.float64)) @ w_gender
    label = np.full(n, -1, np.int64)
    utk = np.zeros(n, bool)
    adult = np.zeros(n, bool)  # UTKFace faces aged 16 or more: LFW's people are adults
    for i, name in enumerate(data.names):
        parts = Path(name).name.split("_")
        if name.startswith("utkface/") and len(parts) >= 4 and parts[1] in ("0", "1"):
            label[i], utk[i] = int(parts[1]), True
            adult[i] = parts[0].isdigit() and int(parts[0]) >= 16
        elif not name.startswith("utkface/") and abs(coord[i] - midpoint) > args.pseudo_margin:
            label[i] = int(coord[i] > midpoint)
    rng = np.random.default_rng(0)
    utk_test = utk & ~heldout & (rng.random(n) < 0.1)
    train = (label >= 0) & ~heldout & ~utk_test
    means = {"male": float(coord[utk & (label == 0) & ~heldout].mean()),
             "female": float(coord[utk & (label == 1) & ~heldout].mean())}
    print(f"train {train.sum()} (UTKFace {np.sum(train & utk)}, CelebA pseudo {np.sum(train & ~utk)}), "
          f"UTKFace test {utk_test.sum()}, gender means {means}", flush=True)

    channels = tuple(int(c) for c in args.channels.split(",") if c.strip()) or None
    net = build_net(channels, args.dropout)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    flip_average = not args.no_flip_average
    x_all = torch.from_numpy(inputs)
    y_all = torch.from_numpy(label).float()
    idx = np.flatnonzero(train)
    steps = args.epochs * (len(idx) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    step = 0
    for epoch in range(args.epochs):
        net.train()
        order = rng.permutation(idx)
        total = 0.0
        for b in range(len(idx) // args.batch):
            rows = torch.from_numpy(order[b * args.batch : (b + 1) * args.batch])
            x = x_all[rows]
            flip = torch.rand(len(x)) < 0.5
            x[flip] = x[flip].flip(3)
            if args.shift > 0:
                x = random_shift(x, args.shift)
            # brightness/contrast jitter on the image channels only (the mask channel stays exact)
            gain = 1 + 0.2 * (torch.rand(len(x), 1, 1, 1) - 0.5)
            x = torch.cat([x[:, :3] * gain, x[:, 3:]], 1)
            loss = nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], y_all[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach())
        net.eval()
        with torch.inference_mode():
            def accuracy(sel: np.ndarray) -> float:
                rows = torch.from_numpy(np.flatnonzero(sel))
                logit = net(x_all[rows])[:, 0]
                if flip_average:  # as ContextGender.p_female runs it
                    logit = 0.5 * (logit + net(x_all[rows].flip(3))[:, 0])
                return float(((logit > 0).float() == y_all[rows]).float().mean())
            acc_utk = accuracy(utk_test)
            acc_adult = accuracy(utk_test & adult)
            acc_held = accuracy(heldout & (label >= 0))
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / max(1, len(idx) // args.batch):.4f}, "
              f"UTKFace test accuracy {acc_utk:.3f} (adults {acc_adult:.3f}), bundle held-out {acc_held:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)

    params = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    info = {
        "format": "identitydp-context-gender/1",
        "source": f"{args.bundle.name}: {int(train.sum())} training faces ({int(np.sum(train & utk))} UTKFace with their own "
                  f"labels, {int(np.sum(train & ~utk))} CelebA with dlib gender-direction pseudo-labels), never LFW",
        "input": "aligned crop with the v2 renderer's inner-face mask painted out (grow "
                 f"{cfg.mask_grow:g}..{args.max_grow:g}) and the mask, pooled to 64 px",
        "utkface_test_accuracy": round(acc_utk, 4),
        "utkface_test_adult_accuracy": round(acc_adult, 4),
        "channels": [int(m.out_channels) for m in net if isinstance(m, nn.Conv2d)],
        "flip_average": flip_average,
        "dropout": args.dropout,
        "weight_decay": args.weight_decay,
        "shift": args.shift,
        "utkface_test_faces": int(utk_test.sum()),
        "bundle_heldout_accuracy": round(acc_held, 4),
        "gender_means": means,
        "gender_positive": "female",
        "epochs": args.epochs,
        "steps": step,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(params, str(args.output), metadata={"info": json.dumps(info)})
    # The NumPy forward that ships must give the torch twin's answer.
    check = ContextGender.load(args.output)
    with torch.inference_mode():
        want = net(x_all[:64])[:, 0].numpy()
    got = check.logits(inputs[:64])
    if not np.allclose(got, want, atol=1e-3):
        raise SystemExit(f"NumPy forward differs from torch: max |Δ| {np.abs(got - want).max():.2e}")
    print(json.dumps(info, indent=1))
    if not args.no_register:
        register_entries([{
            "name": "context_gender", "filename": args.output.name, "sha256": sha256_of(args.output),
            "source": f"trained by the identitydp project on its CPU: scripts/train_context_gender.py ({args.epochs} epochs, "
                      f"{step} steps of {args.batch}, channels {args.channels or 'default'}); UTKFace test accuracy "
                      f"{acc_utk:.3f} (adults {acc_adult:.3f}), bundle held-out {acc_held:.3f}",
            "origin": "identitydp project; training data: UTKFace + CelebA subsets in ../shared/data/train (never LFW), "
                      "crops with the inner face painted out",
            "license": "MIT (weights); trained on research-only data (UTKFace, CelebA: non-commercial research terms)",
            "rebuild": rebuild_command(args),
        }])
        print(f"registered context_gender ({args.output})")


if __name__ == "__main__":
    main()
