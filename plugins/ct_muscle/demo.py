"""``acqflow demo ct``: a synthetic CT phantom series, sent to the daemon as a CT scanner would.

Contributed through the entry-point group ``acqflow.demos``; the phantom generator is
imported only when the demo runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from acqflow.plugins.api import DemoInput

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = ["CT_DEMO"]


def ct_demo_series(seed: int, options: Mapping[str, Any]) -> Sequence[Dataset]:
    """The hip/thigh phantom of ``seed`` as a CT Image Storage series (the same seed gives
    the same pixels and UIDs)."""
    from acqflow.plugins.ct_muscle.phantoms import demo_ct_series

    return demo_ct_series(seed=seed)


CT_DEMO = DemoInput(
    name="ct",
    summary="Send a synthetic CT phantom series to the daemon over DICOM.",
    pipeline="ct-muscle",
    dicom_series=ct_demo_series,
)
