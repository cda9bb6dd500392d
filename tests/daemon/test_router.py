from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from acqflow.daemon.config import RouteRule
from acqflow.daemon.journal import Arrival, ArrivalState
from acqflow.daemon.router import Router


def _arrival(source: str, kind: str, **attrs: Any) -> Arrival:
    now = time.time()
    return Arrival(
        1, source, kind, f"k{now}", Path("/in/EXP1/a.tif"), ArrivalState.READY, 0, attrs, None, now, now, None
    )


RULES = (
    RouteRule(name="phase", kind=("image",), channel=("phase",), pipelines=("stain",)),
    RouteRule(
        name="ct-pacs", modality=("CT",), calling_ae=("SCANNER1",), pipelines=("ct", "qa"), export=("pacs",)
    ),
    RouteRule(name="ct-all", modality=("CT",), pipelines=("ct",), **{"continue": True}),
    RouteRule(name="glob", path_glob="EXP2/*", pipelines=("stats",)),
    RouteRule(name="audit", kind=("dicom-series",), pipelines=("audit",)),
)


def test_first_match_wins_and_fields_are_anded() -> None:
    router = Router(RULES, lambda: {"stain", "ct", "qa", "stats", "audit"})
    ct = router.decide(_arrival("dicom", "dicom-series", modality="CT", calling_ae="SCANNER1"))
    assert [(d.pipeline, d.route, d.export) for d in ct] == [
        ("ct", "ct-pacs", ("pacs",)),
        ("qa", "ct-pacs", ("pacs",)),
    ]


def test_continue_lets_later_rules_add_pipelines() -> None:
    router = Router(RULES, lambda: {"stain", "ct", "qa", "stats", "audit"})
    other = router.decide(_arrival("dicom", "dicom-series", modality="ct", calling_ae="OTHER"))
    assert [(d.pipeline, d.route) for d in other] == [("ct", "ct-all"), ("audit", "audit")]


def test_channel_and_glob_and_no_match() -> None:
    router = Router(RULES, lambda: {"stain", "ct", "qa", "stats", "audit"})
    phase = _arrival("folder", "image", metadata={"channel": "Phase"}, relative_path="EXP1/a.tif")
    assert [d.pipeline for d in router.decide(phase)] == ["stain"]
    gfp2 = _arrival("folder", "image", metadata={"channel": "gfp"}, relative_path="EXP2/b.tif")
    assert [d.pipeline for d in router.decide(gfp2)] == ["stats"]
    gfp1 = _arrival("folder", "image", metadata={"channel": "gfp"}, relative_path="EXP1/b.tif")
    assert router.decide(gfp1) == []


def test_unavailable_pipeline_is_skipped_not_fatal() -> None:
    router = Router(RULES, lambda: {"qa"})
    decided = router.decide(_arrival("dicom", "dicom-series", modality="CT", calling_ae="SCANNER1"))
    assert [d.pipeline for d in decided] == ["qa"]


def test_channel_not_excludes_fluorescence_but_keeps_unknown_channels() -> None:
    from acqflow.daemon.config import DEFAULT_ROUTES

    router = Router(DEFAULT_ROUTES, lambda: {"virtual-staining", "ct-muscle", "mr-muscle"})
    gfp = _arrival("folder", "image", metadata={"channel": "GFP"})
    phase = _arrival("folder", "image", metadata={"channel": "phase"})
    unknown = _arrival("folder", "image", metadata={})
    assert router.decide(gfp) == []
    assert [d.pipeline for d in router.decide(phase)] == ["virtual-staining"]
    assert [d.pipeline for d in router.decide(unknown)] == ["virtual-staining"]
