"""The measuring instrument behind ``scripts/bench.py``: alternating rounds, medians, load, tables.

Nothing here imports jax, torch or jaxviz (the README generator and its test run without them).

A ``Comparison`` is two callables doing the same work on the same weights and inputs: ``jaxviz``
and ``peer`` (a PyTorch library, or another jaxviz path for internal comparisons, or None for a
plain timing). ``measure`` calls each side once outside the rounds (the first call: compilation
included, recorded; it is the warm-up), ``warmup`` more times if asked, then ``rounds`` rounds of
A B [extras] A B ... in one process, so load from other processes hits both sides alike. It reports the median time of each
side, the median and spread (min, max, quartiles) of the per-round ratio peer / jaxviz (> 1: jaxviz
is faster), the load average before and after, the CPU time this process used and the CPU time
everyone else used meanwhile, the CPU time the hypervisor gave to other guests instead (steal; all
from ``/proc/stat``), and a ``noisy`` flag with its reasons.

Results are JSON (``results_document``); ``render_tables`` makes the Markdown table both
``benchmarks/results.md`` and the README (between ``README_START`` / ``README_END``) show, so
the README's numbers are never typed by hand.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

SCHEMA = 1
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"

# A run is flagged noisy when other processes used more than this share of the cores (on 2 cores:
# more than one core's worth of others' load exceeds 0.5 x 2), or when the per-round ratios spread.
OTHERS_LIMIT = 0.5        # x cores
# ... or when the hypervisor gave more than this share of the cores to other guests (steal time: a
# shared cloud VM slows down with no process of its own to show for it)
STEAL_LIMIT = 0.05        # x cores
IQR_LIMIT = 0.10          # (q75 - q25) / median of the per-round ratios
RANGE_LIMIT = 0.30        # (max - min) / median of the per-round ratios


@dataclass
class Comparison:
    """One row of the table.

    Attributes:
      name: short key (``--only NAME``), e.g. ``"saliency"``.
      title: what is measured, e.g. ``"vanilla saliency, batch 32"``.
      peer_name: the other side, e.g. ``"Captum Saliency"`` (ignored when ``peer`` is None).
      jaxviz, peer: zero-argument callables doing the work and returning their result; they must
        finish the work before returning (``block_until_ready`` / ``np.asarray``).
      items: images (or steps, frames) per call, for the per-second columns.
      unit: what ``items`` counts ("img", "step", "frame").
      how: facts of the measurement shown with the row (batch, size, settings), JSON-able.
      extras: more callables timed in the same rounds (e.g. "forward" for Grad-CAM / forward).
      derived: ``f(medians {side: seconds}, outputs {side: result}) -> {name: value}`` extra
        numbers (e.g. the Grad-CAM / forward ratio), from the medians and the last results.
      agree: ``f(outputs {side: result}) -> {metric: value, "ok": bool, "criterion": str}``,
        called on the results of the last round.
      fresh: called (untimed) before every timed jaxviz call, e.g. to clear the compilation caches
        when the first call is what is measured.
      first_call_only: the row's jaxviz time IS a first call (``fresh`` makes every call one).
      warm_side: the extra that times jaxviz warm in such rows (compile = first call - its median).
      warmup: untimed calls of every side after the first call, before the rounds.
      child: argv tail that makes ``bench.py --child`` time this jaxviz side's first call in a
        fresh process (None: no compile check).
    """

    name: str
    title: str
    peer_name: str
    jaxviz: Callable[[], Any]
    peer: Callable[[], Any] | None
    items: int = 1
    unit: str = "img"
    how: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    derived: Callable[[dict, dict], dict] | None = None
    agree: Callable[[dict], dict] | None = None
    fresh: Callable[[], None] | None = None
    first_call_only: bool = False
    warm_side: str | None = None
    warmup: int = 0
    child: list | None = None


# --------------------------------------------------------------------------- load

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The processor's name (Linux ``/proc/cpuinfo``), else None: ratios differ between CPUs of
    one architecture (torch and XLA pick other kernels), so a row says which CPU it was run on."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _system_times() -> tuple[float | None, float | None]:
    """(busy, steal): seconds of CPU time all processes have used since boot, and seconds the
    hypervisor ran other guests while this machine's CPUs wanted to run (Linux ``/proc/stat``;
    None where unknown)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None, None
    if not fields or fields[0] != "cpu":
        return None, None
    ticks = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice: busy = user..softirq less
    # idle and iowait (guest time is already inside user); steal apart, it is no process's
    steal = ticks[7] if len(ticks) > 7 else None
    busy = sum(ticks[:7]) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    hz = os.sysconf("SC_CLK_TCK")
    return busy / hz, (None if steal is None else steal / hz)


def _own_busy() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def load_snapshot() -> dict:
    busy, steal = _system_times()
    return {"wall": time.monotonic(), "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "system": busy, "steal": steal, "own": _own_busy()}


def load_report(before: dict, after: dict, cores: int | None = None) -> dict:
    """Load average before/after, and the cores' worth of CPU this process (``own_cores``), all
    others (``others_cores``) and the hypervisor's other guests (``steal_cores``) used on average
    between the two snapshots."""
    cores = cores or cpu_count()
    wall = max(after["wall"] - before["wall"], 1e-9)
    own = (after["own"] - before["own"]) / wall
    others = steal = None
    if before["system"] is not None and after["system"] is not None:
        others = max(0.0, (after["system"] - before["system"]) / wall - own)
    if before.get("steal") is not None and after.get("steal") is not None:
        steal = max(0.0, (after["steal"] - before["steal"]) / wall)
    return {"cores": cores, "before": before["loadavg"], "after": after["loadavg"], "seconds": wall,
            "own_cores": own, "others_cores": others, "steal_cores": steal}


def noisy_reasons(load: dict, ratio: dict | None) -> list[str]:
    """Why a measurement should not be trusted (empty: quiet).

    - the 1-minute load average after the rounds exceeds this process's own use by more than
      ``OTHERS_LIMIT`` x cores;
    - other processes used more than ``OTHERS_LIMIT`` x cores during the rounds (``/proc/stat``);
    - the hypervisor took more than ``STEAL_LIMIT`` x cores for other guests (steal time);
    - the per-round ratios spread: IQR > ``IQR_LIMIT`` or range > ``RANGE_LIMIT`` of the median.
    """
    reasons = []
    cores = load["cores"]
    after = load.get("after")
    own = load.get("own_cores") or 0.0
    if after and after[0] - own > OTHERS_LIMIT * cores:
        reasons.append(f"1-min load {after[0]:.1f} while this process used {own:.1f} of {cores} cores")
    if load.get("others_cores") is not None and load["others_cores"] > OTHERS_LIMIT * cores:
        reasons.append(f"other processes used {load['others_cores']:.1f} of {cores} cores")
    if load.get("steal_cores") is not None and load["steal_cores"] > STEAL_LIMIT * cores:
        reasons.append(f"the hypervisor took {load['steal_cores']:.2f} of {cores} cores for other guests (steal)")
    if ratio and ratio.get("median"):
        m = ratio["median"]
        if (ratio["q75"] - ratio["q25"]) / m > IQR_LIMIT:
            reasons.append(f"per-round ratios spread (IQR {ratio['q25']:.2f}-{ratio['q75']:.2f})")
        elif (ratio["max"] - ratio["min"]) / m > RANGE_LIMIT:
            reasons.append(f"per-round ratios spread ({ratio['min']:.2f}-{ratio['max']:.2f})")
    return reasons


# --------------------------------------------------------------------------- statistics

def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q25, median, q75), linear interpolation (numpy's default)."""
    v = sorted(values)
    if not v:
        return math.nan, math.nan, math.nan

    def q(p: float) -> float:
        pos = p * (len(v) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)
    return q(0.25), q(0.5), q(0.75)


def ratio_summary(ratios: list[float]) -> dict:
    q25, med, q75 = quartiles(ratios)
    return {"median": med, "min": min(ratios), "max": max(ratios), "q25": q25, "q75": q75,
            "rounds": [float(r) for r in ratios]}


# --------------------------------------------------------------------------- measuring

def measure(comp: Comparison, rounds: int = 5, *, clock: Callable[[], float] = time.perf_counter,
            snapshot: Callable[[], dict] = load_snapshot, log: Callable[[str], None] | None = None) -> dict:
    """Run ``comp`` as first calls, ``comp.warmup`` warm-ups, then ``rounds`` alternating rounds.

    Returns the row's JSON record (without the child-process compile times; see ``compile_check``).
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    sides: dict[str, Callable] = {"jaxviz": comp.jaxviz}
    if comp.peer is not None:
        sides["peer"] = comp.peer
    sides.update(comp.extras)
    say = log or (lambda s: None)

    def timed(name: str) -> tuple[float, Any]:
        if name == "jaxviz" and comp.fresh is not None:
            comp.fresh()
        start = clock()
        out = sides[name]()
        return clock() - start, out

    load_start = snapshot()
    first, outputs = {}, {}
    for name in sides:  # the first call of each side: compilation (jaxviz), allocator warm-up (torch)
        first[name], outputs[name] = timed(name)
        say(f"  first call {name}: {first[name]:.2f} s")
    for _ in range(comp.warmup):  # more untimed calls after the first
        for name in sides:
            timed(name)
    before = snapshot()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in sides:  # A B [extras] A B ...: the sides share whatever load there is
            t, outputs[name] = timed(name)
            times[name].append(t)
        say(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in sides))
    after = snapshot()
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = None
    if comp.peer is not None:
        ratio = ratio_summary([p / j for p, j in zip(times["peer"], times["jaxviz"])])
    load = load_report(before, after)
    load["before_setup"] = load_start["loadavg"]
    agreement = comp.agree(outputs) if comp.agree is not None else None
    derived = comp.derived(medians, outputs) if comp.derived is not None else {}
    reasons = noisy_reasons(load, ratio)
    return {
        "name": comp.name, "title": comp.title, "peer": comp.peer_name if comp.peer is not None else None,
        "items": comp.items, "unit": comp.unit, "how": dict(comp.how, rounds=rounds),
        "seconds": {name: {"median": medians[name], "rounds": times[name], "first_call": first[name]}
                    for name in sides},
        "ratio": ratio, "derived": derived, "agreement": agreement,
        "first_call_is_timed": comp.first_call_only, "warm_side": comp.warm_side,
        "compile": {"in_process_s": max(0.0, first["jaxviz"] - medians[comp.warm_side or "jaxviz"])
                    if comp.warm_side or not comp.first_call_only else None},
        "load": load, "noisy": bool(reasons), "noisy_reasons": reasons,
    }


def child_first_call(argv: list[str], cache_dir: str, timeout: float = 1800) -> dict:
    """Run ``argv`` (``bench.py --child NAME ...``) with ``JAXVIZ_CACHE_DIR=cache_dir``; it prints
    one JSON line ``{"first_call_s": ...}`` last."""
    import subprocess
    env = {**os.environ, "JAXVIZ_CACHE_DIR": cache_dir}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_check(argv: list[str], warm_s: float) -> dict:
    """The first call of a technique in two fresh processes sharing a new, empty persistent cache:
    process 1 compiles (cold), process 2 should hit the cache. Compile = first call - warm median."""
    with tempfile.TemporaryDirectory(prefix="jaxviz-bench-cache-") as cache:
        cold = child_first_call(argv, cache)
        cached = child_first_call(argv, cache) if "error" not in cold else {"error": "skipped"}
    out = {"cold_process_first_call_s": cold.get("first_call_s"), "cached_process_first_call_s":
           cached.get("first_call_s"), "errors": [e for e in (cold.get("error"), cached.get("error")) if e]}
    for key, value in (("cold_process_s", out["cold_process_first_call_s"]),
                       ("cached_process_s", out["cached_process_first_call_s"])):
        out[key] = None if value is None else max(0.0, value - warm_s)
    # the children's compile probe (bench.py ``CompileProbe``): time inside JAX's compile events,
    # wall and CPU (CPU is what other processes' load cannot stretch)
    for run, record in (("cold", cold), ("cached", cached)):
        for key in ("compile_s", "compile_cpu_s", "compiles", "cache_hits"):
            if key in record:
                out[f"{run}_{key}"] = record[key]
    return out


# --------------------------------------------------------------------------- agreement helpers

def pearson(a, b) -> float:
    import numpy as np
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else (1.0 if not a.any() and not b.any() else 0.0)


def per_image_pearson(a, b) -> dict:
    """Pearson r of each image's map (N, ...) vs (N, ...): {"pearson_r": min, "pearson_r_mean": mean}."""
    rs = [pearson(x, y) for x, y in zip(a, b)]
    return {"pearson_r": min(rs), "pearson_r_mean": sum(rs) / len(rs)}


def _minmax(maps):
    import numpy as np
    lo = maps.min(axis=tuple(range(1, maps.ndim)), keepdims=True)
    hi = maps.max(axis=tuple(range(1, maps.ndim)), keepdims=True)
    return (maps - lo) / np.where(hi > lo, hi - lo, 1.0)


def map_agreement(ours, theirs, *, min_r: float = 0.999, scaled: bool = False) -> dict:
    """Per-image Pearson r (min over images) and max |difference| relative to the maps' range
    (``scaled``: after min-max scaling each map of both sides to [0, 1], for peers that scale)."""
    import numpy as np
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        return {"ok": False, "criterion": f"shapes {ours.shape} vs {theirs.shape}"}
    if scaled:
        ours, theirs = _minmax(ours), _minmax(theirs)
    out = per_image_pearson(ours, theirs)
    span = float(theirs.max() - theirs.min()) or 1.0
    out["max_error_rel"] = float(np.abs(ours - theirs).max()) / span
    out["ok"] = out["pearson_r"] >= min_r
    out["criterion"] = f"per-image Pearson r >= {min_r}"
    return out


# --------------------------------------------------------------------------- results files

def atomic_write(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600: results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def results_document(rows: list[dict], machine: dict, settings: dict, previous: dict | None = None) -> dict:
    """The JSON document: new rows replace previous rows of the same name (``--only`` reruns one
    comparison), others are kept in their order."""
    merged = {r["name"]: r for r in (previous or {}).get("comparisons", [])}
    order = [r["name"] for r in (previous or {}).get("comparisons", [])]
    for r in rows:
        r = dict(r, machine=machine, settings=settings)
        if r["name"] not in merged:
            order.append(r["name"])
        merged[r["name"]] = r
    return {"schema": SCHEMA, "updated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "comparisons": [merged[n] for n in order]}


def load_results(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: results schema {doc.get('schema')!r}, expected {SCHEMA}")
    return doc


# --------------------------------------------------------------------------- tables

def _num(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def _rate(row: dict, side: str) -> str:
    s = row["seconds"].get(side)
    if not s:
        return "–"
    t = s["median"]
    if row["unit"] == "s":  # rows about one long run: show its seconds
        return f"{t:.2f} s"
    return f"{row['items'] / t:.1f} {row['unit']}/s" if t > 0 else "–"


def _ratio(row: dict) -> str:
    r = row.get("ratio")
    if not r:
        return "–"
    return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"


def _agreement(row: dict) -> str:
    a = row.get("agreement")
    if not a:
        return "–"
    parts = []
    for key, label, digits in (("pearson_r", "r", 5), ("max_error_rel", "max err", 1), ("ssim", "SSIM", 3),
                               ("top1_equal", "top-1 =", 3), ("initial_loss_rel", "loss₀ rel", 1)):
        if a.get(key) is not None:
            v = a[key]
            parts.append(f"{label} {v:.{digits}e}" if digits == 1 else f"{label} {v:.{digits}f}")
    text = ", ".join(parts) or "see JSON"
    return text if a.get("ok", True) else f"**{text} (fails {a.get('criterion', '')})**"


def _how(row: dict) -> str:
    facts = [f"{k} {v}" for k, v in row["how"].items() if not isinstance(v, (dict, list))]  # details: JSON
    load = row["load"]

    def la(v):
        return "?" if not v else f"{v[0]:.1f}"
    facts.append(f"load {la(load.get('before'))}→{la(load.get('after'))}/{load['cores']} cores")
    if load.get("others_cores") is not None:
        facts.append(f"others {load['others_cores']:.1f} cores")
    if load.get("steal_cores") is not None:
        facts.append(f"steal {load['steal_cores']:.2f} cores")
    text = "; ".join(facts)
    return f"**noisy**: {text}" if row.get("noisy") else text


def compile_seconds(c: dict) -> tuple[float | None, float | None]:
    """(cold, cached) compile seconds of a row's ``compile`` record from the children's compile probe:
    min(CPU, wall) inside JAX's compile events (load stretches wall time, a parallel compile CPU
    time); (None, None) for records without the probe (then first call - warm median is shown)."""
    def judged(run):
        wall = c.get(f"{run}_compile_s")
        return None if wall is None else min(wall, c.get(f"{run}_compile_cpu_s", wall))
    return judged("cold"), judged("cached")


def _first_call(row: dict) -> str:
    c = row.get("compile") or {}
    first = row["seconds"]["jaxviz"]["first_call"]
    parts = [f"{first:.1f} s"]
    cold, cached = compile_seconds(c)
    if cold is not None:
        parts.append(f"compile {cold:.1f} s" + ("" if cached is None else f" / cached {cached:.1f} s"))
    elif c.get("cold_process_s") is not None:
        parts.append(f"compile {c['cold_process_s']:.1f} s / cached {c['cached_process_s']:.1f} s"
                     if c.get("cached_process_s") is not None else f"compile {c['cold_process_s']:.1f} s")
    elif c.get("in_process_s") is not None:
        parts.append(f"compile ≈ {c['in_process_s']:.1f} s")
    return ", ".join(parts)


def render_tables(doc: dict, source: str = "benchmarks/results.json") -> str:
    """The Markdown shown in benchmarks/results.md and the README (peer rows, then internal rows)."""
    rows = doc.get("comparisons", [])
    if not rows:
        return "_No benchmark results recorded yet: run `scripts/bench.py` (see above)._\n"
    head = ("| benchmark | jaxviz | peer | speed ratio, median (min–max) | agreement | first call "
            "(compile; 2nd process, cached) | how measured |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for row in rows:
        peer = "–" if not row.get("peer") else f"{row['peer']} {_rate(row, 'peer')}"
        extra = ", ".join(f"{k} {_num(v)}" for k, v in (row.get("derived") or {}).items() if v is not None)
        title = row["title"] + (f" ({extra})" if extra else "")
        lines.append(f"| {title} | {_rate(row, 'jaxviz')} | {peer} | {_ratio(row)} | {_agreement(row)} | "
                     f"{_first_call(row)} | {_how(row)} |")
    machines = {json.dumps(r.get("machine", {}), sort_keys=True) for r in rows}
    notes = []
    for m in sorted(machines):
        m = json.loads(m)
        if m:
            notes.append(", ".join(f"{k} {v}" for k, v in m.items()))
    noisy = sum(bool(r.get("noisy")) for r in rows)
    footer = (f"\nRatio = peer time / jaxviz time per round (> 1: jaxviz faster), median over the rounds "
              f"of one process alternating the two sides. Machine: {'; '.join(notes) or 'unknown'}. "
              f"Generated by `scripts/bench.py` from `{source}` ({doc.get('updated', '?')})"
              + (f"; {noisy} noisy row(s): other load or spread, do not quote them." if noisy else ".") + "\n")
    return head + "\n".join(lines) + "\n" + footer


def replace_block(text: str, block: str, start: str = README_START, end: str = README_END) -> str:
    """``text`` with everything between the ``start`` and ``end`` markers replaced by ``block``.

    Raises:
      ValueError: a marker is missing, repeated or out of order.
    """
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"expected exactly one {start} and one {end} marker")
    head, rest = text.split(start)
    if end not in rest:
        raise ValueError(f"{end} comes before {start}")
    _, tail = rest.split(end)
    return f"{head}{start}\n{block.rstrip()}\n{end}{tail}"


def update_readme(readme: str | os.PathLike, doc: dict) -> bool:
    """Regenerate the README's table from ``doc``; True if the file changed."""
    readme = Path(readme)
    text = readme.read_text()
    new = replace_block(text, render_tables(doc))
    if new != text:
        atomic_write(readme, new)
    return new != text


def main_readme(results: str, readme: str) -> int:
    """``bench.py --readme``: results JSON -> README block. Exit 2 with one line on a problem."""
    try:
        doc = load_results(results)
        if doc is None:
            raise ValueError(f"{results} does not exist: run scripts/bench.py first")
        changed = update_readme(readme, doc)
    except (OSError, ValueError) as e:
        print(f"bench.py --readme: error: {e}", file=sys.stderr)
        return 2
    print(f"{readme}: {'updated' if changed else 'already up to date'} from {results}")
    return 0
