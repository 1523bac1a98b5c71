"""ImageNet-1k class names (torchvision's order) and resolving a class given by index or name."""
from __future__ import annotations

import difflib
from functools import lru_cache
from importlib import resources

from jaxviz.errors import JaxvizError


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names, index i -> name."""
    text = resources.files("jaxviz.data").joinpath("imagenet_classes.txt").read_text()
    return tuple(line for line in text.splitlines() if line)


def resolve_class(target: str | int, num_classes: int = 1000) -> int:
    """A class index from an index ("285", 285) or a name ("Egyptian cat", case-insensitive).

    Raises:
      JaxvizError: out of range, or an unknown name (close names are suggested).
    """
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < num_classes:
            raise JaxvizError(f"class index {index} out of range 0..{num_classes - 1}")
        return index
    labels = imagenet_labels()
    lowered = [name.lower() for name in labels]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    close = difflib.get_close_matches(text.lower(), lowered, n=3, cutoff=0.6)
    hint = "; did you mean " + ", ".join(repr(labels[lowered.index(c)]) for c in close) + "?" if close else ""
    raise JaxvizError(f"unknown class {text!r}{hint}")
