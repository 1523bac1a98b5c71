"""The README's "Python", "Your own model" and cluster examples run as written (so they stay
true; the cluster one on one process, its paths moved to a temporary folder)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_your_own_model_example_runs(capsys):
    text = README.read_text()
    section = text.split("## Your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 15 <= len(code.strip().splitlines()) <= 26
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    layers, shapes = capsys.readouterr().out.splitlines()[:2]
    assert layers == "('conv1', 'conv2', 'head')"
    assert shapes.split()[:3] == ["(4,", "32,", "32)"]


def test_python_example_runs(capsys):
    text = README.read_text()
    section = text.split("## Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert printed.split() == ["(2,", "224,", "224)", "(2,", "224,", "224)", "(2,", "13,", "13,", "512)",
                               "(2,", "1000)"]


def test_cluster_example_runs_on_one_process(tmp_path, monkeypatch):
    import jax
    import jax.experimental.multihost_utils as multihost

    from jaxviz.images import SAMPLES, load_image, save_image
    from jaxviz.scan_index import read_index
    text = README.read_text()
    section = text.split("**On a cluster.**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    folder = tmp_path / "images"
    folder.mkdir()
    for name in list(SAMPLES)[:2]:
        save_image(load_image(name, (64, 64)), folder / f"{name}.png")
    code = code.replace("/data/images", str(folder)).replace("/shared/ix", str(tmp_path / "ix"))
    code = code.replace("n, i = 4, 0", "n, i = 1, 0")
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: None)  # one process: no cluster
    monkeypatch.setattr(multihost, "sync_global_devices", lambda name: None)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    merged = read_index(tmp_path / "ix" / "all")
    assert merged.meta["count"] == 2 and set(merged.topk) == {"features.9", "features.12"}  # fire6, fire9
