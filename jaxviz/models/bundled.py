"""The bundled networks as ordinary users of the model interface.

A bundled network is a ``LinenModel`` (its ``SequentialNet`` and ported params) carrying the facts
its registry spec knows: preprocessing, input size, ImageNet labels, layer aliases (``fire9``,
``conv5_4``), default feature and CAM layers, receptive fields from the stages' geometry, and the
stage list that incremental occlusion walks. Techniques see only the interface.

It also knows its classifier head: ``selected_logits`` computes only the classes asked for when
the head is a stage linear per position (SqueezeNet's 1x1 ``classifier.1``, a final dense
layer) followed only by channel-wise stages (ReLU, dropout, global average pooling). For
SqueezeNet that head is 0.17 of the forward pass, and a class gradient no longer runs it
backward for 1000 classes (Grad-CAM at features.12: 1.22 -> 0.87 of a forward pass in
``scripts/bench.py``).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax

from jaxviz.interface.backward import ACTIVATIONS, NoReLUError
from jaxviz.interface.geometry import ReceptiveField
from jaxviz.interface.linen import LinenModel
from jaxviz.interface.model import class_index
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

    @functools.cached_property
    def class_head(self) -> int | None:
        """Position in ``spec.stages`` of the stage that computes the class channels when only
        channel-wise stages follow it (``selected_logits`` computes one class there), or None
        (no classifier, or a head of another form)."""
        stages = self.spec.stages
        for i in range(len(stages) - 1, 0, -1):
            stage = stages[i]
            if stage.selects_outputs():
                outputs = getattr(stage, "features", None)
                return i if outputs is not None and outputs == self.num_classes else None
            if not stage.channelwise:
                return None
        return None

    def selected_logits(self, params: PyTree, x: jax.Array, index: jax.Array | None = None, *,
                        inject: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
        head = self.class_head
        inject = dict(inject or {})
        if head is None or any(self._stage_position(layer) >= head for layer in inject):
            return super().selected_logits(params, x, index, inject=inject)
        stages = self.spec.stages
        features = stages[head - 1].name
        try:
            logits, caps = self.run(params, x, capture=(features,), inject=inject, output=index is None)
        except NoReLUError:  # guided / deconvnet rule, and the head holds the only ReLUs
            return super().selected_logits(params, x, index, inject=inject)
        # index None, the predicted class: the whole head runs forward (logits), never backward
        index = class_index(index, x.shape[0], logits, self.num_classes)
        scores = stages[head].select_outputs(self.layer_params(params, stages[head].name), caps[features], index)
        activations = ACTIVATIONS[self.backward_rule]
        for stage in stages[head + 1:]:
            scores = stage.on_one_channel(scores, activations)
        return scores, index

    def _stage_position(self, layer: str) -> int:
        """Position in the stage list of the stage that runs ``layer`` (a stage or a module in one)."""
        stage = self.resolve_layer(layer).split("/")[0]
        return self.spec.layer_names.index(stage)


def bundled_model(spec: ModelSpec, params: PyTree) -> BundledModel:
    """A registry spec and its params as a ``jaxviz.interface.Model``."""
    return BundledModel(spec, params)
