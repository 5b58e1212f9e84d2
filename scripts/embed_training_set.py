#!/usr/bin/env python
"""Dlib identity embeddings of the training bundle, for fitting the public projection.

Writes (n, 128) float32 *centred, unit* embeddings (the generator's identity space: raw dlib
descriptor minus the shipped generator's training mean, renormalised) of the bundle's
non-held-out faces. Training data only (../shared/data/train via the bundle), never LFW.

    python scripts/embed_training_set.py --bundle .data/train128.npz --limit 6000 -o .data/train_dlib_centred.npy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from identitydp.training.data import load_bundle, to_model, to_pixels
from identitydp.generate.identity import CHIP_SIZE, centre, crop_to_chip_matrices, resample, warp_theta
from identitydp.generate.checkpoint import load_generator
from identitydp.models.dlib_resnet import DlibEncoder
from identitydp.models.registry import weight_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path(".data/train128.npz"))
    ap.add_argument("--limit", type=int, default=0, help="embed only the first N training faces (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_bundle(args.bundle)
    keep = np.flatnonzero(~data.heldout.cpu().numpy())
    if args.limit:
        keep = keep[np.random.default_rng(0).permutation(len(keep))[: args.limit]]
    lms = data.landmarks.cpu().numpy()[keep] if hasattr(data.landmarks, "cpu") else np.asarray(data.landmarks)[keep]
    theta = torch.from_numpy(warp_theta(crop_to_chip_matrices(lms), data.size, CHIP_SIZE)).float()
    encoder = DlibEncoder.load()
    _, id_mean, _ = load_generator(weight_path("identitydp_generator"))
    out = []
    with torch.no_grad():
        for s in tqdm(range(0, len(keep), 64), unit="batch"):
            idx = torch.from_numpy(keep[s : s + 64])
            x = to_pixels(to_model(data.images[idx]))
            out.append(encoder(resample(x, theta[s : s + 64], CHIP_SIZE)).float())
    z = centre(torch.cat(out), id_mean).numpy().astype(np.float32)
    np.save(args.output, z)
    print(f"wrote {args.output}: {z.shape} centred unit embeddings")


if __name__ == "__main__":
    main()
