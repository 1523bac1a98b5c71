"""Agreement with the reference framework on real photographs: SqueezeNet 1.1 on the 900
ImageNet sample images with torchvision's standard evaluation transform (the reference
predictions were made by torchvision itself, see ../shared/imagenet-sample/README.md)."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from jaxviz.images import load_images
from jaxviz.weights.sources import shared_dir

SAMPLE = shared_dir() / "imagenet-sample"


@pytest.fixture(scope="module")
def reference():
    path = SAMPLE / "squeezenet1_1_torchvision_eval.json"
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {path} is missing")
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text())


def test_default_fit_is_torchvisions_eval_transform_on_900_photographs(squeezenet, reference):
    """Top-1 equal on every image and |delta p| <= 1e-3 on the reference's top-5 probabilities."""
    predict = jax.jit(lambda p, x: jax.nn.softmax(squeezenet.apply(p, squeezenet.preprocess(x))))
    worst, disagreements = 0.0, []
    for start in range(0, len(reference), 60):
        chunk = reference[start:start + 60]
        x = load_images([SAMPLE / r["file"] for r in chunk], 224, "eval", squeezenet.eval_transform)
        probs = np.asarray(predict(squeezenet.params, x))
        for r, p in zip(chunk, probs):
            if int(p.argmax()) != r["top5"][0]:
                disagreements.append(r["file"])
            worst = max(worst, float(np.abs(p[r["top5"]] - np.asarray(r["p5"])).max()))
    assert len(reference) == 900
    assert disagreements == []
    assert worst <= 1e-3, worst


def test_stretch_is_not_the_eval_transform(squeezenet, reference):
    """The old default (stretch) really differs from the reference: the test above can fail."""
    r = reference[:40]
    stretched = load_images([SAMPLE / x["file"] for x in r], 224, "stretch")
    probs = np.asarray(jax.jit(lambda p, x: jax.nn.softmax(squeezenet.apply(p, squeezenet.preprocess(x))))(
        squeezenet.params, stretched))
    worst = max(float(np.abs(p[x["top5"]] - np.asarray(x["p5"])).max()) for p, x in zip(probs, r))
    assert worst > 1e-2
