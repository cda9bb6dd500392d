"""Training and evaluation data: generated phantoms, or DICOM CT series with a SEG.

A DICOM data folder holds one sub-folder per case with the CT instances and one SEG
instance whose segments are coded with the label table's property types (the SEGs this
pipeline writes qualify). NIfTI, NRRD and nnU-Net folders are read by
:mod:`acqflow.plugins.ct_muscle.labelled_data`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from acqflow.plugins.api import InvalidInputError
from acqflow.plugins.common.volume import VolumeOptions, series_to_volume
from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, generate_phantom
from acqflow.plugins.ct_muscle.structures import LabelTable
from acqflow.plugins.ct_muscle.training import LabelledVolume

__all__ = ["load_dicom_case", "load_dicom_cases", "phantom_volumes"]

_SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def phantom_volumes(
    seeds: Iterable[int], options: PhantomOptions | None = None, table: LabelTable | None = None
) -> list[LabelledVolume]:
    """One labelled phantom per seed."""
    out = []
    for seed in seeds:
        phantom = generate_phantom(seed, options, table)
        out.append(LabelledVolume(hu=phantom.hu, labels=phantom.labels,
                                  spacing=(phantom.pixel_spacing_mm, phantom.pixel_spacing_mm)))
    return out


def _seg_labels(seg_path: Path, uids: list[str], table: LabelTable) -> np.ndarray:
    """Label map in the order of ``uids`` from a SEG; segments map by property type."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    by_code = {(s.type.value, s.type.scheme): s.label for s in table}
    mapping: dict[int, int] = {}
    for number in seg.segment_numbers:
        prop = seg.get_segment_description(number).segmented_property_type
        label = by_code.get((str(prop.value), str(prop.scheme_designator)))
        if label is not None:
            mapping[number] = label
    if not mapping:
        raise InvalidInputError(f"{seg_path}: no segment matches the label table")
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=sorted(mapping),
        combine_segments=True, relabel=False, skip_overlap_checks=True,
    )
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for number, label in mapping.items():
        lut[number] = label
    labels: np.ndarray = lut[np.asarray(pixels)]
    return labels


def load_dicom_cases(directory: Path, table: LabelTable) -> list[LabelledVolume]:
    """Every case folder under ``directory`` as a labelled volume.

    Raises InvalidInputError for a case without a SEG or with an unusable series, and
    FileNotFoundError when ``directory`` has no case folders.
    """
    cases = sorted(p for p in directory.iterdir() if p.is_dir())
    if not cases:
        raise FileNotFoundError(f"no case folders in {directory}")
    return [load_dicom_case(case, table)[0] for case in cases]


def load_dicom_case(case: Path, table: LabelTable) -> tuple[LabelledVolume, float]:
    """One case folder (CT series + SEG) as a labelled volume and its slice spacing (mm).

    Raises InvalidInputError for a case without exactly one SEG or with an unusable series.
    """
    images: list[tuple[Path, pydicom.Dataset]] = []
    segs: list[tuple[Path, pydicom.Dataset]] = []
    for path in sorted(case.rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            continue
        (segs if str(ds.SOPClassUID) == _SEG_CLASS else images).append((path, ds))
    if len(segs) != 1:
        raise InvalidInputError(f"{case}: expected one SEG, found {len(segs)}")
    volume = series_to_volume([ds for _, ds in images], VolumeOptions(modalities=("CT",)))
    if volume.is_multiframe:
        raise InvalidInputError(f"{case}: multi-frame training series are not supported")
    uids = [s.sop_instance_uid for s in volume.sources]
    labels = _seg_labels(segs[0][0], uids, table)
    labelled = LabelledVolume(hu=volume.array, labels=labels, spacing=volume.geometry.spacing[1:])
    return labelled, float(volume.geometry.spacing[0])
