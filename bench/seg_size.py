"""Size of the ct-muscle DICOM outputs for a large series: SEG with and without empty
frames, the float32 uncertainty map, and the source series.

The label map is the phantom's truth (the size depends on which (slice, structure)
pairs have voxels, not on how good the labels are), the uncertainty map random values;
both objects are written to Part-10 files and their sizes read back::

    python bench/seg_size.py --slices 200 --matrix 512
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from pydicom import dcmwrite

from acqflow.models.store import bundled_weights_dir, read_card
from acqflow.plugins.common.dicom_outputs import build_segmentation, content_digest
from acqflow.plugins.common.series_builder import SeriesGeometry, SeriesSpec, build_series
from acqflow.plugins.common.volume import series_to_volume
from acqflow.plugins.ct_muscle.anatomy import randomised_phantom
from acqflow.plugins.ct_muscle.inference import Prediction, UncertaintyMeasure, measure_structures
from acqflow.plugins.ct_muscle.reporting import OutputContext, dicom_outputs, segment_specs
from acqflow.plugins.ct_muscle.structures import default_label_table


def _size(dataset: object, path: Path) -> int:
    dcmwrite(path, dataset, enforce_file_format=True)  # type: ignore[arg-type]
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--matrix", type=int, default=512)
    args = parser.parse_args()
    spacing = 480.0 / args.matrix
    phantom = randomised_phantom(1, (args.slices, args.matrix, args.matrix), spacing, 1.5)
    geometry = SeriesGeometry(origin=(-240.0, -240.0, 0.0), pixel_spacing=(spacing, spacing),
                              slice_spacing=-1.5)
    datasets = build_series(phantom.hu, geometry, SeriesSpec(seed="seg-size"))
    volume = series_to_volume(datasets)
    labels = phantom.labels[::-1] if volume.geometry.normal[2] > 0 else phantom.labels
    labels = np.ascontiguousarray(labels)
    uncertainty = np.random.default_rng(0).random(labels.shape, dtype=np.float32)
    table = default_label_table()
    card = read_card(bundled_weights_dir(), "ct_muscle")
    measured = measure_structures(Prediction(labels, uncertainty, UncertaintyMeasure.ENTROPY),
                                  table, volume.geometry.voxel_volume_mm3, 0.9, hu=volume.array)
    context = OutputContext(identity="seg-size", pipeline_version="bench", card=card, table=table,
                            measure=UncertaintyMeasure.ENTROPY, review_threshold=0.9,
                            content=content_digest(volume.datasets))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        source = sum(_size(ds, folder / f"src{k}.dcm") for k, ds in enumerate(datasets))
        outputs = {o.name: o.dataset
                   for o in dicom_outputs(context, volume, labels, uncertainty, measured)}
        sizes = {name: _size(dataset, folder / name) for name, dataset in outputs.items()}
        seg = outputs["ct-muscle-seg.dcm"]
        before = build_segmentation(volume, labels, segment_specs(context, measured),
                                    context.ids("seg", 2, "before"), context.device,
                                    context.algorithm, keep_empty_frames=True)
        sizes["seg with empty frames"] = _size(before, folder / "before.dcm")
    mb = 1e6
    print(f"series {args.matrix}² x {args.slices}: source {source / mb:.1f} MB, "
          f"{len(measured)} structures")
    print(f"SEG BINARY with every frame: {sizes['seg with empty frames'] / mb:.1f} MB "
          f"({int(before.NumberOfFrames)} frames)")
    print(f"SEG BINARY without empty frames: {sizes['ct-muscle-seg.dcm'] / mb:.1f} MB "
          f"({int(seg.NumberOfFrames)} frames), ratio "
          f"{sizes['ct-muscle-seg.dcm'] / sizes['seg with empty frames']:.2f}")
    print(f"uncertainty map (float32): {sizes['ct-muscle-uncertainty.dcm'] / mb:.1f} MB; "
          f"SR {sizes['ct-muscle-sr.dcm'] / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
