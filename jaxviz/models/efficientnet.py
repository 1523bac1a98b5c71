"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile accelerators).

Lite drops squeeze-excitation, uses ReLU6 instead of swish and fixes the stem (32) and head
(1280) widths. Padding is TensorFlow's "SAME". Our stage names: ``stem``, ``blocks.0`` ...
``blocks.15``, ``head`` (1x1 conv to 1280 + BN + ReLU6: the CAM features), ``pool`` (global
average), ``classifier`` (the logits). Inner names follow the PyTorch port (``_expand_conv``,
``_depthwise_conv``, ``_project_conv``, ``_bn0..2``) so its state dict maps one to one.
"""
from __future__ import annotations

from jaxviz.models.network import Stage

# (expand ratio, kernel, stride of the first block, output channels, repeats), per stage.
_LITE0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def efficientnet_lite0(num_classes: int = 1000) -> tuple[Stage, ...]:
    stages = [Stage("stem", "conv_bn_relu6", (32, 3, 2), ((3, 2, "same"),))]
    in_features, index = 32, 0
    for expand, kernel, stride, out_features, repeats in _LITE0:
        for r in range(repeats):
            s = stride if r == 0 else 1
            stages.append(Stage(f"blocks.{index}", "mbconv", (in_features, out_features, expand, kernel, s),
                                ((1, 1, 0), (kernel, s, "same"), (1, 1, 0))))
            in_features, index = out_features, index + 1
    stages += [Stage("head", "conv_bn_relu6", (1280, 1, 1), ((1, 1, 0),)),
               Stage("pool", "global_avgpool"), Stage("dropout", "dropout"),
               Stage("classifier", "dense", (num_classes,))]
    return tuple(stages)
