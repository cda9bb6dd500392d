"""``acqflow demo microscopy``: a phase-contrast time series for the watched folder.

Contributed through the entry-point group ``acqflow.demos``. The generators (numpy,
scikit-image, tifffile) are imported only when the demo runs, so listing demos is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acqflow.plugins.api import DemoFiles, DemoInput, DemoOption

__all__ = ["MICROSCOPY_DEMO"]

EXPERIMENT = "EXP1"  # the generators name the single experiment this
KEPT = "fluorescence"  # under <state_dir>/demo/


def write_microscopy_files(staging: Path, seed: int, options: Mapping[str, Any]) -> DemoFiles:
    """Generate one experiment's phase and GFP images into ``staging``; the phase images
    are fed in acquisition order (time point, well, position), the GFP fluorescence is
    kept aside for training and evaluation. Raises ValueError for an impossible spec."""
    from acqflow.plugins.virtual_staining.randomised import RandomisedSpec, generate_randomised
    from acqflow.plugins.virtual_staining.synthetic import SyntheticSpec, generate_series, write_images

    wells, positions, timepoints = (int(options[k]) for k in ("wells", "positions", "timepoints"))
    if options["generator"] == "cells":
        images = generate_randomised(
            RandomisedSpec(experiments=1, wells=wells, positions=positions, timepoints=timepoints, seed=seed)
        )
    else:
        size = int(options["size"])
        images = generate_series(
            SyntheticSpec(
                experiments=1,
                wells=wells,
                positions=positions,
                timepoints=timepoints,
                shape=(size, size),
                seed=seed,
            )
        )
    written = write_images(staging / EXPERIMENT, images)
    (staging / KEPT).mkdir()
    feed: list[Path] = []
    keep: list[Path] = []
    for path in written:
        if path.name.endswith("_gfp.tif"):  # the stain is for training, not for the daemon
            keep.append(path.rename(staging / KEPT / path.name).relative_to(staging))
        elif path.name.endswith("_phase.tif"):
            feed.append(path.relative_to(staging))
    return DemoFiles(feed=feed, keep=keep, note="fluorescence images (for training and evaluation)")


MICROSCOPY_DEMO = DemoInput(
    name="microscopy",
    summary="Write a phase-contrast time series into the watched folder, image by image.",
    pipeline="virtual-staining",
    options=(
        DemoOption("wells", 3, min=1, max=96),
        DemoOption("positions", 2, min=1),
        DemoOption("timepoints", 4, min=1),
        DemoOption("size", 512, min=64, help="Image side in pixels (--generator textures)."),
        DemoOption(
            "generator",
            "cells",
            choices=("cells", "textures"),
            help="cells: a monolayer through randomised phase optics (what the bundled weights "
            "are trained on; 200-330 um fields at 0.3-1.3 um pixels); textures: the older texture fields.",
        ),
    ),
    write_files=write_microscopy_files,
)
