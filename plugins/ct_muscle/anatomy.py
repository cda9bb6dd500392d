"""Domain-randomised hip/thigh CT phantoms: three anatomy models and wide appearance ranges.

The fixed phantoms of :mod:`acqflow.plugins.ct_muscle.phantoms` draw every muscle as an annular
sector at nearly the same place; a network trained on them learns that drawing, not the
anatomy (mean Dice 0.14 on independently generated phantoms). Here the same anatomical
layout (which muscle lies anterior, lateral, posterior or medial of the femur, and how
far out, per zone) is drawn by one of three anatomy models:

- ``sectors``: annular sectors, as the fixed phantoms, with wide angle and radius jitter;
- ``partition``: a weighted Voronoi partition of each side around the muscles' centres
  (polygonal muscles that touch each other and the bone, fat only along the borders);
- ``ellipses``: each muscle an ellipse around its centre, oriented along the body wall,
  larger ones first, fat between them.

and body size, body shape, side separation, fat thickness, cranio-caudal coverage, tissue
HU (per structure), fatty infiltration texture, bias field and noise are drawn per
phantom from the ranges of a :class:`Variety`. :data:`TRAINING_VARIETY` is what training
uses; :data:`HELD_OUT_VARIETY` uses an anatomy model and parameter ranges that training
never sees (the card's held-out figures are measured on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from scipy import ndimage

from acqflow.plugins.ct_muscle.phantoms import _HIP, _PELVIS, _THIGH, Phantom, _Sector
from acqflow.plugins.ct_muscle.structures import LabelTable, default_label_table
from acqflow.plugins.ct_muscle.training import LabelledVolume

__all__ = [
    "HELD_OUT_VARIETY",
    "TISSUES",
    "TRAINING_VARIETY",
    "VARIETIES",
    "Anatomy",
    "Variety",
    "randomised_anatomy",
    "randomised_phantom",
    "randomised_volumes",
]

_REFERENCE_MM = 128 * 3.0  # the fixed phantoms' field of view: an adult fills ~93 % of it
_BONES = ("pelvis", "femur", "sacrum")
# Tissue classes of the drawing (randomised_anatomy); marrow is the bones' cancellous core.
TISSUES = ("air", "fat", "muscle", "cortex", "marrow")


class Anatomy(str, Enum):
    """How the structures of a zone are drawn around their anatomical centres."""

    SECTORS = "sectors"
    PARTITION = "partition"
    ELLIPSES = "ellipses"


Range = tuple[float, float]


@dataclass(frozen=True)
class Variety:
    """Ranges drawn per phantom; a range is (low, high), drawn uniformly.

    ``*_tails`` ranges, when given, replace a parameter's range by the two bands just
    outside it (how the held-out variety reaches settings training never used).
    """

    anatomies: tuple[Anatomy, ...] = (Anatomy.SECTORS, Anatomy.PARTITION)
    body_scale: Range = (0.6, 1.4)  # size of the body relative to an adult
    aspect: Range = (0.85, 1.2)  # antero-posterior over left-right extent
    separation: Range = (0.9, 1.15)  # distance of the thighs relative to their size
    angle_jitter_deg: float = 10.0
    radius_jitter: float = 0.05
    rotation_deg: float = 12.0
    fat_margin: Range = (0.03, 0.16)  # intermuscular fat, fraction of the side radius
    subcutaneous: Range = (0.04, 0.3)
    coverage: tuple[Range, Range] = ((0.0, 0.25), (0.75, 1.0))  # first and last slice in t
    zone_borders: tuple[Range, Range] = ((0.25, 0.4), (0.55, 0.7))
    muscle_hu: Range = (20.0, 65.0)
    muscle_spread_hu: float = 8.0  # per-structure offset (sd)
    fat_hu: Range = (-130.0, -70.0)
    cortex_hu: Range = (800.0, 1600.0)
    marrow_hu: Range = (150.0, 450.0)
    texture_hu: Range = (0.0, 15.0)  # fatty infiltration / marbling inside muscle
    bias_hu: Range = (0.0, 30.0)
    noise_hu: Range = (5.0, 40.0)
    tails: tuple[str, ...] = field(default=())

    def draw(self, name: str, rng: np.random.Generator) -> float:
        """A value of range ``name``: within it, or in its tails when ``name`` is listed."""
        return draw_range(getattr(self, name), name in self.tails, rng)


def draw_range(bounds: Range, tails: bool, rng: np.random.Generator) -> float:
    """Uniform in ``bounds`` = (low, high), or with ``tails`` in one of the two bands just
    outside it, each a quarter of the range wide (how held-out varieties reach settings
    that training never used)."""
    low, high = bounds
    if not tails:
        return float(rng.uniform(low, high))
    width = (high - low) * 0.25
    below = rng.random() < 0.5
    return float(rng.uniform(low - width, low) if below else rng.uniform(high, high + width))


TRAINING_VARIETY = Variety()
# Never used in training: the ellipse anatomy model, body sizes of 0.5-0.6 and 1.4-1.6,
# more rotation, thinner and thicker fat, muscle HU below 20 and above 65.
HELD_OUT_VARIETY = Variety(
    anatomies=(Anatomy.ELLIPSES,), rotation_deg=18.0,
    tails=("body_scale", "subcutaneous", "muscle_hu", "aspect"),
)
VARIETIES = {"training": TRAINING_VARIETY, "held-out": HELD_OUT_VARIETY}


@dataclass(frozen=True)
class _Drawn:
    """One phantom's drawn parameters."""

    anatomy: Anatomy
    scale: float
    aspect: float
    separation: float
    rotation: float
    fat_margin: float
    subcutaneous: float
    coverage: Range
    borders: Range
    muscle_hu: np.ndarray  # per label
    fat_hu: float
    cortex_hu: float
    marrow_hu: float
    texture_hu: float
    bias_hu: float
    noise_hu: float
    jitter: np.ndarray  # (32, 4): angle start/end deg, radius in/out


def _draw(variety: Variety, rng: np.random.Generator, classes: int) -> _Drawn:
    anatomy = variety.anatomies[int(rng.integers(len(variety.anatomies)))]
    first = rng.uniform(*variety.coverage[0])
    last = rng.uniform(*variety.coverage[1])
    muscle = variety.draw("muscle_hu", rng) + rng.normal(0, variety.muscle_spread_hu, classes)
    jitter = rng.uniform(-1.0, 1.0, size=(32, 4)) * np.array(
        [variety.angle_jitter_deg, variety.angle_jitter_deg, variety.radius_jitter,
         variety.radius_jitter])
    return _Drawn(
        anatomy=anatomy, scale=variety.draw("body_scale", rng), aspect=variety.draw("aspect", rng),
        separation=variety.draw("separation", rng),
        rotation=float(rng.uniform(-variety.rotation_deg, variety.rotation_deg)),
        fat_margin=variety.draw("fat_margin", rng), subcutaneous=variety.draw("subcutaneous", rng),
        coverage=(first, last),
        borders=(rng.uniform(*variety.zone_borders[0]), rng.uniform(*variety.zone_borders[1])),
        muscle_hu=muscle, fat_hu=variety.draw("fat_hu", rng),
        cortex_hu=variety.draw("cortex_hu", rng), marrow_hu=variety.draw("marrow_hu", rng),
        texture_hu=variety.draw("texture_hu", rng), bias_hu=variety.draw("bias_hu", rng),
        noise_hu=variety.draw("noise_hu", rng), jitter=jitter,
    )


def _zone(t: float, drawn: _Drawn) -> tuple[_Sector, ...]:
    if t < drawn.borders[0]:
        return _PELVIS
    return _HIP if t < drawn.borders[1] else _THIGH


@dataclass(frozen=True)
class _Side:
    """Polar coordinates of every pixel around one side's centre (radius in side radii,
    angle in degrees: 0 anterior, 90 lateral) and the Cartesian ones in side radii."""

    r: np.ndarray
    angle: np.ndarray
    forward: np.ndarray  # anterior (+) distance
    lateral: np.ndarray  # lateral (+) distance


def _side(shape: tuple[int, int], centre: tuple[float, float], radius: float, aspect: float,
          mirror: bool, rotation: float) -> _Side:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    forward = -(yy - centre[0]) / (radius * aspect)
    lateral = (xx - centre[1]) / radius * (1.0 if mirror else -1.0)
    turn = np.radians(rotation)
    f = forward * np.cos(turn) + lateral * np.sin(turn)
    lat = -forward * np.sin(turn) + lateral * np.cos(turn)
    return _Side(r=np.hypot(f, lat), angle=np.degrees(np.arctan2(lat, f)) % 360.0,
                 forward=f, lateral=lat)


def _jittered(sector: _Sector, jit: np.ndarray) -> tuple[float, float, float, float]:
    _, start, end, r_in, r_out = sector
    start, end = start + jit[0], end + jit[1]
    if end - start < 8.0:
        end = start + 8.0
    r_in, r_out = max(r_in + jit[2], 0.05), r_out + jit[3]
    return start, end, r_in, max(r_out, r_in + 0.08)


def _sectors(side: _Side, sectors: tuple[_Sector, ...], drawn: _Drawn, table: LabelTable,
             lab: np.ndarray) -> None:
    margin = drawn.fat_margin * 0.5
    for index, sector in enumerate(sectors):
        start, end, r_in, r_out = _jittered(sector, drawn.jitter[index])
        pad = np.degrees(margin / max((r_in + r_out) / 2, 0.1)) / 2
        a = (side.angle - (start + pad)) % 360.0
        inside = (a <= (end - start - 2 * pad)) & (side.r >= r_in + margin / 2) & (
            side.r <= r_out - margin / 2)
        lab[inside] = table.by_key(sector[0]).label


def _centres(sectors: tuple[_Sector, ...], drawn: _Drawn) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    """Centre (forward, lateral), radial and tangential half-extents of each structure."""
    centres, radial, tangential = [], [], []
    for index, sector in enumerate(sectors):
        start, end, r_in, r_out = _jittered(sector, drawn.jitter[index])
        mid, rho = np.radians((start + end) / 2), (r_in + r_out) / 2
        centres.append((rho * np.cos(mid), rho * np.sin(mid)))
        radial.append((r_out - r_in) / 2)
        tangential.append(rho * np.radians(end - start) / 2)
    return np.array(centres), np.array(radial), np.array(tangential)


def _partition(side: _Side, sectors: tuple[_Sector, ...], drawn: _Drawn, table: LabelTable,
               lab: np.ndarray) -> None:
    centres, radial, tangential = _centres(sectors, drawn)
    weight = np.sqrt(radial * tangential)
    inside = side.r <= 0.97
    f, lat = side.forward[inside], side.lateral[inside]
    distance = np.stack([np.hypot(f - c[0], lat - c[1]) / w for c, w in zip(centres, weight, strict=True)])
    order = np.argsort(distance, axis=0)
    nearest = np.take_along_axis(distance, order[:1], 0)[0]
    second = np.take_along_axis(distance, order[1:2], 0)[0]
    border = (second - nearest) * weight[order[0]] < drawn.fat_margin * 0.6
    labels = np.array([table.by_key(s[0]).label for s in sectors], dtype=np.uint8)[order[0]]
    labels[border] = 0
    region = lab[inside]
    region[labels > 0] = labels[labels > 0]
    lab[inside] = region


def _ellipses(side: _Side, sectors: tuple[_Sector, ...], drawn: _Drawn, table: LabelTable,
              lab: np.ndarray) -> None:
    centres, radial, tangential = _centres(sectors, drawn)
    shrink = 1.0 - drawn.fat_margin
    for index in np.argsort(-(radial * tangential)):  # large first, small ones on top
        c = centres[index]
        direction = c / max(float(np.hypot(*c)), 1e-6)  # radial unit vector
        df, dl = side.forward - c[0], side.lateral - c[1]
        along = df * direction[0] + dl * direction[1]
        across = -df * direction[1] + dl * direction[0]
        inside = (along / (radial[index] * 1.15 * shrink)) ** 2 + (
            across / (tangential[index] * 1.1 * shrink)) ** 2 <= 1
        lab[inside & (side.r <= 0.97)] = table.by_key(sectors[index][0]).label


def _draw_slice(t: float, shape: tuple[int, int], spacing: float, drawn: _Drawn,
                table: LabelTable) -> tuple[np.ndarray, np.ndarray]:
    """Label map and tissue class map (0 air, 1 fat, 2 muscle, 3 cortex, 4 marrow)."""
    rows, cols = shape
    unit = _REFERENCE_MM / spacing  # pixels of the reference field of view
    sectors = _zone(t, drawn)
    radius = unit * 0.21 * drawn.scale * (1.0 + 0.15 * (1.0 - t))
    offset = unit * 0.235 * drawn.scale * drawn.separation * (1.0 + 0.05 * (1.0 - t))
    cy, cx = rows / 2, cols / 2
    lab = np.zeros(shape, dtype=np.uint8)
    tissue = np.zeros(shape, dtype=np.uint8)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    outline = 1.0 + drawn.subcutaneous
    if sectors is not _THIGH:
        tissue[np.hypot((yy - cy) / (radius * drawn.aspect * outline * 1.02),
                        (xx - cx) / (offset + radius * outline)) <= 1] = 1
    draw = {Anatomy.SECTORS: _sectors, Anatomy.PARTITION: _partition,
            Anatomy.ELLIPSES: _ellipses}[drawn.anatomy]
    for mirror in (False, True):
        centre = (cy, cx + (offset if mirror else -offset))
        side = _side(shape, centre, radius, drawn.aspect, mirror, drawn.rotation)
        tissue[side.r <= outline] = 1
        # Muscles by the anatomy model; the flat bone (pelvis) always as its sector, on top.
        muscles = tuple(s for s in sectors if s[0] not in _BONES)
        draw(side, muscles, drawn, table, lab)
        bone = tuple(s for s in sectors if s[0] in _BONES)
        if bone:
            _sectors(side, bone, drawn, table, lab)
        if sectors is not _PELVIS:
            head = (0.24 if sectors is _HIP else 0.2) * (1.0 + drawn.jitter[31, 2])
            femur = side.r <= head
            lab[femur] = table.by_key("femur").label
            tissue[femur] = np.where(side.r[femur] > head * 0.7, 3, 4)
    if sectors is not _THIGH and t < drawn.borders[0] + 0.12:
        sacrum = np.hypot((yy - cy - radius * drawn.aspect * 0.55) / (radius * 0.28),
                          (xx - cx) / (radius * 0.45)) <= 1
        lab[sacrum] = table.by_key("sacrum").label
    bones = np.isin(lab, [table.by_key(k).label for k in _BONES])
    tissue[(lab > 0) & ~bones] = 2
    flat = bones & (tissue < 3)
    if flat.any():  # pelvis and sacrum: cortex rim around cancellous bone
        core = ndimage.binary_erosion(flat, iterations=2)
        tissue[flat] = 3
        tissue[core] = 4
    return lab, tissue


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """A smooth random field in [-1, 1] with about ``cells`` wiggles per axis."""
    coarse = rng.uniform(-1.0, 1.0, size=tuple(max(2, min(s, cells)) for s in shape))
    zoom = [s / c for s, c in zip(shape, coarse.shape, strict=True)]
    field_ = ndimage.zoom(coarse, zoom, order=3, mode="reflect", grid_mode=True)
    return np.asarray(field_[tuple(slice(0, s) for s in shape)], dtype=np.float64)


def _anatomy(
    seed: int, shape: tuple[int, int, int], pixel_spacing_mm: float, variety: Variety,
    table: LabelTable | None,
) -> tuple[np.random.Generator, _Drawn, np.ndarray, np.ndarray]:
    """The random state after drawing, the drawn parameters, labels and tissue classes."""
    if shape[0] < 1 or min(shape[1:]) < 32 or pixel_spacing_mm <= 0:
        raise ValueError(f"cannot draw a phantom of shape {shape} at {pixel_spacing_mm} mm")
    tbl = table or default_label_table()
    rng = np.random.default_rng(seed)
    drawn = _draw(variety, rng, tbl.num_classes)
    labels = np.empty(shape, dtype=np.uint8)
    tissue = np.empty(shape, dtype=np.uint8)
    first, last = drawn.coverage
    for k in range(shape[0]):
        t = first + (last - first) * k / max(shape[0] - 1, 1)
        labels[k], tissue[k] = _draw_slice(t, shape[1:], pixel_spacing_mm, drawn, tbl)
    return rng, drawn, labels, tissue


def randomised_anatomy(
    seed: int, shape: tuple[int, int, int] = (24, 160, 160), pixel_spacing_mm: float = 3.0,
    variety: Variety = TRAINING_VARIETY, table: LabelTable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The label map and tissue classes (:data:`TISSUES`) of :func:`randomised_phantom`
    with the same arguments, without its intensities: what other modalities are drawn
    from (the MR phantoms, acqflow.plugins.mr_muscle.randomised).

    Raises ValueError for a shape too small to draw.
    """
    _, _, labels, tissue = _anatomy(seed, shape, pixel_spacing_mm, variety, table)
    return labels, tissue


def randomised_phantom(
    seed: int, shape: tuple[int, int, int] = (24, 160, 160), pixel_spacing_mm: float = 3.0,
    slice_spacing_mm: float = 6.0, variety: Variety = TRAINING_VARIETY,
    table: LabelTable | None = None,
) -> Phantom:
    """A phantom drawn from ``seed`` and ``variety``; the same arguments give the same one.

    Raises ValueError for a shape too small to draw, KeyError when ``table`` lacks one of
    the drawn structures.
    """
    if slice_spacing_mm <= 0:
        raise ValueError(f"slice spacing must be positive, got {slice_spacing_mm}")
    rng, drawn, labels, tissue = _anatomy(seed, shape, pixel_spacing_mm, variety, table)
    hu = np.full(shape, -1000.0)
    hu[tissue == 1] = drawn.fat_hu
    muscle = tissue == 2
    texture = _smooth_field(rng, shape, 24)
    hu[muscle] = drawn.muscle_hu[labels[muscle]] - drawn.texture_hu * np.abs(texture[muscle]) * 2
    hu[tissue == 3] = drawn.cortex_hu
    hu[tissue == 4] = drawn.marrow_hu
    body = tissue > 0
    hu[body] += drawn.bias_hu * _smooth_field(rng, shape, 3)[body]
    hu += rng.normal(0.0, drawn.noise_hu, size=shape)
    return Phantom(hu=hu.astype(np.float32), labels=labels, pixel_spacing_mm=pixel_spacing_mm,
                   slice_spacing_mm=slice_spacing_mm)


def randomised_volumes(
    seeds: range | list[int], variety: Variety = TRAINING_VARIETY,
    shape: tuple[int, int, int] = (24, 160, 160), pixel_spacing_mm: float = 3.0,
    table: LabelTable | None = None,
) -> list[LabelledVolume]:
    """One :func:`randomised_phantom` per seed, as training or evaluation volumes."""
    out = []
    for seed in seeds:
        phantom = randomised_phantom(seed, shape, pixel_spacing_mm, variety=variety, table=table)
        out.append(LabelledVolume(hu=phantom.hu, labels=phantom.labels,
                                  spacing=(pixel_spacing_mm, pixel_spacing_mm)))
    return out
