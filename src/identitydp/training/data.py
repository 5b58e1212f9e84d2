"""The pre-aligned training bundle (built by ``scripts/build_train_bundle.py``), loaded onto a device.

The bundle is one ``.npz`` (no pickles) of WebP-encoded aligned crops plus per-crop metadata; see
the script's docstring for the fields. Loading decodes every crop once into a uint8 tensor on the
training device (≈ 0.9 GB at 128 px for 19k faces) so that batches are plain indexing and all
augmentation runs on that device.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Landmark order is left eye, right eye, nose, left mouth, right mouth; a horizontal flip swaps
# the image-left and image-right points.
FLIP_ORDER = [1, 0, 2, 4, 3]


@dataclass
class FaceBundle:
    """Decoded training faces on one device.

    Attributes:
        images: (N, S, S, 3) uint8 RGB crops.
        landmarks: (N, 5, 2) float32 crop pixels at size S.
        landmarks68: (N, 68, 2) float32 dlib 68-point landmarks in crop pixels at size S (pixel
            centres at +0.5), or None for bundles built before they were added.
        source: (N,) int8, 0 = UTKFace, 1 = CelebA, 2 = CelebA 256-px crops.
        identity: (N,) int64, CelebA identity, −1 for UTKFace.
        heldout: (N,) bool, quick-evaluation faces (excluded from training batches).
        names: file names, for reports.
        size: S; margin: the alignment margin of the crops; meta: the bundle's JSON metadata.
    """

    images: torch.Tensor
    landmarks: torch.Tensor
    source: torch.Tensor
    identity: torch.Tensor
    heldout: torch.Tensor
    names: list[str]
    size: int
    margin: float
    meta: dict
    landmarks68: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]


def _decode(buf: np.ndarray) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is not None:
        return bgr[:, :, ::-1]
    # An OpenCV build without WebP (remote machines): Pillow's wheels ship libwebp.
    import io

    from PIL import Image

    try:
        return np.asarray(Image.open(io.BytesIO(buf.tobytes())).convert("RGB"))
    except OSError as exc:
        raise ValueError("undecodable crop in the training bundle") from exc


def load_bundle(path: str | Path, size: int | None = None, device: str | torch.device = "cpu",
                limit: int = 0, threads: int = 8) -> FaceBundle:
    """Decode a training bundle.

    Args:
        path: the bundle ``.npz``.
        size: training crop size; crops are area-resized from the bundle's size when it differs.
        device: where the decoded tensors live.
        limit: keep only the first ``limit`` training faces plus all held-out ones (tests).
        threads: decoding threads (OpenCV releases the GIL).

    Raises:
        FileNotFoundError: no bundle at ``path``.
        ValueError: malformed bundle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training bundle {path} not found; build it with scripts/build_train_bundle.py")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for key in ("blob", "offsets", "source", "identity", "landmarks", "heldout", "names", "meta"):
        if key not in arrays:
            raise ValueError(f"training bundle {path} lacks {key!r}")
    meta = json.loads(str(arrays["meta"]))
    idx = np.arange(len(arrays["source"]))
    if limit:
        held = arrays["heldout"]
        idx = np.concatenate([np.flatnonzero(~held)[:limit], np.flatnonzero(held)[: max(8, limit // 4)]])
    blob, off = arrays["blob"], arrays["offsets"]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        crops = list(pool.map(lambda i: _decode(blob[off[i] : off[i + 1]]), idx))
    images = torch.from_numpy(np.ascontiguousarray(np.stack(crops)))
    src_size = int(meta["size"])
    landmarks = torch.from_numpy(arrays["landmarks"][idx].astype(np.float32))
    landmarks68 = None
    if "landmarks68" in arrays:
        landmarks68 = torch.from_numpy(arrays["landmarks68"][idx].astype(np.float32))
    size = size or src_size
    if size != src_size:
        chunks = []
        for start in range(0, len(images), 2048):
            x = images[start : start + 2048].to(device).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(size, size), mode="area" if size < src_size else "bilinear")
            chunks.append(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous())
        images = torch.cat(chunks)
        # Pixel centres sit at integer coordinates (cv2 convention).
        landmarks = (landmarks + 0.5) * (size / src_size) - 0.5
        if landmarks68 is not None:
            # These already put pixel centres at +0.5: a plain scale.
            landmarks68 = landmarks68 * (size / src_size)
    return FaceBundle(
        images=images.to(device),
        landmarks=landmarks.to(device),
        source=torch.from_numpy(arrays["source"][idx].astype(np.int8)).to(device),
        identity=torch.from_numpy(arrays["identity"][idx].astype(np.int64)).to(device),
        heldout=torch.from_numpy(arrays["heldout"][idx]).to(device),
        names=[str(n) for n in arrays["names"][idx]],
        size=size,
        margin=float(meta["margin"]),
        meta=meta,
        landmarks68=None if landmarks68 is None else landmarks68.to(device),
    )


def to_model(images_u8: torch.Tensor) -> torch.Tensor:
    """(N, S, S, 3) uint8 → (N, 3, S, S) float32 in [-1, 1]."""
    return images_u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) float in [-1, 1] → (N, 3, S, S) float in 0..255 (differentiable)."""
    return (images.float() + 1.0) * 127.5


class PairIndex:
    """For faces with a CelebA identity shared by ≥ 2 training images: a random *other* image of
    the same person, sampled on the device."""

    def __init__(self, identity: torch.Tensor, train_mask: torch.Tensor) -> None:
        dev = identity.device
        ident = torch.where(train_mask & (identity >= 0), identity, torch.full_like(identity, -1))
        order = torch.argsort(ident, stable=True)
        sorted_id = ident[order]
        _, inverse, counts = torch.unique_consecutive(sorted_id, return_inverse=True, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order), device=dev) - starts[inverse]
        n = len(identity)
        self.order = order
        self.pos = torch.empty(n, dtype=torch.long, device=dev)
        self.pos[order] = torch.arange(n, device=dev)
        self.start = starts[inverse]
        self.count = counts[inverse]
        self.rank = rank
        self.has_pair = torch.zeros(n, dtype=torch.bool, device=dev)
        self.has_pair[order] = (sorted_id >= 0) & (counts[inverse] >= 2)

    def partner(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) indices → (B,) indices of another image of the same person (``idx`` where none)."""
        p = self.pos[idx]
        count = self.count[p]
        step = 1 + (torch.rand(idx.shape, device=idx.device, generator=generator) * (count - 1).clamp_min(1)).long()
        other = self.order[self.start[p] + (self.rank[p] + step) % count]
        return torch.where(self.has_pair[idx], other, idx)
