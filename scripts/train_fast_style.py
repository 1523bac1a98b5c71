"""Train a fast (feed-forward) style network, one or several styles with conditional instance norm.

Thin wrapper over ``jaxviz fast-style train`` (same arguments); resumes from ``--out`` if it exists.
CPU demo (a minute or two): small crops, narrow network::

    python scripts/train_fast_style.py --styles brick gravel --content-dir DIR --out cin.msgpack \
        --steps 100 --size 64 --width 16 --res-blocks 3 --batch 2

On a GPU the same command scales up (``--size 256 --batch 8 --width 32 --res-blocks 5 --steps
20000``); nothing in the code is device-specific. A folder of content images can be made from the
sample photos with ``jaxviz.datasets.figure_dataset(DIR)``.
"""
from __future__ import annotations

import sys

from jaxviz.cli import main

if __name__ == "__main__":
    sys.exit(main(["fast-style", "train", *sys.argv[1:]]))
