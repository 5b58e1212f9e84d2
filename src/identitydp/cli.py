"""The `identitydp` command line. The only place that prints messages and chooses exit codes.

Each subcommand lives in a ``_cli`` module of its stage (``identitydp.<stage>._cli`` or
``identitydp._cli_<name>``) exposing ``register(subparsers)``; the parser it adds sets
``func=callable(args) -> int``. Those modules must import heavy libraries (torch, cv2) lazily
so that ``identitydp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from ._cli_types import one_line
from .errors import IdentityDPError

# Modules that contribute subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES = [
    "identitydp._cli_anonymize",
    "identitydp.jobs._cli",
    "identitydp.web._cli",
    "identitydp.models._cli",
    "identitydp.privacy._cli",
    "identitydp.generate._cli",
    "identitydp.eval._cli",
]

EXIT_OK = 0
EXIT_FAILURES = 1  # some inputs failed, the others were processed
EXIT_USAGE = 2
EXIT_ERROR = 3  # a clear identitydp error stopped the command
MAX_THREADS = 256


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (exit 2), for every subcommand."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from ._cli_types import bounded_int

    parser = _Parser(
        prog="identitydp",
        description="Anonymize faces in photos and videos with a tunable, provable privacy guarantee.",
    )
    parser.add_argument("--version", action="version", version=f"identitydp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--threads", type=bounded_int(1, MAX_THREADS), default=None,
                        help=f"CPU threads for ONNX Runtime / torch / OpenCV, 1..{MAX_THREADS} (default: all cores)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # stage not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.threads is not None:
        import os

        # torch reads it when (if) it loads, and so do our ONNX Runtime sessions; the default
        # IdentityDP path runs on ONNX Runtime and never imports torch.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(args.threads)
        import cv2

        cv2.setNumThreads(args.threads)
    try:
        return int(args.func(args) or 0)
    except IdentityDPError as exc:
        print(one_line(f"identitydp: error: {exc}"), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("identitydp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
