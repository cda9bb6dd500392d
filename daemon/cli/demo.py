"""``acqflow demo …`` feeds the running daemon generated data the way instruments do,
and ``acqflow report efficiency`` prints a microscopy experiment's time course.

The microscopy demo writes phase-contrast images into the watched folder one by one in
acquisition order (each written under a temporary name and renamed, as acquisition
software does); the CT and MR demos send a phantom series to the daemon's DICOM port by
C-STORE, exactly as a modality would.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from acqflow.daemon.cli.base import (
    ConfigOption,
    console,
    fail,
    handles_errors,
    load_settings_for,
)
from acqflow.daemon.config import Settings

app = typer.Typer(help="Feed the daemon generated demo data.", no_args_is_help=True)

Seed = Annotated[int, typer.Option(help="Seed of the generated data.")]


class DemoGenerator(str, Enum):
    """Which generated phase-contrast images ``demo microscopy`` writes."""

    CELLS = "cells"
    TEXTURES = "textures"


@app.command("microscopy")
@handles_errors
def demo_microscopy(
    config: ConfigOption = None,
    into: Annotated[
        Path | None, typer.Option(help="Folder to write into (default: the first watched folder).")
    ] = None,
    wells: Annotated[int, typer.Option(min=1, max=96)] = 3,
    positions: Annotated[int, typer.Option(min=1)] = 2,
    timepoints: Annotated[int, typer.Option(min=1)] = 4,
    size: Annotated[int, typer.Option(min=64, help="Image side in pixels (--generator textures).")] = 512,
    interval: Annotated[float, typer.Option(min=0, help="Seconds between images.")] = 0.5,
    generator: Annotated[
        DemoGenerator,
        typer.Option(
            help="cells: a monolayer through randomised phase optics (what the bundled weights "
            "are trained on; 200-330 um fields at 0.3-1.3 um pixels); textures: the older texture fields."
        ),
    ] = DemoGenerator.CELLS,
    seed: Seed = 0,
) -> None:
    """Write a phase-contrast time series into the watched folder, image by image."""
    from acqflow.plugins.virtual_staining.randomised import RandomisedSpec, generate_randomised
    from acqflow.plugins.virtual_staining.synthetic import SyntheticSpec, generate_series, write_images

    settings = load_settings_for(config)
    target = into or (settings.folders[0].path if settings.folders else None)
    if target is None:
        raise fail("no watched folder configured; pass --into")
    images = (
        generate_randomised(
            RandomisedSpec(experiments=1, wells=wells, positions=positions, timepoints=timepoints, seed=seed)
        )
        if generator is DemoGenerator.CELLS
        else generate_series(
            SyntheticSpec(
                experiments=1,
                wells=wells,
                positions=positions,
                timepoints=timepoints,
                shape=(size, size),
                seed=seed,
            )
        )
    )
    keep = settings.paths.state_dir / "demo" / "fluorescence"
    with tempfile.TemporaryDirectory(prefix="acqflow-demo-") as staging:
        written = write_images(Path(staging), images)
        phase = [p for p in written if p.name.endswith("_phase.tif")]
        for path in written:
            if path.name.endswith("_gfp.tif"):  # the stain is for training, not for the daemon
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, keep / path.name)
        experiment = target / "EXP1"  # the generator's experiment name
        experiment.mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(phase, start=1):
            temporary = experiment / f".{path.name}.part"
            shutil.copy2(path, temporary)
            temporary.rename(experiment / path.name)
            console.print(f"[{index}/{len(phase)}] {experiment / path.name}")
            if index < len(phase):
                time.sleep(interval)
    console.print(f"fluorescence images (for training and evaluation) kept in {keep}")


def _daemon_address(settings: Settings) -> tuple[str, int]:
    state_file = settings.paths.state_dir / "daemon.json"
    try:
        state = json.loads(state_file.read_text())
        port = int(state["dicom_port"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        port = settings.dicom.port
    host = "127.0.0.1" if settings.dicom.host in ("0.0.0.0", "::") else settings.dicom.host
    return host, port


def _send(settings: Settings, datasets: Sequence[Any], calling_ae: str) -> None:
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    host, port = _daemon_address(settings)
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = [build_context(datasets[0].SOPClassUID)]
    assoc = ae.associate(host, port, ae_title=settings.dicom.ae_title)
    if not assoc.is_established:
        raise fail(f"the daemon at {settings.dicom.ae_title}@{host}:{port} refused or is not running", 1)
    failed = 0
    try:
        for index, dataset in enumerate(datasets, start=1):
            status = assoc.send_c_store(dataset)
            if getattr(status, "Status", 0xFFFF) != 0:
                failed += 1
            if index % 10 == 0 or index == len(datasets):
                console.print(f"sent {index}/{len(datasets)}")
    finally:
        assoc.release()
    if failed:
        raise fail(f"{failed} of {len(datasets)} instances were refused", 1)
    console.print(
        f"series sent to {settings.dicom.ae_title}@{host}:{port}; results follow after the quiet time"
    )


@app.command("ct")
@handles_errors
def demo_ct(config: ConfigOption = None, seed: Seed = 0, calling_ae: str = "ACQFLOW_DEMO") -> None:
    """Send a synthetic CT phantom series to the daemon over DICOM."""
    from acqflow.plugins.ct_muscle.phantoms import demo_ct_series

    _send(load_settings_for(config), demo_ct_series(seed=seed), calling_ae)


@app.command("mr")
@handles_errors
def demo_mr(config: ConfigOption = None, seed: Seed = 0, calling_ae: str = "ACQFLOW_DEMO") -> None:
    """Send a synthetic MR phantom series to the daemon over DICOM."""
    from acqflow.plugins.mr_muscle.mr_series import demo_mr_series

    _send(load_settings_for(config), demo_mr_series(seed=seed), calling_ae)

