#!/usr/bin/env python
"""Reproduce the gallery: figures/NAME.png and figures/index.html (the README's main job).

    python scripts/reproduce_figures.py [--out figures/] [--only NAME ...] [--models M ...]
                                        [--images DIR] [--quick] [--fresh] [--list]

One line per figure (its time and the elapsed total), a progress bar for long figures, then the
time per section against the budget (20 min on a 2-core CPU, 2 min on one GPU, warm compilation
cache). Figures rendered into the same folder earlier and not redone stay on the page unless
--fresh. Check the page in a browser afterwards: scripts/check_gallery.py.
Exit status: 0 all rendered, 1 a figure (or a figure module) failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxviz.errors import JaxvizError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures", help="output folder (default: figures/)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="render only these figures")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="models to use (default: all available)")
    parser.add_argument("--list", action="store_true", help="list the figures by section and exit")
    parser.add_argument("--quick", action="store_true", help="smoke-test mode: fewer steps, smaller sizes")
    parser.add_argument("--images", metavar="DIR", default=None,
                        help="image folder for the dataset figures (default: ../shared/imagenet-sample)")
    parser.add_argument("--fresh", action="store_true",
                        help="drop figures of earlier runs into --out from the page (default: keep them)")
    args = parser.parse_args(argv)
    from jaxviz.gallery import IMPORT_ERRORS, SECTIONS, budget_summary, discover, run_gallery
    from jaxviz.runtime import enable_compilation_cache
    if args.list:
        section = None
        for spec in discover().values():
            if spec.section != section:
                section = spec.section
                print(f"# {SECTIONS[section][0]}")
            print(f"  {spec.name:<30} {spec.title}")
        for module, error in IMPORT_ERRORS.items():
            print(f"figure module {module} failed to import: {error}", file=sys.stderr)
        return 1 if IMPORT_ERRORS else 0
    enable_compilation_cache()
    try:
        index = run_gallery(Path(args.out), args.only, args.models, quick=args.quick, images=args.images,
                            fresh=args.fresh)
    except JaxvizError as e:
        print(f"reproduce_figures: error: {e}", file=sys.stderr)
        return 2
    run = index["run"]
    records = run["records"]
    failed = [r for r in records if r["status"] != "ok"]
    print(f"{len(records) - len(failed)}/{len(records)} figures in {run['seconds']:.1f} s on {run['device']} "
          f"at {run['commit']} -> {Path(args.out) / 'index.html'}")
    if run["input"]["photos_note"]:
        print(f"note: {run['input']['photos_note']}")
    print(budget_summary(index))
    for w in index["warnings"]:
        if w["kind"] in ("font", "section"):
            print(f"warning: {w['figure']}: {w['message']}", file=sys.stderr)
    for r in failed:
        print(f"FAILED {r['name']}: {r['error']}\n{r['traceback']}", file=sys.stderr)
    for module, error in IMPORT_ERRORS.items():
        print(f"FAILED figure module {module}: {error}", file=sys.stderr)
    return 1 if failed or IMPORT_ERRORS else 0


if __name__ == "__main__":
    sys.exit(main())
