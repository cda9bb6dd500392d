"""``acqflow demo mr``: a synthetic MR phantom series, sent to the daemon as an MR scanner would.

Contributed through the entry-point group ``acqflow.demos``; the phantom generator is
imported only when the demo runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from acqflow.plugins.api import DemoInput

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = ["MR_DEMO"]


def mr_demo_series(seed: int, options: Mapping[str, Any]) -> Sequence[Dataset]:
    """The hip/thigh MR phantom of ``seed`` as an MR Image Storage series (the same seed
    gives the same pixels and UIDs); raises ValueError for a negative seed."""
    from acqflow.plugins.mr_muscle.mr_series import demo_mr_series

    return demo_mr_series(seed=seed)


MR_DEMO = DemoInput(
    name="mr",
    summary="Send a synthetic MR phantom series to the daemon over DICOM.",
    pipeline="mr-muscle",
    dicom_series=mr_demo_series,
)
