"""dcmqi's converters (what 3D Slicer uses to open SEG and Parametric Maps) as test readers.

The executables come with the ``dcmqi`` pip package (dev extra). Tests that need them
skip only when they are absent, with the reason; CI installs them.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

__all__ = ["dcmqi_executable", "frames_by_position", "paramap_volume", "read_nrrd", "seg_volume"]

_NRRD_TYPES = {"float": np.float32, "short": np.int16, "unsigned short": np.uint16,
               "unsigned char": np.uint8, "uchar": np.uint8, "double": np.float64}


def dcmqi_executable(name: str) -> str:
    """The path of dcmqi's ``name``: on PATH or beside this interpreter (an inactive
    venv); skips the test when neither has it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"dcmqi's {name} is not installed (pip install dcmqi; the dev extra has it)")
    return found


def _run(name: str, source: Path, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([dcmqi_executable(name), "--inputDICOM", str(source),
                          "--outputDirectory", str(output)],
                         capture_output=True, text=True, check=False, timeout=300)
    assert run.returncode == 0, f"{name} failed ({run.returncode}): {run.stdout[-2000:]}{run.stderr[-2000:]}"


def read_nrrd(path: Path) -> tuple[dict[str, str], np.ndarray]:
    """Header fields and the ``(z, y, x)`` array of a raw or gzip NRRD as dcmqi writes it."""
    data = path.read_bytes()
    end = data.index(b"\n\n")
    header = {}
    for line in data[:end].decode().splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            header[key.strip()] = value.strip()
    body = data[end + 2:]
    if header.get("encoding") == "gzip":
        body = gzip.decompress(body)
    assert header.get("encoding") in ("gzip", "raw") and header.get("endian", "little") == "little"
    sizes = [int(v) for v in header["sizes"].split()]
    array = np.frombuffer(body, dtype=_NRRD_TYPES[header["type"]])
    return header, array.reshape(sizes[::-1])


def paramap_volume(source: Path, output: Path) -> np.ndarray:
    """``paramap2itkimage`` of ``source``: the map as ``(z, y, x)``."""
    _run("paramap2itkimage", source, output)
    _, array = read_nrrd(output / "pmap.nrrd")
    return array


def seg_volume(source: Path, output: Path) -> dict[str, np.ndarray]:
    """``segimage2itkimage`` of ``source``: each segment's mask ``(z, y, x)`` by its
    segmented property type code value."""
    _run("segimage2itkimage", source, output)
    meta = json.loads((output / "meta.json").read_text())
    masks: dict[str, np.ndarray] = {}
    for index, group in enumerate(meta["segmentAttributes"], 1):
        _, array = read_nrrd(output / f"{index}.nrrd")
        for segment in group:
            code = segment["SegmentedPropertyTypeCodeSequence"]["CodeValue"]
            masks[code] = array == int(segment["labelID"])
    return masks


def frames_by_position(ds: Dataset) -> list[int]:
    """Frame indices of a multi-frame object in order of ascending slice position."""
    positions = [float(f.PlanePositionSequence[0].ImagePositionPatient[2])
                 for f in ds.PerFrameFunctionalGroupsSequence]
    return sorted(range(len(positions)), key=positions.__getitem__)
