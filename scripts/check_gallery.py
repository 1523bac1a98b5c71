#!/usr/bin/env python
"""Check the gallery page in a real browser (headless Chromium through Playwright).

    python scripts/check_gallery.py [figures/index.html] [--screenshots DIR] [--figures]
                                    [--width 1440] [--height 900] [--min-px 9]

Asserts that every <img> loaded (naturalWidth > 0) and no request failed; every table-of-contents
link lands on its element (a figure, or a section) and every figure is in the contents; every
visible text of the page renders at --min-px or more (computed font-size); every figure's
smallest text (from index.json: points x dpi/72) is --min-px or more at the width the browser
shows the PNG; no figure failed; the page is not wider than the window. Writes screenshots of the
top of the page and of the full page (and of each figure with --figures) into DIR (default:
screenshots/ beside the page).

Needs Debian's chromium (/usr/bin/chromium, or --chromium PATH) and the playwright package; it
never downloads a browser. Exit status: 0 all good; 1 one line per problem; 2 cannot check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

_TEXTS = """() => {
  const out = [], seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    if (!node.textContent.trim() || !el || seen.has(el)) continue;
    seen.add(el);
    if (!el.getClientRects().length) continue;           // not rendered (display:none, closed <details>)
    const cs = getComputedStyle(el);
    if (cs.visibility === 'hidden' || parseFloat(cs.opacity) === 0) continue;
    const fig = el.closest('figure, section, header, nav');
    out.push({tag: el.tagName.toLowerCase(), px: parseFloat(cs.fontSize),
              text: node.textContent.trim().replace(/\\s+/g, ' ').slice(0, 40),
              where: fig ? (fig.id || fig.tagName.toLowerCase()) : 'body'});
  }
  return out;
}"""

_IMAGES = """() => Array.from(document.images).map(img => ({
  src: img.getAttribute('src'), complete: img.complete, natural: img.naturalWidth,
  shown: img.getBoundingClientRect().width, figure: (img.closest('figure') || {}).id || null}))"""

_LINKS = """() => {
  const results = [];
  const maxY = () => document.documentElement.scrollHeight - window.innerHeight;
  for (const a of document.querySelectorAll('a[href^="#"]')) {
    const id = decodeURIComponent(a.getAttribute('href').slice(1));
    const target = document.getElementById(id);
    const r = {href: a.getAttribute('href'), inToc: !!a.closest('#contents'),
               nested: !!a.closest('#contents li li'), text: a.textContent.trim().slice(0, 50),
               exists: !!target, tag: target ? target.tagName.toLowerCase() : null, top: null, atEnd: false};
    if (target) {
      window.scrollTo(0, 0);
      a.click();                                   // a same-document fragment navigation scrolls at once
      r.top = target.getBoundingClientRect().top;
      r.atEnd = window.scrollY >= maxY() - 2;
    }
    results.push(r);
  }
  window.scrollTo(0, 0);
  return results;
}"""

_FIGURES = """() => Array.from(document.querySelectorAll('figure[id]')).map(f => ({
  id: f.id, failed: !!f.querySelector('.failedbox')}))"""


def check(page_path: Path, shots: Path, *, width: int, height: int, min_px: float, chromium: str,
          each_figure: bool) -> tuple[list[str], dict]:
    """Open the page; returns (problems, counts)."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    index_path = page_path.with_name("index.json")
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    fonts = {r["name"]: r.get("font") or {} for r in index.get("figures", []) if isinstance(r, dict)}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            failed_requests: list[str] = []
            page.on("requestfailed", lambda r: failed_requests.append(f"{r.url} ({r.failure})"))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate(_IMAGES)
            texts = page.evaluate(_TEXTS)
            figures = page.evaluate(_FIGURES)
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            shots.mkdir(parents=True, exist_ok=True)
            _shot(lambda path: page.screenshot(path=path, type="png"), shots / "top.png")
            links = page.evaluate(_LINKS)  # clicks every in-page link; ends scrolled to the top
            _shot(lambda path: page.screenshot(path=path, type="png", full_page=True), shots / "full.png")
            if each_figure:
                (shots / "figures").mkdir(exist_ok=True)
                # the sticky section bar would be stitched into the middle of tall element shots
                page.add_style_tag(content=".bar{position:static !important}")
                for f in figures:
                    element = page.locator(f"figure[id='{f['id']}']")
                    _shot(lambda path, el=element: el.screenshot(path=path, type="png"),
                          shots / "figures" / f"{f['id']}.png")
        finally:
            browser.close()

    for url in failed_requests:
        problems.append(f"request failed: {url}")
    for e in errors:
        problems.append(f"script error: {e}")
    for img in images:
        if not img["complete"] or img["natural"] <= 0:
            problems.append(f"image not loaded: {img['src']} (figure {img['figure']})")
    for f in figures:
        if f["failed"]:
            problems.append(f"figure {f['id']}: failed to render (see its box on the page)")
    for t in texts:
        if t["px"] < min_px:
            problems.append(f"text {t['px']:.1f} px < {min_px:g} px: <{t['tag']}> {t['text']!r} in {t['where']}")
    for img in images:  # the figures' own text, at the width the browser shows them
        font = fonts.get(img["figure"]) or {}
        if font.get("smallest_pt") and img["natural"] > 0:
            px = font["smallest_pt"] * font.get("dpi", 100) / 72 * img["shown"] / img["natural"]
            if px < min_px - 1e-6:
                problems.append(f"figure {img['figure']}: smallest text {px:.1f} px < {min_px:g} px as shown "
                                f"({font['smallest_pt']:g} pt {font.get('text')!r}, PNG {img['natural']} px shown "
                                f"at {img['shown']:.0f} px)")
    for link in links:
        where = f"link {link['href']} ({link['text']!r})"
        if not link["exists"]:
            problems.append(f"{where}: no element with that id")
        elif link["inToc"] and link["nested"] and link["tag"] != "figure":
            problems.append(f"{where}: lands on <{link['tag']}>, not a figure")
        elif not (-2 <= link["top"] <= 80 or link["atEnd"]):
            problems.append(f"{where}: the target is {link['top']:.0f} px from the top after the jump")
    toc = {link["href"][1:] for link in links if link["inToc"]}
    for f in figures:
        if f["id"] not in toc:
            problems.append(f"figure {f['id']}: not in the table of contents")
    if overflow > 0:
        problems.append(f"the page is {overflow} px wider than a {width} px window")
    if not index:
        problems.append(f"{index_path} missing or unreadable: figure fonts not checked")
    counts = {"images": len(images), "links": len(links), "texts": len(texts), "figures": len(figures)}
    return problems, counts


def _shot(take, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        take(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", default="figures/index.html", help="the page (default: figures/index.html)")
    parser.add_argument("--screenshots", metavar="DIR",
                        help="where screenshots go (default: screenshots/ beside the page)")
    parser.add_argument("--figures", action="store_true", help="also a screenshot of each figure")
    parser.add_argument("--width", type=int, default=1440, help="window width (CSS px, default 1440)")
    parser.add_argument("--height", type=int, default=900, help="window height (CSS px, default 900)")
    parser.add_argument("--min-px", type=float, default=9.0, help="smallest text allowed (default 9 px)")
    parser.add_argument("--chromium", default="/usr/bin/chromium",
                        help="the Chromium binary (default /usr/bin/chromium)")
    args = parser.parse_args(argv)
    page = Path(args.page)
    if not page.is_file():
        print(f"check_gallery: no page at {page}; run scripts/reproduce_figures.py first", file=sys.stderr)
        return 2
    if not Path(args.chromium).is_file():
        print(f"check_gallery: no Chromium at {args.chromium} (apt-get install chromium)", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("check_gallery: the playwright package is missing (pip install playwright; no browser download "
              "needed)", file=sys.stderr)
        return 2
    shots = Path(args.screenshots) if args.screenshots else page.parent / "screenshots"
    problems, counts = check(page, shots, width=args.width, height=args.height, min_px=args.min_px,
                             chromium=args.chromium, each_figure=args.figures)
    for line in problems:
        print(line)
    summary = (f"{counts['figures']} figures, {counts['images']} images, {counts['links']} links, "
               f"{counts['texts']} text elements checked at {args.width}x{args.height}; screenshots in {shots}")
    print(f"check_gallery: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'OK'}: {summary}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
