"""Encoding the virtual stain: an ImageJ hyperstack TIFF and an RGB overlay PNG (as bytes)."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["overlay_png", "overlay_rgb", "virtual_stain_tiff"]

_GREEN = np.array([0.15, 1.0, 0.25], dtype=np.float32)


def _luts() -> list[np.ndarray]:
    """Gray for phase, green for the probability, as ImageJ (3, 256) palettes."""
    ramp = np.arange(256, dtype=np.uint8)
    zero = np.zeros(256, dtype=np.uint8)
    return [np.stack([ramp, ramp, ramp]), np.stack([zero, ramp, zero])]


def _stack(plane: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, float]:
    """Phase and probability in one dtype ImageJ can open, and the probability's full scale."""
    if plane.dtype == np.uint8:
        return np.stack([plane, np.rint(probability * 255).astype(np.uint8)]), 255.0
    if plane.dtype == np.uint16:
        return np.stack([plane, np.rint(probability * 65535).astype(np.uint16)]), 65535.0
    return np.stack([plane.astype(np.float32), probability.astype(np.float32)]), 1.0


def virtual_stain_tiff(
    plane: np.ndarray, probability: np.ndarray, pixel_size_um: tuple[float, float] | None
) -> bytes:
    """A two-channel (phase, cardiomyocyte probability) ImageJ hyperstack, axes ``CYX``.

    8- and 16-bit phase images keep their type and the probability is scaled to the full
    range of that type (0..255 or 0..65535); any other type is written as float32 with the
    probability in 0..1. The pixel size (y, x) in micrometres is kept when known. Raises
    ValueError when the shapes differ.
    """
    import tifffile

    if plane.shape != probability.shape:
        raise ValueError(f"phase {plane.shape} and probability {probability.shape} differ")
    stack, full = _stack(plane, probability)
    low, high = np.percentile(
        plane[:: max(1, plane.shape[0] // 512), :: max(1, plane.shape[1] // 512)], [0.5, 99.5]
    )
    metadata: dict[str, object] = {
        "axes": "CYX",
        "mode": "composite",
        "Labels": ["phase", "cardiomyocyte probability"],
        "Ranges": (float(low), float(max(high, low + 1e-6)), 0.0, full),
        "LUTs": _luts(),
    }
    resolution = None
    if pixel_size_um is not None:
        metadata["unit"] = "um"
        resolution = (1.0 / pixel_size_um[1], 1.0 / pixel_size_um[0])
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, stack, imagej=True, resolution=resolution, metadata=metadata)
    return buffer.getvalue()


def overlay_rgb(plane: np.ndarray, probability: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """8-bit RGB: the contrast-stretched phase image tinted green by the probability."""
    image = plane.astype(np.float32)
    step = max(1, int(np.sqrt(image.size / 250_000)))
    low, high = np.percentile(image[::step, ::step], [0.5, 99.5])
    gray = np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    weight = (alpha * probability.astype(np.float32))[..., None]
    rgb = gray[..., None] * (1.0 - weight) + weight * _GREEN
    result: np.ndarray = np.rint(rgb * 255.0).astype(np.uint8)
    return result


def overlay_png(plane: np.ndarray, probability: np.ndarray, alpha: float = 0.5) -> bytes:
    """PNG bytes of :func:`overlay_rgb` (fast compression: overlays are refreshed often)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(overlay_rgb(plane, probability, alpha), mode="RGB").save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()
