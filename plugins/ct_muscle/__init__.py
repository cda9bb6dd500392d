"""CT hip/thigh muscle segmentation with a Bayesian U-net (Monte-Carlo dropout).

Importing this package is cheap; torch and highdicom are imported when a pipeline loads.
The entry point is :class:`acqflow.plugins.ct_muscle.pipeline.CtMusclePipeline`.
"""

from __future__ import annotations

__all__: list[str] = []
