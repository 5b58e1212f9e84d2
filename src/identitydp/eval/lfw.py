"""The LFW evaluation protocol: probes, gallery, impostor pairs, real sets for the Fréchet distance.

- **Probes**: the people with ≥ 2 images (1,680 in LFW); a person's probe is image ``_0001``.
- **Gallery**: image ``_0002`` of the same people, kept *original* (fixed, deterministic).
- **Impostor pairs**: the mismatched pairs of View-2 (``pairs.txt``: 10 folds × 300), originals.
- **Real sets**: two disjoint sets of images of people with exactly one LFW image (4,069 people),
  so they share no identity with the probes.

Subsets (``--quick``) are evenly spaced in sorted order, hence deterministic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IdentityDPError

IMAGES_SUBDIR = "lfw-deepfunneled"


class LFWError(IdentityDPError):
    """LFW is missing or malformed."""


@dataclass(frozen=True)
class Protocol:
    """Image keys (paths relative to the LFW root) of every set the evaluation needs.

    Attributes:
        people: (P,) names of the probe people, sorted.
        probes: (P,) probe image keys (``_0001``).
        gallery: (P,) gallery image keys (``_0002``), aligned with ``probes``.
        impostors: (M, 2) image keys of the impostor pairs.
        real_a, real_b: two disjoint lists of image keys of single-image people.
    """

    people: list[str]
    probes: list[str]
    gallery: list[str]
    impostors: list[tuple[str, str]]
    real_a: list[str]
    real_b: list[str]

    def all_original_keys(self) -> list[str]:
        keys = dict.fromkeys(self.probes + self.gallery)
        for a, b in self.impostors:
            keys[a] = None
            keys[b] = None
        for k in self.real_a + self.real_b:
            keys[k] = None
        return list(keys)


def shared_data_dir(name: str, env: str) -> Path:
    """A data folder: ``$<env>``, else ``$IDENTITYDP_SHARED_DATA/<name>``, else ``../shared/data/<name>``."""
    if os.environ.get(env):
        return Path(os.environ[env])
    shared = os.environ.get("IDENTITYDP_SHARED_DATA")
    if shared:
        return Path(shared) / name
    return Path.cwd().parent / "shared" / "data" / name


def default_train_dir() -> Path:
    """The training-data root (``$IDENTITYDP_TRAIN``, ``$IDENTITYDP_SHARED_DATA/train`` or ``../shared/data/train``)."""
    return shared_data_dir("train", "IDENTITYDP_TRAIN")


def training_faces(train_dir: str | Path, n: int) -> list[str]:
    """``n`` UTKFace training images (keys relative to ``train_dir``), evenly spaced in name order.

    Raises:
        LFWError: no ``utkface/`` folder with images under ``train_dir``.
    """
    folder = Path(train_dir) / "utkface"
    names = sorted(p.name for p in folder.glob("*.jpg")) if folder.is_dir() else []
    if not names:
        raise LFWError(f"no training faces at {folder} (the trained attacker needs them; pass --train-data, "
                       "set IDENTITYDP_TRAIN, or --attacker-train 0)")
    return [f"utkface/{names[i]}" for i in evenly_spaced(len(names), min(n, len(names)))]


def image_key(name: str, number: int) -> str:
    return f"{IMAGES_SUBDIR}/{name}/{name}_{number:04d}.jpg"


def evenly_spaced(n_total: int, n: int | None) -> np.ndarray:
    """Indices of ``n`` items spread evenly over ``range(n_total)`` (all when ``n`` is None)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(int))


def count_images(lfw_dir: Path) -> dict[str, int]:
    root = Path(lfw_dir) / IMAGES_SUBDIR
    if not root.is_dir():
        raise LFWError(f"LFW images not found at {root}")
    return {p.name: sum(1 for _ in p.glob("*.jpg")) for p in sorted(root.iterdir()) if p.is_dir()}


def read_impostor_pairs(lfw_dir: Path) -> list[tuple[str, str]]:
    """Mismatched pairs of LFW View-2 (``pairs.txt``), as image keys, in file order."""
    path = Path(lfw_dir) / "pairs.txt"
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise LFWError(f"cannot read {path}: {exc}") from exc
    pairs = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) == 4:
            pairs.append((image_key(parts[0], int(parts[1])), image_key(parts[2], int(parts[3]))))
        elif len(parts) != 3:
            raise LFWError(f"unexpected line in {path}: {line!r}")
    if not pairs:
        raise LFWError(f"no mismatched pairs in {path}")
    return pairs


def build_protocol(lfw_dir: str | Path, people: int | None, impostor_pairs: int | None, fd_size: int | None) -> Protocol:
    """Fix every image set of the protocol (see the module docstring).

    Args:
        lfw_dir: LFW root.
        people: number of probe people (None: all with ≥ 2 images).
        impostor_pairs: number of mismatched pairs (None: all).
        fd_size: size of each real set (None: as many as probes).

    Raises:
        LFWError: LFW missing, or too few single-image people for two real sets of that size.
    """
    lfw_dir = Path(lfw_dir)
    counts = count_images(lfw_dir)
    multi = sorted(n for n, c in counts.items() if c >= 2)
    single = sorted(n for n, c in counts.items() if c == 1)
    chosen = [multi[i] for i in evenly_spaced(len(multi), people)]
    pairs = read_impostor_pairs(lfw_dir)
    chosen_pairs = [pairs[i] for i in evenly_spaced(len(pairs), impostor_pairs)]
    size = fd_size if fd_size is not None else len(chosen)
    if 2 * size > len(single):
        raise LFWError(f"fd_size {size} needs {2 * size} single-image people; LFW has {len(single)}")
    picked = [single[i] for i in evenly_spaced(len(single), 2 * size)]
    return Protocol(
        people=chosen,
        probes=[image_key(n, 1) for n in chosen],
        gallery=[image_key(n, 2) for n in chosen],
        impostors=chosen_pairs,
        real_a=[image_key(n, 1) for n in picked[0::2]],
        real_b=[image_key(n, 1) for n in picked[1::2]],
    )
