"""Write a copy of a v2 renderer's weights with different conditioning, for inference-only A/Bs.

The v2 renderer's repaint region (``mask_lift``, ``mask_grow``, ``mask_convex``), the detail of
the landmark sketch (``shape_components``: 0 = the face's own 68 landmarks) and the coarse colour
of the inner face it is given (``colour_grid``) are part of its config,
stored in the weights' metadata. This copies the learned tensors unchanged and writes the config
changed, so that ``identitydp eval --methods "identitydp:epsilon=1,inf;weights=OUT"`` measures what
a conditioning change does before any training is spent on it (docs/results/lfw300-knob-v2).

    python scripts/renderer_variant.py runs/v2d_rawshape.safetensors --shape-components 0
    python scripts/renderer_variant.py runs/v2d_lift06.safetensors --mask-lift 0.6
    python scripts/renderer_variant.py runs/v2d_grid2.safetensors --colour-grid 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from identitydp.generate.anonymizer import RENDERER_V2_NAME
    from identitydp.models.registry import weight_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", type=Path)
    ap.add_argument("--source", type=Path, default=None, help=f"v2 weights to copy (default: the registered {RENDERER_V2_NAME})")
    ap.add_argument("--mask-lift", type=float, help="how far above the brows the repainted region reaches (mouth-to-eye distances)")
    ap.add_argument("--mask-grow", type=float, help="how far the jaw line is pushed out (fraction)")
    ap.add_argument("--shape-components", type=int, choices=[0], help="0: draw the face's own landmarks (drops the shape model)")
    ap.add_argument("--colour-grid", type=int, help="side of the coarse-colour grid of the inner face (default: the source's own; v2d was trained with 4, v2x with 2)")
    args = ap.parse_args(argv)
    source = args.source or weight_path(RENDERER_V2_NAME)
    with safe_open(str(source), "np") as fh:
        meta = dict(fh.metadata() or {})
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if "net" not in meta:
        ap.error(f"{source} has no network config: not a v2 renderer export")
    net = json.loads(meta["net"])
    if args.mask_lift is not None:
        net["mask_lift"] = args.mask_lift
    if args.mask_grow is not None:
        net["mask_grow"] = args.mask_grow
    if args.colour_grid is not None:
        if args.colour_grid < 1:
            ap.error("--colour-grid must be at least 1")
        net["colour_grid"] = args.colour_grid
    if args.shape_components == 0:
        net["shape_components"] = 0
        tensors = {k: v for k, v in tensors.items() if not k.startswith("shape_")}
    meta["net"] = json.dumps(net)
    meta["variant_of"] = Path(source).name
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.output), metadata=meta)
    print(f"wrote {args.output}: {meta['net']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
