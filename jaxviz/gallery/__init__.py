"""The figures gallery: a registry of figure functions, rendered by scripts/reproduce_figures.py.

Each technique family adds one module here with ``@figure(...)`` functions; the runner discovers
them, so adding a figure never edits a shared file. A figure function receives a ``Context``
(models, sample images, notes) and returns a matplotlib figure; it never writes files itself.
"""
from __future__ import annotations

import html
import importlib
import json
import pkgutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from jaxviz.errors import JaxvizError


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    caption: str  # what is shown, citing the technique's paper
    func: Callable
    order: int = 100
    params: dict = field(default_factory=dict)


FIGURES: dict[str, FigureSpec] = {}


def figure(name: str, title: str, caption: str, order: int = 100, **params) -> Callable:
    """Register ``func(ctx) -> matplotlib.figure.Figure`` as gallery figure ``name``."""
    def register(func: Callable) -> Callable:
        FIGURES[name] = FigureSpec(name, title, caption, func, order, params)
        return func
    return register


@dataclass
class Context:
    """What a figure function may use: models (loaded once, accelerated for this machine), the
    real input (photographs, paintings), the run's mode, a progress bar and a place to note facts.

    - ``photos(classes=None, count=None)``: [{"path", "class", "label"}] from ``images`` (a user
      folder: classes unknown, -1), else the ImageNet sample, else [] (``real_input`` False: use
      the built-in sample images and say so).
    - ``painting(name)``: a style painting as (RGB [0, 1] image, source).
    - ``quick``: a smoke-test run (tests): figures cut steps and sizes, never their structure.
    - ``progress(total, desc)``: a tqdm bar for long figures (closed by the runner).
    """

    models: list[str]  # available models, default first
    notes: dict = field(default_factory=dict)
    quick: bool = False
    images: str | None = None  # --images DIR: the pool of the dataset figures
    _cache: dict = field(default_factory=dict)
    _bars: list = field(default_factory=list)

    def model(self, name: str | None = None):
        from jaxviz.accel import accelerate
        from jaxviz.weights.store import load_model
        name = name or self.models[0]
        if name not in self._cache:
            self._cache[name] = accelerate(load_model(name))
        return self._cache[name]

    @property
    def real_input(self) -> bool:
        from jaxviz.datasets import imagenet_sample_dir
        return self.images is not None or imagenet_sample_dir() is not None

    def photos(self, classes=None, count: int | None = None) -> list[dict]:
        from jaxviz.datasets import image_folder, imagenet_sample, imagenet_sample_dir
        if self.images is not None:
            rows = [{"path": p, "class": -1, "label": Path(p).stem} for p in image_folder(self.images)]
        elif imagenet_sample_dir() is not None:
            rows = imagenet_sample()
        else:
            return []
        if classes is not None:
            by_class = {r["class"]: r for r in rows}
            rows = [by_class[c] for c in classes if c in by_class]
        return rows[:count] if count is not None else rows

    def painting(self, name: str):
        from jaxviz.datasets import style_painting
        return style_painting(name)

    def progress(self, total: int, desc: str = ""):
        from tqdm import tqdm
        bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
        self._bars.append(bar)
        return bar

    def classifiers(self) -> list[str]:
        from jaxviz.models.registry import get_spec
        return [m for m in self.models if get_spec(m).num_classes]

    def note(self, **facts) -> None:
        """Record facts (model, parameters, measured numbers) shown under the figure."""
        self.notes.update(facts)


def discover() -> dict[str, FigureSpec]:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(FIGURES.items(), key=lambda kv: (kv[1].order, kv[0])))


def render_gallery(out: Path, only: list[str] | None = None, models: list[str] | None = None,
                   log: Callable[[str], None] = print, quick: bool = False,
                   images: str | None = None) -> list[dict]:
    """Render figures into ``out`` (NAME.png + index.html + index.json); returns the records.

    A figure that fails is recorded with its error and the others still render.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxviz.runtime import device_description
    from jaxviz.weights.store import available_models

    specs = discover()
    unknown = [n for n in only or [] if n not in specs]
    if unknown:
        raise JaxvizError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(specs)}")
    chosen = [specs[n] for n in specs if not only or n in only]
    models = models or available_models()
    if not models:
        raise JaxvizError("no model weights available; see `jaxviz models`")
    out.mkdir(parents=True, exist_ok=True)
    device = device_description()
    records = []
    for spec in chosen:
        ctx = Context(models=models, quick=quick, images=images)
        start = time.perf_counter()
        record = {"name": spec.name, "title": spec.title, "caption": spec.caption,
                  "params": spec.params, "device": device}
        try:
            fig = spec.func(ctx)
            fig.savefig(out / f"{spec.name}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            record.update(file=f"{spec.name}.png", status="ok")
        except Exception as e:  # one broken figure must not lose the others
            record.update(status="failed", error=f"{e.__class__.__name__}: {e}",
                          traceback=traceback.format_exc(limit=5))
        for bar in ctx._bars:
            bar.close()
        record.update(notes=ctx.notes, seconds=round(time.perf_counter() - start, 2))
        records.append(record)
        log(f"{spec.name:<28} {record['status']:<7} {record['seconds']:>7.1f}s")
    (out / "index.json").write_text(json.dumps(records, indent=2, default=str))
    (out / "index.html").write_text(_html(records))
    return records


def _html(records: list[dict]) -> str:
    parts = ["<!doctype html><meta charset=utf-8><title>jaxviz figures</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "figure{margin:2em 0}img{max-width:100%}dl{font-size:90%}</style><h1>jaxviz figures</h1>"]
    for r in records:
        e = html.escape
        facts = {**r.get("params", {}), **r.get("notes", {}), "wall time": f"{r['seconds']} s",
                 "device": r["device"]}
        rows = "".join(f"<dt>{e(str(k))}</dt><dd>{e(str(v))}</dd>" for k, v in facts.items())
        body = (f"<img src='{e(r['file'])}' alt='{e(r['title'])}'>" if r["status"] == "ok"
                else f"<pre>FAILED: {e(r['error'])}</pre>")
        parts.append(f"<figure id='{e(r['name'])}'><h2>{e(r['title'])}</h2>{body}"
                     f"<figcaption>{e(r['caption'])}</figcaption><dl>{rows}</dl></figure>")
    return "\n".join(parts)
