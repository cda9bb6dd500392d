"""CT muscle quality on held-out phantoms, through the daemon's real DICOM path.

Phantoms come from :data:`acqflow.plugins.ct_muscle.anatomy.HELD_OUT_VARIETY` (an anatomy model
and parameter ranges that training never used), each written as a CT series with its
own encoding (uint16 with intercept, signed int16, rescale slope 0.5, RLE Lossless,
JPEG-LS Lossless), orientation (ascending, descending, oblique) and file order
(shuffled), sent with dcmtk ``storescu`` to an ``acqflow serve`` subprocess, and the SEG
it writes is decoded with highdicom and scored against the phantom's truth, instance by
instance. The SR next to it gives each structure's review score (the MC samples'
disagreement and the mean uncertainty), which is paired with the structure's Dice for
the failure-detection AUROC (structures with a Dice below 0.8). Used by
``tests/quality/test_ct_heldout.py`` and, for the model card::

    python -m tests.quality.ct_heldout --series 8 --json heldout.json [--weights-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import JPEGLSLossless, RLELossless

from acqflow.plugins.common.series_builder import SeriesGeometry, SeriesSpec, build_series
from acqflow.plugins.ct_muscle.anatomy import HELD_OUT_VARIETY, randomised_phantom
from acqflow.plugins.ct_muscle.evaluation import failure_auroc
from acqflow.plugins.ct_muscle.structures import default_label_table
from acqflow.plugins.ct_muscle.training import dice_per_class
from tests.support.daemon_proc import DaemonProcess, wait_until
from tests.support.peers import free_port, storescu

__all__ = ["ENCODINGS", "ORIENTATIONS", "HeldOutSeries", "failure_detection", "held_out_series",
           "run_through_daemon", "structure_scores"]

ENCODINGS = ("uint16-intercept", "int16", "slope-0.5", "rle", "jpeg-ls")
ORIENTATIONS = ("ascending", "descending", "oblique")
FIRST_SEED = 700_000_000  # apart from every training, validation and card seed
_PROPOSE = {"rle": ["-xr"], "jpeg-ls": ["-xt"]}  # storescu: propose the files' own syntax


@dataclass(frozen=True)
class HeldOutSeries:
    """A held-out series: its datasets, truth per SOP Instance UID and how it was made."""

    seed: int
    datasets: list[Dataset]
    truth: dict[str, np.ndarray]  # SOP Instance UID -> label slice
    encoding: str
    orientation: str
    matrix: int


def _encode(ds: Dataset, hu: np.ndarray, encoding: str) -> None:
    """Store ``hu`` in ``ds`` with ``encoding`` (one of :data:`ENCODINGS`)."""
    if encoding == "int16":
        ds.PixelRepresentation, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.clip(np.rint(hu), -32768, 32767).astype(np.int16).tobytes()
    elif encoding == "slope-0.5":
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1024
        ds.PixelData = np.clip(np.rint((hu + 1024) / 0.5), 0, 65535).astype(np.uint16).tobytes()
    elif encoding in ("rle", "jpeg-ls"):
        ds.compress(RLELossless if encoding == "rle" else JPEGLSLossless,
                    ds.pixel_array, generate_instance_uid=False)


def held_out_series(seed: int, encoding: str, orientation: str, matrix: int = 256,
                    slices: int = 24) -> HeldOutSeries:
    """One held-out phantom as a CT series (``matrix``² over a 480 mm field of view).

    Raises ValueError for an unknown encoding or orientation.
    """
    if encoding not in ENCODINGS or orientation not in ORIENTATIONS:
        raise ValueError(f"unknown encoding {encoding!r} or orientation {orientation!r}")
    spacing = 480.0 / matrix
    phantom = randomised_phantom(seed, (slices, matrix, matrix), spacing, slice_spacing_mm=5.0,
                                 variety=HELD_OUT_VARIETY)
    hu, labels = phantom.hu, phantom.labels
    row, column = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
    if orientation == "oblique":  # tilted 12 degrees about the left-right axis
        tilt = np.radians(12.0)
        column = (0.0, float(np.cos(tilt)), float(np.sin(tilt)))
    step = -5.0 if orientation == "descending" else 5.0
    geometry = SeriesGeometry(origin=(-240.0, -240.0, 0.0), row_direction=row,
                              column_direction=column, pixel_spacing=(spacing, spacing),
                              slice_spacing=step)
    datasets = build_series(hu, geometry, SeriesSpec(seed=f"ct-heldout-{seed}",
                                                     patient_id=f"HELDOUT-{seed}"))
    for ds, slice_hu in zip(datasets, hu, strict=True):
        _encode(ds, slice_hu, encoding)
    truth = {str(ds.SOPInstanceUID): labels[k] for k, ds in enumerate(datasets)}
    random.Random(seed).shuffle(datasets)  # the files arrive in no particular order
    return HeldOutSeries(seed, datasets, truth, encoding, orientation, matrix)


def _daemon(root: Path, weights_dir: Path | None) -> tuple[DaemonProcess, int]:
    port = free_port()
    pipelines: dict[str, Any] = {"options": {"ct-muscle": {"samples": 10}}}
    if weights_dir is not None:
        pipelines["weights_dir"] = str(weights_dir)
    daemon = DaemonProcess(root, {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"port": port, "series_quiet_seconds": 2.0},
        "folders": [{"path": str(root / "inbox")}],
        "routes": [{"name": "ct", "modality": ["CT"], "pipelines": ["ct-muscle"]}],
        "pipelines": pipelines,
    })
    return daemon, port


def _output_of(outputs: Path, name: str, series_uid: str) -> Dataset | None:
    """The output ``name`` (a SEG or SR) that references the series ``series_uid``."""
    for path in outputs.rglob(name):
        ds = dcmread(path)
        if name.endswith("-seg.dcm"):
            referenced = {str(s.SeriesInstanceUID) for s in ds.ReferencedSeriesSequence}
        else:
            referenced = {str(s.SeriesInstanceUID)
                          for study in ds.CurrentRequestedProcedureEvidenceSequence
                          for s in study.ReferencedSeriesSequence}
        if series_uid in referenced:
            return ds
    return None


def _seg_of(outputs: Path, series_uid: str) -> Dataset | None:
    return _output_of(outputs, "ct-muscle-seg.dcm", series_uid)


SCORES = {"disagreement": "Monte-Carlo sample disagreement",
          "mean_uncertainty": "Mean segmentation uncertainty"}


def structure_scores(sr_dataset: Dataset) -> dict[str, dict[str, float]]:
    """Per structure key, the review scores the SR reports (read back with highdicom)."""
    table = default_label_table()
    by_type = {s.type.value: s.key for s in table}
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_dataset)
    out: dict[str, dict[str, float]] = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():  # type: ignore[attr-defined]
        values = {m.name.meaning: float(m.value) for m in group.get_measurements()}
        key = by_type[group.finding_type.value]
        out[key] = {name: values[meaning] for name, meaning in SCORES.items() if meaning in values}
    return out


def failure_detection(results: list[dict[str, Any]], dice_below: float = 0.8) -> dict[str, float]:
    """AUROC of each review score for the structures with a Dice below ``dice_below``,
    over every predicted structure of every series."""
    pairs = [(r["dice"][key], scores) for r in results for key, scores in r["scores"].items()
             if key in r["dice"]]
    dice = [d for d, _ in pairs]
    return {name: failure_auroc([s[name] for _, s in pairs], dice, dice_below) for name in SCORES}


def score(seg_dataset: Dataset, series: HeldOutSeries) -> dict[str, float]:
    """Dice per structure key of the SEG against the series' truth."""
    table = default_label_table()
    seg = hd.seg.Segmentation.from_dataset(seg_dataset)
    uids = list(series.truth)
    numbers = np.asarray(seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, relabel=False,
        ignore_spatial_locations=True, assert_missing_frames_are_empty=True))
    by_type = {s.type.value: s.label for s in table}
    lut = np.zeros(max(seg.segment_numbers) + 1, dtype=np.uint8)
    for number in seg.segment_numbers:
        lut[number] = by_type[seg.get_segment_description(number).segmented_property_type.value]
    predicted = lut[numbers]
    truth = np.stack([series.truth[uid] for uid in uids])
    dice = dice_per_class(predicted, truth, table.num_classes)
    return {table.by_label(label).key: value for label, value in dice.items()}


def run_through_daemon(series: list[HeldOutSeries], root: Path,
                       weights_dir: Path | None = None, timeout: float = 600.0) -> list[dict[str, Any]]:
    """Send every series to one daemon and score its SEGs; one result dict per series."""
    daemon, port = _daemon(root, weights_dir)
    daemon.start()
    results = []
    try:
        for item in series:
            folder = root / "send" / str(item.seed)
            folder.mkdir(parents=True)
            paths = []
            for index, ds in enumerate(item.datasets):
                path = folder / f"{index:04d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
            started = time.monotonic()
            sent = storescu(port, paths, calling_ae="HELDOUT", extra=_PROPOSE.get(item.encoding, []))
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stdout}{sent.stderr}")
            uid = str(item.datasets[0].SeriesInstanceUID)
            found: list[Dataset] = []

            def written(uid: str = uid, found: list[Dataset] = found) -> bool:
                seg = _seg_of(root / "outputs", uid)
                found[:] = [seg] if seg is not None else []
                return bool(found)

            wait_until(written, timeout, f"the SEG of held-out series {item.seed}", daemon)
            seconds = time.monotonic() - started
            seg = found[0]
            dice = score(seg, item)
            sr = _output_of(root / "outputs", "ct-muscle-sr.dcm", uid)
            results.append({"seed": item.seed, "encoding": item.encoding,
                            "orientation": item.orientation, "matrix": item.matrix,
                            "seconds": round(seconds, 1), "mean_dice": float(np.mean(list(dice.values()))),
                            "dice": dice, "scores": structure_scores(sr) if sr is not None else {}})
    finally:
        if daemon.alive():
            daemon.terminate()
    return results


def _plan(count: int, first_seed: int) -> list[tuple[int, str, str]]:
    return [(first_seed + i, ENCODINGS[i % len(ENCODINGS)], ORIENTATIONS[i % len(ORIENTATIONS)])
            for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    series = [held_out_series(seed, encoding, orientation, args.matrix)
              for seed, encoding, orientation in _plan(args.series, args.first_seed)]
    with tempfile.TemporaryDirectory(prefix="ct-heldout-") as scratch:
        results = run_through_daemon(series, Path(scratch), args.weights_dir)
    for r in results:
        print(f"seed {r['seed']} {r['encoding']:>16} {r['orientation']:>10} {r['matrix']}²: "
              f"mean Dice {r['mean_dice']:.3f} ({r['seconds']} s)")
    structures = sorted({k for r in results for k in r["dice"]})
    per_structure = {k: float(np.mean([r["dice"][k] for r in results if k in r["dice"]]))
                     for k in structures}
    auroc = failure_detection(results)
    summary = {"variety": "held-out", "series": results,
               "mean_dice": float(np.mean([r["mean_dice"] for r in results])),
               "per_structure": per_structure, "failure_auroc": auroc}
    print(f"mean Dice over {len(results)} series: {summary['mean_dice']:.3f}")
    print("failure-detection AUROC (Dice < 0.8): " + ", ".join(
        f"{name} {value:.3f}" for name, value in auroc.items()))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
