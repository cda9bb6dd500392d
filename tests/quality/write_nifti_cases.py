"""Held-out-variety CT phantoms written as NIfTI pairs (``images/`` + ``labels/``) and as
an nnU-Net raw layout, for measuring ``acqflow train ct-muscle --data-dir`` on data in the
formats users have::

    python -m tests.quality.write_nifti_cases OUT FIRST_SEED COUNT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from acqflow.plugins.ct_muscle.anatomy import HELD_OUT_VARIETY, randomised_phantom
from acqflow.plugins.ct_muscle.structures import default_label_table

__all__ = ["write_cases"]


def write_cases(root: Path, first: int, count: int) -> None:
    """``count`` phantoms from seed ``first`` into ``root/pairs`` and ``root/nnunet``."""
    table = default_label_table()
    folders = [root / "pairs" / "images", root / "pairs" / "labels",
               root / "nnunet" / "imagesTr", root / "nnunet" / "labelsTr"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.875, -1.875, -5.0, 1.0])  # RAS: columns to the left, rows posterior
    for index in range(count):
        phantom = randomised_phantom(first + index, (24, 256, 256), 1.875, 5.0,
                                     variety=HELD_OUT_VARIETY)
        image = nib.Nifti1Image(np.transpose(phantom.hu, (2, 1, 0)).astype(np.int16), affine)
        label = nib.Nifti1Image(np.transpose(phantom.labels, (2, 1, 0)).astype(np.uint8), affine)
        name = f"case{index:03d}"
        nib.save(image, folders[0] / f"{name}.nii.gz")
        nib.save(label, folders[1] / f"{name}.nii.gz")
        nib.save(image, folders[2] / f"{name}_0000.nii.gz")
        nib.save(label, folders[3] / f"{name}.nii.gz")
    labels = {"background": 0, **{s.name: s.label for s in table}}
    description = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": count,
                   "file_ending": ".nii.gz"}
    (root / "nnunet" / "dataset.json").write_text(json.dumps(description, indent=1))


if __name__ == "__main__":
    write_cases(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
