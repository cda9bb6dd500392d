"""``acqflow demo microscopy`` writes what the daemon's watcher and the pipeline read."""

from __future__ import annotations

from pathlib import Path

import pytest
import tifffile
from typer.testing import CliRunner

from acqflow.daemon.cli import app
from acqflow.daemon.config import FolderSettings
from acqflow.daemon.folders.naming import parse_metadata, read_tiff_header


@pytest.mark.parametrize("generator", ["cells", "textures"])
def test_demo_microscopy_writes_phase_into_the_folder_and_keeps_the_stain(
    tmp_path: Path, generator: str
) -> None:
    config = tmp_path / "acqflow.toml"
    inbox = tmp_path / "inbox"
    config.write_text(f'[paths]\nstate_dir = "{tmp_path / "state"}"\n\n[[folders]]\npath = "{inbox}"\n')
    result = CliRunner().invoke(
        app,
        ["demo", "microscopy", "--config", str(config), "--wells", "2", "--positions", "1",
         "--timepoints", "2", "--interval", "0", "--size", "128", "--generator", generator],
    )
    assert result.exit_code == 0, result.output
    phase = sorted((inbox / "EXP1").glob("*.tif"))
    assert [p.name for p in phase] == [
        "EXP1_A01_pos1_t000_phase.tif", "EXP1_A01_pos1_t001_phase.tif",
        "EXP1_A02_pos1_t000_phase.tif", "EXP1_A02_pos1_t001_phase.tif",
    ]
    assert not list(inbox.rglob(".*.part"))
    kept = sorted(p.name for p in (tmp_path / "state" / "demo" / "fluorescence").glob("*_gfp.tif"))
    assert len(kept) == 4
    folder = FolderSettings(path=inbox)
    later = parse_metadata(phase[1], folder, read_tiff_header(phase[1]))
    first = parse_metadata(phase[0], folder, read_tiff_header(phase[0]))
    assert (later.experiment, later.well, later.timepoint) == ("EXP1", "A01", 1)
    assert first.acquired_at is not None and later.acquired_at is not None
    assert later.acquired_at > first.acquired_at
    assert later.pixel_size_um is not None and 0.3 <= later.pixel_size_um[0] <= 1.3
    with tifffile.TiffFile(phase[0]) as tif:
        assert tif.series[0].axes == "YX"
    bad = CliRunner().invoke(app, ["demo", "microscopy", "--config", str(config), "--generator", "paint"])
    assert bad.exit_code == 2
