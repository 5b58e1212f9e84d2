"""The durable privacy ledger: one SQLite file (WAL mode) that cannot lose a release.

:class:`PrivacyLedger` (``ledger.py``) is the in-memory accountant of the library API; this store
is what the job layer (CLI, web UI, batch runners) charges, and what a privacy promise to a
person in a published data set rests on. Its rules:

* **Charged before the draw.** A release is written (and ``fsync``-ed: ``synchronous=FULL``) as
  *pending* before the noise is drawn. It becomes *released* once its output file exists. It is
  *void* only when it is known that the output was never written (the job failed and removed
  its temporary file, or the process that owned it died before renaming its output into place);
  a pending release whose owner may still be alive counts as spent. Nothing is ever deleted.
* **Keyed by the input's content and the face, not by paths.** An image is named by the SHA-256
  of its decoded pixels (a renamed or re-tagged copy is the same input), a video by the SHA-256
  of its bytes; a face by matching its box against the faces already known for that input
  (IoU ≥ :data:`FACE_IOU`), so the key survives a change of detection order or threshold.
* **Budgets only tighten.** The budget stored in the ledger applies to every later run, with or
  without ``--budget``; a run may lower it, and raising or removing it needs
  :meth:`LedgerStore.set_budget` with ``override=True`` and a reason, which is logged. Each face
  also keeps the budget that was in force when it was first seen.
* **Safe under concurrent writers.** Check-and-charge is one ``BEGIN IMMEDIATE`` transaction, so
  processes sharing the file never overspend together. SQLite's locking needs a local file
  system (or one with working POSIX locks); on a cluster, charge through one process that owns
  the file (``identitydp batch --engine ray`` does: a ledger actor on the driver).

Accounting is basic composition per key (sum of ε and of δ), as in :class:`PrivacyLedger`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BudgetExceededError, PrivacyError
from .cost import PrivacyCost

__all__ = ["FACE_IOU", "LEDGER_STORE_FORMAT", "Charge", "LedgerStore", "default_ledger_path", "process_owner"]

LEDGER_STORE_FORMAT = "identitydp.ledger-store/1"
#: Two boxes of one input are the same face when their IoU is at least this.
FACE_IOU = 0.5
#: Video tracks: same face when the first-frame boxes overlap this much and start this close.
TRACK_IOU = 0.3
TRACK_FRAME_TOLERANCE = 30
_BUDGET_RTOL = 1e-9
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS faces(
    key TEXT PRIMARY KEY, input TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL,
    x0 REAL, y0 REAL, x1 REAL, y1 REAL, frame INTEGER, budget REAL, source_name TEXT, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS faces_by_input ON faces(input, kind);
CREATE TABLE IF NOT EXISTS releases(
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, item TEXT NOT NULL,
    status TEXT NOT NULL CHECK(status IN ('pending', 'released', 'void')),
    epsilon REAL NOT NULL, delta REAL NOT NULL, cost TEXT NOT NULL, frames TEXT, output TEXT,
    config TEXT, owner TEXT NOT NULL, created REAL NOT NULL, settled REAL, note TEXT);
CREATE INDEX IF NOT EXISTS releases_by_key ON releases(key);
CREATE INDEX IF NOT EXISTS releases_by_status ON releases(status);
CREATE TABLE IF NOT EXISTS outputs(digest TEXT PRIMARY KEY, path TEXT, item TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, kind TEXT NOT NULL, detail TEXT, owner TEXT);
"""


def default_ledger_path() -> Path:
    """Where the ledger lives unless told otherwise: ``$IDENTITYDP_LEDGER``, else
    ``$XDG_DATA_HOME/identitydp/ledger.sqlite`` (``~/.local/share/...``).

    One ledger per user, not one per output folder: releasing the same photo into another folder
    must see what was already spent on it.
    """
    env = os.environ.get("IDENTITYDP_LEDGER")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "identitydp" / "ledger.sqlite"


def _process_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            # Field 22 (start time in clock ticks); the command name (field 2) may hold spaces.
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def process_owner() -> str:
    """``host:pid:start`` of this process: who holds a pending release (start time guards pid reuse)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def _owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host, None when it is on another host (cannot tell)."""
    try:
        host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    return start == "?" or _process_start(pid) == start


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _num(x: float) -> float | str:
    return "inf" if isinstance(x, float) and math.isinf(x) else x


@dataclass(frozen=True)
class Charge:
    """One release to charge: the face key, its cost, and (video) the frame range it covers."""

    key: str
    cost: PrivacyCost
    frames: tuple[int, int] | None = None


class LedgerStore:
    """The durable ledger file. Open one per process (or thread); all methods are transactions.

    Args:
        path: the SQLite file (created with its folder if missing).
        timeout_s: how long to wait for another writer's lock before failing.

    Raises:
        PrivacyError: the file exists but is not an identitydp ledger, or cannot be opened.
    """

    def __init__(self, path: str | os.PathLike, *, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.owner = process_owner()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), never implicit.
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._tx():
                for statement in _SCHEMA.strip().split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                fmt = self._meta("format")
                if fmt is None:
                    self._set_meta("format", LEDGER_STORE_FORMAT)
                elif fmt != LEDGER_STORE_FORMAT:
                    raise PrivacyError(f"{self.path} is a ledger of another format ({fmt}), not {LEDGER_STORE_FORMAT}")
        except sqlite3.DatabaseError as exc:
            raise PrivacyError(f"cannot open the privacy ledger {self.path}: {exc}") from exc

    # -- plumbing ---------------------------------------------------------------------------
    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb):
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            return False

    def _tx(self) -> "LedgerStore._Tx":
        return LedgerStore._Tx(self._db)

    def _meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, name: str, value: str | None) -> None:
        self._db.execute("INSERT INTO meta(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    def _event(self, kind: str, detail: dict) -> None:
        self._db.execute("INSERT INTO events(t, kind, detail, owner) VALUES(?, ?, ?, ?)",
                         (time.time(), kind, json.dumps(detail, default=str), self.owner))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "LedgerStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        raise TypeError("a LedgerStore holds an open database: send its path to workers and open it there")

    # -- budget -----------------------------------------------------------------------------
    @property
    def budget(self) -> float | None:
        """The ledger-wide ε budget per face (None: no limit)."""
        value = self._meta("budget_epsilon")
        return None if value is None else float(value)

    def set_budget(self, epsilon: float | None, *, override: bool = False, reason: str | None = None) -> float | None:
        """Apply a requested budget; returns the budget now in force.

        Lowering (or setting the first) budget is always allowed. ``None`` keeps the stored one.
        Raising it, or removing it (``math.inf``), needs ``override=True`` and a ``reason``; that
        also raises the per-face budgets, and is logged in the ledger's events.

        Raises:
            PrivacyError: an invalid value, or a raise without override and reason.
        """
        if epsilon is None:
            return self.budget
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or math.isnan(epsilon) or epsilon <= 0:
            raise PrivacyError(f"budget must be a number > 0, got {epsilon!r}")
        epsilon = float(epsilon)
        with self._tx():
            current = self._meta("budget_epsilon")
            current_value = None if current is None else float(current)
            if current_value is not None and epsilon > current_value * (1 + _BUDGET_RTOL):
                if not (override and reason):
                    raise PrivacyError(
                        f"this ledger ({self.path}) holds a budget of ε = {current_value:g} per face; a run cannot raise it "
                        f"to {epsilon:g}. To raise it on purpose (logged): identitydp ledger raise-budget --to {epsilon:g} "
                        f"--reason '...' --ledger {self.path}"
                    )
                self._db.execute("UPDATE faces SET budget = ? WHERE budget IS NOT NULL", (None if math.isinf(epsilon) else epsilon,))
                self._event("budget-raised", {"from": current_value, "to": _num(epsilon), "reason": reason})
            elif current_value is None or epsilon < current_value:
                self._event("budget-set", {"from": current_value, "to": _num(epsilon)})
            else:
                return current_value
            if math.isinf(epsilon):
                self._db.execute("DELETE FROM meta WHERE name = 'budget_epsilon'")
                return None
            self._set_meta("budget_epsilon", repr(epsilon))
        return epsilon

    # -- keys -------------------------------------------------------------------------------
    def face_keys(
        self,
        input_digest: str,
        boxes: Sequence[Sequence[float]],
        *,
        kind: str = "face",
        frames: Sequence[int] | None = None,
        source_name: str | None = None,
    ) -> list[str]:
        """The ledger key of every face (or video track) of one input, created when new.

        Args:
            input_digest: the input's content hash (hex).
            boxes: (N, 4) face boxes x0, y0, x1, y1 in input pixels (a track: its first box).
            kind: ``"face"`` (an image) or ``"track"`` (a video).
            frames: with ``kind="track"``, each track's first frame.
            source_name: the file name, kept as a hint for people reading the ledger.

        Returns:
            N keys ``"<digest16>#face<n>"`` / ``"<digest16>#track<n>"``; a box matching a face already
            known for this input (greatest IoU first, one-to-one) gets that face's key.
        """
        if kind not in ("face", "track"):
            raise PrivacyError(f"kind must be 'face' or 'track', got {kind!r}")
        boxes = [tuple(float(v) for v in b) for b in boxes]
        if kind == "track" and (frames is None or len(frames) != len(boxes)):
            raise PrivacyError("tracks need their first frame each")
        with self._tx():
            known = self._db.execute(
                "SELECT key, n, x0, y0, x1, y1, frame FROM faces WHERE input = ? AND kind = ?", (input_digest, kind)
            ).fetchall()
            pairs = []
            for i, box in enumerate(boxes):
                for j, (_, _, *kbox, kframe) in enumerate(known):
                    iou = _iou(box, kbox)
                    if kind == "face" and iou >= FACE_IOU:
                        pairs.append((iou, i, j))
                    elif kind == "track" and iou >= TRACK_IOU and abs(int(frames[i]) - int(kframe)) <= TRACK_FRAME_TOLERANCE:
                        pairs.append((iou, i, j))
            keys: list[str | None] = [None] * len(boxes)
            used: set[int] = set()
            for _, i, j in sorted(pairs, reverse=True):
                if keys[i] is None and j not in used:
                    keys[i] = known[j][0]
                    used.add(j)
            next_n = max((row[1] for row in known), default=-1) + 1
            budget = self._meta("budget_epsilon")
            for i, box in enumerate(boxes):
                if keys[i] is None:
                    key = f"{input_digest[:16]}#{kind}{next_n}"
                    self._db.execute(
                        "INSERT INTO faces(key, input, kind, n, x0, y0, x1, y1, frame, budget, source_name, created) "
                        "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (key, input_digest, kind, next_n, *box, None if frames is None else int(frames[i]),
                         None if budget is None else float(budget), source_name, time.time()),
                    )
                    keys[i] = key
                    next_n += 1
        return [k for k in keys if k is not None]

    # -- charging ---------------------------------------------------------------------------
    def _spent_locked(self, key: str) -> tuple[float, float, int]:
        rows = self._db.execute(
            "SELECT epsilon, delta FROM releases WHERE key = ? AND status != 'void'", (key,)
        ).fetchall()
        return math.fsum(r[0] for r in rows), min(math.fsum(r[1] for r in rows), 1.0), len(rows)

    def _budget_locked(self, key: str) -> float | None:
        limits = []
        ledger_budget = self._meta("budget_epsilon")
        if ledger_budget is not None:
            limits.append(float(ledger_budget))
        row = self._db.execute("SELECT budget FROM faces WHERE key = ?", (key,)).fetchone()
        if row is not None and row[0] is not None:
            limits.append(float(row[0]))
        return min(limits) if limits else None

    def charge(self, item: str, charges: Sequence[Charge], *, output: str | os.PathLike | None = None,
               config: dict | None = None, note: str | None = None) -> list[int]:
        """Record ``charges`` as pending releases of one work item, all or nothing.

        Call it *before* drawing the noise; then :meth:`settle` the returned ids once the output
        exists (``released``) or is known never to exist (``void``).

        Args:
            item: the work item (input digest + output), to tie the releases to their output.
            charges: one per face / track that is about to be drawn.
            output: the output path the releases will be written to.
            config: the anonymizer configuration (recorded with each release).
            note: recorded with each release, e.g. why it is not private (ε = ∞, seeded noise).

        Returns:
            The release ids, in the order of ``charges``.

        Raises:
            BudgetExceededError: some key would exceed its budget; nothing is recorded.
        """
        for c in charges:
            if not isinstance(c, Charge) or not isinstance(c.cost, PrivacyCost):
                raise PrivacyError(f"charges must be Charge(key, PrivacyCost, frames), got {c!r}")
        config_text = None if config is None else json.dumps(config, sort_keys=True, default=str)
        now = time.time()
        ids = []
        with self._tx():
            extra: dict[str, tuple[float, float]] = {}
            for c in charges:
                e, d = extra.get(c.key, (0.0, 0.0))
                extra[c.key] = (e + c.cost.epsilon, d + c.cost.delta)
            for key, (eps, _) in extra.items():
                budget = self._budget_locked(key)
                spent, _, count = self._spent_locked(key)
                if budget is not None and spent + eps > budget * (1 + _BUDGET_RTOL):
                    raise BudgetExceededError(
                        f"releasing face {key} again would spend ε = {spent + eps:g} in total (already {spent:g} over "
                        f"{count} release(s)), over its budget of ε = {budget:g}; release refused"
                    )
            for c in charges:
                cur = self._db.execute(
                    "INSERT INTO releases(key, item, status, epsilon, delta, cost, frames, output, config, owner, created, note) "
                    "VALUES(?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (c.key, item, c.cost.epsilon, c.cost.delta, json.dumps(c.cost.to_dict()),
                     None if c.frames is None else json.dumps([int(c.frames[0]), int(c.frames[1])]),
                     None if output is None else str(output), config_text, self.owner, now, note),
                )
                ids.append(int(cur.lastrowid))
        return ids

    def settle(self, ids: Iterable[int], status: str, *, note: str | None = None,
               frames: dict[int, tuple[int, int]] | None = None, notes: dict[int, str] | None = None) -> None:
        """Mark pending releases ``released`` (their output exists) or ``void`` (it never will).

        ``note`` replaces the note of every release; ``notes`` (release id → note) of some, e.g.
        what each face released without DP (``--keep``).
        """
        if status not in ("released", "void"):
            raise PrivacyError(f"status must be 'released' or 'void', got {status!r}")
        ids = list(ids)
        if not ids:
            return
        now = time.time()
        with self._tx():
            for rid in ids:
                span = (frames or {}).get(rid)
                self._db.execute(
                    "UPDATE releases SET status = ?, settled = ?, note = COALESCE(?, note), frames = COALESCE(?, frames) "
                    "WHERE id = ? AND status = 'pending'",
                    (status, now, (notes or {}).get(rid, note), None if span is None else json.dumps([int(span[0]), int(span[1])]), rid),
                )

    def recover(self) -> dict[str, int]:
        """Settle the pending releases of processes on this host that died (Ctrl-C, ``kill -9``).

        A pending release whose output file exists was written (its output is renamed into place
        only when complete): released. One without an output was never published: void. Pending
        releases of live processes, or of other hosts, are left pending (and keep counting).

        Returns:
            ``{"released": n, "void": m}``.
        """
        done = {"released": 0, "void": 0}
        with self._tx():
            rows = self._db.execute("SELECT id, owner, output FROM releases WHERE status = 'pending'").fetchall()
            now = time.time()
            for rid, owner, output in rows:
                if owner == self.owner or _owner_alive(owner) is not False:
                    continue
                exists = output is not None and Path(output).is_file()
                status = "released" if exists else "void"
                note = "recovered: output exists" if exists else "recovered: its process died before writing the output"
                self._db.execute("UPDATE releases SET status = ?, settled = ?, note = COALESCE(note || '; ', '') || ? WHERE id = ?",
                                 (status, now, note, rid))
                done[status] += 1
            if rows and any(done.values()):
                self._event("recovered", done)
        return done

    # -- outputs ----------------------------------------------------------------------------
    def record_output(self, digest: str, path: str | os.PathLike, item: str) -> None:
        """Remember an output's content hash, so that it is never taken as an input later."""
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO outputs(digest, path, item, created) VALUES(?, ?, ?, ?)",
                             (digest, str(path), item, time.time()))

    def is_output(self, digest: str) -> bool:
        return self._db.execute("SELECT 1 FROM outputs WHERE digest = ?", (digest,)).fetchone() is not None

    # -- queries ----------------------------------------------------------------------------
    def spent(self, key: str) -> tuple[float, float, int]:
        """(ε, δ, releases) spent on ``key``: released and pending releases (void ones excluded)."""
        return self._spent_locked(key)

    def remaining(self, key: str) -> float:
        budget = self._budget_locked(key)
        return math.inf if budget is None else max(budget - self._spent_locked(key)[0], 0.0)

    def releases(self, *, status: str | None = None, output: str | os.PathLike | None = None) -> list[dict]:
        """Release rows as dicts (newest last), optionally filtered."""
        query = "SELECT id, key, item, status, epsilon, delta, cost, frames, output, config, owner, created, settled, note FROM releases"
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if output is not None:
            where.append("output = ?")
            args.append(str(output))
        if where:
            query += " WHERE " + " AND ".join(where)
        cols = ["id", "key", "item", "status", "epsilon", "delta", "cost", "frames", "output", "config", "owner", "created", "settled", "note"]
        out = []
        for row in self._db.execute(query + " ORDER BY id", args):
            d = dict(zip(cols, row))
            d["cost"] = json.loads(d["cost"])
            d["frames"] = None if d["frames"] is None else json.loads(d["frames"])
            d["config"] = None if d["config"] is None else json.loads(d["config"])
            d["epsilon"] = _num(d["epsilon"])
            out.append(d)
        return out

    def max_spent(self) -> float:
        """The largest ε spent on one face (0 for an empty ledger)."""
        keys = [r[0] for r in self._db.execute("SELECT DISTINCT key FROM releases WHERE status != 'void'")]
        return max((self._spent_locked(k)[0] for k in keys), default=0.0)

    def events(self) -> list[dict]:
        return [
            {"t": t, "kind": kind, "detail": json.loads(detail) if detail else None, "owner": owner}
            for t, kind, detail, owner in self._db.execute("SELECT t, kind, detail, owner FROM events ORDER BY id")
        ]

    def summary(self) -> dict:
        """JSON-ready totals: faces, releases by status, the budget and the most exposed face."""
        counts = dict(self._db.execute("SELECT status, COUNT(*) FROM releases GROUP BY status").fetchall())
        faces = self._db.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        inputs = self._db.execute("SELECT COUNT(DISTINCT input) FROM faces").fetchone()[0]
        return {
            "format": LEDGER_STORE_FORMAT,
            "path": str(self.path),
            "composition": "basic (sum of epsilon and of delta per face)",
            "budget_epsilon": self.budget,
            "inputs": inputs,
            "faces": faces,
            "releases": {s: int(counts.get(s, 0)) for s in ("released", "pending", "void")},
            "max_spent_epsilon": _num(self.max_spent()),
        }

    def export(self) -> dict:
        """Everything, JSON-ready: summary, faces with their totals, releases, events."""
        faces = []
        for key, input_digest, kind, source_name, budget in self._db.execute(
            "SELECT key, input, kind, source_name, budget FROM faces ORDER BY created, key"
        ):
            eps, delta, n = self._spent_locked(key)
            faces.append({"key": key, "input": input_digest, "kind": kind, "source_name": source_name,
                          "budget_epsilon": budget, "spent": {"epsilon": _num(eps), "delta": delta, "releases": n}})
        return {**self.summary(), "faces_detail": faces, "release_log": self.releases(), "events": self.events()}
