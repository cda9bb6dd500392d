"""Unpaired training slices: synthetic phantoms or DICOM series folders, normalised to [-1, 1].

The synthetic domains come from one of two generators (:class:`Generator`): ``fixed``, the
demo phantoms (:func:`acqflow.plugins.mr_muscle.phantoms.generate_mr_phantom` and
:func:`acqflow.plugins.ct_muscle.phantoms.generate_phantom`), or ``randomised``, the randomised
anatomy with a T1 contrast drawn per MR phantom
(:func:`acqflow.plugins.mr_muscle.randomised.randomised_mr_phantom`) and noise-free randomised CT
(:func:`acqflow.plugins.ct_muscle.anatomy.randomised_phantom`), 480 mm across. Their seeds come
from disjoint ranges, so no anatomy appears in both. DICOM folders are searched
recursively, instances grouped by series, and every series converted with the shared
series-to-volume step (the same checks as the pipelines). All slices are resampled to
the generator's pixel spacing and normalised (MR per volume, CT by a fixed HU range).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np
from scipy import ndimage

from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, generate_phantom
from acqflow.plugins.mr_muscle.phantoms import MR_ANATOMY_SEED_OFFSET, generate_mr_phantom
from acqflow.plugins.mr_muscle.translation import IntensityScale, ct_to_unit, normalise_mr

__all__ = ["RANDOMISED_SHAPE", "Generator", "SliceSet", "dicom_slices", "resample_slices",
           "synthetic_ct_slices", "synthetic_mr_slices"]

# Per training seed, this many phantom seeds are reserved in each domain.
SEEDS_PER_RUN = 1000
# Randomised phantoms: 480 mm across at 3 mm, so the largest bodies (1.4 x an adult) fit.
RANDOMISED_SHAPE = (24, 160, 160)


class Generator(str, Enum):
    """Which synthetic phantoms make the unpaired training domains."""

    FIXED = "fixed"
    RANDOMISED = "randomised"


@dataclass(frozen=True)
class SliceSet:
    """Normalised axial slices ``(n, rows, cols)`` of one domain and where they came from."""

    slices: np.ndarray
    volumes: int
    source: str

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "volumes": self.volumes,
            "slices": int(self.slices.shape[0]),
            "matrix": list(self.slices.shape[1:]),
        }


def _phantom_seeds(count: int, seed: int) -> list[int]:
    """Phantom seeds of a run; below MR_ANATOMY_SEED_OFFSET so MR and CT never meet."""
    if count < 1 or not 0 <= seed < MR_ANATOMY_SEED_OFFSET // SEEDS_PER_RUN or count > SEEDS_PER_RUN:
        raise ValueError(
            f"need 1..{SEEDS_PER_RUN} phantoms and 0 <= seed < {MR_ANATOMY_SEED_OFFSET // SEEDS_PER_RUN}"
        )
    return [seed * SEEDS_PER_RUN + i for i in range(count)]


def synthetic_mr_slices(
    count: int, seed: int, scale: IntensityScale, generator: Generator = Generator.FIXED
) -> SliceSet:
    """Slices of ``count`` MR phantoms (anatomy seeds from MR_ANATOMY_SEED_OFFSET on).

    Raises ValueError for a count or seed outside the reserved ranges.
    """
    from acqflow.plugins.mr_muscle.randomised import MR_TRAINING_VARIETY, randomised_mr_phantom

    vols = []
    for phantom_seed in _phantom_seeds(count, seed):
        phantom = (generate_mr_phantom(phantom_seed) if generator is Generator.FIXED else
                   randomised_mr_phantom(MR_ANATOMY_SEED_OFFSET + phantom_seed, MR_TRAINING_VARIETY,
                                         RANDOMISED_SHAPE))
        unit = normalise_mr(phantom.signal, scale)
        vols.append(resample_slices(unit, phantom.pixel_spacing_mm, scale.pixel_spacing_mm, fill=-1.0))
    return SliceSet(np.concatenate(vols), count, f"synthetic MR phantoms ({generator.value}), seed {seed}")


def synthetic_ct_slices(
    count: int, seed: int, scale: IntensityScale, noise_hu: float = 0.0,
    generator: Generator = Generator.FIXED,
) -> SliceSet:
    """Slices of ``count`` CT phantoms (seeds below MR_ANATOMY_SEED_OFFSET) with ``noise_hu`` noise.

    Noise-free CT by default: the generator should learn the tissue values, not to
    imitate noise texture (which, in our runs, it rendered as speckle the CT network
    cannot read). Randomised CT phantoms also leave out their bias field.

    Raises ValueError for a count or seed outside the reserved range.
    """
    from acqflow.plugins.ct_muscle.anatomy import TRAINING_VARIETY, randomised_phantom

    variety = replace(TRAINING_VARIETY, noise_hu=(noise_hu, noise_hu), bias_hu=(0.0, 0.0))
    vols = []
    for phantom_seed in _phantom_seeds(count, seed):
        phantom = (generate_phantom(phantom_seed, PhantomOptions(noise_hu=noise_hu))
                   if generator is Generator.FIXED else
                   randomised_phantom(phantom_seed, RANDOMISED_SHAPE, variety=variety))
        unit = ct_to_unit(phantom.hu, scale)
        vols.append(resample_slices(unit, phantom.pixel_spacing_mm, scale.pixel_spacing_mm, fill=-1.0))
    return SliceSet(np.concatenate(vols), count, f"synthetic CT phantoms ({generator.value}), seed {seed}")


def resample_slices(
    volume: np.ndarray, spacing: float | tuple[float, float], target: float, fill: float
) -> np.ndarray:
    """Resample ``(n, rows, cols)`` slices in-plane from ``spacing`` to ``target`` mm (linear)."""
    pair = (spacing, spacing) if isinstance(spacing, float | int) else spacing
    zoom = (1.0, pair[0] / target, pair[1] / target)
    if np.allclose(zoom, 1.0):
        return volume.astype(np.float32)
    out: np.ndarray = ndimage.zoom(volume.astype(np.float32), zoom, order=1, mode="constant", cval=fill)
    return out


def _series_files(folder: Path) -> dict[str, list[Path]]:
    """DICOM files below ``folder`` grouped by SeriesInstanceUID (non-DICOM files skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (InvalidDicomError, OSError):
            continue
        uid = str(getattr(header, "SeriesInstanceUID", ""))
        if uid:
            groups[uid].append(path)
    return dict(groups)


def dicom_slices(folder: Path, modality: str, scale: IntensityScale, min_rows: int = 64) -> SliceSet:
    """Normalised slices of every ``modality`` series below ``folder``.

    Series of other modalities are skipped; a series the series-to-volume step refuses
    raises acqflow.plugins.api.InvalidInputError naming it. Raises ValueError when no series of
    the modality is found.
    """
    import pydicom

    from acqflow.plugins.common.volume import VolumeOptions, series_to_volume

    vols: list[np.ndarray] = []
    for paths in _series_files(folder).values():
        datasets: Sequence[pydicom.Dataset] = [pydicom.dcmread(p) for p in paths]
        if str(getattr(datasets[0], "Modality", "")) != modality:
            continue
        volume = series_to_volume(datasets, VolumeOptions(modalities=(modality,)))
        pixels = volume.array.astype(np.float32)
        unit = normalise_mr(pixels, scale) if modality == "MR" else ct_to_unit(pixels, scale)
        spacing = (float(volume.geometry.spacing[1]), float(volume.geometry.spacing[2]))
        slices = resample_slices(unit, spacing, scale.pixel_spacing_mm, fill=-1.0)
        if min(slices.shape[1:]) >= min_rows:
            vols.append(slices)
    if not vols:
        raise ValueError(f"no {modality} series of at least {min_rows} px found below {folder}")
    return SliceSet(np.concatenate(_common_size(vols)), len(vols), str(folder))


def _common_size(vols: list[np.ndarray]) -> list[np.ndarray]:
    """Crop all volumes' slices to the smallest rows and columns among them (centred)."""
    rows = min(v.shape[1] for v in vols)
    cols = min(v.shape[2] for v in vols)
    out = []
    for v in vols:
        y, x = (v.shape[1] - rows) // 2, (v.shape[2] - cols) // 2
        out.append(v[:, y : y + rows, x : x + cols])
    return out
