"""``identitydp train``: train the IdentityDP generator (see :mod:`identitydp.generate.train`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    # The option list lives with the trainer; importing it pulls in torch, so only the parser
    # skeleton is built here and the trainer's options are added from a light module.
    from . import train_options

    parser = subparsers.add_parser(
        "train",
        help="train the IdentityDP generator on the pre-aligned bundle",
        description="Train the attribute encoder + AAD generator (DESIGN.md §3) for a wall-time budget.",
    )
    train_options.add_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .train import run_from_args

    return run_from_args(args)
