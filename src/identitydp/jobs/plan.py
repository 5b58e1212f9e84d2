"""Planning a job: which inputs, which output for each, and what is skipped before any work."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IdentityDPError
from ..io import IMAGE_SUFFIXES

__all__ = ["OUTPUT_TAG", "PlanError", "Skipped", "WorkItem", "JobPlan", "plan_job", "read_manifest"]

#: Default outputs are ``NAME.anonymized.EXT`` next to their input; such files are never inputs.
OUTPUT_TAG = ".anonymized"
#: Files that look like media but that we do not read (mentioned, not silently dropped).
UNSUPPORTED_SUFFIXES = {".gif", ".avif", ".heic", ".heif", ".jxl", ".raw", ".cr2", ".nef", ".dng", ".svg", ".ico", ".psd"}


class PlanError(IdentityDPError):
    """The job cannot be planned at all (e.g. ``-o`` names a file for several inputs)."""


@dataclass(frozen=True)
class WorkItem:
    """One input and where its anonymized version goes.

    Attributes:
        source: the input file.
        output: the output file.
        kind: ``"image"`` or ``"video"``.
    """

    source: Path
    output: Path
    kind: str

    def to_dict(self) -> dict:
        return {"source": str(self.source), "output": str(self.output), "kind": self.kind}

    @classmethod
    def from_dict(cls, data: dict) -> "WorkItem":
        return cls(Path(data["source"]), Path(data["output"]), str(data["kind"]))


@dataclass(frozen=True)
class Skipped:
    """An input that the plan leaves out, and why (in words)."""

    source: Path
    reason: str


@dataclass
class JobPlan:
    """What a job will do: ``items`` to process, inputs ``skipped`` (and why), ``missing`` inputs."""

    items: list[WorkItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    hidden: int = 0  # hidden files and files in hidden folders, left out
    others: list[Path] = field(default_factory=list)  # files of a folder that are not media (no or another suffix)

    @property
    def inputs(self) -> list[Path]:
        return [i.source for i in self.items]

    @property
    def outputs(self) -> list[Path]:
        return [i.output for i in self.items]


def _kind(path: Path) -> str | None:
    from ..video import VIDEO_SUFFIXES

    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def is_own_output_name(path: Path) -> bool:
    """``photo.anonymized.jpg``: a default output name of ours."""
    return path.stem.endswith(OUTPUT_TAG)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def plan_job(inputs: list[str | os.PathLike], output: str | os.PathLike | None = None) -> JobPlan:
    """Expand ``inputs`` (files and folders, searched recursively) into work items.

    Output naming, as the CLI documents it: without ``output``, ``NAME.anonymized.EXT`` next to
    each input; one input file and an ``output`` with a media suffix: that file; otherwise
    ``output`` is a folder and each input keeps its path relative to the folder it was found in.

    Never planned as inputs: hidden files and folders, our temporary files, files named like our
    default outputs (``*.anonymized.*``), anything inside the output folder, and unsupported
    formats (listed in ``skipped`` with the reason). A missing input is listed in ``missing``;
    the rest of the job goes on.

    Raises:
        PlanError: two inputs would be written to the same output.
    """
    plan = JobPlan()
    out = None if output is None else Path(output)
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                rel = p.relative_to(root)
                if not p.is_file():
                    continue
                if any(part.startswith(".") for part in rel.parts):
                    plan.hidden += 1
                    continue
                if out is not None and out.suffix == "" and _inside(p, out) and not _inside(root, out):
                    continue  # our own output folder inside the input folder
                found.append((p, rel))
        elif root.is_file():
            found.append((root, Path(root.name)))
        else:
            plan.missing.append(root)
    single_file = len(inputs) == 1 and len(found) == 1 and Path(inputs[0]).is_file()
    seen: dict[Path, Path] = {}
    for src, rel in found:
        kind = _kind(src)
        if kind is None:
            if src.suffix.lower() in UNSUPPORTED_SUFFIXES:
                plan.skipped.append(Skipped(src, f"{src.suffix.lower()} files are not supported (convert to PNG/JPEG or MP4)"))
            elif src == Path(inputs[0]) and single_file:
                from ..video import VIDEO_SUFFIXES

                plan.skipped.append(Skipped(src, "not an image or video suffix we read (" + ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES)) + ")"))
            else:
                plan.others.append(src)
            continue
        if is_own_output_name(src):
            plan.skipped.append(Skipped(src, "an identitydp output (named *.anonymized.*)"))
            continue
        if out is None:
            dst = src.with_name(f"{src.stem}{OUTPUT_TAG}{src.suffix}")
        elif single_file and _kind(out) is not None:
            dst = out
        else:
            dst = out / rel
        key = dst.resolve()
        if key in seen:
            raise PlanError(f"{src} and {seen[key]} would both be written to {dst}; give them different names or -o folders")
        seen[key] = src
        plan.items.append(WorkItem(src, dst, kind))
    if out is not None and _kind(out) is not None and len(plan.items) > 1:
        raise PlanError(f"-o {out} is a file name, but there are {len(plan.items)} inputs: give a folder")
    return plan


def read_manifest(path: str | os.PathLike, output: str | os.PathLike) -> JobPlan:
    """A plan from a manifest: CSV (or Parquet) with a ``path`` column and an optional ``output``.

    Relative ``path`` values are relative to the manifest's folder; a missing ``output`` is
    ``OUTPUT/<path>``.

    Raises:
        PlanError: unreadable manifest, no ``path`` column, or colliding outputs.
    """
    path = Path(path)
    rows: list[dict]
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
    except (OSError, ValueError, ImportError) as exc:
        raise PlanError(f"cannot read the manifest {path}: {exc}") from exc
    if rows and "path" not in rows[0]:
        raise PlanError(f"the manifest {path} needs a 'path' column (it has {', '.join(rows[0])})")
    plan = JobPlan()
    seen: dict[Path, Path] = {}
    for row in rows:
        rel = Path(str(row["path"]))
        src = rel if rel.is_absolute() else path.parent / rel
        dst = Path(str(row["output"])) if row.get("output") else Path(output) / (rel.relative_to(rel.anchor) if rel.is_absolute() else rel)
        kind = _kind(src)
        if not src.is_file():
            plan.missing.append(src)
            continue
        if kind is None:
            plan.skipped.append(Skipped(src, f"{src.suffix.lower() or 'no suffix'}: not a supported image or video"))
            continue
        if is_own_output_name(src):
            plan.skipped.append(Skipped(src, "an identitydp output (named *.anonymized.*)"))
            continue
        if dst.resolve() in seen:
            raise PlanError(f"{src} and {seen[dst.resolve()]} would both be written to {dst}")
        seen[dst.resolve()] = src
        plan.items.append(WorkItem(src, dst, kind))
    return plan
