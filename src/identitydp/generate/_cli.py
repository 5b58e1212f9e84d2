"""``identitydp train``: train the v2 IdentityDP renderer (see :mod:`identitydp.training.inpaint`).

The v1 (AEI-Net) trainer stays available as ``python -m identitydp.training.aei``.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    # Only the light options module is imported here: `identitydp --help` must not load torch.
    from ..training import options

    parser = subparsers.add_parser(
        "train",
        help="train the IdentityDP renderer (v2, inpainting) on the pre-aligned bundle",
        description="Train the v2 inpainting renderer (docs/generator_card.md) for a wall-time budget; "
        "SIGINT/SIGTERM stop it cleanly after writing its checkpoints.",
    )
    options.add_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..training.inpaint import run_from_args

    return run_from_args(args)
