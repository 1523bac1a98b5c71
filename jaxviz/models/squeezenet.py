"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016), torchvision's architecture and module names.

torchvision's max-pools use ``ceil_mode=True``; the classifier is dropout, a 1x1 conv to 1000
class maps, ReLU and global average pooling, so ``classifier.2`` is already a class activation
map (CAM) and its spatial mean is the logit.
"""
from __future__ import annotations

from jaxviz.models.network import Stage, conv, maxpool

# (squeeze, expand1x1, expand3x3) per fire module, in order.
_FIRES = [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
          (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]
_FIRE_GEOMETRY = ((1, 1, 0), (3, 1, 1))  # squeeze 1x1, then the 3x3 expand


def _fire(name: str, cfg: tuple[int, int, int]) -> Stage:
    return Stage(name, "fire", cfg, _FIRE_GEOMETRY)


def _classifier(num_classes: int) -> tuple[Stage, ...]:
    return (Stage("classifier.0", "dropout"), conv("classifier.1", num_classes, 1),
            Stage("classifier.2", "relu"), Stage("classifier.3", "global_avgpool"))


def squeezenet1_0(num_classes: int = 1000) -> tuple[Stage, ...]:
    f = iter(_FIRES)
    return (conv("features.0", 96, 7, 2), Stage("features.1", "relu"),
            maxpool("features.2", 3, 2, True),
            _fire("features.3", next(f)), _fire("features.4", next(f)), _fire("features.5", next(f)),
            maxpool("features.6", 3, 2, True),
            _fire("features.7", next(f)), _fire("features.8", next(f)), _fire("features.9", next(f)),
            _fire("features.10", next(f)),
            maxpool("features.11", 3, 2, True),
            _fire("features.12", next(f))) + _classifier(num_classes)


def squeezenet1_1(num_classes: int = 1000) -> tuple[Stage, ...]:
    f = iter(_FIRES)
    return (conv("features.0", 64, 3, 2), Stage("features.1", "relu"),
            maxpool("features.2", 3, 2, True),
            _fire("features.3", next(f)), _fire("features.4", next(f)),
            maxpool("features.5", 3, 2, True),
            _fire("features.6", next(f)), _fire("features.7", next(f)),
            maxpool("features.8", 3, 2, True),
            _fire("features.9", next(f)), _fire("features.10", next(f)),
            _fire("features.11", next(f)), _fire("features.12", next(f))) + _classifier(num_classes)


def fire_aliases(stages: tuple[Stage, ...]) -> dict[str, str]:
    """The paper's names: ``conv1``, ``fire2`` ... ``fire9``, ``conv10``; pools ``pool1..3`` in order."""
    aliases = {"conv1": "features.0", "relu1": "features.1", "conv10": "classifier.1",
               "relu10": "classifier.2"}
    fires = [s.name for s in stages if s.kind == "fire"]
    pools = [s.name for s in stages if s.kind == "maxpool"]
    aliases.update({f"fire{i + 2}": name for i, name in enumerate(fires)})
    aliases.update({f"pool{i + 1}": name for i, name in enumerate(pools)})
    return aliases
