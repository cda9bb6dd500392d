"""Virtual immunostaining of stem-cell-derived cardiomyocytes in phase-contrast images.

A tile CNN classifies blocks of a phase-contrast image as cardiomyocyte or not (trained
on labels from the binarised NKX2.5-GFP fluorescence of the same field); block
probabilities are blended into a full-resolution virtual stain, and the fraction of
positive blocks is tracked per well over time as the differentiation efficiency.

Heavy modules (torch) are imported only when used: importing this package is cheap.
Entry point: ``acqflow.plugins.virtual_staining.pipeline:VirtualStainingPipeline``.
"""

from __future__ import annotations

__all__ = ["VirtualStainingPipeline"]


def __getattr__(name: str) -> object:
    if name == "VirtualStainingPipeline":
        from acqflow.plugins.virtual_staining.pipeline import VirtualStainingPipeline

        return VirtualStainingPipeline
    raise AttributeError(name)
