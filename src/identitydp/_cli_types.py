"""Argument types for the command line: every value is checked at the boundary, with bounds.

Each factory returns an ``argparse`` ``type=`` callable that raises ``ArgumentTypeError`` with a
short reason; the parser turns it into one line on stderr and exit code 2. NaN is refused
everywhere; infinity only where it means something (ε = inf: no privacy).
"""

from __future__ import annotations

import argparse
import math

def one_line(text: object) -> str:
    """``text`` with control characters (a newline in a file name, an escape sequence) escaped, so
    that one message is one line on a terminal and in a log."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


#: Largest seed accepted (numpy, torch and OpenDP all take it).
MAX_SEED = 2**63 - 1


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("NaN is not a valid value")
    return value


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def bounded_float(low: float, high: float, *, low_open: bool = False, high_open: bool = False, allow_inf: bool = False):
    """A float in [low, high] (ends opened as asked); ``inf`` only if ``allow_inf``."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        value = _parse_float(text)
        if math.isinf(value) and allow_inf and value > 0:
            return value
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be in {interval}{' or inf' if allow_inf else ''}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def positive_float(*, allow_inf: bool = False):
    """A float > 0, finite unless ``allow_inf``."""

    def parse(text: str) -> float:
        value = _parse_float(text)
        if not value > 0 or (math.isinf(value) and not allow_inf):
            raise argparse.ArgumentTypeError(f"must be > 0{' (or inf)' if allow_inf else ' and finite'}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def bounded_int(low: int, high: int):
    """An integer in [low, high]."""

    def parse(text: str) -> int:
        value = _parse_int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {text}")
        return value

    parse.__name__ = "integer"
    return parse


def divisor_of(n: int):
    """A positive integer that divides ``n`` (DP-Pix block sides of its ``n``-pixel grid)."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]

    def parse(text: str) -> int:
        value = _parse_int(text)
        if value not in divisors:
            raise argparse.ArgumentTypeError(f"must divide {n} (one of {', '.join(map(str, divisors))}), got {text}")
        return value

    parse.__name__ = "integer"
    return parse


def path_text(text: str) -> str:
    """A file or folder name; the empty string is refused (it would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name is not a file or folder (write '.' for the current folder)")
    if "\0" in text:
        raise argparse.ArgumentTypeError("a file name cannot contain a NUL character")
    return text


path_text.__name__ = "path"


def epsilon(text: str) -> float:
    """ε > 0, or ``inf`` (no privacy)."""
    if text.strip().lower() in ("inf", "infinity", "+inf"):
        return math.inf
    return positive_float(allow_inf=True)(text)


epsilon.__name__ = "epsilon"
