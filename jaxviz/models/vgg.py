"""VGG16 and VGG19 (Simonyan & Zisserman 2015), torchvision's architecture and module names.

``features.N`` are conv / ReLU / max-pool modules in torchvision order; aliases follow the paper
(``conv3_2``, ``relu4_2``, ``pool5``). ``include_classifier=False`` gives the convolutional
feature extractor used for style transfer (the original weights ship without classifier).
"""
from __future__ import annotations

from jaxviz.models.kinds import AdaptiveAvgPool, Conv, Dense, Dropout, FlattenDense, Kind, MaxPool, ReLU

_CONFIGS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
_WIDTHS = (64, 128, 256, 512, 512)


def vgg(depth: int, num_classes: int = 1000, include_classifier: bool = True) -> tuple[Kind, ...]:
    stages, index = [], 0
    for block, (count, width) in enumerate(zip(_CONFIGS[depth], _WIDTHS)):
        for _ in range(count):
            stages += [Conv(f"features.{index}", width, 3, 1, 1), ReLU(f"features.{index + 1}")]
            index += 2
        stages.append(MaxPool(f"features.{index}", 2, 2))
        index += 1
    if include_classifier:
        stages += [AdaptiveAvgPool("avgpool", (7, 7)),
                   FlattenDense("classifier.0", 4096), ReLU("classifier.1"), Dropout("classifier.2"),
                   Dense("classifier.3", 4096), ReLU("classifier.4"), Dropout("classifier.5"),
                   Dense("classifier.6", num_classes)]
    return tuple(stages)


def vgg_aliases(depth: int, include_classifier: bool = True) -> dict[str, str]:
    """conv{b}_{i} / relu{b}_{i} / pool{b} -> features.N; fc6/fc7/fc8 -> classifier.0/3/6."""
    aliases, index = {}, 0
    for block, count in enumerate(_CONFIGS[depth], start=1):
        for i in range(1, count + 1):
            aliases[f"conv{block}_{i}"] = f"features.{index}"
            aliases[f"relu{block}_{i}"] = f"features.{index + 1}"
            index += 2
        aliases[f"pool{block}"] = f"features.{index}"
        index += 1
    if include_classifier:
        aliases.update({"fc6": "classifier.0", "relu6": "classifier.1", "fc7": "classifier.3",
                        "relu7": "classifier.4", "fc8": "classifier.6"})
    return aliases
