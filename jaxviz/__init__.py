"""jaxviz: the "Visualizing and Understanding CNNs" toolbox in JAX, for any JAX model.

    import jaxviz
    model = jaxviz.from_linen(module, variables, input_size=224, preprocessing=jaxviz.TORCHVISION)
    maps = jaxviz.grad_cam(model, model.params, model.preprocess(images), target=3, layer="block4")

The names below are imported on first use (``import jaxviz`` stays cheap for the command line).
Functions named like their module (``jaxviz.cam.cam``, ``jaxviz.occlusion.occlusion``,
``jaxviz.optimize.optimize``) are not exported here: the module keeps the name.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # the model interface
    "Model": "jaxviz.interface", "from_apply_fn": "jaxviz.interface", "from_linen": "jaxviz.interface",
    "from_nnx": "jaxviz.interface", "as_model": "jaxviz.interface", "Preprocessing": "jaxviz.interface",
    "TORCHVISION": "jaxviz.interface", "IDENTITY": "jaxviz.interface",
    "load_model": "jaxviz.weights.store", "accelerate": "jaxviz.accel",
    "load_images": "jaxviz.images", "Target": "jaxviz.targets", "parse_target": "jaxviz.targets",
    # attribution
    "gradients": "jaxviz.saliency", "vanilla_saliency": "jaxviz.saliency", "smoothgrad": "jaxviz.saliency",
    "integrated_gradients": "jaxviz.saliency", "input_x_gradient": "jaxviz.saliency",
    "guided_backprop": "jaxviz.saliency", "deconvnet": "jaxviz.saliency",
    "grad_cam": "jaxviz.cam", "grad_cam_plus_plus": "jaxviz.cam",
    "guided_grad_cam": "jaxviz.cam", "occlusion_map": "jaxviz.occlusion",
    "incremental_occlusion": "jaxviz.occlusion",
    # optimising the input
    "class_visualization": "jaxviz.classviz",
    "channel_visualization": "jaxviz.classviz", "invert": "jaxviz.inversion", "deepdream": "jaxviz.dream",
    "fgsm": "jaxviz.adversarial", "ifgsm": "jaxviz.adversarial", "pgd": "jaxviz.adversarial",
    "attack": "jaxviz.adversarial", "projected_gradient_descent": "jaxviz.adversarial", "simba": "jaxviz.blackbox",
    # texture and style
    "gram_texture": "jaxviz.texture", "style_transfer": "jaxviz.style",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
