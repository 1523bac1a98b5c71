"""ImageNet-1k class names (torchvision's order) and resolving a class given by index or name."""
from __future__ import annotations

import difflib
import re
from functools import lru_cache
from importlib import resources
from typing import Sequence

from jaxviz.errors import JaxvizError


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names, index i -> name."""
    text = resources.files("jaxviz.data").joinpath("imagenet_classes.txt").read_text()
    return tuple(line for line in text.splitlines() if line)


def resolve_class(target: str | int, num_classes: int = 1000, labels: Sequence[str] | None = None) -> int:
    """A class index from an index ("285", 285) or a name ("Egyptian cat").

    ``labels`` default to the ImageNet names when ``num_classes`` is 1000. An exact
    (case-sensitive) name wins; otherwise a case-insensitive match must be unique: ``cardigan``
    is the sweater (474), ``Cardigan`` the dog (264), and a name two classes share only by case
    is refused with both candidates.

    Raises:
      JaxvizError: out of range, an ambiguous name, or an unknown name (with the classes whose
        names contain the word, or close spellings).
    """
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < num_classes:
            raise JaxvizError(f"class index {index} out of range 0..{num_classes - 1}")
        return index
    if labels is None:
        if num_classes != 1000:
            raise JaxvizError(f"class {text!r}: this model has no class names; give an index 0..{num_classes - 1}")
        labels = imagenet_labels()
    labels = list(labels)
    if text in labels:
        return labels.index(text)
    folded = [i for i, name in enumerate(labels) if name.lower() == text.lower()]
    if len(folded) == 1:
        return folded[0]
    if folded:
        raise JaxvizError(f"class {text!r} is ambiguous: " + ", ".join(f"{labels[i]!r} ({i})" for i in folded))
    raise JaxvizError(f"unknown class {text!r}{_suggestions(text, labels)}")


def _suggestions(text: str, labels: Sequence[str]) -> str:
    """Classes whose names contain the word(s), else close spellings: '; did you mean ...?'."""
    words = text.lower().split()
    containing = [i for i, name in enumerate(labels)
                  if all(re.search(rf"\b{re.escape(w)}\b", name.lower()) for w in words)]
    if containing:
        shown = ", ".join(f"{labels[i]!r} ({i})" for i in containing[:8])
        more = f" and {len(containing) - 8} more" if len(containing) > 8 else ""
        return f"; classes containing {text!r}: {shown}{more}"
    lowered = [name.lower() for name in labels]
    close = difflib.get_close_matches(text.lower(), lowered, n=3, cutoff=0.6)
    return "; did you mean " + ", ".join(repr(labels[lowered.index(c)]) for c in close) + "?" if close else ""
