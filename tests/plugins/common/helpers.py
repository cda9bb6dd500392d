"""Series variants shared by the volume and DICOM-output tests."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from pydicom import Dataset

from acqflow.plugins.common.series_builder import SeriesGeometry, SeriesSpec, build_series
from acqflow.plugins.ct_muscle.phantoms import Phantom, PhantomOptions, generate_phantom

SMALL = PhantomOptions(shape=(6, 64, 80), pixel_spacing_mm=6.0, slice_spacing_mm=10.0)

_OBLIQUE_ROW = (np.cos(0.3), np.sin(0.3), 0.0)
_OBLIQUE_COL = (-np.sin(0.3) * np.cos(0.2), np.cos(0.3) * np.cos(0.2), np.sin(0.2))

VARIANTS: dict[str, SeriesGeometry] = {
    "ascending": SeriesGeometry(pixel_spacing=(6.0, 6.0), slice_spacing=10.0),
    "descending": SeriesGeometry(pixel_spacing=(6.0, 6.0), slice_spacing=-10.0),
    "flipped": SeriesGeometry(origin=(150.0, 40.0, -30.0), row_direction=(-1.0, 0.0, 0.0),
                              column_direction=(0.0, 0.0, -1.0), pixel_spacing=(6.0, 6.0),
                              slice_spacing=10.0),
    "oblique": SeriesGeometry(origin=(-20.0, 33.0, 12.5),
                              row_direction=tuple(float(v) for v in _OBLIQUE_ROW),  # type: ignore[arg-type]
                              column_direction=tuple(float(v) for v in _OBLIQUE_COL),  # type: ignore[arg-type]
                              pixel_spacing=(6.0, 6.0), slice_spacing=-10.0),
}


def phantom_series(
    variant: str, shuffle: bool = False, seed: int = 3, modality: str = "CT"
) -> tuple[Phantom, list[Dataset]]:
    """A small phantom and its series (instance k holds phantom slice k)."""
    phantom = generate_phantom(seed, SMALL)
    spec = SeriesSpec(seed=f"test-{variant}-{seed}", modality=modality)
    values = phantom.hu if modality == "CT" else np.clip(phantom.hu + 1000, 0, None)
    datasets = build_series(values, VARIANTS[variant], spec)
    if shuffle:
        random.Random(seed).shuffle(datasets)
    return phantom, datasets


def labels_in_volume_order(
    phantom: Phantom, datasets: Sequence[Dataset], source_uids: Sequence[str]
) -> np.ndarray:
    """The phantom's labels rearranged into the order of the volume's slices."""
    index = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) - 1 for ds in datasets}
    return phantom.labels[[index[uid] for uid in source_uids]]
