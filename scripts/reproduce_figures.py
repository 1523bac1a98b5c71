#!/usr/bin/env python
"""Reproduce the gallery: figures/NAME.png and figures/index.html (the README's main job).

    python scripts/reproduce_figures.py [--out figures/] [--only NAME ...] [--models M ...] [--list]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jaxviz.errors import JaxvizError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures", help="output folder (default: figures/)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="render only these figures")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="models to use (default: all available)")
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    parser.add_argument("--quick", action="store_true", help="smoke-test mode: fewer steps, smaller sizes")
    parser.add_argument("--images", metavar="DIR", default=None,
                        help="image folder for the dataset figures (default: ../shared/imagenet-sample)")
    args = parser.parse_args(argv)
    from jaxviz.gallery import discover, render_gallery
    from jaxviz.runtime import device_description, enable_compilation_cache
    if args.list:
        for spec in discover().values():
            print(f"{spec.name:<28} {spec.title}")
        return 0
    enable_compilation_cache()
    start = time.perf_counter()
    try:
        records = render_gallery(Path(args.out), args.only, args.models, quick=args.quick, images=args.images)
    except JaxvizError as e:
        print(f"reproduce_figures: error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in records if r["status"] != "ok"]
    print(f"{len(records) - len(failed)}/{len(records)} figures in {time.perf_counter() - start:.0f} s "
          f"on {device_description()} -> {Path(args.out) / 'index.html'}")
    for r in failed:
        print(f"FAILED {r['name']}: {r['error']}\n{r['traceback']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
