"""Shared by the scripts that write weight-free ONNX graphs (export_onnx, quantize_renderer,
convert_centerface): how an initializer is emptied and marked as fed from safetensors."""

from __future__ import annotations

from pathlib import Path

#: The external-data location written into every emptied initializer: no file has this name, so
#: ONNX Runtime fails loudly if the weights were not handed over.
EXTERNAL_LOCATION = "weights-come-from-safetensors"


def mark_external(init) -> None:
    """Empty an ``onnx.TensorProto`` initializer and mark it external (its numbers come from the
    checksummed safetensors at load, see ``identitydp.models.onnx_graph``)."""
    import onnx

    for field in ("raw_data", "float_data", "int32_data", "int64_data"):
        init.ClearField(field)
    init.data_location = onnx.TensorProto.EXTERNAL
    del init.external_data[:]
    entry = init.external_data.add()
    entry.key, entry.value = "location", EXTERNAL_LOCATION


def index_head(graph_path: Path, weights_path: Path) -> dict:
    """The keys every graph index starts with: its format, the graph and weights file names, and
    the weights' SHA-256 (what :func:`identitydp.models.onnx_graph.load_registered` checks)."""
    from identitydp.models.onnx_graph import INDEX_FORMAT
    from identitydp.models.registry import sha256_of

    return {"format": INDEX_FORMAT, "graph": graph_path.name, "weights": weights_path.name,
            "weights_sha256": sha256_of(weights_path)}
