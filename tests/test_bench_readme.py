"""The benchmark harness's instrument (scripts/benchlib.py) and the README table it regenerates.

No torch, no jax work: fake callables and a fake clock check the alternation, the medians, the
per-round ratios and the noisy flag; a sample results document checks the Markdown table and the
README block between the markers (which must never be edited by hand).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_jaxviz_scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"_jaxviz_scripts_{name}"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bl = _load("benchlib")


class FakeClock:
    """Each side's call advances the clock by its scripted duration."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def side(self, durations, log, name):
        it = iter(durations)

        def call():
            log.append(name)
            self.now += next(it)
            return name
        return call


def _quiet_snapshot(loadavg=(0.2, 0.2, 0.2)):
    state = {"t": 0.0}

    def snap():
        state["t"] += 10.0
        return {"wall": state["t"], "loadavg": list(loadavg), "system": None, "own": 0.0}
    return snap


def test_rounds_alternate_and_ratios_are_per_round():
    clock, order = FakeClock(), []
    # first call, then 5 rounds; the peer takes 2x, 2x, 3x, 2x, 2x the jaxviz time per round
    jax_times = [9.0, 1.0, 1.0, 1.0, 2.0, 1.0]
    peer_times = [5.0, 2.0, 2.0, 3.0, 4.0, 2.0]
    comp = bl.Comparison("x", "x, batch 2", "Peer", clock.side(jax_times, order, "J"),
                         clock.side(peer_times, order, "P"), items=2,
                         agree=lambda out: {"pearson_r": 1.0, "ok": out == {"jaxviz": "J", "peer": "P"}})
    row = bl.measure(comp, rounds=5, clock=clock, snapshot=_quiet_snapshot())
    assert order == ["J", "P"] * 6                       # first calls, then A B A B ...
    assert row["seconds"]["jaxviz"]["first_call"] == 9.0
    assert row["seconds"]["jaxviz"]["rounds"] == [1.0, 1.0, 1.0, 2.0, 1.0]
    assert row["seconds"]["jaxviz"]["median"] == 1.0
    assert row["seconds"]["peer"]["median"] == 2.0
    assert row["ratio"]["rounds"] == [2.0, 2.0, 3.0, 2.0, 2.0]
    assert row["ratio"]["median"] == 2.0 and row["ratio"]["min"] == 2.0 and row["ratio"]["max"] == 3.0
    assert row["compile"]["in_process_s"] == 8.0         # first call - warm median
    assert row["agreement"]["ok"] and row["how"]["rounds"] == 5
    assert row["noisy"] and "spread" in row["noisy_reasons"][0]  # 3.0 in one round: range 50 %


def test_extras_fresh_and_warmup():
    clock, order = FakeClock(), []
    fresh = []
    comp = bl.Comparison("y", "y", "Peer", clock.side([1.0] * 10, order, "J"), clock.side([1.0] * 10, order, "P"),
                         extras={"fwd": clock.side([0.5] * 10, order, "F")}, warmup=1,
                         fresh=lambda: fresh.append(len(order)),
                         derived=lambda med, out: {"J / fwd": med["jaxviz"] / med["fwd"]})
    row = bl.measure(comp, rounds=2, clock=clock, snapshot=_quiet_snapshot())
    assert order == ["J", "P", "F"] * 4                  # first, one warm-up, two rounds
    assert fresh == [0, 3, 6, 9]                         # before every jaxviz call, untimed
    assert row["derived"] == {"J / fwd": 2.0}
    assert not row["noisy"], row["noisy_reasons"]


def test_no_peer_is_a_plain_timing():
    clock, order = FakeClock(), []
    row = bl.measure(bl.Comparison("z", "z", "", clock.side([3.0, 1.0, 1.0], order, "J"), None, unit="step"),
                     rounds=2, clock=clock, snapshot=_quiet_snapshot())
    assert row["ratio"] is None and row["peer"] is None and set(row["seconds"]) == {"jaxviz"}
    with pytest.raises(ValueError):
        bl.measure(bl.Comparison("z", "z", "", lambda: 0, None), rounds=0)


def test_noisy_from_load_and_from_others():
    quiet = {"cores": 2, "before": [0.1, 0, 0], "after": [2.2, 0, 0], "own_cores": 2.0, "others_cores": 0.1}
    assert bl.noisy_reasons(quiet, None) == []           # the load is the benchmark's own
    loaded = dict(quiet, after=[4.0, 0, 0])
    assert "1-min load 4.0" in bl.noisy_reasons(loaded, None)[0]
    others = dict(quiet, others_cores=1.5)
    assert "other processes used 1.5 of 2 cores" in bl.noisy_reasons(others, None)[0]
    tight = bl.ratio_summary([1.30, 1.31, 1.29, 1.30, 1.32])
    assert bl.noisy_reasons(quiet, tight) == []
    spread = bl.ratio_summary([1.0, 1.3, 1.6, 1.3, 1.0])
    assert "spread" in bl.noisy_reasons(quiet, spread)[0]
    assert bl.noisy_reasons(dict(quiet, steal_cores=0.05), None) == []   # 2.5 % of the cores
    stolen = bl.noisy_reasons(dict(quiet, steal_cores=0.3), None)
    assert stolen == ["the hypervisor took 0.30 of 2 cores for other guests (steal)"]


def test_load_report_separates_own_others_and_steal():
    before = {"wall": 0.0, "loadavg": [1, 1, 1], "system": 100.0, "steal": 7.0, "own": 10.0}
    after = {"wall": 10.0, "loadavg": [2, 1, 1], "system": 125.0, "steal": 9.0, "own": 30.0}
    rep = bl.load_report(before, after, cores=4)
    assert rep["own_cores"] == pytest.approx(2.0) and rep["others_cores"] == pytest.approx(0.5)
    assert rep["steal_cores"] == pytest.approx(0.2)
    assert rep["before"] == [1, 1, 1] and rep["after"] == [2, 1, 1] and rep["cores"] == 4
    old = bl.load_report({k: v for k, v in before.items() if k != "steal"}, after, cores=4)
    assert old["steal_cores"] is None   # a snapshot without steal (not Linux) reports none


def test_system_times_keep_steal_apart(tmp_path, monkeypatch):
    # user nice system idle iowait irq softirq steal guest guest_nice, in ticks
    stat = tmp_path / "stat"
    stat.write_text("cpu  400 10 60 900 30 5 5 70 40 0\ncpu0 1 2 3\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(stat if path == "/proc/stat" else path, *a, **k))
    hz = bl.os.sysconf("SC_CLK_TCK")
    busy, steal = bl._system_times()
    assert busy == pytest.approx(480 / hz) and steal == pytest.approx(70 / hz)  # guest is inside user


def test_quartiles_match_numpy():
    np = pytest.importorskip("numpy")
    for values in ([3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0], [0.9, 1.7, 1.1, 1.4, 1.2, 1.3, 2.5]):
        q25, med, q75 = bl.quartiles(values)
        assert (q25, med, q75) == pytest.approx(tuple(np.percentile(values, [25, 50, 75])))


def test_map_agreement():
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 6))
    assert bl.map_agreement(maps, maps * 2.0 + 1.0)["pearson_r"] == pytest.approx(1.0)
    scaled = bl.map_agreement(maps, maps * 2.0 + 1.0, scaled=True)  # pytorch-grad-cam scales each map
    assert scaled["ok"] and scaled["max_error_rel"] < 1e-12
    noisy = bl.map_agreement(maps, maps + rng.normal(0, 0.3, maps.shape))
    assert not noisy["ok"] and noisy["pearson_r"] < 0.999
    assert not bl.map_agreement(maps, maps[:, :4])["ok"]


def _row(name, ratio=1.5, noisy=False, **extra):
    return {
        "name": name, "title": f"{name}, batch 32", "peer": "Captum Saliency", "items": 32, "unit": "img",
        "how": {"batch": 32, "size": 224, "rounds": 5, "torch threads": 2},
        "seconds": {"jaxviz": {"median": 1.0, "rounds": [1.0] * 5, "first_call": 4.3},
                    "peer": {"median": ratio, "rounds": [ratio] * 5, "first_call": 2.0}},
        "ratio": bl.ratio_summary([ratio * 0.98, ratio, ratio, ratio * 1.02, ratio]),
        "derived": {}, "agreement": {"pearson_r": 0.99995, "max_error_rel": 3e-7, "ok": True, "criterion": "r"},
        "compile": {"in_process_s": 3.25, "cold_process_s": 6.5, "cached_process_s": 0.4},
        "load": {"cores": 2, "before": [0.31, 0.2, 0.1], "after": [2.04, 0.9, 0.4], "own_cores": 2.0,
                 "others_cores": 0.05, "steal_cores": 0.01},
        "noisy": noisy, "noisy_reasons": ["other processes used 1.5 of 2 cores"] if noisy else [], **extra}


def _doc(rows):
    return bl.results_document(rows, {"device": "cpu: cpu x1", "cores": 2}, {"rounds": 5})


def test_table_says_how_each_row_was_measured():
    doc = _doc([_row("saliency", 1.5), _row("gradcam", 2.25, noisy=True, derived={"Grad-CAM / forward": 1.05}),
                dict(_row("classviz"), peer=None, ratio=None, unit="step", items=20, agreement=None)])
    text = bl.render_tables(doc)
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    assert len(lines) == 1 + 3                           # header + one line per row
    sal = next(l for l in lines if l.startswith("| saliency"))
    assert "32.0 img/s" in sal and "Captum Saliency 21.3 img/s" in sal
    assert "1.50× (1.47–1.53)" in sal and "r 0.99995" in sal
    assert "4.3 s, compile 6.5 s / cached 0.4 s" in sal
    assert "batch 32; size 224; rounds 5; torch threads 2; load 0.3→2.0/2 cores; others 0.1 cores; steal 0.01 cores" in sal
    assert "noisy" not in sal
    cam = next(l for l in lines if l.startswith("| gradcam"))
    assert "**noisy**" in cam and "(Grad-CAM / forward 1.05)" in cam
    viz = next(l for l in lines if l.startswith("| classviz"))
    assert "20.0 step/s" in viz and "| – | – | – |" in viz
    assert "1 noisy row(s)" in text and "device cpu: cpu x1" in text
    failing = _row("smoothgrad")
    failing["agreement"] = {"pearson_r": 0.97, "ok": False, "criterion": "per-image Pearson r >= 0.999"}
    assert "fails per-image Pearson r >= 0.999" in bl.render_tables(_doc([failing]))
    assert "No benchmark results" in bl.render_tables({"comparisons": []})


def test_results_merge_by_name_keeps_order():
    first = _doc([_row("forward"), _row("saliency", 1.5)])
    again = bl.results_document([_row("saliency", 1.9), _row("pgd")], {}, {}, previous=first)
    assert [r["name"] for r in again["comparisons"]] == ["forward", "saliency", "pgd"]
    assert again["comparisons"][1]["ratio"]["median"] == pytest.approx(1.9)
    assert again["schema"] == bl.SCHEMA


README_TEXT = """# project

intro

## Benchmark environment

run it.

<!-- bench:start -->
| old | table typed by hand |
<!-- bench:end -->

## Layout
rest
"""


def test_readme_block_replaced_between_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README_TEXT)
    doc = _doc([_row("saliency", 1.5)])
    assert bl.update_readme(readme, doc)
    text = readme.read_text()
    head, rest = text.split(bl.README_START)
    block, tail = rest.split(bl.README_END)
    assert head == README_TEXT.split(bl.README_START)[0]
    assert tail == README_TEXT.split(bl.README_END)[1]
    assert "typed by hand" not in text and block.strip() == bl.render_tables(doc).strip()
    assert not bl.update_readme(readme, doc)            # idempotent: nothing to change
    assert readme.read_text() == text
    assert not list(tmp_path.glob(".README.md.*"))     # no temporary file left behind


@pytest.mark.parametrize("text", ["no markers", f"{bl.README_END}\n{bl.README_START}\n",
                                  f"{bl.README_START}\n{bl.README_START}\n{bl.README_END}\n"])
def test_readme_markers_must_be_there_once_in_order(text):
    with pytest.raises(ValueError):
        bl.replace_block(text, "x")


def test_bench_readme_command(tmp_path):
    """``bench.py --readme`` regenerates the block from a results file, imports no torch or jax,
    and fails with one line (exit 2) when the results are missing."""
    results, readme = tmp_path / "results.json", tmp_path / "README.md"
    results.write_text(json.dumps(_doc([_row("saliency", 1.5)])))
    readme.write_text(README_TEXT)
    code = ("import runpy, sys\n"
            "path, results, readme = sys.argv[1:4]\n"
            "sys.argv = ['bench.py', '--readme', '--results', results, '--readme-path', readme]\n"
            "try:\n"
            "    runpy.run_path(path, run_name='__main__')\n"
            "except SystemExit:\n"
            "    print('heavy', [m for m in ('torch', 'jax') if m in sys.modules])\n"
            "    raise\n")
    bench = str(ROOT / "scripts" / "bench.py")
    run = subprocess.run([sys.executable, "-c", code, bench, str(results), str(readme)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "heavy []" in run.stdout
    assert "1.50×" in readme.read_text()
    run = subprocess.run([sys.executable, "-c", code, bench, str(tmp_path / "missing.json"), str(readme)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1


def test_the_readme_has_one_generated_block():
    text = (ROOT / "README.md").read_text()
    assert text.count(bl.README_START) == 1 and text.count(bl.README_END) == 1
    section = text.split("## Benchmark environment", 1)[1].split("\n## ", 1)[0]
    assert bl.README_START in section and "scripts/bench.py" in section


# --------------------------------------------------------------------------- bench.py --compile

bench = _load("bench")  # imports neither jax nor torch at module level


def _probe(compile_s, cpu_s, compiles=10, hits=0, after=0.5):
    return {"compile_s": compile_s, "compile_cpu_s": cpu_s, "judged_s": min(compile_s, cpu_s),
            "compiles": compiles, "cache_hits": hits, "trace_cpu_s": 0.1, "lower_cpu_s": 0.1,
            "backend_cpu_s": cpu_s - 0.2, "wall_s": compile_s + 1, "load": {"after": [after, 0, 0]},
            "slowest": [{"name": "jit(run)", "s": compile_s, "cpu_s": cpu_s}]}


def test_compile_limits_judged_on_min_of_cpu_and_wall():
    # a loaded machine stretches wall (12 s) but not CPU (8 s): within; a parallel compile the reverse
    loaded = {"cold": _probe(12.0, 8.0), "cached": _probe(1.5, 0.9, hits=10)}
    assert bench.compile_ok(loaded) is True
    parallel = {"cold": _probe(9.0, 15.0), "cached": _probe(0.8, 1.6, hits=10)}
    assert bench.compile_ok(parallel) is True
    over = {"cold": _probe(11.0, 10.5), "cached": _probe(0.5, 0.5, hits=10)}
    assert bench.compile_ok(over) is False
    cached_over = {"cold": _probe(3.0, 3.0), "cached": _probe(1.2, 1.1, hits=10)}
    assert bench.compile_ok(cached_over) is False
    assert bench.compile_ok({"cold": {"error": "exit code 2"}, "cached": _probe(0.5, 0.5)}) is None


def test_compile_table_has_cold_and_cached_per_technique():
    rows = []
    for name, cold, cached in (("saliency-vanilla", _probe(9.94, 3.88), _probe(2.39, 0.93, hits=13)),
                               ("saliency-occlusion", _probe(30.0, 26.6), _probe(1.0, 0.8, hits=5))):
        row = {"name": name, "command": "jaxviz " + bench.CLI_CASES[name], "cold": cold, "cached": cached}
        row["ok"] = bench.compile_ok(row)
        rows.append(row)
    rows.append({"name": "segment", "command": "jaxviz " + bench.CLI_CASES["segment"],
                 "cold": {"error": "exit code 2: boom"}, "cached": {"error": "skipped"}, "ok": None})
    text = bench.render_compile_table({"cases": rows, "machine": {"cores": 2}, "updated": "now"})
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    assert len(lines) == 1 + 3
    van = next(l for l in lines if "saliency-vanilla" in l)
    assert "| 3.88 / 9.94 | 10 | 0.93 / 2.39 | 13 / 10 |" in van and van.endswith("| yes |")
    assert next(l for l in lines if "saliency-occlusion" in l).endswith("| **no** |")
    assert "| error | – | error | – |" in next(l for l in lines if "segment" in l)
    assert "cold <= 10 s, cached <= 1 s" in text and "cores 2" in text


def test_cached_compile_is_the_median_of_several_processes():
    runs = [_probe(1.3, 1.2), _probe(0.9, 0.95), _probe(1.1, 1.0)]
    assert bench._median_run(runs)["judged_s"] == 1.0
    # a failed run is what the row shows (not hidden behind two good ones)
    assert "error" in bench._median_run([_probe(0.5, 0.5), {"error": "exit code 2"}, _probe(0.6, 0.6)])
    row = {"name": "saliency-vanilla", "command": "jaxviz " + bench.CLI_CASES["saliency-vanilla"],
           "cold": _probe(3.0, 3.0), "cached": bench._median_run(runs), "cached_runs_s": [1.2, 0.9, 1.0]}
    row["ok"] = bench.compile_ok(row)
    assert row["ok"] is True
    line = next(l for l in bench.render_compile_table({"cases": [row]}).splitlines() if "saliency-vanilla" in l)
    assert "| 1.00 / 1.10 (1.20, 0.90, 1.00) |" in line
    assert "cached runs judged 1.20, 0.90, 1.00 s" in bench.compile_summary(row)


def test_compile_cases_cover_every_cli_technique():
    """Every technique the command line exposes (the registry) has a compile case."""
    from jaxviz.cli import COMMANDS, build_parser
    from jaxviz.techniques import _ALL, techniques
    build_parser()
    assert bench.cli_case_commands() == set(COMMANDS) - set(bench.NOT_TECHNIQUES)
    for t in (t for t in _ALL if t.command):
        argvs = [set(a.split()) for a in bench.CLI_CASES.values() if a.split()[0] == t.command]
        if len(techniques(t.command)) == 1:
            assert argvs, t.command
            continue
        names = set(t.names) | {t.name.removeprefix(t.command + "-")}  # fast-style-apply: action "apply"
        assert any(names & argv for argv in argvs), f"no compile case runs {t.command} {t.name}"


def test_compile_cases_are_valid_command_lines(tmp_path):
    """Every case parses with the CLI's own parser (a stale option would make the case measure an
    error exit), and {scan_images} becomes one argument per photograph."""
    from jaxviz.cli import build_parser
    parser, _ = build_parser()
    photos = [str(tmp_path / f"p{i}.JPEG") for i in range(3)]
    inputs = {"img": photos[0], "img2": photos[1], "style": "s.jpg", "photos": str(tmp_path),
              "scan_images": " ".join(photos), "index": str(tmp_path / "index"), "tmp": str(tmp_path / "tmp")}
    for name in bench.CLI_CASES:
        argv = bench._case_argv(name, inputs)
        assert not any("{" in a for a in argv), (name, argv)
        parser.parse_args(argv)  # argparse exits (SystemExit 2) on an unknown or missing option
    scan = bench._case_argv("scan", inputs)
    assert scan[1:4] == photos


def test_first_call_cell_prefers_the_compile_probe():
    row = _row("saliency", 1.5)
    row["compile"].update(cold_compile_s=9.94, cold_compile_cpu_s=3.88, cached_compile_s=2.39,
                          cached_compile_cpu_s=0.93)
    line = next(l for l in bl.render_tables(_doc([row])).splitlines() if l.startswith("| saliency"))
    assert "4.3 s, compile 3.9 s / cached 0.9 s" in line


def test_missing_peer_library_falls_back_to_jaxviz_only(monkeypatch):
    built = []

    def builder(cfg):
        built.append(cfg.jaxviz_only)
        if not cfg.jaxviz_only:
            raise ModuleNotFoundError("No module named 'captum'", name="captum")
        return bl.Comparison("fake", "fake row", "Captum", lambda: 1, None, items=1,
                             agree=lambda out: {"ok": out["peer"] == 1})  # needs the peer: dropped
    monkeypatch.setitem(bench.REGISTRY, "fake", ("peers", builder))
    cfg = bench.Config()
    with pytest.raises(ModuleNotFoundError):
        bench.run_row("fake", cfg, 1, compile_check=False)
    row = bench.run_row("fake", cfg, 1, skip_missing_peers=True, compile_check=False)
    assert built == [False, False, True]
    assert row["peer"] is None and row["agreement"] is None and row["how"]["peer"] == "not run (captum not installed)"
    row = bench.run_row("fake", cfg, 1, jaxviz_only=True, compile_check=False)
    assert built[-1] is True and row["how"]["peer"] == "not run (--jaxviz-only)"
    # a missing jaxviz module is a bug, never a missing peer
    monkeypatch.setitem(bench.REGISTRY, "fake", ("peers", lambda cfg: (_ for _ in ()).throw(
        ModuleNotFoundError("No module named 'jaxviz.nope'", name="jaxviz.nope"))))
    with pytest.raises(ModuleNotFoundError):
        bench.run_row("fake", cfg, 1, skip_missing_peers=True, compile_check=False)


def test_cpu_model_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n")
    assert bl.cpu_model(str(info)) == "AMD EPYC 7B13"
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # aarch64 names no model
    assert bl.cpu_model(str(info)) is None
    assert bl.cpu_model(str(tmp_path / "missing")) is None


def test_a_quick_smoke_test_never_writes_the_published_results():
    """`bench.py --quick` merged its tiny-size rows into benchmarks/results.json, the file the
    README's table is generated from."""
    bench = _load("bench")
    results, table = bench.result_paths(None, None, quick=False)
    assert (results, table) == (str(ROOT / "benchmarks" / "results.json"), str(ROOT / "benchmarks" / "results.md"))
    results, table = bench.result_paths(None, None, quick=True)
    assert not results.startswith(str(ROOT)) and not table.startswith(str(ROOT))
    assert bench.result_paths("a.json", "a.md", quick=True) == ("a.json", "a.md")  # given: as given
