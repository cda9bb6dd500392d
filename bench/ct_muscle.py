"""MC-dropout inference of the ct-muscle Bayesian U-net: batched vs straightforward loop.

Both run in this process on the same phantom volume (default 512 x 512 x 200, T = 10):

* batched: :func:`acqflow.plugins.ct_muscle.inference.predict_volume`, all T samples of a group of
  slices in one forward batch (the deterministic first encoder block, and the per-channel
  responses of the convolutions that read it, once per slice, see
  ``BayesianUNet.forward_mc``), mean softmax and uncertainty on the model grid, the
  uncertainty resampled back to the 512 x 512 matrix and the labels resampled there by
  interpolating the mean softmax in full only along label boundaries;
* loop: the straightforward implementation, T full passes over the volume, one slice per
  forward call, each pass's softmax resampled to the original matrix and accumulated there.

Prints seconds, the ratio and the peak memory of each (RSS above the starting point on
CPU, ``torch.cuda.max_memory_allocated`` on a GPU) as JSON.

    python bench/ct_muscle.py --slices 200 --samples 10 --threads 1

``--threads`` applies to both implementations (``torch.set_num_threads``).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch.nn import functional as F

from acqflow.models.store import bundled_weights_dir
from acqflow.models.unet import BayesianUNet
from acqflow.plugins.ct_muscle.inference import (
    InputGeometry,
    McOptions,
    Prediction,
    UncertaintyMeasure,
    load_model,
    predict_volume,
    preprocess_slices,
)
from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, generate_phantom


class PeakRss:
    """Samples the process RSS in a thread; ``peak`` is the maximum above the start."""

    def __init__(self, interval: float = 0.01) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.start = self._process.memory_info().rss
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss - self.start)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def loop_predict(
    model: BayesianUNet, hu: np.ndarray, spacing: tuple[float, float], geo: InputGeometry,
    samples: int,
) -> Prediction:
    """The straightforward baseline: T passes, one slice per forward call."""
    device = next(model.parameters()).device
    model.eval()
    model.set_mc_dropout(True)
    slices, rows, cols = hu.shape
    classes = model.head.out_channels
    prob_sum = torch.zeros((slices, classes, rows, cols), device=device)
    volume = torch.from_numpy(hu).float().to(device)
    size = (max(1, round(rows * spacing[0] / geo.pixel_spacing_mm)),
            max(1, round(cols * spacing[1] / geo.pixel_spacing_mm)))
    with torch.inference_mode():
        for _ in range(samples):
            for k in range(slices):
                x = preprocess_slices(volume[k : k + 1], spacing, geo)
                probs = torch.softmax(model(x), dim=1)[:, :, : size[0], : size[1]]
                prob_sum[k] += F.interpolate(probs, size=(rows, cols), mode="bilinear",
                                             align_corners=False)[0]
    labels = np.empty(hu.shape, dtype=np.uint8)
    entropy = np.empty(hu.shape, dtype=np.float32)
    for k in range(slices):  # per slice, so the reduction adds no volume-sized temporaries
        mean = prob_sum[k] / samples
        entropy[k] = (-(mean * torch.log(mean.clamp_min(1e-12))).sum(dim=0)).cpu().numpy()
        labels[k] = mean.argmax(dim=0).to(torch.uint8).cpu().numpy()
    model.set_mc_dropout(False)
    return Prediction(labels=labels, uncertainty=entropy, measure=UncertaintyMeasure.ENTROPY)


def _timed(device: str, run: Callable[[], Prediction]) -> tuple[float, int, Prediction]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = run()
        torch.cuda.synchronize()
        return time.perf_counter() - start, int(torch.cuda.max_memory_allocated()), result
    with PeakRss() as rss:
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
    return seconds, rss.peak, result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pixel-spacing", type=float, default=0.78)
    parser.add_argument("--samples", type=int, default=10)
    # 10 images (one slice x T) per forward keep the full-resolution activations of a
    # batch in cache on CPU; larger batches were slower per image on the dev machine.
    parser.add_argument("--batch-images", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--weights", type=Path, default=bundled_weights_dir())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, card, geo = load_model(args.weights, args.device)
    # The baseline gets the network as a straightforward script would build it: default
    # (NCHW) memory format, same weights.
    plain = BayesianUNet(**card.arguments).to(args.device)
    plain.load_state_dict(model.state_dict())
    options = PhantomOptions(shape=(args.slices, args.size, args.size),
                             pixel_spacing_mm=args.pixel_spacing, slice_spacing_mm=1.5)
    hu = generate_phantom(2024, options).hu
    spacing = (args.pixel_spacing, args.pixel_spacing)
    # The grid the pipeline picks for this body (body size normalisation), for both.
    geo = geo.for_volume(hu, spacing)
    torch.manual_seed(0)
    mc = McOptions(samples=args.samples, batch_images=args.batch_images)
    batched_s = loop_s = float("inf")
    batched_mem = loop_mem = 0
    for _ in range(args.repeat):  # interleaved; the minimum is least disturbed by other load
        seconds, memory, batched = _timed(
            args.device, lambda: predict_volume(model, hu, spacing, geo, mc))
        batched_s, batched_mem = min(batched_s, seconds), max(batched_mem, memory)
        seconds, memory, loop = _timed(
            args.device, lambda: loop_predict(plain, hu, spacing, geo, args.samples))
        loop_s, loop_mem = min(loop_s, seconds), max(loop_mem, memory)
    report = {
        "volume": [args.slices, args.size, args.size], "samples": args.samples,
        "device": args.device if args.device != "cpu" else f"cpu x{args.threads} threads",
        "model": f"{card.name} {card.version}", "batch_images": args.batch_images,
        "model_grid_mm": geo.pixel_spacing_mm,
        "repeat": args.repeat,
        "batched_seconds": round(batched_s, 2), "loop_seconds": round(loop_s, 2),
        "speedup": round(loop_s / batched_s, 2),
        "batched_peak_memory_mb": round(batched_mem / 2**20, 1),
        "loop_peak_memory_mb": round(loop_mem / 2**20, 1),
        "label_agreement": round(float((batched.labels == loop.labels).mean()), 4),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
