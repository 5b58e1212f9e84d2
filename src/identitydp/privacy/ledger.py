"""Privacy ledger: what was released about each input, and the total spent per input.

Accounting uses basic composition (Dwork & Roth 2014, Thm 3.16): k releases about the same
person at (ε_i, δ_i) are together (Σε_i, Σδ_i)-DP. A *key* names what one person's privacy is
attached to: one face of one image (``"photo.jpg#face0"``) or one video track
(``"clip.mp4#track3"`` with its frame range). In a video a whole track is ONE release (the same
noisy identity is reused on every frame), so it is charged once.

The ledger cannot know that two keys show the same person: the same person in k images costs kε
in total, which is the sum over their keys. ``budget`` caps the ε spent per key.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BudgetExceededError, PrivacyError
from .calibration import check_epsilon
from .cost import PrivacyCost

__all__ = ["LEDGER_FORMAT", "LedgerEntry", "PrivacyLedger", "Spent"]

LEDGER_FORMAT = "identitydp.privacy-ledger/1"
# Relative slack when comparing a sum of ε's with the budget, so that e.g. ten releases at 0.1 fit
# a budget of 1.0 despite floating-point rounding of the sum.
_BUDGET_RTOL = 1e-9


@dataclass(frozen=True)
class LedgerEntry:
    """Releases of one kind recorded under one key.

    Attributes:
        cost: the per-release :class:`PrivacyCost`.
        count: how many such releases.
        frames: (first, last) frame index for a video track, else None.
        details: extra JSON-ready parameters of the release (e.g. DP-Pix's block size).
    """

    cost: PrivacyCost
    count: int = 1
    frames: tuple[int, int] | None = None
    details: Mapping[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {**dict(self.details), **self.cost.to_dict()}
        out["count"] = self.count
        if self.frames is not None:
            out["frames"] = list(self.frames)
        return out


@dataclass(frozen=True)
class Spent:
    """Total spent on one key under basic composition.

    Attributes:
        epsilon: Σ count·ε (``math.inf`` if any release was noise-free).
        delta: Σ count·δ (capped at 1).
        releases: number of releases.
    """

    epsilon: float
    delta: float
    releases: int


def _json_float(x: float) -> float | str:
    return "inf" if math.isinf(x) else x


class PrivacyLedger:
    """Per-key record of releases with optional per-key ε budget. Thread-safe (one lock).

    Args:
        budget: maximum total ε per key (basic composition), or None for no limit. A release that
            would exceed it raises :class:`BudgetExceededError` *before* it happens.
        delta_budget: optional maximum total δ per key.

    Example::

        ledger = PrivacyLedger(budget=4.0)
        ledger.charge("a.jpg#face0", mech.privacy_cost())
        ledger.write("out/ledger.json")
    """

    def __init__(self, *, budget: float | None = None, delta_budget: float | None = None) -> None:
        for name, value in (("budget", budget), ("delta_budget", delta_budget)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0):
                raise PrivacyError(f"{name} must be a number >= 0 or None, got {value!r}")
        self.budget = None if budget is None else float(budget)
        self.delta_budget = None if delta_budget is None else float(delta_budget)
        self._entries: dict[str, list[LedgerEntry]] = {}
        self._lock = threading.Lock()

    # -- queries --------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys in first-charged order."""
        with self._lock:
            return list(self._entries)

    def entries(self, key: str) -> list[LedgerEntry]:
        """The releases recorded for ``key`` (empty if none)."""
        with self._lock:
            return list(self._entries.get(key, []))

    def spent(self, key: str) -> Spent:
        """Total (ε, δ) spent on ``key`` under basic composition."""
        with self._lock:
            return self._spent_locked(key)

    def remaining(self, key: str) -> float:
        """ε left for ``key`` under the budget (``math.inf`` without a budget)."""
        if self.budget is None:
            return math.inf
        return max(self.budget - self.spent(key).epsilon, 0.0)

    def max_spent(self) -> Spent:
        """The largest per-key total (the guarantee for the most exposed input)."""
        with self._lock:
            totals = [self._spent_locked(k) for k in self._entries]
        if not totals:
            return Spent(0.0, 0.0, 0)
        return max(totals, key=lambda s: (s.epsilon, s.delta))

    def _spent_locked(self, key: str) -> Spent:
        entries = self._entries.get(key, [])
        eps = math.fsum(e.cost.epsilon * e.count for e in entries) if entries else 0.0
        delta = min(math.fsum(e.cost.delta * e.count for e in entries), 1.0) if entries else 0.0
        return Spent(eps, delta, sum(e.count for e in entries))

    # -- charging -------------------------------------------------------------------------
    def _check_locked(self, key: str, eps: float, delta: float) -> None:
        spent = self._spent_locked(key)
        if self.budget is not None:
            total = spent.epsilon + eps
            if total > self.budget * (1.0 + _BUDGET_RTOL):
                raise BudgetExceededError(
                    f"releasing {key!r} again would spend ε = {total:g} in total "
                    f"(already {spent.epsilon:g} over {spent.releases} release(s), this one {eps:g}), "
                    f"over the budget of ε = {self.budget:g} per input; release refused"
                )
        if self.delta_budget is not None:
            total_d = spent.delta + delta
            if total_d > self.delta_budget * (1.0 + _BUDGET_RTOL):
                raise BudgetExceededError(
                    f"releasing {key!r} again would spend δ = {total_d:g} in total, over the δ budget of "
                    f"{self.delta_budget:g} per input; release refused"
                )

    def _add_locked(
        self, key: str, cost: PrivacyCost, count: int, frames: tuple[int, int] | None, details: Mapping[str, object] | None = None
    ) -> None:
        details = dict(details or {})
        entries = self._entries.setdefault(key, [])
        for i, entry in enumerate(entries):
            if entry.cost == cost and entry.frames == frames and dict(entry.details) == details:
                entries[i] = LedgerEntry(cost, entry.count + count, frames, details)
                return
        entries.append(LedgerEntry(cost, count, frames, details))

    @staticmethod
    def _check_args(key: object, cost: object, count: object) -> None:
        if not isinstance(key, str) or not key:
            raise PrivacyError(f"ledger keys must be non-empty strings, got {key!r}")
        if not isinstance(cost, PrivacyCost):
            raise PrivacyError(f"cost must be a PrivacyCost (mechanism.privacy_cost()), got {type(cost).__name__}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PrivacyError(f"count must be a positive integer, got {count!r}")

    def check(self, key: str, cost: PrivacyCost, *, count: int = 1) -> None:
        """Raise :class:`BudgetExceededError` if charging ``count`` × ``cost`` to ``key`` would exceed
        the budget; records nothing. Call it before producing an output, then :meth:`charge`
        (or use ``mechanism.perturb(..., ledger=...)``, which charges before drawing noise)."""
        self._check_args(key, cost, count)
        with self._lock:
            self._check_locked(key, cost.epsilon * count, cost.delta * count)

    def charge(
        self,
        key: str,
        cost: PrivacyCost,
        *,
        count: int = 1,
        frames: tuple[int, int] | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Record ``count`` releases of ``cost`` for ``key``, refusing first if over budget.

        Args:
            key: the input (``"path#face0"``, ``"video#track3"``).
            cost: from ``mechanism.privacy_cost()``.
            count: number of releases (a video track is 1 however many frames it spans).
            frames: (first, last) frame of a video track, recorded for the report.
            details: extra JSON-ready parameters to record with the release.

        Raises:
            BudgetExceededError: the key would exceed the budget; nothing is recorded.
        """
        self._check_args(key, cost, count)
        if frames is not None:
            frames = (int(frames[0]), int(frames[1]))
        if details is not None:
            try:
                json.dumps(dict(details), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise PrivacyError(f"ledger details must be JSON-serialisable: {exc}") from exc
        with self._lock:
            self._check_locked(key, cost.epsilon * count, cost.delta * count)
            self._add_locked(key, cost, count, frames, details)

    def record(
        self,
        key: str,
        *,
        mechanism: str,
        epsilon: float | str,
        delta: float | str = 0.0,
        relation: str | None = None,
        neighbouring: str | None = None,
        domain: str = "",
        k: int | None = None,
        radius: float | None = None,
        metric_epsilon: float | None = None,
        rho: float | None = None,
        count: int = 1,
        frames: tuple[int, int] | None = None,
        **details: object,
    ) -> None:
        """Dict-style :meth:`charge`: ``ledger.record(key, **release_dict)``.

        Accepts the dict of :meth:`PrivacyCost.to_dict` (``"inf"`` allowed for ε) and the records of
        other DP methods (e.g. DP-Pix's ``{"mechanism", "epsilon", "delta", "neighbouring", ...}``);
        unknown fields are kept as details. Same budget check as :meth:`charge`.
        """
        eps = check_epsilon(math.inf if epsilon == "inf" else epsilon)
        d = math.inf if delta == "inf" else delta
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise PrivacyError(f"delta must be in [0, 1), got {delta!r}")
        cost = PrivacyCost(
            mechanism=str(mechanism),
            epsilon=eps,
            delta=float(d),
            relation=relation or neighbouring or "unspecified",
            domain=domain,
            k=k,
            radius=radius,
            metric_epsilon=metric_epsilon,
            rho=rho,
        )
        self.charge(key, cost, count=count, frames=frames, details=details)

    def charge_batch(self, keys: Sequence[str], cost: PrivacyCost) -> None:
        """Charge one release of ``cost`` to every key, all or nothing (a key may repeat).

        Raises:
            BudgetExceededError: if any key would exceed the budget; nothing is recorded.
        """
        counts: dict[str, int] = {}
        for key in keys:
            self._check_args(key, cost, 1)
            counts[key] = counts.get(key, 0) + 1
        with self._lock:
            for key, n in counts.items():
                self._check_locked(key, cost.epsilon * n, cost.delta * n)
            for key, n in counts.items():
                self._add_locked(key, cost, n, None)

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready summary: format, composition rule, budget, and per-key releases and totals."""
        with self._lock:
            inputs = {}
            for key, entries in self._entries.items():
                spent = self._spent_locked(key)
                inputs[key] = {
                    "releases": [e.to_dict() for e in entries],
                    "total": {"epsilon": _json_float(spent.epsilon), "delta": spent.delta, "releases": spent.releases},
                }
            worst = max((self._spent_locked(k) for k in self._entries), key=lambda s: (s.epsilon, s.delta), default=Spent(0.0, 0.0, 0))
        return {
            "format": LEDGER_FORMAT,
            "composition": "basic (sum of epsilon and of delta per input)",
            "budget_epsilon": None if self.budget is None else _json_float(self.budget),
            "budget_delta": self.delta_budget,
            "max_spent": {"epsilon": _json_float(worst.epsilon), "delta": worst.delta},
            "inputs": inputs,
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """Strict JSON text (infinite ε written as the string ``"inf"``)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (parent folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        """Read a ledger written by :meth:`write` (to keep charging the same inputs across runs)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise PrivacyError(f"cannot read privacy ledger {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise PrivacyError(f"{path} is not an identitydp privacy ledger ({LEDGER_FORMAT})")

        def num(x: object) -> float:
            return math.inf if x == "inf" else float(x)  # type: ignore[arg-type]

        budget = data.get("budget_epsilon")
        ledger = cls(budget=None if budget is None else num(budget), delta_budget=data.get("budget_delta"))
        fields = ("mechanism", "epsilon", "delta", "relation", "domain", "k", "radius", "metric_epsilon", "rho")
        try:
            for key, item in data["inputs"].items():
                for rel in item["releases"]:
                    values = {f: rel.get(f) for f in fields}
                    values["epsilon"] = num(values["epsilon"])
                    values["delta"] = num(values["delta"])
                    frames = tuple(rel["frames"]) if rel.get("frames") is not None else None
                    details = {f: v for f, v in rel.items() if f not in fields and f not in ("count", "frames")}
                    ledger._add_locked(key, PrivacyCost(**values), int(rel["count"]), frames, details)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyError(f"privacy ledger {path} is malformed: {exc}") from exc
        return ledger
