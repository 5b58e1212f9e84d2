"""Export the shipped generator's *graph* (no weights) for ONNX Runtime.

Writes, next to the generator's safetensors:

* ``identitydp_generator.graph.onnx`` — the v1 renderer's computation graph (opset 17, dynamic
  batch), every weight marked as external data with no file behind it: ~200 kB, no numbers that
  are not in the checksummed safetensors;
* ``identitydp_generator.onnx.json`` — the index: which safetensors tensor feeds which graph
  initializer, the input/output names and shapes, the torch version that exported it, and the
  SHA-256 of the generator the graph was checked against;

and updates their registry entries. At run time ``identitydp.generate.onnx_backend`` gives ORT the
weights from the safetensors (``SessionOptions.add_external_initializers``), so the weights stay in
one place and the graph cannot carry stale ones. The export is checked here: ORT's output on random
crops must match torch's to 1e-4.

    python scripts/export_onnx.py            # needs the `export` extra (onnx) and onnxruntime

Re-run it whenever the generator's architecture changes (the test suite compares ORT to torch on a
real face and fails if the graph no longer fits the weights).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "identitydp" / "weights"
GRAPH = "identitydp_generator.graph.onnx"
INDEX = "identitydp_generator.onnx.json"
PREFIX = "m."
OPSET = 17


class _Renderer(torch.nn.Module):
    """(x (N,3,S,S) in [-1,1], z (N,128)) -> y (N,3,S,S): the generator's image output only."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.m(x, z)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="identitydp_generator", help="registered generator name")
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime as ort
    from safetensors.numpy import load_file

    from identitydp.generate.checkpoint import EXPORT_FORMAT, load_generator, read_metadata
    from identitydp.models.registry import sha256_of, weight_path

    path = weight_path(args.weights)
    if read_metadata(path).get("format") != EXPORT_FORMAT:
        print(f"{path}: only the v1 renderer is exported so far", file=sys.stderr)
        return 2
    model, _, _ = load_generator(path)
    size = model.cfg.size
    wrapper = _Renderer(model).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, size, size, generator=gen) * 2 - 1
    z = torch.nn.functional.normalize(torch.randn(4, 128, generator=gen), dim=1)
    buf = io.BytesIO()
    # No constant folding: every initializer keeps its state_dict name, so the safetensors feed it.
    torch.onnx.export(wrapper, (x, z), buf, input_names=["x", "z"], output_names=["y"], do_constant_folding=False,
                      dynamic_axes={"x": {0: "n"}, "z": {0: "n"}, "y": {0: "n"}}, opset_version=OPSET, dynamo=False)
    graph = onnx.load_from_string(buf.getvalue())
    stored = load_file(str(path))
    mapping = {}
    for init in graph.graph.initializer:
        key = init.name[len(PREFIX):] if init.name.startswith(PREFIX) else None
        if key not in stored:
            continue  # a constant of the graph itself (shapes, scalars): stays inline
        mapping[init.name] = key
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        entry = init.external_data.add()
        entry.key, entry.value = "location", "weights-come-from-safetensors"
    graph.producer_name = "identitydp scripts/export_onnx.py"
    (WEIGHTS / GRAPH).write_bytes(graph.SerializeToString())

    # Check: ORT with the safetensors weights == torch.
    from identitydp.generate.onnx_backend import OnnxRenderer

    index = {
        "format": "identitydp-onnx-index-v1",
        "graph": GRAPH,
        "weights": args.weights,
        "weights_sha256": sha256_of(path),
        "initializers": mapping,
        "inputs": {"x": ["n", 3, size, size], "z": ["n", 128]},
        "outputs": {"y": ["n", 3, size, size]},
        "opset": OPSET,
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }
    (WEIGHTS / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    renderer = OnnxRenderer(WEIGHTS / GRAPH, WEIGHTS / INDEX, path, threads=1)
    with torch.inference_mode():
        ref = wrapper(x, z).numpy()
    err = float(np.abs(renderer(x.numpy(), z.numpy()) - ref).max())
    if err > 1e-4:
        print(f"ONNX Runtime disagrees with torch by {err:.2e}", file=sys.stderr)
        return 1
    _register(sha256_of(WEIGHTS / GRAPH), sha256_of(WEIGHTS / INDEX), torch.__version__)
    print(f"wrote {GRAPH} ({(WEIGHTS / GRAPH).stat().st_size / 1e3:.0f} kB, {len(mapping)} external weights) "
          f"and {INDEX}; ORT vs torch max |diff| {err:.1e}")
    return 0


def _register(graph_sha: str, index_sha: str, torch_version: str) -> None:
    reg_path = WEIGHTS / "registry.json"
    entries = json.loads(reg_path.read_text())
    common = {
        "source": f"exported from identitydp_generator.safetensors by scripts/export_onnx.py (torch {torch_version}, opset {OPSET}); holds no weights",
        "origin": "this project (the v1 renderer's architecture, identitydp.generate.networks.FaceGenerator)",
        "license": "MIT (this project)",
        "rebuild": "python scripts/export_onnx.py (pip install -e '.[export]')",
    }
    new = {
        "identitydp_generator_onnx": dict(name="identitydp_generator_onnx", filename=GRAPH, sha256=graph_sha, **common),
        "identitydp_generator_onnx_index": dict(name="identitydp_generator_onnx_index", filename=INDEX, sha256=index_sha, **common),
    }
    entries = [new.pop(e["name"], e) for e in entries] + list(new.values())
    reg_path.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
