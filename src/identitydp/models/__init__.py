"""Pretrained models (converted from registry packages) and the weights registry."""

from .registry import WeightFile, load_json, load_tensors, registry, weight_path

__all__ = ["WeightFile", "load_json", "load_tensors", "registry", "weight_path"]
