"""Building blocks shared by the DICOM pipelines: series to volume, DICOM output builders."""

from __future__ import annotations

__all__: list[str] = []
