"""Parameter trees as flat paths, the one conversion the weight files and the registry's recorded
model facts share: ``{'features.3': {'squeeze': {'kernel': a}}}`` <-> ``{'features.3/squeeze/kernel': a}``."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxviz.errors import JaxvizError

SEPARATOR = "/"


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {path: leaf}, paths joined with '/'.

    Raises:
      JaxvizError: a key containing '/' (its path would split into other names).
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if SEPARATOR in str(key):
            raise JaxvizError(f"parameter name {prefix}{key!r} contains '/', the path separator")
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}{SEPARATOR}"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    """{path: leaf} -> nested dicts (``flatten``'s inverse)."""
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split(SEPARATOR)
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree
