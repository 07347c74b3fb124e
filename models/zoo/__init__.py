"""Shipped model sets: one folder per set (``manifest.yaml`` + ONNX files)."""
from __future__ import annotations

import os
from typing import List, Optional

from ..manifest import MANIFEST, ModelSetError

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = "cifar10-g4"


def available() -> List[str]:
    return sorted(d for d in os.listdir(HERE) if os.path.isfile(os.path.join(HERE, d, MANIFEST)))


def path(name: str) -> str:
    p = os.path.join(HERE, name)
    if not os.path.isfile(os.path.join(p, MANIFEST)):
        raise ModelSetError("no shipped model set named %r (shipped: %s)"
                            % (name, ", ".join(available()) or "none"))
    return p


def default_path() -> str:
    return path(DEFAULT)


def resolve(name: Optional[str]) -> str:
    """A ``--model`` value: a model-set folder, a shipped set's name, or None (the default set)."""
    if name is None:
        return default_path()
    if os.path.isdir(name):
        return name
    if os.sep not in name and name in available():
        return path(name)
    raise ModelSetError("model %s is neither a model-set folder nor a shipped set (shipped: %s)"
                        % (name, ", ".join(available()) or "none"))
