"""Synthetic hip/thigh CT phantoms with labelled bones and muscles.

Each phantom is a stack of axial slices from the iliac wings (cranial) down to the mid
thigh. The anatomy is a simplified map: per side, bones are ellipses and muscles are
annular sectors around a centre, separated by thin intermuscular fat, inside
subcutaneous fat and air. Three zones (pelvis, hip, thigh) hold different structures;
zone borders, sizes, angles, fat thickness, HU values and noise vary per phantom, so a
network must learn the spatial relations rather than memorise one layout.
Realistic HU: air -1000, fat about -100, muscle 35-55, bone 700 (cancellous) to 1200
(cortex).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from acqflow.plugins.ct_muscle.structures import LabelTable, default_label_table

__all__ = ["Phantom", "PhantomOptions", "generate_phantom"]

# Sectors per zone, in the frame of the right side: (key, start deg, end deg, r_in, r_out)
# with 0 deg anterior, 90 deg lateral, 180 deg posterior, radii as fractions of the side
# radius. The left side is the mirror image.
_Sector = tuple[str, float, float, float, float]
_PELVIS: tuple[_Sector, ...] = (
    ("iliacus", -30.0, 75.0, 0.12, 0.38),
    ("pelvis", -20.0, 150.0, 0.40, 0.56),
    ("gluteus_minimus", 80.0, 150.0, 0.58, 0.70),
    ("gluteus_medius", 40.0, 160.0, 0.71, 0.86),
    ("gluteus_maximus", 115.0, 215.0, 0.58, 0.95),
    ("piriformis", 160.0, 230.0, 0.15, 0.52),
    ("psoas_major", -95.0, -40.0, 0.10, 0.48),
)
_HIP: tuple[_Sector, ...] = (
    ("pelvis", -170.0, -70.0, 0.28, 0.50),
    ("obturator_internus", -150.0, -85.0, 0.53, 0.72),
    ("obturator_externus", -70.0, -30.0, 0.30, 0.52),
    ("pectineus", -75.0, -35.0, 0.56, 0.80),
    ("psoas_major", -28.0, 8.0, 0.35, 0.70),
    ("sartorius", -25.0, 5.0, 0.74, 0.95),
    ("rectus_femoris", 10.0, 40.0, 0.45, 0.80),
    ("tensor_fasciae_latae", 45.0, 80.0, 0.62, 0.92),
    ("gluteus_medius", 85.0, 130.0, 0.40, 0.75),
    ("gluteus_maximus", 110.0, 200.0, 0.74, 0.98),
    ("gluteus_minimus", 135.0, 160.0, 0.35, 0.72),
)
_THIGH: tuple[_Sector, ...] = (
    ("rectus_femoris", -20.0, 22.0, 0.62, 0.95),
    ("vastus_lateralis_intermedius", 26.0, 110.0, 0.30, 0.94),
    ("biceps_femoris", 114.0, 148.0, 0.45, 0.95),
    ("semitendinosus", 152.0, 180.0, 0.55, 0.95),
    ("semimembranosus", 184.0, 212.0, 0.40, 0.88),
    ("gracilis", 216.0, 232.0, 0.70, 0.95),
    ("adductor_muscles", 180.0, 265.0, 0.28, 0.66),
    ("sartorius", 268.0, 292.0, 0.70, 0.95),
    ("vastus_medialis", 296.0, 336.0, 0.30, 0.90),
    ("vastus_lateralis_intermedius", -18.0, 22.0, 0.30, 0.58),
)
_FAT, _AIR = -100.0, -1000.0


@dataclass(frozen=True)
class PhantomOptions:
    """Size and appearance of a phantom; ``shape`` is (slices, rows, columns)."""

    shape: tuple[int, int, int] = (24, 128, 128)
    pixel_spacing_mm: float = 3.0
    slice_spacing_mm: float = 6.0
    noise_hu: float = 12.0

    def __post_init__(self) -> None:
        if min(self.shape) < 1 or self.shape[1] < 32 or self.shape[2] < 32:
            raise ValueError(f"phantom shape too small: {self.shape}")
        if self.pixel_spacing_mm <= 0 or self.slice_spacing_mm <= 0 or self.noise_hu < 0:
            raise ValueError("spacings must be positive and noise non-negative")


@dataclass(frozen=True)
class Phantom:
    """HU volume and label map, both (slices, rows, columns), cranial slice first."""

    hu: np.ndarray
    labels: np.ndarray
    pixel_spacing_mm: float
    slice_spacing_mm: float


@dataclass(frozen=True)
class _Variation:
    zone_borders: tuple[float, float]
    rotation: float
    scale: float
    separation: float
    fat_margin: float
    muscle_hu: float
    jitter: np.ndarray  # (sectors, 4): start, end, r_in, r_out offsets


def _variation(rng: np.random.Generator) -> _Variation:
    return _Variation(
        zone_borders=(rng.uniform(0.28, 0.38), rng.uniform(0.58, 0.68)),
        rotation=rng.uniform(-8.0, 8.0),
        scale=rng.uniform(0.88, 1.08),
        separation=rng.uniform(0.95, 1.08),
        fat_margin=rng.uniform(0.06, 0.14),
        muscle_hu=rng.uniform(35.0, 55.0),
        jitter=rng.normal(0.0, 1.0, size=(16, 4)) * np.array([4.0, 4.0, 0.02, 0.02]),
    )


def _side_frame(
    rows: int, cols: int, centre: tuple[float, float], radius: float, mirror: bool, rot: float
) -> tuple[np.ndarray, np.ndarray]:
    """Radius (fraction of ``radius``) and angle (deg, 0 anterior, 90 lateral) per pixel."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    # Image columns run to the patient's left; lateral for the right side is -x.
    lateral = dx if mirror else -dx
    angle = (np.degrees(np.arctan2(lateral, -dy)) - rot) % 360.0
    return np.hypot(dy, dx) / radius, angle


def _in_sector(r: np.ndarray, a: np.ndarray, sector: _Sector, jit: np.ndarray) -> np.ndarray:
    _, start, end, r_in, r_out = sector
    start, end = (start + jit[0]) % 360.0, (end + jit[1]) % 360.0
    inside_angle = (a >= start) & (a <= end) if start <= end else (a >= start) | (a <= end)
    inside: np.ndarray = inside_angle & (r >= r_in + jit[2]) & (r <= r_out + jit[3])
    return inside


def _zone(t: float, var: _Variation) -> tuple[_Sector, ...]:
    if t < var.zone_borders[0]:
        return _PELVIS
    return _HIP if t < var.zone_borders[1] else _THIGH


def _draw_side(
    hu: np.ndarray, lab: np.ndarray, table: LabelTable, frame: tuple[np.ndarray, np.ndarray],
    sectors: tuple[_Sector, ...], var: _Variation,
) -> None:
    r, a = frame
    margin = var.fat_margin * 0.35
    for index, sector in enumerate(sectors):
        jit = var.jitter[index % len(var.jitter)]
        outer = _in_sector(r, a, sector, jit)
        core = outer & _in_sector(
            r, a, (sector[0], sector[1] + 3.0, sector[2] - 3.0, sector[3] + margin,
                   sector[4] - margin), jit,
        )
        label = table.by_key(sector[0]).label
        is_bone = sector[0] in ("pelvis", "femur", "sacrum")
        lab[core] = label
        hu[core] = 800.0 if is_bone else var.muscle_hu + (index % 4) * 3.0


def _draw_bone_disc(
    hu: np.ndarray, lab: np.ndarray, r: np.ndarray, radius: float, label: int
) -> None:
    inside = r <= radius
    lab[inside] = label
    hu[inside] = np.where(r[inside] > radius * 0.7, 1200.0, 350.0)


def _draw_slice(
    t: float, rows: int, cols: int, table: LabelTable, var: _Variation
) -> tuple[np.ndarray, np.ndarray]:
    hu = np.full((rows, cols), _AIR)
    lab = np.zeros((rows, cols), dtype=np.uint8)
    sectors = _zone(t, var)
    radius = cols * 0.21 * var.scale * (1.0 + 0.15 * (1.0 - t))
    offset = cols * 0.235 * var.separation * (1.0 + 0.05 * (1.0 - t))
    cy = rows * 0.5
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    body = np.hypot((yy - cy) / (radius * 1.12), (xx - cols / 2) / (offset + radius * 1.1)) <= 1
    hu[body & (sectors is not _THIGH)] = _FAT
    for mirror in (False, True):
        centre = (cy, cols / 2 + (offset if mirror else -offset))
        frame = _side_frame(rows, cols, centre, radius, mirror, var.rotation)
        hu[frame[0] <= 1.08] = _FAT
        _draw_side(hu, lab, table, frame, sectors, var)
        if sectors is not _PELVIS:
            head = 0.24 if sectors is _HIP else 0.2
            _draw_bone_disc(hu, lab, frame[0], head * var.scale, table.by_key("femur").label)
    if sectors is not _THIGH and t < var.zone_borders[0] + 0.12:
        sacrum = np.hypot((yy - cy - radius * 0.55) / (radius * 0.28),
                          (xx - cols / 2) / (radius * 0.45)) <= 1
        lab[sacrum] = table.by_key("sacrum").label
        hu[sacrum] = 700.0
    return hu, lab


def generate_phantom(
    seed: int, options: PhantomOptions | None = None, table: LabelTable | None = None
) -> Phantom:
    """A phantom drawn from ``seed``; the same seed always gives the same phantom.

    Raises KeyError when ``table`` lacks one of the drawn structures.
    """
    opts = options or PhantomOptions()
    tbl = table or default_label_table()
    rng = np.random.default_rng(seed)
    var = _variation(rng)
    slices, rows, cols = opts.shape
    hu = np.empty(opts.shape, dtype=np.float32)
    labels = np.empty(opts.shape, dtype=np.uint8)
    for k in range(slices):
        t = k / max(slices - 1, 1)
        hu[k], labels[k] = _draw_slice(t, rows, cols, tbl, var)
    hu += rng.normal(0.0, opts.noise_hu, size=hu.shape).astype(np.float32)
    return Phantom(hu=hu, labels=labels, pixel_spacing_mm=opts.pixel_spacing_mm,
                   slice_spacing_mm=opts.slice_spacing_mm)


def demo_ct_series(seed: int = 0, options: PhantomOptions | None = None) -> list[Any]:
    """A phantom as a CT Image Storage series (pydicom Datasets, cranial slice first).

    Axial, feet-first-supine geometry: slices step towards the feet (descending z).
    The same seed gives the same pixels and UIDs.
    """
    from acqflow.plugins.common.series_builder import SeriesGeometry, SeriesSpec, build_series

    opts = options or PhantomOptions()
    phantom = generate_phantom(seed, opts)
    rows, cols = opts.shape[1:]
    geometry = SeriesGeometry(
        origin=(-cols * opts.pixel_spacing_mm / 2, -rows * opts.pixel_spacing_mm / 2, 0.0),
        pixel_spacing=(opts.pixel_spacing_mm, opts.pixel_spacing_mm),
        slice_spacing=-opts.slice_spacing_mm,
    )
    spec = SeriesSpec(seed=f"ct-muscle-phantom-{seed}", patient_id=f"PHANTOM-{seed:04d}")
    return build_series(phantom.hu, geometry, spec)
