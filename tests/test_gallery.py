"""The gallery's page and run (jaxviz.gallery, scripts/reproduce_figures.py, scripts/check_gallery.py).

A --quick run of cheap real figures checks the page's structure without a browser: contents links
land on figures, sections in the lectures' order, header facts, parameter tables, index.json.
Test figures registered here check what real figures cannot pin down: the text-size check at the
displayed width, the real-input record and the fallback page without ../shared, failures, kept
figures, atomic writes. The browser check runs when Chromium and Playwright are installed.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from jaxviz import gallery
from jaxviz.errors import JaxvizError
from jaxviz.gallery import FIGURES, MIN_TEXT_PX, SECTIONS, Context, figure, run_gallery, text_check

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Page(HTMLParser):
    """Ids (with their tags), contents links, sections in order, images and header rows of a page."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, text: str):
        super().__init__()
        self.ids: dict[str, str] = {}
        self.toc: list[str] = []
        self.nested_toc: list[str] = []
        self.sections: list[str] = []
        self.images: list[str] = []
        self.header: dict[str, str] = {}
        self._stack: list[tuple[str, dict]] = []
        self._th: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def _inside(self, tag: str, id_: str) -> int:
        return sum(1 for t, a in self._stack if t == tag and (id_ is None or a.get("id") == id_))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            assert attrs["id"] not in self.ids, f"duplicate id {attrs['id']}"
            self.ids[attrs["id"]] = tag
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "a" and attrs.get("href", "").startswith("#") and self._inside("nav", "contents"):
            self.toc.append(attrs["href"][1:])
            if self._inside("li", None) >= 2:
                self.nested_toc.append(attrs["href"][1:])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("th", "td") and self._inside("table", None) and any(
                a.get("class") == "run" for t, a in self._stack if t == "table"):
            self._cell = []
        if tag not in self.VOID:
            self._stack.append((tag, attrs))

    def handle_endtag(self, tag):
        if self._cell is not None and tag in ("th", "td"):
            text = "".join(self._cell).strip()
            if tag == "th":
                self._th = text
            else:
                self.header[self._th] = text
            self._cell = None
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def test_figures():
    """Register test figures for one test; removed afterwards (the registry is global)."""
    added = []

    def add(name, func, **kw):
        kw.setdefault("section", "studies")
        figure(name, f"Test figure {name}", f"Caption of {name} <b>escaped</b>.", **kw)(func)
        added.append(name)
        return name

    yield add
    for name in added:
        FIGURES.pop(name, None)


def _plain(ctx: Context):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    ax.set_title("a plain figure", fontsize=12)
    ax.tick_params(labelsize=10)
    ctx.note(answer=42, big_number=1234567, ratio=0.123456)
    return fig


def _run(out, names, **kw):
    return run_gallery(out, names, ["squeezenet1_1"], log=lambda line: None, fresh=True, **kw)


# ------------------------------------------------------------------ the run of real cheap figures

def test_quick_run_of_real_figures_writes_a_page_with_contents_sections_and_facts(tmp_path, capsys):
    from jaxviz.weights.store import available_models
    if "squeezenet1_1" not in available_models():
        pytest.skip("squeezenet1_1 weights are not installed")
    names = ["model_summary", "filters_first_layer", "digit_templates"]
    rc = _script("reproduce_figures").main(["--quick", "--fresh", "--only", *names, "--models", "squeezenet1_1",
                                            "--out", str(tmp_path)])
    printed = capsys.readouterr()
    assert rc == 0 or (rc == 1 and gallery.IMPORT_ERRORS), printed.err
    lines = [line for line in printed.out.splitlines() if re.match(r"\[\d/3\]", line)]
    assert [line.split()[1] for line in lines] == names  # one progress line per figure, in page order
    assert all(re.search(r"ok\s+[\d.]+ s\s+elapsed \d+:\d\d", line) for line in lines)
    assert "Inside the network" in printed.out and "budget 1200 s on cpu" in printed.out

    index = json.loads((tmp_path / "index.json").read_text())
    assert [r["name"] for r in index["figures"]] == names
    assert all(r["status"] == "ok" and r["section"] == "inside" and r["quick"] for r in index["figures"])
    assert all(r["font"]["smallest_pt"] > 0 and r["font"]["png_width"] > 0 for r in index["figures"])
    run = index["run"]
    assert re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", run["commit"]) and run["device"] and run["done"]
    assert run["seconds"] >= sum(r["seconds"] for r in index["figures"]) - 0.5
    assert [s["section"] for s in index["budget"]["sections"]] == ["inside"]
    assert index["budget"]["comparable"] is False  # a partial --quick run

    page = Page((tmp_path / "index.html").read_text())
    assert page.sections == ["sec-inside", "budget"]
    assert page.nested_toc == names and all(page.ids[n] == "figure" for n in names)
    assert all(t in page.ids for t in page.toc)
    assert page.images == [f"{n}.png" for n in names] and all((tmp_path / f"{n}.png").is_file() for n in names)
    assert page.header["commit"] == run["commit"] and page.header["device"] == run["device"]
    assert page.header["date"].startswith(run["date"][:10]) and page.header["total time"].startswith(
        f"{run['seconds']:.1f} s")
    assert "--quick" in page.header["mode"]
    assert not list(tmp_path.glob(".*.tmp"))  # every file went through a temporary name


def test_sections_follow_the_lectures_and_modules_give_the_default():
    specs = gallery.discover()
    keys = list(SECTIONS)
    positions = [keys.index(s.section) for s in specs.values()]
    assert positions == sorted(positions)
    for spec in specs.values():
        module = spec.func.__module__.rsplit(".", 1)[-1]
        if not spec.section_guessed and module in gallery.MODULE_SECTIONS:
            assert spec.section in SECTIONS
    assert gallery.section_key("Optimising the input") == gallery.section_key("optimize") == "optimise"
    with pytest.raises(JaxvizError, match="known: inside, attribution"):
        gallery.section_key("misc")


def test_default_section_from_the_module_and_explicit_section(test_figures):
    def adversarial_fig(ctx):
        return None
    adversarial_fig.__module__ = "jaxviz.gallery.adversarial"
    test_figures("t_default", adversarial_fig, section=None)
    test_figures("t_explicit", adversarial_fig, section="Texture and style")

    def unknown(ctx):
        return None
    unknown.__module__ = "jaxviz.gallery.brand_new_family"
    test_figures("t_guess", unknown, section=None)
    assert FIGURES["t_default"].section == "adversarial" and not FIGURES["t_default"].section_guessed
    assert FIGURES["t_explicit"].section == "style"
    assert FIGURES["t_guess"].section == "studies" and FIGURES["t_guess"].section_guessed


# ------------------------------------------------------------------ text size at the displayed width

def _fig_with(size_pt, width_in=4.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(width_in, 2))
    ax.plot([0, 1], [0, 1])  # fills the width (an image would keep its aspect and shrink the tight box)
    ax.set_title("title", fontsize=12)
    ax.set_xticks([]), ax.set_yticks([])
    fig.text(0.5, 0.02, "small words", fontsize=size_pt)
    return fig


def _checked(fig, tmp_path):
    import matplotlib.pyplot as plt
    width, _ = gallery.save_png(fig, tmp_path / "f.png")
    result = text_check(fig, width)
    plt.close(fig)
    return width, result


def test_text_check_in_pixels_on_the_page(tmp_path):
    # 7 pt at 100 dpi = 9.72 px: legible while the figure is shown at its own width
    width, r = _checked(_fig_with(7), tmp_path)
    assert width < gallery.DISPLAY_WIDTH and r["ok"] and r["smallest_pt"] == 7 and r["text"] == "small words"
    assert r["smallest_px"] == pytest.approx(7 * 100 / 72, abs=0.01)
    # 6 pt = 8.3 px: too small anywhere
    assert not _checked(_fig_with(6), tmp_path)[1]["ok"]
    # 8 pt in a 30-inch figure is scaled down to the page's width: 11.1 px x 1200/~3000 < 9 px
    width, r = _checked(_fig_with(8, width_in=30), tmp_path)
    assert width > gallery.DISPLAY_WIDTH and not r["ok"]
    assert r["smallest_px"] == pytest.approx(8 * 100 / 72 * gallery.DISPLAY_WIDTH / width, abs=0.01)
    assert r["min_pt_needed"] * 100 / 72 * gallery.DISPLAY_WIDTH / width == pytest.approx(MIN_TEXT_PX, abs=0.01)


def test_text_check_ignores_hidden_empty_and_switched_off_text(tmp_path):
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(5, 2))
    a.imshow(np.zeros((4, 4)))
    a.tick_params(labelsize=3)
    a.axis("off")  # its tiny tick labels are never drawn
    b.plot([0, 1])
    b.tick_params(labelsize=10)
    b.set_title("", fontsize=2)
    hidden = b.text(0, 0, "hidden", fontsize=2)
    hidden.set_visible(False)
    b.legend(["line"], fontsize=9)
    _, r = _checked(fig, tmp_path)
    assert r["ok"] and r["smallest_pt"] == 9 and r["text"] == "line"  # the legend is found


def test_small_text_is_a_warning_in_index_json_and_on_the_page(tmp_path, test_figures):
    def tiny(ctx):
        return _fig_with(4)
    test_figures("t_tiny", tiny)
    index = _run(tmp_path, ["t_tiny"])
    (w,) = [w for w in index["warnings"] if w["kind"] == "font"]
    assert w["figure"] == "t_tiny" and "4 pt 'small words'" in w["message"] and "5.6 px" in w["message"]
    assert "small words" in (tmp_path / "index.html").read_text().split("id=warnings")[1]


# ------------------------------------------------------------------ real input and its fallback

def _uses_photos(ctx: Context):
    import matplotlib.pyplot as plt

    from jaxviz.images import load_images
    rows = ctx.photos_or_builtin(count=2)
    images = load_images([r["path"] for r in rows], 32)
    ctx.painting("starry_night")
    fig, axes = plt.subplots(1, len(images), figsize=(4, 2))
    for ax, image, row in zip(axes, images, rows):
        ax.imshow(image)
        ax.set_title(str(row["label"])[:12], fontsize=10)
        ax.axis("off")
    return fig


def test_without_shared_every_photo_figure_falls_back_and_the_page_says_so(tmp_path, monkeypatch, test_figures):
    monkeypatch.setenv("JAXVIZ_SHARED", "/nonexistent")
    test_figures("t_photos", _uses_photos)
    index = _run(tmp_path, ["t_photos"])
    (r,) = index["figures"]
    assert r["status"] == "ok", r.get("traceback")
    assert r["input"]["fallback"] and not r["input"]["real_input"] and r["input"]["photos"] == 0
    assert "jaxviz/data/styles/starry_night.jpg" in r["input"]["text"]
    note = index["run"]["input"]["photos_note"]
    assert note == "built-in sample images were used: /nonexistent/imagenet-sample not found"
    text = (tmp_path / "index.html").read_text()
    assert "class=notice" in text
    assert "Built-in sample images were used: /nonexistent/imagenet-sample not found" in text
    assert "input: built-in sample images (no real input here)" in text
    assert any(w["kind"] == "input" for w in index["warnings"])


def test_a_folder_of_images_is_the_real_input(tmp_path, monkeypatch, test_figures):
    from jaxviz.images import save_image
    monkeypatch.setenv("JAXVIZ_SHARED", "/nonexistent")
    folder = tmp_path / "pool"
    folder.mkdir()
    for i in range(3):
        save_image(np.full((16, 20, 3), i / 3, np.float32), folder / f"img{i}.png")
    test_figures("t_photos", _uses_photos)
    index = _run(tmp_path / "out", ["t_photos"], images=str(folder))
    (r,) = index["figures"]
    assert r["status"] == "ok" and r["input"]["real_input"] and r["input"]["photos"] == 2
    assert index["run"]["input"]["photos_note"] is None
    assert "class=notice" not in (tmp_path / "out" / "index.html").read_text()
    with pytest.raises(JaxvizError, match="not a folder"):
        _run(tmp_path / "out", ["t_photos"], images=str(tmp_path / "missing"))


# ------------------------------------------------------------------ failures, kept figures, files

def test_a_failing_figure_is_recorded_and_the_others_render(tmp_path, test_figures):
    def broken(ctx):
        raise RuntimeError("boom <here>")
    test_figures("t_broken", broken)
    test_figures("t_plain", _plain)
    index = _run(tmp_path, ["t_broken", "t_plain"])
    status = {r["name"]: r["status"] for r in index["figures"]}
    assert status == {"t_broken": "failed", "t_plain": "ok"}
    text = (tmp_path / "index.html").read_text()
    assert "RuntimeError: boom &lt;here&gt;" in text and "<b>escaped</b>" not in text
    assert any(w["kind"] == "failed" and w["figure"] == "t_broken" for w in index["warnings"])
    # the parameter table: the decorator's params and the noted facts, readable
    assert "<th>answer</th><td>42</td>" in text and "<th>big number</th><td>1,234,567</td>" in text
    assert "<td>0.1235</td>" in text


def test_earlier_figures_stay_on_the_page_unless_fresh(tmp_path, test_figures):
    test_figures("t_a", _plain)
    test_figures("t_b", _plain)
    _run(tmp_path, ["t_a"])
    index = run_gallery(tmp_path, ["t_b"], ["squeezenet1_1"], log=lambda line: None)
    assert [(r["name"], bool(r.get("kept"))) for r in index["figures"]] == [("t_a", True), ("t_b", False)]
    assert "kept from an earlier run" in (tmp_path / "index.html").read_text()
    index = _run(tmp_path, ["t_b"])
    assert [r["name"] for r in index["figures"]] == ["t_b"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "index.html"
    gallery.atomic_write_text(target, "old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        gallery._atomic(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]
    assert target.stat().st_mode & 0o044  # readable by others, not mkstemp's 0600


def test_unknown_figure_is_refused_with_the_known_names(tmp_path):
    rc = _script("reproduce_figures").main(["--only", "no_such_figure", "--out", str(tmp_path)])
    assert rc == 2


# ------------------------------------------------------------------ in a browser

def _browser_available() -> bool:
    return Path("/usr/bin/chromium").is_file() and importlib.util.find_spec("playwright") is not None


@pytest.mark.skipif(not _browser_available(), reason="needs /usr/bin/chromium and the playwright package")
def test_check_gallery_in_chromium(tmp_path, test_figures, capsys):
    test_figures("t_plain", _plain, section="inside")
    test_figures("t_photos", _uses_photos, section="attribution")
    _run(tmp_path, ["t_plain", "t_photos"])
    check = _script("check_gallery")
    assert check.main([str(tmp_path / "index.html")]) == 0, capsys.readouterr().out
    assert (tmp_path / "screenshots" / "top.png").is_file() and (tmp_path / "screenshots" / "full.png").is_file()
    # a missing image and a contents link to nowhere are found, one line each
    (tmp_path / "t_plain.png").unlink()
    page = (tmp_path / "index.html").read_text().replace("href='#t_photos'", "href='#t_gone'", 1)
    (tmp_path / "index.html").write_text(page)
    capsys.readouterr()
    assert check.main([str(tmp_path / "index.html")]) == 1
    out = capsys.readouterr().out
    assert "image not loaded: t_plain.png" in out and "link #t_gone" in out and "t_photos: not in the table" in out
    shutil.rmtree(tmp_path / "screenshots")


def test_context_photos_from_a_folder_the_sample_or_nothing(tmp_path, monkeypatch):
    from jaxviz.datasets import imagenet_sample_dir
    from jaxviz.images import save_image
    for i in range(3):
        save_image(np.full((8, 8, 3), 0.5, np.float32), tmp_path / f"img{i}.png")
    ctx = Context(models=["squeezenet1_1"], images=str(tmp_path))
    assert len(ctx.photos()) == 3 and len(ctx.photos(classes=[281, 285])) == 2  # a folder has no classes
    assert ctx.input_record()["photos"] == 5 and ctx.input_record()["real_input"]
    if imagenet_sample_dir() is not None:
        ctx = Context(models=["squeezenet1_1"])
        first = ctx.photos(count=1)[0]
        assert [r["class"] for r in ctx.photos(classes=[first["class"], 10_000])] == [first["class"]]
    monkeypatch.setenv("JAXVIZ_SHARED", str(tmp_path / "none"))
    ctx = Context(models=["squeezenet1_1"])
    assert ctx.photos() == [] and not ctx.real_input
    assert [r["path"] for r in ctx.photos_or_builtin(count=2)] == ["chelsea", "coffee"]
    assert ctx.input_record()["fallback"] and not ctx.input_record()["real_input"]


# ------------------------------------------------------------------ attribution-section figures: helpers

def test_grid_contrast_measures_a_period_4_lattice_and_is_one_without():
    from jaxviz.gallery.attribution import grid_contrast
    flat = np.full((30, 22), 2.0)
    assert grid_contrast(flat) == pytest.approx(1.0)
    lattice = np.ones((32, 20))
    lattice[::4, ::4] = 5.0  # one phase of 16 five times brighter: max / min of the phase means = 5
    assert grid_contrast(lattice) == pytest.approx(5.0)
    # ragged edges (non-multiple of the period) are cut, not wrapped
    assert grid_contrast(np.pad(lattice, ((0, 3), (0, 1)), constant_values=100.0)) == pytest.approx(5.0)
    assert grid_contrast(lattice, period=2) == pytest.approx(2.0)  # 2x2 phases: (5+3)/4 = 2 against 1


def test_map_display_clips_at_the_percentile_into_unit_range():
    from jaxviz.gallery.attribution import map_display
    m = np.arange(100, dtype=np.float32).reshape(10, 10)
    m[9, 9] = 1e6  # one extreme value must not hide the rest
    shown = map_display(m, q=90.0)
    assert shown.min() == 0.0 and shown.max() == 1.0
    assert shown[5, 0] == pytest.approx(50 / np.percentile(m, 90), rel=1e-5)
    assert np.all(map_display(np.zeros((4, 3))) == 0)  # an all-zero map stays zero, no NaN


def test_invariance_transforms_identity_shift_and_quarter_turn():
    from jaxviz.gallery.foundation import _transform
    rng = np.random.default_rng(0)
    image = rng.random((12, 12, 3)).astype(np.float32)
    for kind, amount in (("translation", 0), ("scale", 1.0), ("rotation", 0), ("rotation", 360)):
        assert np.array_equal(_transform(image, kind, amount), image), (kind, amount)
    shifted = _transform(image, "translation", 3)  # down by 3 px, the top filled with the mean colour
    np.testing.assert_allclose(shifted[3:], image[:-3], atol=1e-6)
    np.testing.assert_allclose(shifted[:3], np.broadcast_to(image.reshape(-1, 3).mean(0), (3, 12, 3)), atol=1e-6)
    quarter = _transform(image, "rotation", 90)
    assert any(np.allclose(quarter, np.rot90(image, k, axes=(0, 1)), atol=1e-5) for k in (1, 3))
    zoomed = _transform(image, "scale", 2.0)  # zoom about the centre: the centre pixel pair stays put
    assert zoomed.shape == image.shape and np.isfinite(zoomed).all()


@pytest.mark.slow
def test_attribution_figures_render_quick_with_legible_text(tmp_path, capsys):
    from jaxviz.weights.store import available_models
    if "squeezenet1_1" not in available_models():
        pytest.skip("squeezenet1_1 weights are not installed")
    names = ["saliency_vanilla", "cam_two_classes", "attribution_comparison", "occlusion", "invariance",
             "saliency_segmentation", "deletion_insertion", "sanity_check"]
    rc = _script("reproduce_figures").main(["--quick", "--fresh", "--only", *names, "--models", "squeezenet1_1",
                                            "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    index = json.loads((tmp_path / "index.json").read_text())
    assert sorted(r["name"] for r in index["figures"]) == sorted(names)
    for r in index["figures"]:
        assert r["status"] == "ok" and r["font"]["ok"], (r["name"], r["font"])
    notes = {r["name"]: r["notes"] for r in index["figures"]}
    if index["run"]["input"]["real_photos"]:  # the boxer | Persian cat pair: each class on its own object
        cam = notes["cam_two_classes"]
        for method in ("CAM", "Grad-CAM", "guided Grad-CAM"):
            assert cam[f"correlation of the two rows' maps, {method}"] < 0.3, (method, cam)


# ------------------------------------------------------------------ adversarial, style and bias figures' helpers

def test_adversarial_figures_spread_classes_over_the_sample_and_step_on_the_8_bit_grid():
    from jaxviz.gallery import adversarial as adv
    classes = adv.spread_classes(48, 3)
    assert len(classes) == len(set(classes)) == 48 and classes == sorted(classes)
    assert all(c % 10 != 9 and 0 <= c < 1000 for c in classes)  # the sample lacks every class c % 10 == 9
    assert classes[-1] - classes[0] > 800  # spread over the classes, not the first 48
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 5, 7, 3)).astype(np.float32) / np.float32(255)
    d = np.sign(rng.standard_normal(x.shape)).astype(np.float32)
    for k in (1, 2, 8):  # exactly clip(x + k/255 d) on the 8-bit grid, from the integers
        want = np.clip(np.round(x * 255) + k * d, 0, 255) / 255
        np.testing.assert_array_equal(adv.step_images(x, d, k / 255), want.astype(np.float32))
    chunks = list(adv._chunks(np.arange(5 * 2).reshape(5, 2), 2))
    assert [k for _, k in chunks] == [2, 2, 1] and all(len(c) == 2 for c, _ in chunks)  # last chunk padded
    out = adv.chunked(lambda a, b: a + b, np.arange(5.0), np.arange(5.0) * 10, chunk=2)
    np.testing.assert_array_equal(out, np.arange(5.0) * 11)


def test_style_figures_report_convergence_over_the_last_steps():
    from jaxviz.gallery.style import _loss_text
    assert _loss_text([4.0, 2.0]) == "4 -> 2"
    losses = [100.0] + [10.0] * 9 + [8.0, 5.0, 4.0]  # 13 steps: the last 10 go from 10 to 4
    assert _loss_text(losses) == "100 -> 4 (last 10 steps: -60.0%)"


def test_bias_figures_wilson_interval_and_category_interleaving():
    from types import SimpleNamespace

    from jaxviz.gallery.bias import _interleave, wilson
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0 and np.isnan(wilson(0, 0)[0])
    src = [SimpleNamespace(name=n, classes=c) for n, c in
           (("a1", (1,)), ("a2", (1,)), ("b1", (2, 3)), ("c1", (4,)), ("b2", (3, 2)))]
    assert [s.name for s in _interleave(src)] == ["a1", "b1", "c1", "a2", "b2"]


def test_bias_texture_mosaic_has_only_the_central_half_and_no_hard_seams():
    from jaxviz.gallery.bias import texture_mosaic
    photo = np.zeros((64, 64, 3), np.float32)
    photo[..., 0] = 1.0  # red outside the central half
    yy, xx = np.mgrid[:32, :32]
    photo[16:48, 16:48] = np.stack([np.zeros_like(xx), xx / 31.0, 1.0 - yy / 31.0], -1)  # a ramp inside
    out = texture_mosaic(photo, 32, tiles=4, seed=0)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert np.abs(out[..., 0]).max() < 1e-6  # every crop comes from the central half: no red at all
    np.testing.assert_array_equal(out, texture_mosaic(photo, 32, tiles=4, seed=0))  # seeded
    assert not np.array_equal(out, texture_mosaic(photo, 32, tiles=4, seed=1))
    flat = np.full((64, 64, 3), 0.3, np.float32)  # cross-fading: a flat photo stays exactly flat
    np.testing.assert_allclose(texture_mosaic(flat, 32, tiles=4, seed=2), 0.3, atol=1e-6)


def test_bias_pair_design_avoids_same_category_and_spreads_the_textures():
    from types import SimpleNamespace

    from jaxviz.gallery.bias import design_pairs
    shapes = [SimpleNamespace(classes=(c,)) for c in (1, 2, 3, 1, 2, 3)]
    textures = [SimpleNamespace(classes=(c,)) for c in (1, 2, 3, 4)]
    index = design_pairs(len(shapes), textures, shapes, per_shape=2, limit=100)
    assert index.shape == (12, 2)
    for i, j in index:
        assert shapes[i].classes != textures[j - len(shapes)].classes
    assert np.bincount(index[:, 0]).tolist() == [2] * 6  # two textures per shape
    uses = np.bincount(index[:, 1] - len(shapes), minlength=4)
    assert uses.max() - uses.min() <= 1  # every texture used about equally
    assert len(design_pairs(len(shapes), textures, shapes, per_shape=2, limit=5)) == 5


@pytest.mark.slow
def test_quick_run_of_the_adversarial_style_and_bias_figures(tmp_path):
    from jaxviz.weights.store import available_models
    need = {"squeezenet1_1", "efficientnet_lite0", "vgg19_caffe"}
    if not need <= set(available_models()):
        pytest.skip(f"needs the weights of {', '.join(sorted(need))}")
    names = ["adversarial_fgsm", "adversarial_accuracy", "adversarial_examples", "fooling_images",
             "adversarial_transfer", "attack_comparison", "texture_efros_vs_gram", "texture_gram_layers",
             "style_ratios", "style_scale", "style_blend", "style_preserve_color", "fast_style_cin",
             "fast_style_multistyle26", "bias_cue_conflict", "bias_shape_bar"]
    index = run_gallery(tmp_path, names, None, log=lambda line: None, quick=True, fresh=True)
    bad = {r["name"]: r.get("error") for r in index["run"]["records"] if r["status"] != "ok"}
    assert not bad, bad
    assert all(r["font"]["ok"] is not False for r in index["run"]["records"]), \
        {r["name"]: r["font"] for r in index["run"]["records"] if r["font"]["ok"] is False}


# ------------------------------------------------------------------ issue 14's figures (filters, optimisation)

def test_filters_deep_greys_are_zero_centred_per_group():
    from jaxviz.gallery.inside import _adjacent_correlation, _group_mosaic, _zero_centred_groups
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 5, 4)).astype(np.float32)
    kernel[..., 1] *= 100  # one loud filter must not change another group's scale
    tiles = _zero_centred_groups(kernel, groups=3, per_group=4)
    assert tiles.shape == (3, 4, 3, 3)
    for g in range(3):  # mid-grey is 0, the group's largest |w| reaches black or white
        k = kernel[:, :, :4, g]
        np.testing.assert_allclose(tiles[g], 0.5 + 0.5 * np.transpose(k, (2, 0, 1)) / np.abs(k).max(), rtol=1e-6)
        assert np.isclose(np.abs(tiles[g] - 0.5).max(), 0.5)
    mosaic = _group_mosaic(tiles, columns=2, tile_px=9)
    assert mosaic.ndim == 3 and mosaic.shape[-1] == 3 and np.isfinite(mosaic).all()
    smooth = np.tile(np.linspace(-1, 1, 3)[None, :, None, None], (3, 1, 4, 4))
    assert _adjacent_correlation(smooth) > 0.4 and abs(_adjacent_correlation(kernel)) < 0.3


def test_random_affine_transform_keeps_shape_and_is_identity_at_zero():
    import jax
    import jax.numpy as jnp

    from jaxviz.gallery.optimize import _random_affine
    x = jnp.asarray(np.random.default_rng(1).random((2, 12, 10, 3)), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 2)
    same = _random_affine(0.0, 0.0).fn(x, keys, None)
    np.testing.assert_allclose(np.asarray(same), np.asarray(x), atol=1e-5)
    moved = np.asarray(_random_affine(0.2, 20.0).fn(x, keys, None))
    assert moved.shape == x.shape and not np.allclose(moved, x)
    one = np.asarray(_random_affine(0.2, 20.0).fn(x[1:], keys[1:], None))  # batch[i] == single(i)
    np.testing.assert_allclose(moved[1:], one, atol=1e-6)
    assert _random_affine(0.1, 10.0) is _random_affine(0.1, 10.0)  # cached: the engine reuses its step


@pytest.mark.slow
def test_quick_run_of_the_issue_14_figures(tmp_path):
    from jaxviz.weights.store import available_models
    need = {"squeezenet1_1", "efficientnet_lite0", "vgg19_caffe"}
    if not need <= set(available_models()):
        pytest.skip(f"needs the weights of {', '.join(sorted(need))}")
    names = ["filters_deep", "classviz_models", "channel_viz", "inversion_depths", "texture_efros_vs_gram",
             "style_scale"]
    index = run_gallery(tmp_path, names, None, log=lambda line: None, quick=True, fresh=True)
    records = index["run"]["records"]
    bad = {r["name"]: r.get("error") for r in records if r["status"] != "ok"}
    assert not bad, bad
    assert all(r["font"]["ok"] is not False for r in records), {r["name"]: r["font"] for r in records}
