"""``acqflow demo``: the demos plugins contribute, listed and run through the daemon CLI.

``acqflow demo microscopy`` writes what the daemon's watcher and the pipeline read; a
demo defined here, as a third-party plugin would, is listed and feeds its files the same
way; a contribution that cannot load is one line in the listing.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
import tifffile
from pydicom import Dataset
from typer.testing import CliRunner

from acqflow.daemon.cli import app, contributions
from acqflow.daemon.cli import demo as demo_cli
from acqflow.daemon.config import FolderSettings, Settings
from acqflow.daemon.folders.naming import parse_metadata, read_tiff_header
from acqflow.plugins.api import DemoFiles, DemoInput, DemoOption


@pytest.fixture(autouse=True)
def installed_demos() -> Iterator[None]:
    """The demos of the installed entry points, as ``main()`` registers them for ``demo``;
    registered again afterwards, so a test's extra demos do not leak into the next."""
    demo_cli.register_demo_commands()
    yield
    demo_cli.register_demo_commands()


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "acqflow.toml"
    inbox = tmp_path / "inbox"
    config.write_text(f'[paths]\nstate_dir = "{tmp_path / "state"}"\n\n[[folders]]\npath = "{inbox}"\n')
    return config


@pytest.mark.parametrize("generator", ["cells", "textures"])
def test_demo_microscopy_writes_phase_into_the_folder_and_keeps_the_stain(
    tmp_path: Path, generator: str
) -> None:
    config = _config(tmp_path)
    inbox = tmp_path / "inbox"
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
    assert f"kept in {tmp_path / 'state' / 'demo' / 'fluorescence'}" in " ".join(result.output.split())
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
    too_many = CliRunner().invoke(app, ["demo", "microscopy", "--config", str(config), "--wells", "97"])
    assert too_many.exit_code == 2


def test_demo_alone_lists_the_installed_demos() -> None:
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in result.output.splitlines() if line.count("│") == 4 and line.split("│")[1].strip()}
    assert {"microscopy": "virtual-staining", "ct": "ct-muscle", "mr": "mr-muscle"}.items() <= rows.items()


def _write_run(staging: Path, seed: int, options: Mapping[str, Any]) -> DemoFiles:
    """A plate reader's run: ``count`` CSV files in order, the plate map kept aside."""
    (staging / "run").mkdir()
    (staging / "truth").mkdir()
    feed = []
    for index in range(int(options["count"])):
        path = staging / "run" / f"read{index}.csv"
        path.write_text(f"{options['label']},{seed},{index}\n")
        feed.append(path.relative_to(staging))
    (staging / "truth" / "platemap.json").write_text("{}")
    return DemoFiles(feed=feed, keep=[Path("truth/platemap.json")], note="plate maps")


PLATE_READER = DemoInput(
    name="plate-reader",
    summary="Write absorbance reads as a plate reader does.",
    pipeline="absorbance",
    options=(
        DemoOption("count", 2, min=1, max=5, help="Reads to write."),
        DemoOption("label", "od600", choices=("od600", "od450")),
    ),
    write_files=_write_run,
)


def test_a_third_party_demo_is_listed_and_feeds_its_files(tmp_path: Path) -> None:
    catalogue = demo_cli.register_demo_commands(extra=[PLATE_READER])
    assert "plate-reader" in [d.name for d in catalogue.demos]
    listing = CliRunner().invoke(app, ["demo"])
    assert listing.exit_code == 0 and "plate-reader" in listing.output and "absorbance" in listing.output

    config = _config(tmp_path)
    into = tmp_path / "elsewhere"
    result = CliRunner().invoke(
        app,
        ["demo", "plate-reader", "-c", str(config), "--count", "3", "--label", "od450",
         "--seed", "7", "--interval", "0", "--into", str(into)],
    )
    assert result.exit_code == 0, result.output
    reads = [into / "run" / f"read{i}.csv" for i in range(3)]
    assert [p.read_text() for p in reads] == [f"od450,7,{i}\n" for i in range(3)]
    assert [line.split("] ")[1] for line in result.output.splitlines() if line.startswith("[")] == [
        str(p) for p in reads
    ]  # fed in the order the demo gave
    assert not list(into.rglob(".*.part"))
    assert (tmp_path / "state" / "demo" / "truth" / "platemap.json").is_file()
    assert not (into / "truth").exists()
    assert "plate maps kept in" in result.output

    shown = CliRunner().invoke(app, ["demo", "plate-reader", "--help"])
    assert shown.exit_code == 0 and "--count" in shown.output and "od450" in shown.output
    assert CliRunner().invoke(app, ["demo", "plate-reader", "--count", "6"]).exit_code == 2
    assert CliRunner().invoke(app, ["demo", "plate-reader", "--label", "od700"]).exit_code == 2


def test_the_command_signature_carries_the_demo_options() -> None:
    parameters = inspect.signature(demo_cli.demo_command(PLATE_READER)).parameters
    assert list(parameters) == ["config", "seed", "into", "interval", "count", "label"]
    assert parameters["count"].default == 2 and parameters["label"].default == "od600"


def test_a_dicom_demo_sends_its_series_with_the_seed_and_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def series(seed: int, options: Mapping[str, Any]) -> Sequence[Dataset]:
        out = []
        for index in range(int(options["slices"])):
            ds = Dataset()
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            ds.InstanceNumber = index + 1
            ds.PatientID = f"SEED-{seed}"
            out.append(ds)
        return out

    sent: list[tuple[list[Any], str]] = []

    def capture(settings: Settings, datasets: Sequence[Any], calling_ae: str) -> None:
        sent.append((list(datasets), calling_ae))

    monkeypatch.setattr(demo_cli, "_send", capture)
    scanner = DemoInput(name="scanner", summary="A tiny CT.", pipeline="ct-test",
                        options=(DemoOption("slices", 3, min=1),), dicom_series=series)
    demo_cli.register_demo_commands(extra=[scanner])
    result = CliRunner().invoke(
        app, ["demo", "scanner", "-c", str(_config(tmp_path)), "--seed", "4", "--slices", "2",
              "--calling-ae", "MY_CT"],
    )
    assert result.exit_code == 0, result.output
    [(datasets, calling_ae)] = sent
    assert calling_ae == "MY_CT"
    assert [(ds.PatientID, ds.InstanceNumber) for ds in datasets] == [("SEED-4", 1), ("SEED-4", 2)]
    folder_only = CliRunner().invoke(app, ["demo", "scanner", "--interval", "0"])
    assert folder_only.exit_code == 2  # --into/--interval belong to folder demos


def test_a_demo_that_fails_to_load_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = contributions.entry_points

    def with_broken(*, group: str) -> list[EntryPoint]:
        broken = [
            EntryPoint(name="gone", value="acqflow_no_such_plugin.demo:DEMO", group=group),
            EntryPoint(name="wrong", value="acqflow.plugins.api:DemoFiles", group=group),
        ]
        return [*installed(group=group), *broken]

    monkeypatch.setattr(contributions, "entry_points", with_broken)
    catalogue = demo_cli.register_demo_commands()
    assert {item.name for item in catalogue.unavailable} == {"gone", "wrong"}
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "microscopy" in result.output
    [gone] = [line for line in result.output.splitlines() if "'gone'" in line]
    assert "acqflow_no_such_plugin.demo:DEMO" in gone and "ModuleNotFoundError" in gone
    [wrong] = [line for line in result.output.splitlines() if "'wrong'" in line]
    assert "not a DemoInput" in wrong
    run = CliRunner().invoke(app, ["demo", "gone", "--seed", "3"])
    assert run.exit_code == 2
    assert run.stderr.strip().count("\n") == 0 and "is unavailable: ModuleNotFoundError" in run.stderr


def test_a_name_taken_twice_keeps_the_first_demo() -> None:
    impostor = DemoInput(name="ct", summary="Not the CT phantom.", pipeline="other",
                         dicom_series=lambda seed, options: [])
    catalogue = demo_cli.register_demo_commands(extra=[impostor])
    [ct] = [d for d in catalogue.demos if d.name == "ct"]
    assert ct.pipeline == "ct-muscle"
    assert [(u.name, u.origin) for u in catalogue.unavailable] == [("ct", "in memory")]
