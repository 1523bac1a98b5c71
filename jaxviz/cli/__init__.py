"""The ``jaxviz`` command line: subcommands are registered by the modules of this package.

Each module calls ``command(name, help)`` on a function that adds its arguments and returns the
function that runs it, so adding a technique adds one module and no edits here; the technique
options of a command are generated from the registry (``jaxviz.techniques``,
``_common.add_options``). Bad input (``JaxvizError``, an OS error while writing, running out of
memory) becomes one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from jaxviz.errors import JaxvizError

Runner = Callable[[argparse.Namespace], int | None]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    setup: Callable[[argparse.ArgumentParser], Runner]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str) -> Callable[[Callable[[argparse.ArgumentParser], Runner]], Callable]:
    """Register a subcommand: ``setup(parser)`` adds its arguments and returns its runner."""
    def register(setup: Callable[[argparse.ArgumentParser], Runner]) -> Callable:
        COMMANDS[name] = Command(name, help, setup)
        return setup
    return register


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")

    def format_help(self) -> str:
        from jaxviz.cli._common import fill_help
        fill_help(self)  # the registry's defaults, read only when the help is shown
        return super().format_help()


def _load_commands() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Runner]]:
    _load_commands()
    parser = _Parser(prog="jaxviz", description="Visualising and understanding CNNs, in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    runners = {}
    for name in sorted(COMMANDS):
        cmd = COMMANDS[name]
        runners[name] = cmd.setup(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser, runners


def main(argv: Sequence[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from jaxviz.io import outputs
    from jaxviz.runtime import (  # jax: only once a command runs
        enable_compilation_cache,
        fix_mmap_threshold,
    )
    import warnings

    from PIL import Image
    try:
        # jaxviz.images refuses images over its own MAX_PIXELS in one line; Pillow's lower limit
        # would add its two-line warning to stderr for a large image that is then read or refused.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        enable_compilation_cache()
        fix_mmap_threshold()  # peak memory flat in the number of images (runtime.fix_mmap_threshold)
        with outputs():  # a failed command removes the files it created (jaxviz.io)
            return int(runners[args.command](args) or 0)
    except JaxvizError as e:
        message = " ".join(str(e).split())  # exactly one line
        print(f"jaxviz {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxviz {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"jaxviz {args.command}: error: out of memory; use fewer images, a smaller --batch or size",
              file=sys.stderr)
        return 2
    except OSError as e:  # a write outside jaxviz.io (a library's own file): still one line
        if isinstance(e, BrokenPipeError):
            return 1
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"jaxviz {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
