"""The ``jaxviz`` command line: subcommands are registered by the modules of this package.

Each module calls ``command(name, help)`` on a function that adds its arguments and returns the
function that runs it, so adding a technique adds one module and no edits here. Bad input
(``JaxvizError``) becomes one line on stderr and exit code 2, never a traceback.
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
    from jaxviz.runtime import enable_compilation_cache  # imports jax: only once a command runs
    try:
        enable_compilation_cache()
        return int(runners[args.command](args) or 0)
    except JaxvizError as e:
        print(f"jaxviz {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxviz {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
