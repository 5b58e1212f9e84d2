"""Export the shipped generator's *graph* (no weights) for ONNX Runtime.

Writes, next to the weights, for the v1 renderer (``identitydp_generator``), the v2 renderer
(``identitydp_renderer_v2``, its texture noise as inputs) and dlib's ResNet (``dlib_resnet``):

* ``<name>.graph.onnx`` — the network's computation graph (opset 17, dynamic batch), every weight
  marked as external data with no file behind it: no numbers that are not in the checksummed
  safetensors;
* ``<name>.onnx.json`` — the index: how each graph initializer is built from the safetensors
  (copy, or uint8 dequantisation and transpose for dlib), the input/output names and shapes, the
  versions that exported it, and the SHA-256 of the weights the graph was checked against;

and updates their registry entries. At run time ``identitydp.generate.onnx_backend`` gives ORT the
weights from the safetensors (``SessionOptions.add_external_initializers``), so the weights stay in
one place and the graph cannot carry stale ones. The export is checked here: ORT's output on random
inputs must match torch's to 1e-4, and dlib's NumPy-built weights must equal the torch loader's.

    python scripts/export_onnx.py            # needs the `export` extra (onnx) and onnxruntime
    python scripts/export_onnx.py --only v2  # just the v2 renderer's graph

Re-run it whenever the generator's architecture changes (the test suite compares ORT to torch on a
real face and fails if the graph no longer fits the weights).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from _onnx_export import index_head, mark_external

if TYPE_CHECKING:  # the export extra; imported where it is used
    import onnx

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "identitydp" / "weights"
PREFIX = "m."
OPSET = 17


class _Renderer(torch.nn.Module):
    """(x (N,3,S,S) in [-1,1], z (N,128)) -> y (N,3,S,S): the generator's image output only."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.m(x, z)[0]


def _export(module: torch.nn.Module, inputs: tuple, input_names: list[str], dynamic: dict) -> "onnx.ModelProto":
    import onnx

    buf = io.BytesIO()
    # No constant folding: every initializer keeps its state_dict name, so the index can feed it.
    torch.onnx.export(module, inputs, buf, input_names=input_names, output_names=["y"], do_constant_folding=False,
                      dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _strip(graph, recipes: dict[str, object], prefix: str = "") -> dict[str, object]:
    """Mark the initializers fed from safetensors as external (no data); returns name -> recipe."""
    mapping = {}
    for init in graph.graph.initializer:
        key = init.name[len(prefix):] if init.name.startswith(prefix) else None
        if key not in recipes:
            continue  # a constant of the graph itself (shapes, input means): stays inline
        mapping[init.name] = recipes[key]
        mark_external(init)
    graph.producer_name = "identitydp scripts/export_onnx.py"
    return mapping


def _write(name: str, graph, mapping: dict, weights: Path, inputs: dict, outputs: dict) -> tuple[Path, Path]:
    import onnx
    import onnxruntime as ort

    graph_path, index_path = WEIGHTS / f"{name}.graph.onnx", WEIGHTS / f"{name}.onnx.json"
    graph_path.write_bytes(graph.SerializeToString())
    index = {
        **index_head(graph_path, weights),
        "initializers": mapping,
        "inputs": inputs,
        "outputs": outputs,
        "opset": OPSET,
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    return graph_path, index_path


def _check(graph_path: Path, index_path: Path, weights: Path, feed: dict, ref: np.ndarray, what: str) -> float:
    from identitydp.models.onnx_graph import OnnxGraph

    out = OnnxGraph(graph_path, index_path, weights, threads=1)(**feed)
    err = float(np.abs(out - ref).max())
    if err > 1e-4:
        raise SystemExit(f"{what}: ONNX Runtime disagrees with torch by {err:.2e}")
    return err


def export_generator() -> list[tuple[str, Path, str]]:
    from identitydp.generate.checkpoint import EXPORT_FORMAT, load_generator, read_metadata
    from identitydp.models.registry import weight_path

    path = weight_path("identitydp_generator")
    if read_metadata(path).get("format") != EXPORT_FORMAT:
        raise SystemExit(f"{path}: only the v1 renderer is exported so far")
    model, _, _ = load_generator(path)
    size = model.cfg.size
    wrapper = _Renderer(model).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, size, size, generator=gen) * 2 - 1
    z = torch.nn.functional.normalize(torch.randn(4, 128, generator=gen), dim=1)
    graph = _export(wrapper, (x, z), ["x", "z"], {"x": {0: "n"}, "z": {0: "n"}, "y": {0: "n"}})
    mapping = _strip(graph, {k: k for k in model.state_dict()}, prefix=PREFIX)
    g, i = _write("identitydp_generator", graph, mapping, path, {"x": ["n", 3, size, size], "z": ["n", 128]},
                  {"y": ["n", 3, size, size]})
    with torch.inference_mode():
        ref = wrapper(x, z).numpy()
    err = _check(g, i, path, {"x": x.numpy(), "z": z.numpy()}, ref, "generator")
    print(f"generator: {g.name} ({g.stat().st_size / 1e3:.0f} kB, {len(mapping)} external weights); ORT vs torch {err:.1e}")
    return [("identitydp_generator_onnx", g, "the v1 renderer (identitydp.generate.networks.FaceGenerator)"),
            ("identitydp_generator_onnx_index", i, "the v1 renderer (identitydp.generate.networks.FaceGenerator)")]


class _InpaintRenderer(torch.nn.Module):
    """(x, mask, sketch, z, n0 … nK) -> raw (N,3,S,S): the v2 renderer's whole rendering, with its
    texture noise as inputs (ORT has no torch generator; the anonymizer draws the maps)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x, mask, sketch, z, *noise):
        return self.m(x, mask, sketch, z, noise=list(noise))[1]


def export_renderer_v2() -> list[tuple[str, Path, str]]:
    from identitydp.generate.anonymizer import RENDERER_V2_NAME
    from identitydp.generate.checkpoint import EXPORT_FORMAT_V2, load_generator, read_metadata
    from identitydp.generate.inpaint import SKETCH_CHANNELS
    from identitydp.models.registry import weight_path

    path = weight_path(RENDERER_V2_NAME)
    if read_metadata(path).get("format") != EXPORT_FORMAT_V2:
        raise SystemExit(f"{path} is not a v2 renderer")
    model, _, _ = load_generator(path)
    size, sides = model.cfg.size, model.noise_sides()
    wrapper = _InpaintRenderer(model).eval()
    gen = torch.Generator().manual_seed(0)
    n = 3
    x = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
    mask = torch.rand(n, 1, size, size, generator=gen)
    sketch = torch.rand(n, SKETCH_CHANNELS, size, size, generator=gen)
    z = torch.nn.functional.normalize(torch.randn(n, 128, generator=gen), dim=1)
    noise = [torch.randn(n, 1, s, s, generator=gen) for s in sides]
    names = ["x", "mask", "sketch", "z"] + [f"n{i}" for i in range(len(sides))]
    dynamic = {k: {0: "n"} for k in names + ["y"]}
    graph = _export(wrapper, (x, mask, sketch, z, *noise), names, dynamic)
    # Only learned tensors are fed from the file (the shape model is NumPy's, outside the graph).
    mapping = _strip(graph, {k: k for k in model.state_dict() if not k.startswith("shape_")}, prefix=PREFIX)
    inputs = {"x": ["n", 3, size, size], "mask": ["n", 1, size, size], "sketch": ["n", SKETCH_CHANNELS, size, size],
              "z": ["n", 128], **{f"n{i}": ["n", 1, s, s] for i, s in enumerate(sides)}}
    g, i = _write(RENDERER_V2_NAME, graph, mapping, path, inputs, {"y": ["n", 3, size, size]})
    with torch.inference_mode():
        ref = wrapper(x, mask, sketch, z, *noise).numpy()
    feed = {"x": x.numpy(), "mask": mask.numpy(), "sketch": sketch.numpy(), "z": z.numpy(),
            **{f"n{k}": t.numpy() for k, t in enumerate(noise)}}
    err = _check(g, i, path, feed, ref, "renderer v2")
    print(f"renderer v2: {g.name} ({g.stat().st_size / 1e3:.0f} kB, {len(mapping)} external weights); ORT vs torch {err:.1e}")
    what = "the v2 renderer (identitydp.generate.inpaint.InpaintGenerator)"
    return [(f"{RENDERER_V2_NAME}_onnx", g, what), (f"{RENDERER_V2_NAME}_onnx_index", i, what)]


def _dlib_recipes(raw_keys: set[str]) -> dict[str, dict]:
    """state_dict key -> how to build it from the face-api tensors (mirrors dlib_resnet._state_dict_from_faceapi)."""
    from identitydp.models.dlib_resnet import _BLOCKS

    def source(name: str, transpose=None) -> dict:
        r = {"key": name, "dequantise": f"{name}.q" in raw_keys}
        if transpose:
            r["transpose"] = transpose
        return r

    recipes: dict[str, dict] = {}
    for prefix, target in [("conv32_down", "conv32_down")] + [
        (f"{n}/{c}", f"blocks.{n}.{c}") for n, *_ in _BLOCKS for c in ("conv1", "conv2")
    ]:
        recipes[f"{target}.conv.weight"] = source(f"{prefix}/conv/filters", [3, 2, 0, 1])  # TF (kh, kw, in, out)
        recipes[f"{target}.conv.bias"] = source(f"{prefix}/conv/bias")
        recipes[f"{target}.scale"] = source(f"{prefix}/scale/weights")
        recipes[f"{target}.shift"] = source(f"{prefix}/scale/biases")
    recipes["fc.weight"] = source("fc", [1, 0])
    return recipes


def export_dlib() -> list[tuple[str, Path, str]]:
    from safetensors.numpy import load_file

    from identitydp.models.dlib_resnet import INPUT_SIZE, WEIGHTS_NAME, DlibEncoder
    from identitydp.models.onnx_graph import build_initializer
    from identitydp.models.registry import weight_path

    path = weight_path(WEIGHTS_NAME)
    net = DlibEncoder.load()
    raw = load_file(str(path))
    recipes = _dlib_recipes(set(raw))
    state = net.state_dict()
    if set(recipes) != set(state):
        raise SystemExit(f"dlib recipes do not cover the state dict: {sorted(set(state) ^ set(recipes))[:5]}")
    for key, recipe in recipes.items():  # the NumPy build is the torch loader's, bit for bit
        if not np.array_equal(build_initializer(raw, recipe), state[key].numpy()):
            raise SystemExit(f"dlib tensor {key}: NumPy build differs from the torch loader")
    x = torch.rand(3, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0)) * 255
    graph = _export(net, (x,), ["x"], {"x": {0: "n"}, "y": {0: "n"}})
    mapping = _strip(graph, recipes)
    g, i = _write("dlib_resnet", graph, mapping, path, {"x": ["n", 3, INPUT_SIZE, INPUT_SIZE]}, {"y": ["n", 128]})
    with torch.inference_mode():
        ref = net(x).numpy()
    err = _check(g, i, path, {"x": x.numpy()}, ref, "dlib")
    print(f"dlib: {g.name} ({g.stat().st_size / 1e3:.0f} kB, {len(mapping)} external weights); ORT vs torch {err:.1e}")
    what = "dlib ResNet v1 (identitydp.models.dlib_resnet.DlibEncoder); weights from dlib_resnet_v1.safetensors"
    return [("dlib_resnet_onnx", g, what), ("dlib_resnet_onnx_index", i, what)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["v1", "v2", "dlib"], action="append",
                        help="export only these graphs (repeatable; default: all three)")
    args = parser.parse_args(argv)
    exporters = {"v1": export_generator, "v2": export_renderer_v2, "dlib": export_dlib}
    files = [f for name in (args.only or list(exporters)) for f in exporters[name]()]
    _register(files)
    return 0


def _register(files: list[tuple[str, Path, str]]) -> None:
    from identitydp.models.registry import register_entries, sha256_of

    register_entries([
        {"name": name, "filename": path.name, "sha256": sha256_of(path),
         "source": f"exported by scripts/export_onnx.py (torch {torch.__version__}, opset {OPSET}); holds no weights",
         "origin": f"this project: the computation graph of {what}",
         "license": "MIT (this project); the weights it runs keep their own licence",
         "rebuild": "python scripts/export_onnx.py (pip install -e '.[export]')"}
        for name, path, what in files
    ])

if __name__ == "__main__":
    sys.exit(main())
