"""The real DICOM sample files installed with pydicom and pydicom-data (no download)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.data.data_manager import DATA_ROOT, external_data_sources
from pydicom.dataset import FileDataset

__all__ = ["sample_files"]

_NOT_DICOM = {".py", ".pyc", ".txt", ".json", ".gz"}


def sample_files() -> Iterator[tuple[Path, FileDataset]]:
    """(path, header without pixels) of every sample file pydicom can read."""
    roots = [Path(DATA_ROOT) / "test_files"]
    roots += [Path(source.data_path) for source in external_data_sources().values()]
    for path in sorted(p for root in roots for p in root.rglob("*") if p.is_file()):
        if path.suffix in _NOT_DICOM:
            continue
        try:
            with warnings.catch_warnings():  # a few samples are deliberately mislabelled
                warnings.simplefilter("ignore", UserWarning)
                header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except (pydicom.errors.InvalidDicomError, ValueError, EOFError, OSError, KeyError,
                TypeError, AttributeError):
            continue
        yield path, header
