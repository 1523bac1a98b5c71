"""Where a unit of a layer looks in the input: receptive fields, known or measured."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReceptiveField:
    """Unit (i, j) of a layer sees input rows [offset + i*stride, offset + i*stride + size).

    ``offset`` may be negative (the box starts in the padding); clip to the image to crop.
    """

    size: int
    stride: int
    offset: int

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom/right exclusive, in input pixels, unclipped."""
        top, left = self.offset + i * self.stride, self.offset + j * self.stride
        return top, left, top + self.size, left + self.size
