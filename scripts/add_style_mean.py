"""Give an exported v2 renderer the mean style of its training identities (the truncation centre).

Renderers exported since 2026-12-06 carry ``style_mean`` (the trainer computes it at every export);
this adds it to one exported before, from the training bundle's cached dlib descriptors (written
by the trainer next to the bundle, ``BUNDLE.dlib128.npy``) and the bundle's held-out flags, so
that the mean is over exactly the faces the renderer trained on. Public training data only.

    python scripts/add_style_mean.py src/identitydp/weights/identitydp_renderer_v2.safetensors \\
        --bundle .data/v2_128.npz -o runs/v2d_style.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from identitydp.generate.checkpoint import EXPORT_FORMAT_V2, export_generator, load_generator
    from identitydp.generate.identity import centre

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path, help="an exported v2 renderer")
    ap.add_argument("--bundle", type=Path, required=True, help="its training bundle (.npz); BUNDLE.dlib128.npy must exist")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    model, id_mean, meta = load_generator(args.weights)
    if meta.get("format") != EXPORT_FORMAT_V2:
        ap.error(f"{args.weights} is not a v2 renderer")
    size = int(__import__("json").loads(meta["net"])["size"])
    cache = Path(f"{args.bundle}.dlib{size}.npy")
    if not cache.is_file():
        ap.error(f"{cache} is missing: run the trainer on {args.bundle} once (it caches the descriptors)")
    raw = torch.from_numpy(np.load(cache, allow_pickle=False)).float()
    with np.load(args.bundle, allow_pickle=False) as bundle:
        heldout = torch.from_numpy(bundle["heldout"])
    if raw.shape[0] != heldout.shape[0]:
        ap.error(f"{cache} has {raw.shape[0]} descriptors, the bundle {heldout.shape[0]} faces")
    model.style_mean = model.mean_style(centre(raw[~heldout], id_mean))
    keep = {k: v for k, v in meta.items() if k not in ("format", "net")}
    export_generator(model, id_mean, args.output, keep)
    print(f"wrote {args.output}: style mean of {int((~heldout).sum())} training identities "
          f"(norm {float(model.style_mean.norm()):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
