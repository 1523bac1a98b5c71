"""Option values checked once, in one place, for the command line and the public functions.

An ``Option`` says what a technique parameter may be: a type, bounds (finite numbers only; open or
closed ends), choices, and an upper bound that keeps memory bounded. ``Option.check(value)``
returns the value or raises one ``JaxvizError`` naming the option the way the user wrote it
(``--noise`` on the command line, ``noise=`` in Python). Values that are JAX tracers (an option
passed through ``jit``) are not checked: they are checked where they are still numbers.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from jaxviz.errors import JaxvizError

_MISSING = object()


def parse_amount(text: str | float) -> float:
    """A number, possibly written as a fraction of 8-bit levels: ``0.03``, ``8/255``, ``2/255``."""
    if isinstance(text, (int, float, np.floating, np.integer)):
        return float(text)
    try:
        return float(Fraction(str(text).strip())) if "/" in str(text) else float(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise JaxvizError(f"not a number: {text!r}") from None


MISSING = _MISSING  # "no CLI default of its own": the function signature's default applies


@dataclass(frozen=True)
class Option:
    """One parameter of a technique (``name`` is its Python keyword).

    Attributes:
      kind: int, float, str, bool, or "amount" (a float that may be written ``8/255``).
      help: one line for ``--help`` and the figure records.
      lo, hi: bounds (None: unbounded); ``lo_open``/``hi_open`` exclude the bound itself. A bound
        may be a string naming a fact known only at run time (``"images"``, ``"num_classes"``):
        it applies when ``check(..., context={name: value})`` gives it.
      choices: allowed values (strings or numbers; None among them: see ``none``).
      nargs: "+" / "?" / an int for the command line; the Python value is then a sequence (a
        string "0.7,0.3" is split at commas/spaces).
      flag: the command-line flag (default ``--name`` with ``_`` -> ``-``); a bool option whose
        flag starts with ``--no-`` switches the option off. ``cli=False`` keeps an option out of
        the command line.
      default: the CLI default when it differs from the function's (``MISSING``: use the function's).
      metavar: the value's name in ``--help``.
      optional: None allowed (means "the default behaviour").
      required: the command line must give it.
      none: the command-line word that stands for Python None (e.g. ``--resize none``).
      pair: an int or a (rows, cols) pair of ints (occlusion windows).
      const: the value of a ``nargs="?"`` flag given without a value.
    """

    name: str
    kind: Any = float
    help: str = ""
    lo: float | str | None = None
    hi: float | str | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    nargs: Any = None
    flag: str | None = None
    cli: bool = True
    default: Any = _MISSING
    metavar: str | None = None
    optional: bool = True  # None allowed (means "the default behaviour")
    required: bool = False
    none: str | None = None
    pair: bool = False
    const: Any = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def label(self, cli: bool = False) -> str:
        return self.cli_flag if cli else self.name

    def bounds_text(self, context: dict | None = None, words: bool = False) -> str:
        """"between 1 and 1000", "> 0 and <= 1" (``words``: "positive and <= 1")."""
        parts = []
        lo, hi = self._bound(self.lo, context), self._bound(self.hi, context)
        if lo is not None and hi is not None and not self.lo_open and not self.hi_open:
            return f"between {lo:g} and {hi:g}"
        if words and lo == 0:
            parts.append("positive" if self.lo_open else "non-negative")
        elif lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {hi:g}")
        return " and ".join(parts)

    @staticmethod
    def _bound(bound, context: dict | None):
        if isinstance(bound, str):
            value = (context or {}).get(bound)
            return None if value is None else float(value)
        return bound

    def check(self, value: Any, cli: bool = False, context: dict | None = None) -> Any:
        """``value`` converted and checked; a JaxvizError naming the option otherwise.

        ``context``: run-time facts for bounds given by name (``{"images": 12}``)."""
        if cli and self.none is not None and isinstance(value, str) and value.strip().lower() == self.none:
            value = None
        if value is None:
            if self.optional and (self.choices is None or self.none is None or None in self.choices):
                return None
            if self.choices is None:
                raise JaxvizError(f"{self.label(cli)} needs a value")
            shown = ", ".join(self.none if c is None else str(c) for c in self.choices)
            raise JaxvizError(f"{self.name.replace('_', ' ')} {self.none or None!r} is not allowed here "
                              f"({self.label(cli)}); use one of {shown}")
        if _is_tracer(value):
            return value
        if self.nargs not in (None, "?"):
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value) \
                    and self.kind is not str:
                value = " ".join(value)  # "--w 0.7,0.3" or "--w 0.7 0.3"
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, (list, tuple)) and not (hasattr(value, "ndim") and getattr(value, "ndim", 0) >= 1):
                value = [value]
            values = list(value)
            if not values:
                raise JaxvizError(f"{self.label(cli)} needs at least one value")
            if isinstance(self.nargs, int) and len(values) != self.nargs:
                raise JaxvizError(f"{self.label(cli)} needs {self.nargs} values, got {len(values)}")
            return (list if isinstance(value, list) or cli else tuple)(self._one(v, cli, context) for v in values)
        if self.pair and isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise JaxvizError(f"{self.label(cli)} must be a number or a pair (rows, cols), got {value!r}")
            return tuple(self._one(v, cli, context) for v in value)
        return self._one(value, cli, context)

    def _one(self, value: Any, cli: bool, context: dict | None = None) -> Any:
        where = self.label(cli)
        if self.kind in (int, float, "amount"):
            if _is_tracer(value):
                return value
            if isinstance(value, bool):
                raise JaxvizError(f"{where} must be a number, got {value!r}")
            if self.kind == "amount" and isinstance(value, str) and "/" in value:
                try:
                    if float(Fraction(value.strip().split("/", 1)[1])) == 0:
                        raise JaxvizError(f"{where} {value!r}: division by zero")
                except (ValueError, ZeroDivisionError):
                    pass
            try:
                number = parse_amount(value) if self.kind == "amount" else float(value)
            except (TypeError, ValueError, JaxvizError):
                raise JaxvizError(f"{where} must be a number, got {value!r}") from None
            bounds = self.bounds_text(context, words=not cli)
            if not math.isfinite(number):
                raise JaxvizError(f"{where} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")
            if self.kind is int:
                if number != int(number):
                    raise JaxvizError(f"{where} must be a whole number{' ' + bounds if bounds else ''}, got {value!r}")
                number = int(number)
            lo, hi = self._bound(self.lo, context), self._bound(self.hi, context)
            bad_lo = lo is not None and (number <= lo if self.lo_open else number < lo)
            bad_hi = hi is not None and (number >= hi if self.hi_open else number > hi)
            if bad_lo or bad_hi:
                what = bounds if self.kind is int or not cli else f"a finite number {bounds}"
                raise JaxvizError(f"{where} must be {what}, got {value!r}")
            value = number
        elif self.kind is bool:
            if isinstance(value, str):
                text = value.strip().lower()
                if text not in ("true", "false", "1", "0", "yes", "no"):
                    raise JaxvizError(f"{where} must be true or false, got {value!r}")
                value = text in ("true", "1", "yes")
            else:
                value = bool(value)
        elif self.kind is str:
            if not isinstance(value, str):
                raise JaxvizError(f"{where} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            import difflib
            shown = [self.none if c is None else str(c) for c in self.choices]
            close = difflib.get_close_matches(str(value), shown, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise JaxvizError(f"unknown {self.name.replace('_', ' ')} {value!r} ({where}); use one of "
                              f"{', '.join(map(str, shown))}{hint}")
        return value


def _is_tracer(value: Any) -> bool:
    jax = sys.modules.get("jax")  # not imported yet: nothing can be a tracer
    return jax is not None and isinstance(value, jax.core.Tracer)


def check_options(options: Sequence[Option], values: dict, cli: bool = False,
                  context: dict | None = None) -> dict:
    """Every value of ``values`` whose name has an Option, checked (others passed through)."""
    by_name = {o.name: o for o in options}
    return {k: (by_name[k].check(v, cli, context) if k in by_name else v) for k, v in values.items()}


# ------------------------------------------------------------------ memory

def memory_bytes() -> int:
    """Physical memory of this machine in bytes (a generous 16 GiB when it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 16 << 30


def check_memory(estimate: int, what: str, fraction: float = 0.6) -> None:
    """Refuse work whose estimated peak memory exceeds ``fraction`` of this machine's memory."""
    limit = memory_bytes() * fraction
    if estimate > limit:
        raise JaxvizError(f"{what} would need about {estimate / 2**30:.1f} GiB of memory "
                          f"(this machine: {memory_bytes() / 2**30:.0f} GiB); use smaller sizes or fewer images")
