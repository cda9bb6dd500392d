"""The README's Python example runs as written (in a fresh process, from another folder,
so only the installed ``acqflow`` namespace can satisfy its imports)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

REPO = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_the_readme_has_one_python_example() -> None:
    [block] = _python_blocks()
    assert "from acqflow.plugins" in block


@pytest.mark.slow
def test_the_notebook_example_runs(tmp_path: Path) -> None:
    [block] = _python_blocks()
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert {"femur", "pelvis"} <= {line[0] for line in lines}
    assert all(float(line[1]) > 0 and line[2] in ("True", "False") for line in lines)
    seg = dcmread(tmp_path / "ct-muscle-seg.dcm")
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == len(lines)
