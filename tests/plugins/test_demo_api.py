"""The demo contribution types of ``acqflow.plugins.api`` validate themselves, and the
built-in plugins contribute their demos through ``acqflow.demos``."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from acqflow.plugins.api import (
    DEMO_ENTRY_POINT_GROUP,
    DemoFiles,
    DemoInput,
    DemoOption,
)


def _files(staging: Path, seed: int, options: Mapping[str, Any]) -> DemoFiles:
    return DemoFiles(feed=[Path("a.tif")])


def test_an_option_takes_the_type_of_its_default_and_checks_values() -> None:
    wells = DemoOption("wells", 3, min=1, max=96)
    assert wells.value_type is int and wells.check(96) == 96
    for bad in (0, 97, 2.5, True, "3"):
        with pytest.raises(ValueError, match="--wells"):
            wells.check(bad)
    ratio = DemoOption("noise_ratio", 0.5, min=0)
    assert ratio.flag_name == "noise-ratio" and ratio.check(1) == 1.0 and isinstance(ratio.check(1), float)
    generator = DemoOption("generator", "cells", choices=["cells", "textures"])
    assert generator.choices == ("cells", "textures") and generator.check("textures") == "textures"
    with pytest.raises(ValueError, match="one of cells, textures"):
        generator.check("paint")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "2wells", "default": 1}, "identifier"),
        ({"name": "class", "default": 1}, "identifier"),
        ({"name": "seed", "default": 1}, "every demo"),
        ({"name": "calling_ae", "default": "A"}, "every demo"),
        ({"name": "flag", "default": True}, "int, float or str"),
        ({"name": "shape", "default": (1, 2)}, "int, float or str"),
        ({"name": "label", "default": "x", "min": 1}, "bound numbers"),
        ({"name": "size", "default": 3, "choices": ("3",)}, "text options"),
        ({"name": "size", "default": 3, "min": 5, "max": 4}, "above max"),
        ({"name": "size", "default": 3, "min": 5}, ">= 5"),
        ({"name": "kind", "default": "a", "choices": ("b",)}, "one of b"),
        ({"name": "kind", "default": "a", "choices": ("a", "a")}, "distinct"),
    ],
)
def test_an_option_refuses_what_cannot_work(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DemoOption(**kwargs)


def test_demo_files_stay_inside_the_staging_folder() -> None:
    files = DemoFiles(feed=["EXP1/a_phase.tif"], keep=["fluorescence/a_gfp.tif"], note="stains")  # type: ignore[list-item]
    assert files.feed == (Path("EXP1/a_phase.tif"),) and files.keep == (Path("fluorescence/a_gfp.tif"),)
    for feed, keep, message in [
        ([], [], "at least one"),
        (["/tmp/a.tif"], [], "relative"),
        (["../a.tif"], [], "relative"),
        (["a.tif"], ["a.tif"], "fed and kept"),
    ]:
        with pytest.raises(ValueError, match=message):
            DemoFiles(feed=[Path(p) for p in feed], keep=[Path(p) for p in keep])


def test_a_demo_has_exactly_one_producer_and_a_command_name() -> None:
    demo = DemoInput("live-cells", "Cells.", "staining", options=[DemoOption("wells", 3)], write_files=_files)
    assert demo.writes_files and demo.options == (DemoOption("wells", 3),)
    assert demo.resolve({}) == {"wells": 3} and demo.resolve({"wells": 5}) == {"wells": 5}
    with pytest.raises(ValueError, match="no option depth"):
        demo.resolve({"depth": 2})
    with pytest.raises(ValueError, match="exactly one"):
        DemoInput("ct", "CT.", "ct-muscle")
    with pytest.raises(ValueError, match="exactly one"):
        DemoInput("ct", "CT.", "ct-muscle", write_files=_files, dicom_series=lambda seed, options: [])
    for name in ("CT", "live_cells", "-ct", "ct-", ""):
        with pytest.raises(ValueError, match="command name"):
            DemoInput(name, "CT.", "ct-muscle", write_files=_files)
    with pytest.raises(ValueError, match="one line"):
        DemoInput("ct", "CT.\nMore.", "ct-muscle", write_files=_files)
    with pytest.raises(ValueError, match="repeat"):
        DemoInput("ct", "CT.", "ct-muscle", options=[DemoOption("a", 1), DemoOption("a", 2)],
                  write_files=_files)


def test_the_built_in_plugins_contribute_microscopy_ct_and_mr() -> None:
    demos = {ep.name: ep.load() for ep in entry_points(group=DEMO_ENTRY_POINT_GROUP)}
    assert {"microscopy", "ct", "mr"} <= set(demos)
    assert all(isinstance(d, DemoInput) and d.name == n for n, d in demos.items())
    assert [(d.pipeline, d.writes_files) for d in (demos["microscopy"], demos["ct"], demos["mr"])] == [
        ("virtual-staining", True), ("ct-muscle", False), ("mr-muscle", False)
    ]
    options = {o.name: o for o in demos["microscopy"].options}
    assert {n: (o.default, o.min, o.max) for n, o in options.items()} == {
        "wells": (3, 1, 96), "positions": (2, 1, None), "timepoints": (4, 1, None),
        "size": (512, 64, None), "generator": ("cells", None, None),
    }
    assert options["generator"].choices == ("cells", "textures")
    assert demos["ct"].options == () and demos["mr"].options == ()
