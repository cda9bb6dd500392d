"""MR hip/thigh muscle segmentation: CycleGAN MR-to-CT translation, then the CT Bayesian U-net.

MR is segmented without MR labels: a generator trained on unpaired MR and CT slices
turns the MR volume into a synthetic CT in HU, which the CT muscle network segments.
Importing this package is cheap; torch and highdicom are imported when a pipeline loads.
The entry point is :class:`acqflow.plugins.mr_muscle.pipeline.MrMusclePipeline`.
"""

from __future__ import annotations

__all__: list[str] = []
