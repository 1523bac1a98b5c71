"""The figures gallery: a registry of figure functions, rendered by scripts/reproduce_figures.py.

Each technique family adds one module here with ``@figure(...)`` functions; the runner discovers
them, so adding a figure never edits a shared file. A figure function receives a ``Context``
(models, real input, notes) and returns a matplotlib figure; it never writes files itself.

The page (``index.html``) follows the lectures' sections (``SECTIONS``); a figure's section is
``figure(..., section=...)`` or, by default, its module's (``MODULE_SECTIONS``). The runner writes
every file through a temporary name and ``os.replace``, rewrites the page after each figure (a
long run can be watched), keeps figures of earlier runs into the same folder that this run did
not render (unless ``fresh``), and checks each PNG's smallest text at its displayed size on the
page (``DISPLAY_WIDTH``): below ``MIN_TEXT_PX`` it is a warning in ``index.json``.
"""
from __future__ import annotations

import datetime
import html
import importlib
import json
import os
import pkgutil
import re
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from jaxviz.errors import JaxvizError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# The lectures' order. key -> (title, one line on what the section shows)
SECTIONS: dict[str, tuple[str, str]] = {
    "inside": ("Inside the network",
               "What a trained network computes: its filters, its feature maps, the image patches its "
               "units respond to, and how its features arrange images."),
    "attribution": ("Attribution",
                    "Which pixels a decision depends on: gradients, class activation maps, occlusion, and "
                    "tests of whether the maps are faithful to the model."),
    "optimise": ("Optimising the input",
                 "Images optimised against the network: class and channel visualisation, inversion of a "
                 "layer's code, DeepDream."),
    "adversarial": ("Adversarial examples",
                    "Small changes of the input that change the decision: white-box, transferred and "
                    "query-based attacks."),
    "style": ("Texture and style",
              "A CNN's feature correlations as image statistics: texture synthesis, style transfer and "
              "feed-forward stylisation."),
    "studies": ("Studies", "Experiments that use the techniques to ask what networks rely on."),
}
# A figure module's default section (a figure may pass ``section=`` itself).
MODULE_SECTIONS = {
    "foundation": "inside", "inside": "inside", "scan": "inside", "filters": "inside",
    "zeiler": "inside", "invariance": "inside", "embedding": "inside",
    "attribution": "attribution", "faithfulness": "attribution", "occlusion": "attribution",
    "cam": "attribution", "saliency": "attribution",
    "optimize": "optimise", "optimise": "optimise", "inversion": "optimise", "dream": "optimise",
    "adversarial": "adversarial", "attacks": "adversarial", "fooling": "adversarial",
    "style": "style", "texture": "style", "multistyle": "style", "fast_style": "style",
    "bias": "studies", "studies": "studies",
}
_SECTION_ALIASES = {"optimize": "optimise", "optimisation": "optimise", "optimization": "optimise",
                    "inside the network": "inside", "optimising the input": "optimise",
                    "optimizing the input": "optimise", "adversarial examples": "adversarial",
                    "texture and style": "style", "texture": "style", "study": "studies"}
FALLBACK_SECTION = "studies"

DPI = 100  # PNG resolution: 1 pt = DPI/72 px
DISPLAY_WIDTH = 1200  # the page's content width (CSS px): wider PNGs are shown scaled down to it
MIN_TEXT_PX = 9.0  # smallest legible text on the page, for the HTML and inside the figures
BUDGET_SECONDS = {"cpu": 1200.0, "gpu": 120.0}  # the whole gallery, warm compilation cache
BUILTIN_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # scikit-image's colour photographs


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    caption: str  # what is shown, citing the technique's paper
    func: Callable
    order: int = 100
    params: dict = field(default_factory=dict)
    section: str = FALLBACK_SECTION  # a key of SECTIONS
    section_guessed: bool = False  # True: not given and the module is not in MODULE_SECTIONS
    techniques: tuple = ()  # the registry's techniques the figure runs (jaxviz.techniques)


FIGURES: dict[str, FigureSpec] = {}
IMPORT_ERRORS: dict[str, str] = {}  # figure module -> its import error (the others still render)


def section_key(section: str) -> str:
    """The ``SECTIONS`` key of a section given by key, alias or title (case-insensitive)."""
    text = str(section).strip().lower()
    if text in SECTIONS:
        return text
    for key, (title, _) in SECTIONS.items():
        if text == title.lower():
            return key
    if text in _SECTION_ALIASES:
        return _SECTION_ALIASES[text]
    raise JaxvizError(f"unknown gallery section {section!r}; known: {', '.join(SECTIONS)}")


def figure(name: str, title: str, caption: str, order: int = 100, *, section: str | None = None,
           technique: str | tuple[str, ...] | list[str] | None = None, **params) -> Callable:
    """Register ``func(ctx) -> matplotlib.figure.Figure`` as gallery figure ``name``.

    ``section``: a key of ``SECTIONS`` ("inside", "attribution", "optimise", "adversarial",
    "style", "studies") or its title; by default the module's (``MODULE_SECTIONS``). ``order``
    sorts figures inside their section. ``params`` are shown as the figure's parameter table.

    ``technique``: the registry name(s) of the technique(s) the figure runs (``jaxviz.techniques``,
    e.g. ``"gradcam"`` or ``("vanilla", "smoothgrad")``). The parameter table is then the
    registry's record (``jaxviz.techniques.record``): every option of the technique with its
    default, overridden (and checked, at registration) by the keyword arguments that name one of
    its options; other keyword arguments are kept as the figure's own settings::

        @figure("gradcam_layers", "Grad-CAM at three depths", "...", technique="gradcam", layer="fire9")
        @figure("saliency_pair", "...", "...", technique=("vanilla", "smoothgrad"), samples=50, images=4)
    """
    names: tuple[str, ...] = (() if technique is None else (technique,) if isinstance(technique, str)
                              else tuple(technique))
    if names:
        from jaxviz.techniques import record
        params = record(names, **params)

    def register(func: Callable) -> Callable:
        module = func.__module__.rsplit(".", 1)[-1]
        if section is not None:
            key, guessed = section_key(section), False
        else:
            key, guessed = MODULE_SECTIONS.get(module, FALLBACK_SECTION), module not in MODULE_SECTIONS
        FIGURES[name] = FigureSpec(name, title, caption, func, order, params, key, guessed, names)
        return func
    return register


# ------------------------------------------------------------------ what a figure function may use

@dataclass
class Context:
    """What a figure function may use: models (loaded once, accelerated for this machine), the
    real input (photographs, paintings), the run's mode, a progress bar and a place to note facts.

    - ``photos(classes=None, count=None)``: [{"path", "class", "label"}] from ``images`` (a user
      folder: classes unknown, -1, so ``classes`` only sets how many), else the ImageNet sample
      (the given classes that it has, in that order), else [] (``real_input`` False: use the
      built-in sample images; the page says so).
    - ``photos_or_builtin(classes=None, count=None)``: the same, or scikit-image's colour photos
      (``BUILTIN_PHOTOS``, class -1; ``path`` is a sample name ``load_image`` understands) when
      that is empty. Either way the page records what the figure used.
    - ``painting(name)``: a style painting as (RGB [0, 1] image, source).
    - ``quick``: a smoke-test run (tests): figures cut steps and sizes, never their structure.
    - ``progress(total, desc)``: a tqdm bar for long figures (closed by the runner).
    - ``note(**facts)``: facts shown in the figure's table (model, measured numbers).
    """

    models: list[str]  # available models, default first
    notes: dict = field(default_factory=dict)
    quick: bool = False
    images: str | None = None  # --images DIR: the pool of the dataset figures
    _cache: dict = field(default_factory=dict)  # the runner shares one across figures
    _bars: list = field(default_factory=list)
    _inputs: dict = field(default_factory=lambda: {"photos": 0, "fallback": False, "builtin": False,
                                                   "declared": None, "paintings": []})

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
            # A user's folder has no classes: the request is met with as many of its images.
            rows = [{"path": p, "class": -1, "label": Path(p).stem} for p in image_folder(self.images)]
            count = count if count is not None or classes is None else len(list(classes))
        elif imagenet_sample_dir() is not None:
            rows = imagenet_sample()
            if classes is not None:
                by_class = {r["class"]: r for r in rows}
                rows = [by_class[c] for c in classes if c in by_class]
        else:
            self._inputs["fallback"] = True
            return []
        rows = rows[:count] if count is not None else rows
        self._inputs["photos"] += len(rows)
        return rows

    def photos_or_builtin(self, classes=None, count: int | None = None) -> list[dict]:
        rows = self.photos(classes, count)
        if rows:
            return rows
        self._inputs["fallback"] = True
        builtin = [{"path": n, "class": -1, "label": n} for n in BUILTIN_PHOTOS]
        return builtin[:count] if count is not None else builtin

    def uses_builtin(self) -> None:
        """Record that the figure loads scikit-image's sample images itself (``load_images(["chelsea"])``)."""
        self._inputs["builtin"] = True

    def declare_input(self, text: str, real: bool = False) -> None:
        """State the figure's input where the runner cannot see it (a cached study, a bundled data set);
        ``real``: it is real photographs."""
        self._inputs["declared"] = text
        self._inputs["declared_real"] = real

    def painting(self, name: str):
        from jaxviz.datasets import style_painting
        image, source = style_painting(name)
        if source not in self._inputs["paintings"]:
            self._inputs["paintings"].append(source)
        return image, source

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

    def input_record(self) -> dict:
        """What real input this figure drew: shown on the page, kept in index.json."""
        used = self._inputs
        photos = used["photos"]
        if used["declared"]:
            text = used["declared"]
        elif photos:
            where = self.images if self.images is not None else "ImageNet sample"
            text = f"real photographs ({photos} drawn from {where})"
        elif used["fallback"]:
            text = "built-in sample images (no real input here)"
        elif used["builtin"]:
            text = "built-in sample images (scikit-image)"
        else:
            text = "no photographs"
        if used["paintings"]:
            text += "; paintings: " + ", ".join(_short_path(p) for p in used["paintings"])
        return {"real_input": bool(photos) or bool(used.get("declared_real")), "fallback": used["fallback"], "photos": photos,
                "paintings": list(used["paintings"]), "text": text}


def discover() -> dict[str, FigureSpec]:
    """Import every figure module; figures sorted by section (the lectures' order), order, name.

    A module that fails to import is recorded in ``IMPORT_ERRORS``; the others still render.
    """
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{__name__}.{module.name}")
            IMPORT_ERRORS.pop(module.name, None)
        except Exception as e:  # a module mid-edit must not take the gallery down
            IMPORT_ERRORS[module.name] = f"{e.__class__.__name__}: {e}"
    sections = list(SECTIONS)
    return dict(sorted(FIGURES.items(), key=lambda kv: (sections.index(kv[1].section), kv[1].order, kv[0])))


# ------------------------------------------------------------------ the run

def render_gallery(out: Path, only: list[str] | None = None, models: list[str] | None = None,
                   log: Callable[[str], None] = print, quick: bool = False,
                   images: str | None = None, fresh: bool = False) -> list[dict]:
    """Render figures into ``out`` (NAME.png + index.html + index.json); returns this run's records.

    A figure that fails is recorded with its error and the others still render. See ``run_gallery``.
    """
    return run_gallery(out, only, models, log=log, quick=quick, images=images, fresh=fresh)["run"]["records"]


def run_gallery(out: Path, only: list[str] | None = None, models: list[str] | None = None, *,
                log: Callable[[str], None] = print, quick: bool = False, images: str | None = None,
                fresh: bool = False) -> dict:
    """Render figures into ``out``; returns the page's index (what ``index.json`` holds, plus this
    run's records under ``index["run"]["records"]``).

    Figures rendered into ``out`` by earlier runs and not chosen now stay on the page (marked with
    their own commit and date) unless ``fresh``.

    Raises:
      JaxvizError: unknown figure name, no model weights, ``images`` not a folder of images.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxviz.runtime import device_description
    from jaxviz.weights.store import available_models

    start = time.perf_counter()
    out = Path(out)
    specs = discover()
    unknown = [n for n in only or [] if n not in specs]
    if unknown:
        failures = "; ".join(f"{m}: {e}" for m, e in IMPORT_ERRORS.items())
        broken = f" (figure modules that failed to import: {failures})" if IMPORT_ERRORS else ""
        raise JaxvizError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(specs)}{broken}")
    if images is not None:
        from jaxviz.datasets import image_folder
        if not Path(images).is_dir():
            raise JaxvizError(f"--images {images}: not a folder")
        image_folder(images)  # raises when the folder holds no images
    chosen = [specs[n] for n in specs if not only or n in only]
    models = models or available_models()
    if not models:
        raise JaxvizError("no model weights available; see `jaxviz models`")
    out.mkdir(parents=True, exist_ok=True)
    kept = [] if fresh else _kept_records(out, specs, {s.name for s in chosen})
    run = {"commit": git_commit(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "device": _device(device_description()), "backend": _backend(), "quick": quick, "models": list(models),
           "images": images, "input": input_facts(images), "figures_chosen": len(chosen),
           "figures_registered": len(specs), "seconds": 0.0,
           "done": False, "records": []}
    cache: dict = {}  # models loaded once for the whole run
    for number, spec in enumerate(chosen, 1):
        ctx = Context(models=models, quick=quick, images=images, _cache=cache)
        t0 = time.perf_counter()
        record = {"name": spec.name, "title": spec.title, "caption": spec.caption, "section": spec.section,
                  "params": spec.params, "device": run["device"], "commit": run["commit"], "date": run["date"],
                  "quick": quick}
        try:
            fig = spec.func(ctx)
            if not hasattr(fig, "savefig"):
                raise TypeError(f"the figure function returned {type(fig).__name__}, not a matplotlib figure")
            width, height = save_png(fig, out / f"{spec.name}.png")
            record.update(file=f"{spec.name}.png", status="ok", width=width, height=height,
                          font=_safe_text_check(fig, width))
        except Exception as e:  # one broken figure must not lose the others
            record.update(status="failed", error=f"{e.__class__.__name__}: {e}",
                          traceback=traceback.format_exc(limit=6))
        finally:
            plt.close("all")
            for bar in ctx._bars:
                bar.close()
        record.update(notes=ctx.notes, input=ctx.input_record(), seconds=round(time.perf_counter() - t0, 2))
        run["records"].append(record)
        run["seconds"] = round(time.perf_counter() - start, 2)
        small = record.get("font", {}).get("ok") is False
        log(f"[{number:>{len(str(len(chosen)))}}/{len(chosen)}] {spec.name:<30} {record['status']:<6} "
            f"{record['seconds']:>7.1f} s  elapsed {_clock(run['seconds'])}"
            + (f"  (text {record['font']['smallest_px']:.1f} px on the page)" if small else ""))
        _write_index(out, run, kept, specs)
    run["done"] = True
    run["seconds"] = round(time.perf_counter() - start, 2)
    return _write_index(out, run, kept, specs)


def _write_index(out: Path, run: dict, kept: list[dict], specs: dict[str, FigureSpec]) -> dict:
    index = build_index(run, kept, specs)
    public = {"run": _public_run(run), **{k: v for k, v in index.items() if k != "run"}}
    atomic_write_text(out / "index.json", json.dumps(public, indent=2, default=str))
    atomic_write_text(out / "index.html", _html(index))
    return index


def _public_run(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "records"}


def build_index(run: dict, kept: list[dict], specs: dict[str, FigureSpec]) -> dict:
    """The page's content: this run's facts, every figure on the page in page order, the time
    budget per section and the warnings."""
    order = {name: i for i, name in enumerate(specs)}
    figures = sorted(run["records"] + kept, key=lambda r: order.get(r["name"], len(order)))
    return {"run": run, "figures": figures, "budget": budget(run, figures),
            "warnings": warnings(run, figures, specs)}


def _kept_records(out: Path, specs: dict[str, FigureSpec], chosen: set[str]) -> list[dict]:
    """Figures of an earlier run into ``out`` that this run does not redo (still registered, PNG present)."""
    try:
        old = json.loads((out / "index.json").read_text())
    except (OSError, ValueError):
        return []
    kept = []
    for r in old.get("figures", []) if isinstance(old, dict) else []:
        if not isinstance(r, dict) or r.get("name") not in specs or r["name"] in chosen:
            continue
        if r.get("status") == "ok" and not (out / str(r.get("file", ""))).is_file():
            continue
        spec = specs[r["name"]]
        kept.append({**r, "kept": True, "title": spec.title, "caption": spec.caption, "section": spec.section})
    return kept


def budget(run: dict, figures: list[dict]) -> dict:
    """Time per section against the gallery's budget (``BUDGET_SECONDS`` for this backend)."""
    limit = BUDGET_SECONDS.get(run["backend"])
    sections = []
    for key, (title, _) in SECTIONS.items():
        rows = [r for r in figures if r.get("section") == key]
        if rows:
            sections.append({"section": key, "title": title, "figures": len(rows),
                             "seconds": round(sum(r.get("seconds", 0.0) for r in rows), 1)})
    total = round(sum(r.get("seconds", 0.0) for r in figures), 1)
    complete = len(figures) == run.get("figures_registered", len(figures))
    slowest = sorted(figures, key=lambda r: -r.get("seconds", 0.0))[:5]
    return {"limit_seconds": limit, "backend": run["backend"], "sections": sections, "figure_seconds": total,
            "run_seconds": run["seconds"], "comparable": complete and not run["quick"] and not any(
                r.get("quick") for r in figures),
            "within": None if limit is None else total <= limit,
            "slowest": [{"name": r["name"], "seconds": r.get("seconds", 0.0)} for r in slowest]}


def budget_summary(index: dict) -> str:
    """The budget as text lines for the end of a run."""
    b = index["budget"]
    lines = [f"{'section':<24} {'figures':>7} {'seconds':>9}"]
    lines += [f"{s['title']:<24} {s['figures']:>7} {s['seconds']:>9.1f}" for s in b["sections"]]
    lines.append(f"{'all figures on the page':<24} {sum(s['figures'] for s in b['sections']):>7} "
                 f"{b['figure_seconds']:>9.1f}")
    if b["limit_seconds"] is not None:
        verdict = "within" if b["within"] else "OVER"
        caveat = "" if b["comparable"] else " (not comparable: a partial or --quick run)"
        lines.append(f"budget {b['limit_seconds']:.0f} s on {b['backend']}: {verdict}{caveat}")
    lines.append("slowest: " + ", ".join(f"{s['name']} {s['seconds']:.0f} s" for s in b["slowest"]))
    return "\n".join(lines)


def warnings(run: dict, figures: list[dict], specs: dict[str, FigureSpec]) -> list[dict]:
    """Everything a reader or a figure author should fix, one entry per problem."""
    found = []
    if not run["input"]["real_photos"]:
        found.append({"kind": "input", "figure": None, "message": run["input"]["photos_note"]})
    for module, error in IMPORT_ERRORS.items():
        found.append({"kind": "import", "figure": None, "message": f"figure module {module} failed to import: {error}"})
    for r in figures:
        if r.get("status") != "ok":
            found.append({"kind": "failed", "figure": r["name"], "message": r.get("error", "failed")})
        font = r.get("font") or {}
        if font.get("ok") is False:
            found.append({"kind": "font", "figure": r["name"], "message": (
                f"smallest text {font['smallest_px']:.1f} px on the page (< {MIN_TEXT_PX:g}): "
                f"{font['smallest_pt']:g} pt {font['text']!r} at {DPI} dpi, shown {font['displayed_width']} of "
                f"{font['png_width']} px wide; needs >= {font['min_pt_needed']:.1f} pt at this width")})
        spec = specs.get(r["name"])
        if spec is not None and spec.section_guessed:
            found.append({"kind": "section", "figure": r["name"], "message": (
                f"section guessed ({SECTIONS[spec.section][0]}): module {spec.func.__module__} is not in "
                "MODULE_SECTIONS; pass figure(..., section=...)")})
    return found


# ------------------------------------------------------------------ facts of the run

def git_commit(root: Path = PROJECT_ROOT) -> str:
    """``git rev-parse --short HEAD`` of the checkout, with "+dirty" when files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
    try:
        head = git("rev-parse", "--short=10", "HEAD")
        if head.returncode:
            return "unknown (not a git checkout)"
        dirty = git("status", "--porcelain").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _device(description: str) -> str:
    """runtime.device_description, with the core count on CPU (what the time budget depends on)."""
    return description + (f" ({os.cpu_count()} CPU cores)" if _backend() == "cpu" else "")


def _backend() -> str:
    import jax
    return jax.default_backend()


def _short_path(path) -> str:
    """A path relative to the checkout when it is close to it (``../shared/...``), else as given."""
    text = str(path)
    try:
        rel = os.path.relpath(text, PROJECT_ROOT)
    except ValueError:
        return text
    return rel if not rel.startswith(os.pardir + os.sep + os.pardir) and Path(text).is_absolute() else text


def input_facts(images: str | None) -> dict:
    """Where the real input comes from on this machine, and the page's note when it is missing."""
    from jaxviz.datasets import imagenet_sample_dir
    from jaxviz.weights.sources import shared_dir
    sample = shared_dir() / "imagenet-sample"
    styles = shared_dir() / "styles"
    if images is not None:
        photos, note = f"{images} (--images)", None
    elif imagenet_sample_dir() is not None:
        photos, note = f"ImageNet sample ({_short_path(sample)})", None
    else:
        photos, note = None, f"built-in sample images were used: {_short_path(sample)} not found"
    paintings = (f"{_short_path(styles)}" if styles.is_dir()
                 else f"the 512 px copies shipped in jaxviz/data/styles ({_short_path(styles)} not found)")
    return {"real_photos": photos is not None, "photos": photos or "built-in sample images",
            "photos_note": note, "paintings": paintings}


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


# ------------------------------------------------------------------ files

def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    _atomic(Path(path), lambda f: f.write(text.encode("utf-8")))


def _atomic(path: Path, write: Callable) -> None:
    """jaxviz's one atomic write (``jaxviz.io.atomic_write``: temporary file in the folder, fsync,
    rename, permissions as a plain open() gives them so a web server can read the page; removed
    on any failure, a read-only or full location is one ``WriteError`` line)."""
    from jaxviz.io import atomic_write
    atomic_write(Path(path), write)


def save_png(fig, path: Path) -> tuple[int, int]:
    """Save ``fig`` as PNG (``DPI``, tight box) through a temporary name; returns (width, height) px."""
    from PIL import Image
    _atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"))
    with Image.open(path) as im:
        return im.size


def figure_texts(fig) -> list:
    """The drawn, non-empty Text artists of ``fig`` (call after it was drawn, e.g. saved): hidden
    artists, axes switched off (``ax.axis("off")``) and empty strings are skipped."""
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.table import Cell
    from matplotlib.text import Text
    found = []

    def walk(artist) -> None:
        if not artist.get_visible():
            return
        if isinstance(artist, Text) and artist.get_text().strip():
            found.append(artist)
        if isinstance(artist, Cell):
            walk(artist.get_text())
        children = artist.get_children()
        if isinstance(artist, Axes) and not artist.axison:
            children = [c for c in children if not isinstance(c, Axis)]
        for child in children:
            walk(child)

    walk(fig)
    return found


def _safe_text_check(fig, png_width: int) -> dict:
    try:
        return text_check(fig, png_width)
    except Exception as e:  # a checker problem must not fail a rendered figure
        return {"ok": None, "error": f"{e.__class__.__name__}: {e}"}


def text_check(fig, png_width: int, display_width: int = DISPLAY_WIDTH) -> dict:
    """The figure's smallest text in px as displayed on the page: points x DPI/72 x shown/actual width.

    Returns {"ok", "smallest_pt", "smallest_px", "smallest_px_native", "text", "png_width",
    "displayed_width", "min_pt_needed"}; ``ok`` is None when the figure has no text.
    """
    shown = min(png_width, display_width)
    scale = DPI / 72 * shown / png_width
    texts = figure_texts(fig)
    result = {"dpi": DPI, "png_width": png_width, "displayed_width": shown,
              "min_pt_needed": round(MIN_TEXT_PX / scale, 2)}
    if not texts:
        return result | {"ok": None, "smallest_pt": None, "smallest_px": None, "smallest_px_native": None,
                         "text": None}
    smallest = min(texts, key=lambda t: t.get_fontsize())
    pt = float(smallest.get_fontsize())
    text = " ".join(smallest.get_text().split())
    return result | {"ok": pt * scale >= MIN_TEXT_PX - 1e-6, "smallest_pt": round(pt, 2),
                     "smallest_px": round(pt * scale, 2), "smallest_px_native": round(pt * DPI / 72, 2),
                     "text": text[:40] + ("…" if len(text) > 40 else "")}


# ------------------------------------------------------------------ the page

_CSS = f"""
*{{box-sizing:content-box}}
html{{scroll-behavior:auto}}
body{{margin:0;color:#1b1b1b;background:#fff;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"DejaVu Sans",Helvetica,Arial,sans-serif}}
.wrap{{max-width:{DISPLAY_WIDTH}px;margin:0 auto;padding:0 20px}}
h1{{font-size:30px;margin:24px 0 8px}}
h2{{font-size:24px;margin:0 0 6px}}
h3{{font-size:19px;margin:0 0 8px}}
.bar{{position:sticky;top:0;z-index:2;background:#f7f7f5;border-bottom:1px solid #ddd;font-size:14px}}
.bar .wrap{{padding-top:6px;padding-bottom:6px}}
.bar a{{margin-right:14px;color:#1f4f8f;text-decoration:none;white-space:nowrap}}
.bar a:hover{{text-decoration:underline}}
section,figure,#contents,#budget,#warnings{{scroll-margin-top:48px}}
table.run{{border-collapse:collapse;font-size:15px;margin:8px 0 12px}}
table.run th{{text-align:left;font-weight:600;padding:2px 16px 2px 0;vertical-align:top;white-space:nowrap}}
table.run td{{padding:2px 0;vertical-align:top}}
.notice{{background:#fff4d6;border:1px solid #e6c25a;padding:8px 12px;border-radius:4px;margin:10px 0}}
.warn{{background:#fdecec;border:1px solid #e2a0a0;padding:8px 12px;border-radius:4px;margin:10px 0;font-size:14px}}
.warn ul{{margin:4px 0;padding-left:20px}}
#contents ol{{margin:4px 0;padding-left:22px;list-style:none}}
#contents>ol{{columns:2 460px;column-gap:32px;padding-left:0;list-style:none}}
#contents>ol>li{{break-inside:avoid;margin:0 0 10px}}
#contents>ol>li>a{{font-weight:600}}
#contents li{{font-size:15px}}
#contents .t{{color:#666;font-size:13px;margin-left:6px;white-space:nowrap}}
#contents .failed{{color:#b00020;font-weight:600}}
section{{margin-top:34px;border-top:3px solid #333;padding-top:10px}}
section>p.intro{{color:#444;margin:0 0 8px}}
figure{{margin:28px 0 0;padding-top:14px;border-top:1px solid #ddd}}
figure img{{display:block;max-width:100%;height:auto;margin:6px 0}}
figcaption{{font-size:15px;margin:6px 0;max-width:1000px}}
table.facts{{border-collapse:collapse;font-size:14px;margin:6px 0;width:100%;max-width:1000px}}
table.facts th,table.facts td{{text-align:left;vertical-align:top;padding:3px 10px 3px 0;border-bottom:1px solid #eee}}
table.facts th{{width:30%;font-weight:600;color:#333}}
table.facts td{{overflow-wrap:anywhere}}
table.facts tr.group th{{background:#f4f4f2;color:#1b1b1b;padding-left:6px;font-size:13px;text-transform:uppercase;
letter-spacing:.04em}}
p.meta{{font-size:13px;color:#555;margin:4px 0}}
.failedbox{{background:#fdecec;border:1px solid #e2a0a0;padding:8px 12px;border-radius:4px}}
pre{{font-size:13px;white-space:pre-wrap;overflow-wrap:anywhere}}
table.budget{{border-collapse:collapse;font-size:15px}}
table.budget th,table.budget td{{padding:3px 18px 3px 0;text-align:left;border-bottom:1px solid #eee}}
table.budget td.n{{text-align:right}}
footer{{margin:40px 0 30px;font-size:13px;color:#666}}
"""


def _key(key) -> str:
    """A parameter name as text: snake_case words get spaces; names with digits (squeezenet1_1) stay."""
    text = str(key)
    return text.replace("_", " ") if re.fullmatch(r"[a-z_]+", text) else text


def fmt_value(value) -> str:
    """A value as the page shows it (for figure code that builds a parameter string itself)."""
    return _fmt(value)


def _fmt(value) -> str:
    """A parameter or noted value as readable text: floats to 4 significant digits, exact multiples of
    1/255 that are no short decimal (attack budgets: 2/255) as k/255, containers item by item."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        k = value * 255
        if value != 0 and abs(k - round(k)) < 1e-9 and round(value, 3) != value:
            return f"{round(k)}/255"
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy / jax scalars
        return _fmt(value.item())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{_key(k)}: {_fmt(v)}" for k, v in value.items())
    if hasattr(value, "__name__") and callable(value):
        return value.__name__
    return str(value)


def _facts_table(record: dict) -> str:
    e = html.escape
    parts = []
    for group, facts in (("parameters", record.get("params") or {}), ("measured and noted", record.get("notes") or {})):
        if facts:
            parts.append(f"<tr class=group><th colspan=2>{group}</th></tr>")
            parts += [f"<tr><th>{e(_key(k))}</th><td>{e(_fmt(v))}</td></tr>" for k, v in facts.items()]
    return f"<table class=facts>{''.join(parts)}</table>" if parts else ""


def _html(index: dict) -> str:
    """The page: header facts, warnings, contents, sections with their figures, the time budget."""
    e = html.escape
    run, figures, budget_ = index["run"], index["figures"], index["budget"]
    by_section = {key: [r for r in figures if r.get("section") == key] for key in SECTIONS}
    numbered = [(n, key) for n, key in enumerate((k for k in SECTIONS if by_section[k]), 1)]
    kept = [r for r in figures if r.get("kept")]
    status = ("" if run["done"] else
              f" (running: {len(run['records'])} of {run['figures_chosen']} figures done so far)")
    facts = [("commit", run["commit"]), ("date", run["date"].replace("T", " ")), ("device", run["device"]),
             ("total time", f"{run['seconds']:.1f} s ({_clock(run['seconds'])}) for {len(run['records'])} figure(s)"
              f"{status}"),
             ("models", ", ".join(run["models"])), ("photographs", run["input"]["photos"]),
             ("paintings", run["input"]["paintings"])]
    if run["quick"]:
        facts.append(("mode", "--quick (smoke test: fewer steps, smaller sizes; not the real figures)"))
    if kept:
        facts.append(("kept", f"{len(kept)} figure(s) from earlier runs into this folder (their commit and "
                              "date are shown under them)"))
    head = ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>jaxviz figures</title><style>{_CSS}</style></head><body>")
    bar = "".join(f"<a href='#sec-{key}'>{n}. {e(SECTIONS[key][0])}</a>" for n, key in numbered)
    parts = [head, f"<nav class=bar aria-label=sections><div class=wrap><a href='#top'>Top</a>"
                   f"<a href='#contents'>Contents</a>{bar}<a href='#budget'>Time budget</a></div></nav>",
             "<main class=wrap id=top><header><h1>jaxviz figures</h1><table class=run>",
             "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts), "</table>"]
    if run["input"]["photos_note"]:
        note = run["input"]["photos_note"]
        parts.append(f"<p class=notice><strong>Note:</strong> {e(note[0].upper() + note[1:])}"
                     ". Figures that use photographs show scikit-image's sample images instead; each figure "
                     "says what it used.</p>")
    problems = [w for w in index["warnings"] if w["kind"] != "input"]
    if problems:
        items = "".join(f"<li>{e(w['figure'] + ': ') if w['figure'] else ''}{e(w['message'])}</li>" for w in problems)
        parts.append(f"<div class=warn id=warnings><strong>{len(problems)} warning(s)</strong><ul>{items}</ul></div>")
    parts.append("</header><nav id=contents aria-label=contents><h2>Contents</h2><ol>")
    for n, key in numbered:
        items = []
        for m, r in enumerate(by_section[key], 1):
            flag = " <span class=failed>FAILED</span>" if r.get("status") != "ok" else ""
            items.append(f"<li><a href='#{e(r['name'])}'>{n}.{m} {e(r['title'])}</a>{flag}"
                         f"<span class=t>{r.get('seconds', 0):.1f} s</span></li>")
        parts.append(f"<li><a href='#sec-{key}'>{n}. {e(SECTIONS[key][0])}</a><ol>{''.join(items)}</ol></li>")
    parts.append("<li><a href='#budget'>Time budget</a></li></ol></nav>")
    for n, key in numbered:
        title, intro = SECTIONS[key]
        parts.append(f"<section id='sec-{key}'><h2>{n}. {e(title)}</h2><p class=intro>{e(intro)}</p>")
        for m, r in enumerate(by_section[key], 1):
            parts.append(_figure_html(r, f"{n}.{m}", run))
        parts.append("</section>")
    parts.append(_budget_html(budget_))
    parts.append(f"<footer>Written by scripts/reproduce_figures.py at commit {e(run['commit'])}; "
                 "index.json holds the same facts.</footer></main></body></html>")
    return "\n".join(parts)


def _figure_html(r: dict, number: str, run: dict) -> str:
    e = html.escape
    if r.get("status") == "ok":
        size = f" width={int(r['width'])} height={int(r['height'])}" if r.get("width") else ""
        body = (f"<a href='{e(r['file'])}' title='open at full size'>"
                f"<img src='{e(r['file'])}' alt='{e(r['title'])}'{size}></a>")
    else:
        body = (f"<div class=failedbox><strong>FAILED:</strong> {e(r.get('error', ''))}"
                f"<details><summary>traceback</summary><pre>{e(r.get('traceback', ''))}</pre></details></div>")
    meta = [f"time {r.get('seconds', 0):.1f} s", f"input: {(r.get('input') or {}).get('text', 'not recorded')}"]
    if r.get("kept"):
        meta.append(f"kept from an earlier run: commit {r.get('commit', '?')}, {r.get('date', '?')}")
    if r.get("quick") and not run["quick"]:
        meta.append("--quick")
    meta.append("<a href='#contents'>contents</a>")
    return (f"<figure id='{e(r['name'])}'><h3>{number} {e(r['title'])}</h3>{body}"
            f"<figcaption>{e(r['caption'])}</figcaption>{_facts_table(r)}"
            f"<p class=meta>{' · '.join(m if m.startswith('<a ') else e(m) for m in meta)}</p></figure>")


def _budget_html(b: dict) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(s['title'])}</td><td class=n>{s['figures']}</td>"
                   f"<td class=n>{s['seconds']:.1f}</td></tr>" for s in b["sections"])
    rows += (f"<tr><th>all figures</th><td class=n>{sum(s['figures'] for s in b['sections'])}</td>"
             f"<td class=n>{b['figure_seconds']:.1f}</td></tr>")
    if b["limit_seconds"] is None:
        verdict = f"No budget is set for the {e(b['backend'])} backend."
    else:
        verdict = (f"Budget for the whole gallery on {e(b['backend'])}: {b['limit_seconds']:.0f} s with a warm "
                   f"compilation cache; these figures took {b['figure_seconds']:.0f} s: "
                   f"{'within' if b['within'] else 'over'} budget"
                   + ("." if b["comparable"] else " (a partial or --quick run: not comparable)."))
    slow = ", ".join(f"{e(s['name'])} {s['seconds']:.0f} s" for s in b["slowest"])
    return (f"<section id=budget><h2>Time budget</h2><table class=budget><tr><th>section</th><th>figures</th>"
            f"<th>seconds</th></tr>{rows}</table><p>{verdict} Slowest: {slow}.</p></section>")
