"""A network as an ordered tuple of named stages (layer kinds), run by one Flax module.

Stage names are the torchvision module paths (``features.0``, ``classifier.1``) for torchvision
architectures, so the same names work here, in Captum and in pytorch-grad-cam. Every stage is a
submodule of that name, so the model interface (``jaxviz.interface.linen``) reads and replaces
any stage's output like any user module's. What a stage does is its kind's business
(``jaxviz.models.kinds``); this module only runs them in order and composes their geometry.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn

from jaxviz.interface.geometry import ReceptiveField
from jaxviz.models.kinds import Kind
from jaxviz.models.layers import Array, Lambda

# A faster forward pass for every stage of one kind: fn(stage, x) -> y (the same values and
# parameters; it may call stage.forward(x) for the cases it does not speed up).
Override = tuple[type[Kind], Callable[[Kind, Array], Array]]

__all__ = ["SequentialNet", "receptive_fields", "stage_names", "Lambda", "Override"]


class SequentialNet(nn.Module):
    """Runs ``stages`` in order; every stage is a submodule named after it.

    ``overrides``: ``((KindClass, forward), ...)`` faster implementations swapped in by kind
    class (``jaxviz.accel.fast_layers``); the kind's own ``forward`` otherwise.
    """

    stages: tuple[Kind, ...]
    overrides: tuple[Override, ...] = ()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(N, H, W, 3) preprocessed images -> the last stage's output (logits for a classifier)."""
        table = dict(self.overrides)
        for stage in self.stages:
            fast = table.get(type(stage))
            x = fast(stage, x) if fast is not None else stage.forward(x)
        return x


def stage_names(stages: tuple[Kind, ...]) -> tuple[str, ...]:
    return tuple(s.name for s in stages)


def receptive_fields(stages: tuple[Kind, ...], input_size: int | tuple[int, int]) -> dict[str, ReceptiveField]:
    """Receptive field of every stage, composed from each stage's geometry (``Kind.ops``).

    Standard recurrence along the rows: size += (k - 1) * jump; offset -= pad_before * jump;
    jump *= stride. Global pooling / dense stages (``sees_whole_input``) and all after them see
    the whole input.
    """
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    whole = max(hw)
    size, jump, offset = 1, 1, 0
    fields = {}
    for stage in stages:
        if stage.sees_whole_input(hw):
            size, jump, offset = whole, whole, 0
        for op in stage.ops(hw):
            if op is None:
                continue
            size += (op.kernel - 1) * jump
            offset -= op.pads[0][0] * jump
            jump *= op.stride
        hw = stage.out_hw(hw)
        fields[stage.name] = ReceptiveField(size, jump, offset)
    return fields
