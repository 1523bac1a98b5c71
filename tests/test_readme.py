"""The README's "Python" and "Your own model" examples run as written (so they stay true)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_your_own_model_example_runs(capsys):
    text = README.read_text()
    section = text.split("## Your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 15 <= len(code.strip().splitlines()) <= 25
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out.split()
    assert printed[:3] == ["(4,", "32,", "32)"]


def test_python_example_runs(capsys):
    text = README.read_text()
    section = text.split("## Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert printed.split() == ["(2,", "224,", "224)", "(2,", "224,", "224)", "(2,", "13,", "13,", "512)",
                               "(2,", "1000)"]
