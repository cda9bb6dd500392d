"""mr-muscle inference time: CycleGAN MR-to-CT translation plus MC-dropout segmentation.

One MR phantom volume (default 256 x 256 x 100 at 1.5 mm, slices resampled to the
models' 3 mm grid as in the pipeline) goes through the two steps of the pipeline:

* translation: :func:`acqflow.plugins.mr_muscle.translation.translate_volume` (normalise,
  resample, generator, back to the MR matrix, HU);
* segmentation: :func:`acqflow.plugins.ct_muscle.inference.predict_volume` on the synthetic CT
  (T MC-dropout samples, batched).

The baseline measured in the same run is the segmentation alone (what a CT volume of the
same size costs), so the ratio says what translating MR adds. Every step is repeated
``--repeats`` times after one warm-up; the median is reported, as JSON on stdout.

    python bench/mr_muscle.py --slices 100 --size 256 --samples 10 --threads 2
    python bench/mr_muscle.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acqflow.models.store import bundled_weights_dir
from acqflow.plugins.ct_muscle.inference import McOptions, load_model, predict_volume
from acqflow.plugins.ct_muscle.structures import default_label_table
from acqflow.plugins.mr_muscle.phantoms import (
    HELD_OUT_SEED_OFFSET,
    MR_ANATOMY_SEED_OFFSET,
    MrPhantomOptions,
    generate_mr_phantom,
)
from acqflow.plugins.mr_muscle.translation import load_generator, translate_volume


def _timed(step: Callable[[], Any], device: str, repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` runs after one warm-up, and the last result."""
    result = step()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="rows = columns of the MR matrix")
    parser.add_argument("--spacing", type=float, default=1.5, help="in-plane pixel spacing (mm)")
    parser.add_argument("--samples", type=int, default=10, help="MC-dropout samples T")
    parser.add_argument("--batch-images", type=int, default=None,
                        help="images per forward (default: the pipeline's, T on a CPU, 8 x T on a GPU)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", type=Path, default=None, help="default: bundled weights")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = args.weights or bundled_weights_dir()
    generator, gen_card, scale = load_generator(weights, args.device)
    from acqflow.plugins.mr_muscle.pipeline import bundled_segmenter_dir

    segmenter = args.weights or bundled_segmenter_dir()
    unet, unet_card, geometry = load_model(segmenter, args.device, [s.key for s in default_label_table()])
    seed = HELD_OUT_SEED_OFFSET - MR_ANATOMY_SEED_OFFSET + 9999
    options = MrPhantomOptions(shape=(args.slices, args.size, args.size), pixel_spacing_mm=args.spacing)
    mr = generate_mr_phantom(seed, options).signal
    spacing = (args.spacing, args.spacing)
    mc = McOptions(samples=args.samples, batch_images=args.batch_images)
    t_translate, hu = _timed(
        lambda: translate_volume(generator, mr, spacing, scale), args.device, args.repeats
    )
    t_segment, prediction = _timed(
        lambda: predict_volume(unet, hu, spacing, geometry, mc), args.device, args.repeats
    )
    total = t_translate + t_segment
    report = {
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "volume": [args.slices, args.size, args.size],
        "spacing_mm": args.spacing,
        "mc_samples": args.samples,
        "models": {"mr_to_ct": gen_card.version, "ct_muscle": unet_card.version},
        "seconds_translation": round(t_translate, 3),
        "seconds_segmentation": round(t_segment, 3),
        "seconds_total": round(total, 3),
        "baseline_segmentation_only_seconds": round(t_segment, 3),
        "ratio_total_to_segmentation_only": round(total / t_segment, 3),
        "translation_share": round(t_translate / total, 3),
        "structures_found": int(len(np.unique(prediction.labels)) - 1),
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
