"""Benchmark: whole-image virtual-staining inference vs a per-block Python loop.

Both run in this process on the same generated 2048x2048 16-bit phase image with the
bundled demo weights and the pipeline's default stride, and produce the same block
probabilities (checked). The baseline is the straightforward research implementation:
cut the padded image into blocks and call the network once per block. Also measured:
``VirtualStainingPipeline.run`` from array in to TIFF + PNG bytes out (no file I/O), and
with ``--latency N`` the file-in to overlay-out latency through a real ``acqflow serve``:
N images renamed into its watched folder one at a time, each timed from the rename until
its overlay exists.

    .venv/bin/python bench/virtual_staining.py [--threads 1] [--device cpu] [--repeats 3] [--latency 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acqflow.models.store import bundled_weights_dir, load_weights, read_card
from acqflow.models.tile_cnn import TileCNN
from acqflow.plugins.api import ImageItem, ImageMetadata, PipelineContext
from acqflow.plugins.virtual_staining.inference import (
    BlockPredictor,
    InferenceOptions,
    loop_block_probabilities,
)
from acqflow.plugins.virtual_staining.pipeline import MODEL_NAME, VirtualStainingPipeline
from acqflow.plugins.virtual_staining.synthetic import SyntheticSpec, generate_series

SIDE = 2048


def _best_time(function: Callable[[], Any], repeats: int, device: str) -> tuple[float, Any]:
    """Fastest wall time of ``repeats`` calls (after one warm-up call) and the last result."""
    result = function()
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def _image() -> np.ndarray:
    spec = SyntheticSpec(
        experiments=1, wells=1, positions=1, timepoints=1, shape=(SIDE, SIDE), bit_depth=16, seed=7
    )
    return next(generate_series(spec)).phase


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda for the whole-image path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", type=Path, default=bundled_weights_dir())
    parser.add_argument("--latency", type=int, default=0, help="images sent through the daemon (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    card = read_card(args.weights, MODEL_NAME)
    model = TileCNN(**card.arguments)
    load_weights(model, args.weights, MODEL_NAME)
    phase = _image()
    megapixels = phase.size / 1e6
    research = TileCNN(**card.arguments)
    research.load_state_dict(model.state_dict())
    reference = BlockPredictor(research, "cpu", InferenceOptions())
    whole = BlockPredictor(model, args.device, InferenceOptions())
    whole_s, prediction = _best_time(lambda: whole.predict(phase), args.repeats, args.device)

    padded, _ = reference.pad(phase)
    loop_s, looped = _best_time(
        lambda: loop_block_probabilities(reference.model, padded, reference.stride),
        max(1, args.repeats // 3),
        "cpu",
    )
    every = reference.stride // reference.unit
    grid = torch.sigmoid(reference.block_grid(padded)).numpy()[::every, ::every]
    difference = float(np.abs(grid - looped).max())

    pipeline = VirtualStainingPipeline()
    pipeline.load(PipelineContext(device=args.device, weights_dir=args.weights))
    item = ImageItem("bench", Path("bench.tif"), phase, "YX", ImageMetadata(pixel_size_um=(0.65, 0.65)))
    run_s, _ = _best_time(lambda: pipeline.run(item), args.repeats, args.device)

    print(
        f"image {SIDE}x{SIDE} uint16 ({megapixels:.2f} MP), block {model.block_size}, "
        f"stride {whole.stride}, {looped.size} blocks, torch threads {torch.get_num_threads()}, "
        f"device {args.device}"
    )
    print(f"whole image ({args.device}):  {whole_s:8.3f} s  {megapixels / whole_s:8.2f} MP/s")
    print(f"per-block loop (cpu): {loop_s:8.3f} s  {megapixels / loop_s:8.2f} MP/s")
    print(f"speed-up:             {loop_s / whole_s:8.1f}x  (max |difference| {difference:.2e})")
    print(
        f"pipeline.run, array in -> TIFF + PNG bytes out: {run_s:.3f} s; "
        f"{prediction.blocks_positive}/{prediction.blocks_total} blocks positive"
    )
    if args.latency:
        latencies = _file_to_overlay(phase, args.latency, args.device)
        print(
            f"file in -> overlay out through acqflow serve ({len(latencies)} images): "
            f"median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s"
        )


def _file_to_overlay(phase: np.ndarray, count: int, device: str) -> list[float]:
    """Seconds from renaming each image into a watched folder to its overlay existing."""
    import shutil
    import sys
    import tempfile

    import tifffile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.daemon_proc import DaemonProcess
    from tests.support.peers import free_port

    root = Path(tempfile.mkdtemp(prefix="acqflow-bench-"))
    inbox, outputs = root / "inbox", root / "outputs"
    daemon = DaemonProcess(root, {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(outputs)},
        "workers": {"device": device, "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"enabled": False},
        "folders": [{"path": str(inbox), "stable_seconds": 2.0}],
    })
    daemon.start()
    latencies: list[float] = []
    try:
        for index in range(count + 1):  # the first image also loads the model: not counted
            name = f"BENCH_A01_pos1_t{index:03d}_phase"
            staged = root / f"{name}.tif"
            tifffile.imwrite(staged, phase, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                             metadata={"axes": "YX", "unit": "um"})
            (inbox / "BENCH").mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            staged.rename(inbox / "BENCH" / f"{name}.tif")
            while not any(outputs.rglob(f"{name}/overlay.png")):
                if not daemon.alive() or time.perf_counter() - started > 300:
                    raise RuntimeError(f"no overlay for {name}:\n{daemon.log_tail()}")
                time.sleep(0.02)
            if index:
                latencies.append(time.perf_counter() - started)
    finally:
        daemon.terminate()
        shutil.rmtree(root, ignore_errors=True)
    return latencies


if __name__ == "__main__":
    main()
