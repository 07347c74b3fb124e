"""The dynamic DNN: architecture, model-set format and runtime loader.

Training and export (``models.train``, ``models.network``, ``models.export``) need the
``train`` extra (torch, onnx); everything imported here needs only numpy and onnxruntime.
"""
from .manifest import ManifestError, ModelSetError
from .modelset import ModelSet

__all__ = ["ModelSet", "ModelSetError", "ManifestError"]
