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
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

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


@dataclass(frozen=True)
class Option:
    """One parameter of a technique (``name`` is its Python keyword).

    Attributes:
      kind: int, float, str, bool, or "amount" (a float that may be written ``8/255``).
      help: one line for ``--help`` and the figure records.
      lo, hi: bounds (None: unbounded); ``lo_open``/``hi_open`` exclude the bound itself.
      choices: allowed values (strings or numbers).
      nargs: "+" / "?" / an int for the command line; the Python value is then a sequence.
      flag: the command-line flag (default ``--name`` with ``_`` -> ``-``); ``cli=False`` keeps an
        option out of the command line.
      default: the CLI default when it differs from the function's (``_MISSING``: use the function's).
    """

    name: str
    kind: Any = float
    help: str = ""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    nargs: Any = None
    flag: str | None = None
    cli: bool = True
    default: Any = _MISSING
    metavar: str | None = None
    optional: bool = True  # None allowed (means "the default behaviour")

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def label(self, cli: bool = False) -> str:
        return self.cli_flag if cli else f"{self.name}="

    def bounds_text(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return " and ".join(parts)

    def check(self, value: Any, cli: bool = False) -> Any:
        """``value`` converted and checked; a JaxvizError naming the option otherwise."""
        if value is None and self.optional:
            return None
        if _is_tracer(value):
            return value
        if self.nargs not in (None, "?") and isinstance(value, (list, tuple)):
            return type(value)(self._one(v, cli) for v in value)
        return self._one(value, cli)

    def _one(self, value: Any, cli: bool) -> Any:
        where = self.label(cli)
        if self.kind in (int, float, "amount"):
            try:
                number = parse_amount(value) if self.kind == "amount" else float(value)
            except (TypeError, ValueError):
                raise JaxvizError(f"{where} must be a number, got {value!r}") from None
            if not math.isfinite(number):
                raise JaxvizError(f"{where} must be a finite number, got {value!r}")
            if self.kind is int:
                if number != int(number):
                    raise JaxvizError(f"{where} must be a whole number, got {value!r}")
                number = int(number)
            bad_lo = self.lo is not None and (number <= self.lo if self.lo_open else number < self.lo)
            bad_hi = self.hi is not None and (number >= self.hi if self.hi_open else number > self.hi)
            if bad_lo or bad_hi:
                raise JaxvizError(f"{where} must be {self.bounds_text()}, got {value!r}")
            value = number
        elif self.kind is bool:
            value = bool(value)
        elif self.kind is str:
            value = str(value)
        if self.choices is not None and value not in self.choices:
            import difflib
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise JaxvizError(f"{where} must be one of {', '.join(map(str, self.choices))}, got {value!r}{hint}")
        return value


def _is_tracer(value: Any) -> bool:
    try:
        import jax
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, jax.core.Tracer)


def check_options(options: Sequence[Option], values: dict, cli: bool = False) -> dict:
    """Every value of ``values`` whose name has an Option, checked (others passed through)."""
    by_name = {o.name: o for o in options}
    return {k: (by_name[k].check(v, cli) if k in by_name else v) for k, v in values.items()}


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
