"""The bundled networks as ordinary users of the model interface.

A bundled network is a ``LinenModel`` (its ``SequentialNet`` and ported params) carrying the facts
its registry spec knows: preprocessing, input size, ImageNet labels, layer aliases (``fire9``,
``conv5_4``), default feature and CAM layers, receptive fields from the stages' geometry, and the
stage list that incremental occlusion walks. Techniques see only the interface.
"""
from __future__ import annotations

from typing import Any

import jax

from jaxviz.interface.geometry import ReceptiveField
from jaxviz.interface.linen import LinenModel
from jaxviz.labels import imagenet_labels
from jaxviz.models.registry import ModelSpec, recorded_facts

PyTree = Any


class BundledModel(LinenModel):
    """A registry network with its weights: ``spec`` holds its facts, ``params`` its weights
    (the bare params tree; ``{"params": params}`` are its Flax variables)."""

    def __init__(self, spec: ModelSpec, params: PyTree):
        super().__init__(spec.module(), params, name=spec.name, preprocessing=spec.preprocessing,
                         input_size=spec.input_size, num_classes=spec.num_classes,
                         labels=imagenet_labels() if spec.num_classes == 1000 else None,
                         aliases=spec.aliases, feature_layer=spec.feature_layer or None,
                         cam_layer=spec.cam_layer, eval_transform=spec.eval_transform,
                         description=spec.description, paper=spec.paper)
        self.spec = spec
        facts = recorded_facts(spec)
        if facts is not None and "probe" in facts:
            # Its layers' shapes at its input size, as the probe traced them when recorded: every
            # command that checks layers or estimates memory would trace the network for them.
            probe = facts["probe"]
            out = probe["output"]
            self._probes[tuple(probe["size"])] = (
                None if out is None else jax.ShapeDtypeStruct(tuple(out[0]), out[1]),
                {name: jax.ShapeDtypeStruct(tuple(shape), dtype) for name, shape, dtype in probe["layers"]})
            self._repeated.update(probe["repeated"])

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The stages in order (their inner modules, ``features.3/squeeze``, are layers too)."""
        return self.spec.layer_names

    def resolve_layer(self, name: str) -> str:
        name = str(name)
        if name in self.spec.layer_names or name in self.aliases:
            return self.aliases.get(name, name)
        if name in super().layer_names:  # a module inside a stage: features.3/squeeze
            return name
        return self.spec.resolve_layer(name)  # the error lists close names

    def receptive_fields(self, size: int | tuple[int, int] | None = None) -> dict[str, ReceptiveField]:
        return self.spec.receptive_fields(self.input_hw(size))

    @property
    def incremental_stages(self) -> tuple:
        return self.spec.stages


def bundled_model(spec: ModelSpec, params: PyTree) -> BundledModel:
    """A registry spec and its params as a ``jaxviz.interface.Model``."""
    return BundledModel(spec, params)
