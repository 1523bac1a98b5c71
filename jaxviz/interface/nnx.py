"""A ``flax.nnx`` module as a jaxviz ``Model``, without editing the user's module.

``nnx.split`` gives the graph definition and the state (``model.params``: every variable,
parameters and batch statistics); each pure call merges a fresh copy, puts it in inference mode
(``.eval()``: BatchNorm uses its running statistics, dropout is off) and, for the layers asked
about, replaces the submodule attribute *on that copy* by a wrapper that records, replaces or
stops. Layers are named by attribute path with ``.`` (``"block1.conv"``, ``"layers.0"``).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from jaxviz.errors import JaxvizError
from jaxviz.interface.model import ALL, Model, StopForward, current_trace, size_error

Array = jax.Array
PyTree = Any


class _Hooked:
    """Stands in for a submodule on a merged copy: ``hook(path, run)`` decides what it returns."""

    def __init__(self, module: Callable, path: str, hook: Callable):
        self.module, self.path, self.hook = module, path, hook

    def __call__(self, *args, **kwargs):
        return self.hook(self.path, lambda: self.module(*args, **kwargs))

    def __getattr__(self, name):  # attribute access still reaches the module
        return getattr(self.module, name)

    def __iter__(self):
        return iter(self.module)

    def __getitem__(self, key):
        return self.module[key]

    def __len__(self):
        return len(self.module)


def _path_name(path: tuple) -> str:
    return ".".join(str(p) for p in path)


class NnxModel(Model):
    """An ``nnx.Module`` called as ``module(x, **call_kwargs)``, with named layers (attribute paths)."""

    def __init__(self, module: nnx.Module, *, call_kwargs: dict | None = None, **facts):
        facts.setdefault("name", type(module).__name__)
        graphdef, state = nnx.split(module)
        super().__init__(state, **facts)
        self.graphdef = graphdef
        self.call_kwargs = dict(call_kwargs or {})

    def _modules(self, root: nnx.Module) -> dict[str, tuple[Any, Any, nnx.Module]]:
        """{path name: (parent, key, submodule)} of every submodule of a merged copy."""
        found = {}
        for path, module in nnx.iter_modules(root):
            if not path:
                continue
            parent = root
            for part in path[:-1]:
                parent = parent[part] if isinstance(part, int) else getattr(parent, part)
            found[_path_name(path)] = (parent, path[-1], module)
        return found

    def _forward(self, params, x, capture, inject, stop_after):
        root = nnx.merge(self.graphdef, params)
        root.eval()
        everything = capture == ALL
        wanted = set() if everything else set(capture)
        named = wanted | set(inject)
        modules = self._modules(root)
        unknown = [n for n in named if n not in modules]
        if unknown:
            raise JaxvizError(f"unknown layer {unknown[0]!r} for model {self.name}")
        captured: dict[str, Array] = {}
        calls: dict[str, int] = {}
        remaining = set(stop_after)
        outer = current_trace()

        def hook(path, run):
            if self._nested_call(outer, path, named, everything):  # inside the model's jax.checkpoint, ...
                return run()
            calls[path] = calls.get(path, 0) + 1
            if calls[path] > 1 and everything:
                self._repeated.add(path)
            if calls[path] > 1 and path in named:
                raise JaxvizError(f"layer {path} of {self.name} runs {calls[path]} times in one forward "
                                  "pass; name a module that runs once")
            out = inject[path] if path in inject else run()
            if everything or path in wanted:
                captured.setdefault(path, out)
                if everything and self._probe_sink is not None:
                    self._probe_sink.setdefault(path, out)
            remaining.discard(path)
            if stop_after and not remaining:
                raise StopForward
            return out

        # deepest first, so that a parent's wrapper wraps a module whose children are wrapped
        chosen = [p for p in modules if callable(modules[p][2])] if everything else named
        for path in sorted(chosen, key=lambda p: -p.count(".")):
            parent, key, module = modules[path]
            wrapper = _Hooked(module, path, hook)
            if isinstance(key, int):
                parent[key] = wrapper
            else:
                setattr(parent, key, wrapper)
        try:
            out = root(x, **self.call_kwargs)
        except StopForward:
            out = None
        except TypeError as e:  # e.g. a flatten-dense head at another size
            if (error := size_error(self, x, e, inject)) is None:
                raise
            raise error from None
        return out, captured

    def _resolve_parts(self, layer: str) -> tuple:
        parts = []
        for p in self.resolve_layer(layer).split("."):
            parts.append(int(p) if p.isdigit() else p)
        return tuple(parts)

    def layer_params(self, params, layer):
        node = params
        for part in self._resolve_parts(layer):
            try:
                node = node[part]
            except (KeyError, TypeError, IndexError):
                return None
        return nnx.filter_state(node, nnx.Param) if isinstance(node, nnx.State) else node

    def replace_layer_params(self, params, layer, new):
        parts = self._resolve_parts(layer)
        flat = dict(nnx.to_flat_state(params))
        for path, value in nnx.to_flat_state(new):
            flat[parts + tuple(path)] = value
        return nnx.from_flat_state(flat)


def from_nnx(module: nnx.Module, *, call_kwargs: dict | None = None, **facts) -> Model:
    """A ``Model`` from a ``flax.nnx`` module (its state becomes ``model.params``).

    The module is called as ``module(x, **call_kwargs)`` on preprocessed (N, H, W, 3) images, in
    inference mode on a copy; the user's module is never modified. ``facts`` as ``from_linen``.
    """
    if not isinstance(module, nnx.Module):
        raise JaxvizError(f"from_nnx expects a flax.nnx Module, got {type(module).__name__}")
    return NnxModel(module, call_kwargs=call_kwargs, **facts)
