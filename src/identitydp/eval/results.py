"""``results.jsonl``: one JSON line per method × setting × metric, appended atomically.

Line schema::

    {"setting": "blur:sigma=0.05", "method": "blur", "params": {"sigma": 0.05},
     "metric": "rank1", "judge": "dlib" | null, "value": 0.12 | null, "n": 1680,
     "extra": {...}, "batch": "<id of this setting's execution>", "time": "ISO-8601 UTC",
     "code": {"commit": "...", "describe": "..."}, "protocol": {...}}

Every execution of a setting writes all its lines in one ``write`` followed by a ``_done`` line
(its wall time in ``value``). Readers use, per setting, the last batch that has a ``_done`` line;
so an interrupted setting is simply re-run, and ``--force`` re-runs append a newer batch.
The special setting ``reference`` holds method-independent figures (chance, real-vs-real FD,
thresholds, BlazeFace on the originals).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

DONE = "_done"
REFERENCE = "reference"


def code_version() -> dict:
    """``git describe`` and commit of the source tree this package is imported from."""
    here = Path(__file__).resolve().parent
    out = {"commit": "unknown", "describe": "unknown"}
    for key, cmd in (("commit", ["git", "rev-parse", "HEAD"]), ("describe", ["git", "describe", "--always", "--dirty"])):
        try:
            proc = subprocess.run(cmd, cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0:
            out[key] = proc.stdout.strip()
    return out


def _clean(value):
    """JSON-safe: NaN -> null, inf -> "inf", NumPy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return round(value, 6)
    return value


def append_lines(path: Path, lines: list[dict]) -> None:
    """Append JSON lines in one write (fsync'd)."""
    text = "".join(json.dumps(_clean(line), ensure_ascii=False) + "\n" for line in lines)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def read_lines(path: Path) -> list[dict]:
    """Every parseable line of a results file (a torn last line is ignored)."""
    if not Path(path).is_file():
        return []
    out = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        raw = raw.strip()
        if not raw:
            continue
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return out


def latest_batches(lines: list[dict]) -> dict[str, list[dict]]:
    """setting -> lines of its latest completed batch (setting order: first appearance)."""
    done: dict[str, str] = {}
    for line in lines:
        if line.get("metric") == DONE:
            done[line["setting"]] = line["batch"]
    out: dict[str, list[dict]] = {}
    for line in lines:
        s = line.get("setting")
        if s in done and line.get("batch") == done[s]:
            out.setdefault(s, []).append(line)
    return out


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
