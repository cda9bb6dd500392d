"""What a re-run may change in a derived object: only when it was made."""

from __future__ import annotations

import io

from pydicom import Dataset
from pydicom.filewriter import dcmwrite

__all__ = ["RUN_TIMESTAMPS", "without_timestamps"]

# Creation timestamps of the run (highdicom sets them to the time of construction), and
# the Contribution DateTime of each Contributing Equipment item.
RUN_TIMESTAMPS = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def without_timestamps(ds: Dataset) -> bytes:
    """The Part-10 bytes of ``ds`` without :data:`RUN_TIMESTAMPS` (everything else:
    pixel data, UIDs, every other attribute, byte for byte)."""
    import copy as copying

    copy = copying.deepcopy(ds)
    for keyword in RUN_TIMESTAMPS:
        if keyword in copy:
            del copy[keyword]
    for item in copy.get("ContributingEquipmentSequence") or []:
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    buffer = io.BytesIO()
    dcmwrite(buffer, copy, enforce_file_format=True)
    return buffer.getvalue()
