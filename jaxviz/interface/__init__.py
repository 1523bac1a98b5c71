"""The model interface room: what a technique may ask of any model, and adapters that build one.

    from jaxviz.interface import from_linen, from_nnx, from_apply_fn
    model = from_linen(my_module, variables, preprocessing=TORCHVISION, input_size=224)
    acts = model.activation(model.params, x, "block2/conv")

See ``jaxviz.interface.model`` for the contract. Techniques take a ``Model`` (or a bare
``apply_fn``, coerced with ``as_model``) and never look behind it.
"""
from jaxviz.interface.backward import ACTIVATIONS, RULES, with_backward_rule
from jaxviz.interface.geometry import ReceptiveField
from jaxviz.interface.linen import LinenModel, from_linen
from jaxviz.interface.model import ApplyFnModel, Model, ModelLike, PyTree, as_model, from_apply_fn
from jaxviz.interface.nnx import NnxModel, from_nnx
from jaxviz.interface.preprocessing import CAFFE, IDENTITY, LITE, TORCHVISION, Preprocessing

__all__ = ["ACTIVATIONS", "RULES", "with_backward_rule", "ReceptiveField", "LinenModel", "from_linen",
           "ApplyFnModel", "Model", "ModelLike", "PyTree", "as_model", "from_apply_fn", "NnxModel", "from_nnx",
           "CAFFE", "IDENTITY", "LITE", "TORCHVISION", "Preprocessing"]
