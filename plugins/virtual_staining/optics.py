"""Image formation for generated phase-contrast and fluorescence fields.

Phase contrast follows the Zernike model: the specimen multiplies the illumination by
``a * exp(i * phi)`` (``phi`` the optical path difference in radians); the phase ring
retards and attenuates the undiffracted light, which is the low-spatial-frequency part of
the field (a Gaussian low-pass stands in for the ring's footprint in the back focal
plane). Its finite width is what gives real phase contrast its **halo** (a bright rim
around dark cells) and **shade-off** (the interior of a large flat object fading towards
the background)::

    U_image = U - (1 - t * exp(i * theta)) * lowpass(U)
    I       = |blur(U_image)|**2

Then the illumination (vignetting, a ramp, dust shadows) and a camera (photon noise,
read noise, dark offset, gain, 8/12/16-bit quantisation and saturation) are applied.
Fluorescence is the blurred emitter density through the same camera model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Camera", "PhaseOptics", "camera_image", "illumination", "phase_contrast"]


@dataclass(frozen=True)
class PhaseOptics:
    """One microscope's phase optics in pixel units.

    ``ring_sigma`` is the low-pass radius (pixels, in the image plane) of the light the
    ring catches: larger means wider halos and more shade-off; ``transmission`` is the
    ring's amplitude transmission, ``retardation`` its phase shift (``-pi/2``: positive
    phase contrast, cells dark; ``+pi/2``: negative, cells bright); ``blur`` is the
    objective's PSF (Gaussian sigma, pixels) including defocus.
    """

    ring_sigma: float
    transmission: float
    retardation: float
    blur: float

    def __post_init__(self) -> None:
        if self.ring_sigma <= 0 or not 0.0 < self.transmission <= 1.0 or self.blur < 0:
            raise ValueError(f"invalid phase optics {self}")


@dataclass(frozen=True)
class Camera:
    """Camera model: ``photons`` at the background level, read noise and offset in DN."""

    bit_depth: int
    photons: float
    read_noise: float
    background_level: float  # fraction of full scale the background sits at
    offset: float  # dark level, fraction of full scale

    def __post_init__(self) -> None:
        if self.bit_depth not in (8, 10, 12, 14, 16):
            raise ValueError(f"bit depth must be 8, 10, 12, 14 or 16, got {self.bit_depth}")
        if self.photons <= 0 or self.read_noise < 0 or not 0.0 < self.background_level < 1.0:
            raise ValueError(f"invalid camera {self}")

    @property
    def full_scale(self) -> float:
        return float(2**self.bit_depth - 1)


def _gaussian_transfer(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Fourier transfer of a Gaussian of ``sigma`` pixels (real, for rfft-free full FFTs)."""
    fy = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = np.fft.fftfreq(shape[1]).astype(np.float32)[None, :]
    transfer: np.ndarray = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    return transfer


def phase_contrast(phi: np.ndarray, amplitude: np.ndarray, optics: PhaseOptics) -> np.ndarray:
    """Phase-contrast intensity of a specimen, background normalised to 1."""
    field = amplitude * np.exp(1j * phi.astype(np.float32))
    spectrum = np.fft.fft2(field)
    ring = (1.0 - optics.transmission * np.exp(1j * optics.retardation)) * _gaussian_transfer(
        phi.shape, optics.ring_sigma
    )
    psf = _gaussian_transfer(phi.shape, optics.blur) if optics.blur > 0 else 1.0
    image_field = np.fft.ifft2(spectrum * (1.0 - ring) * psf)
    intensity = np.abs(image_field) ** 2
    intensity /= optics.transmission**2  # background (phi = 0, a = 1) at 1
    result: np.ndarray = intensity.astype(np.float32)
    return result


def illumination(
    rng: np.random.Generator, shape: tuple[int, int], vignetting: float, ramp: float, dust: int
) -> np.ndarray:
    """Multiplicative illumination: radial fall-off, a linear ramp and out-of-focus dust."""
    from scipy import ndimage

    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    cy, cx = (
        (shape[0] - 1) / 2 + rng.normal(0, 0.1) * shape[0],
        (shape[1] - 1) / 2 + rng.normal(0, 0.1) * shape[1],
    )
    radius2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.5 * max(shape)) ** 2
    angle = rng.uniform(0, 2 * np.pi)
    tilt = (np.cos(angle) * (yy / shape[0] - 0.5) + np.sin(angle) * (xx / shape[1] - 0.5)) * 2 * ramp
    light = (1.0 - vignetting * np.clip(radius2, 0, 2) / 2) * (1.0 + tilt)
    if dust:
        shadows = np.zeros(shape, dtype=np.float32)
        for _ in range(dust):
            r = rng.uniform(0.03, 0.12) * max(shape)
            y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
            ring = np.abs(np.sqrt((yy - y) ** 2 + (xx - x) ** 2) - r * rng.uniform(0.3, 0.8))
            shadows += rng.uniform(0.03, 0.15) * np.exp(-((ring / (0.25 * r)) ** 2))
        light *= 1.0 - np.clip(ndimage.gaussian_filter(shadows, 2.0), 0, 0.6)
    result: np.ndarray = np.clip(light, 0.05, None).astype(np.float32)
    return result


def camera_image(rng: np.random.Generator, relative: np.ndarray, camera: Camera) -> np.ndarray:
    """Integer image of a relative intensity (background 1) through ``camera``.

    Returns uint8 for 8-bit cameras, else uint16 (10-14-bit data in the low bits, as
    cameras write it).
    """
    photons = rng.poisson(np.clip(relative, 0, None) * camera.photons).astype(np.float32)
    scale = camera.background_level * camera.full_scale / camera.photons
    values = camera.offset * camera.full_scale + photons * scale
    values += rng.normal(0.0, camera.read_noise, relative.shape).astype(np.float32)
    dtype = np.uint8 if camera.bit_depth == 8 else np.uint16
    result: np.ndarray = np.clip(np.rint(values), 0, camera.full_scale).astype(dtype)
    return result
