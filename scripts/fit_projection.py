#!/usr/bin/env python
"""Fit the public identity projection (mean, top-k principal directions, whitening, radius R).

Input: a .npy of (n, d) identity embeddings of the TRAINING set (../shared/data/train), never
LFW or user images. Output: a small versioned safetensors file with a checksum, loadable with
``identitydp.privacy.Projection.load``.

    python scripts/fit_projection.py --embeddings train_dlib.npy --k 16 -o projection.safetensors \
        --source "dlib ResNet v1 (port) on shared/data/train, 18979 faces"

R defaults to the 95th percentile of the whitened training norms (--quantile), so about 95 % of
training faces are not clipped.

Or straight from a v2 training bundle's dlib cache (``BUNDLE.dlib128.npy``, written by the
trainer): ``--bundle .data/v2_128.npz --limit 6000`` takes that many random non-held-out faces
(seed 0), centred by the registered v2 renderer's identity mean (how the pipeline centres them):

    python scripts/fit_projection.py --bundle .data/v2_128.npz --limit 6000 --k 32 \
        -o runs/proj_k32.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from identitydp.errors import IdentityDPError
from identitydp.privacy import DEFAULT_K, DEFAULT_RADIUS_QUANTILE, Projection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", type=Path, help="(n, d) .npy of TRAINING-set embeddings")
    source.add_argument("--bundle", type=Path, help="a v2 training bundle whose .dlib128.npy cache to use")
    parser.add_argument("--limit", type=int, default=6000, help="--bundle: random non-held-out faces to use (default 6000)")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"principal directions to keep (default {DEFAULT_K})")
    parser.add_argument("--radius", type=float, default=None, help="ball radius R in whitened units (default: from --quantile)")
    parser.add_argument("--quantile", type=float, default=DEFAULT_RADIUS_QUANTILE, help="training-norm quantile for R (default 0.95)")
    parser.add_argument("--source", default=None, help="what the embeddings are (stored in the file)")
    parser.add_argument("-o", "--output", required=True, type=Path)
    args = parser.parse_args(argv)

    if "lfw" in str(args.embeddings or args.bundle).lower():
        print("refusing: the projection must be fitted on training embeddings, never LFW", file=sys.stderr)
        return 2
    try:
        if args.bundle is not None:
            x, source = _from_bundle(args.bundle, args.limit)
        else:
            x = np.load(args.embeddings)
            source = f"embeddings from {args.embeddings.name}"
        source = args.source or source
        proj = Projection.fit(x, k=args.k, radius=args.radius, radius_quantile=args.quantile, source=source)
        norms = np.linalg.norm(proj.whiten(x), axis=1)
        path = proj.save(args.output)
    except (OSError, ValueError, IdentityDPError) as exc:
        print(f"fit_projection: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}  (sha256 {proj.sha256[:16]}…)")
    print(f"  n={x.shape[0]} d={proj.dim} k={proj.k} explained variance {proj.explained_variance:.3f}")
    print(f"  whitened training norms: median {np.median(norms):.3f}, 95% {np.quantile(norms, 0.95):.3f}, max {norms.max():.3f}")
    print(f"  R = {proj.radius:.4f}: {np.mean(norms > proj.radius):.1%} of training faces clipped")
    return 0


def _from_bundle(bundle: Path, limit: int) -> tuple[np.ndarray, str]:
    """(limit, 128) centred unit dlib embeddings of random non-held-out bundle faces, and their description."""
    from identitydp.generate.checkpoint import load_generator
    from identitydp.models.registry import weight_path
    from identitydp.privacy import centre

    held_out = np.load(bundle)["heldout"]
    raw = np.load(f"{bundle}.dlib128.npy").astype(np.float64)
    rows = np.flatnonzero(~held_out)
    rows = np.random.default_rng(0).choice(rows, size=min(limit, len(rows)), replace=False)
    mean = load_generator(weight_path("identitydp_renderer_v2"))[1].cpu().numpy().astype(np.float64)
    return centre(raw[rows], mean), (f"dlib ResNet v1 port, centred by the v2 renderer's identity mean, {len(rows)} random "
                                     f"non-held-out faces of the training bundle {bundle.name} (UTKFace + CelebA from "
                                     "../shared/data/train), never LFW")


if __name__ == "__main__":
    sys.exit(main())
