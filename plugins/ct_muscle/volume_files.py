"""NIfTI and NRRD volumes read into the axial (slices, rows, cols) layout of the trainer.

Whatever the file's axis order and directions, the array is reoriented to the closest
axis-aligned LPS grid (nibabel's orientation tools on the file's affine) and transposed
so that columns step to the patient's left, rows to posterior and slices to superior:
the layout :func:`acqflow.plugins.common.volume.series_to_volume` gives an axial DICOM series.
NIfTI affines are RAS (nibabel); NRRD ``space directions`` are converted from the
header's ``space`` (RAS, LAS or LPS). Oblique grids are not resampled: the nearest axis
order is taken, as ``nibabel.as_closest_canonical`` does.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from acqflow.plugins.api import InvalidInputError

__all__ = ["VolumeFile", "VolumeFormat", "format_of", "read_volume", "strip_ending"]


class VolumeFormat(str, Enum):
    NIFTI = "nifti"
    NRRD = "nrrd"


_ENDINGS: tuple[tuple[str, VolumeFormat], ...] = (
    (".nii.gz", VolumeFormat.NIFTI), (".nii", VolumeFormat.NIFTI),
    (".nrrd", VolumeFormat.NRRD), (".nhdr", VolumeFormat.NRRD),
)
_TARGET = ("L", "P", "S")  # voxel axes (col, row, slice) before the transpose
# NRRD spaces as the sign flips that turn their coordinates into RAS
_NRRD_SPACES = {
    "right-anterior-superior": (1.0, 1.0, 1.0), "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0), "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0), "lps": (-1.0, -1.0, 1.0),
}


@dataclass(frozen=True)
class VolumeFile:
    """A volume (slices, rows, cols) on an LPS grid; ``spacing`` (slice, row, col) mm.

    ``origin`` is the RAS position (mm) of voxel (0, 0, 0), for checking that an image
    and its label map share a grid.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    format: VolumeFormat
    path: Path
    notes: tuple[str, ...] = ()  # assumptions made reading it, for the user


def format_of(path: Path) -> VolumeFormat | None:
    """The format a file name's ending says, or None for other files."""
    name = path.name.lower()
    return next((fmt for ending, fmt in _ENDINGS if name.endswith(ending)), None)


def strip_ending(path: Path) -> str:
    """The file name without its volume ending (``case.nii.gz`` -> ``case``)."""
    name = path.name
    for ending, _ in _ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def read_volume(path: Path, *, labels: bool = False) -> VolumeFile:
    """Read ``path`` (NIfTI or NRRD by its ending) and reorient it to the LPS layout.

    Images come back as float32 (NIfTI scaling applied); with ``labels`` the values are
    checked to be non-negative integers and returned as int64. Raises InvalidInputError,
    naming the file, when it cannot be read, is not 3-D or has non-integer labels.
    """
    fmt = format_of(path)
    if fmt is None:
        raise InvalidInputError(f"{path}: not a NIfTI (.nii, .nii.gz) or NRRD (.nrrd, .nhdr) file")
    notes: list[str] = []
    try:
        if fmt is VolumeFormat.NIFTI:
            data, affine = _read_nifti(path, labels)
        else:
            data, affine = _read_nrrd(path, notes)
    except InvalidInputError:
        raise
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # truncated, corrupt, not the format
        raise InvalidInputError(f"{path}: cannot read as {fmt.value}: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:  # e.g. a NIfTI label map stored as x*y*z*1
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidInputError(f"{path}: expected a 3-D volume, found shape {data.shape}")
    array = _label_values(data, path) if labels else np.asarray(data, dtype=np.float32)
    return _oriented(array, affine, fmt, path, tuple(notes))


def _read_nifti(path: Path, labels: bool) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image: Any = nib.load(path)
    except ImageFileError as exc:
        raise InvalidInputError(f"{path}: not a NIfTI file: {exc}") from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidInputError(f"{path}: not a NIfTI image ({type(image).__name__})")
    data = np.asanyarray(image.dataobj) if labels else image.get_fdata(dtype=np.float32)
    return np.asarray(data), np.asarray(image.affine, dtype=np.float64)


def _read_nrrd(path: Path, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import nrrd

    try:
        data, header = nrrd.read(str(path))
    except nrrd.NRRDError as exc:
        raise InvalidInputError(f"{path}: not a readable NRRD file: {exc}") from exc
    return np.asarray(data), _nrrd_affine(header, data.ndim, path, notes)


def _nrrd_affine(header: dict[str, Any], ndim: int, path: Path, notes: list[str]) -> np.ndarray:
    """RAS affine of the first three (spatial) axes of an NRRD header."""
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is None:
        # No world frame: take the axes as DICOM's (columns, rows, slices) in LPS.
        notes.append(f"{path}: no 'space directions'; axes taken as LPS columns, rows, slices")
        spacings = [float(s) for s in header.get("spacings", [1.0] * ndim)][:3]
        affine[:3, :3] = np.diag(np.array(spacings + [1.0] * (3 - len(spacings))) * [-1, -1, 1])
        return affine
    rows = [np.asarray(d, dtype=np.float64) for d in directions]
    spatial = [d for d in rows if d is not None and d.shape == (3,) and np.all(np.isfinite(d))]
    if len(spatial) != 3 or any(not np.all(np.isfinite(d)) for d in rows[:3]):
        raise InvalidInputError(f"{path}: expected three spatial axes first, 'space directions' is "
                                f"{directions}")
    space = str(header.get("space", "")).lower()
    if space not in _NRRD_SPACES:
        raise InvalidInputError(f"{path}: NRRD space {header.get('space')!r} is not RAS, LAS or LPS")
    flip = np.asarray(_NRRD_SPACES[space])
    affine[:3, :3] = np.stack(spatial, axis=1) * flip[:, None]
    origin = header.get("space origin")
    if origin is not None:
        affine[:3, 3] = np.asarray(origin, dtype=np.float64) * flip
    return affine


def _label_values(data: np.ndarray, path: Path) -> np.ndarray:
    """Labels as int64; raises InvalidInputError for fractional, negative or NaN values."""
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise InvalidInputError(f"{path}: label map has non-integer values")
    elif not np.issubdtype(data.dtype, np.integer) and data.dtype != np.bool_:
        raise InvalidInputError(f"{path}: label map has values of type {data.dtype}, not integers")
    out = np.asarray(data).astype(np.int64)
    if out.size and out.min() < 0:
        raise InvalidInputError(f"{path}: label map has negative values")
    return out


def _oriented(
    array: np.ndarray, affine: np.ndarray, fmt: VolumeFormat, path: Path, notes: tuple[str, ...]
) -> VolumeFile:
    from nibabel import orientations

    orient: Any = orientations  # untyped library functions

    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InvalidInputError(f"{path}: the voxel-to-world transform is degenerate")
    transform = orient.ornt_transform(orient.io_orientation(affine), orient.axcodes2ornt(_TARGET))
    reoriented = orient.apply_orientation(array, transform)
    new_affine = affine @ orient.inv_ornt_aff(transform, array.shape)
    size = np.linalg.norm(new_affine[:3, :3], axis=0)  # mm along the L, P, S voxel axes
    return VolumeFile(
        array=np.ascontiguousarray(reoriented.transpose(2, 1, 0)),
        spacing=(float(size[2]), float(size[1]), float(size[0])),
        origin=(float(new_affine[0, 3]), float(new_affine[1, 3]), float(new_affine[2, 3])),
        format=fmt, path=path, notes=notes,
    )
