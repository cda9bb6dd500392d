"""Domain-randomised phase-contrast / NKX2.5-GFP fields built from cells.

The demo generator (:mod:`acqflow.plugins.virtual_staining.synthetic`) draws texture fields; a
model trained on it learns those textures and nothing else. This generator builds a
monolayer of cells instead and images it through randomised optics, so that a model
trained on it has to learn what tells cardiomyocytes apart from what surrounds them:

* **cells**: two Voronoi tessellations of the field. Cardiomyocytes are small, compact,
  thick cells with refractile granules, often in thicker clusters; the other cells
  (fibroblast-like) are large, flat, elongated along a common direction, with stress
  fibres and visible nuclei. A cell is a cardiomyocyte when its seed lies in the field's
  differentiation niche, the lowest-``efficiency`` quantile of a smooth random field, so
  cardiomyocyte areas grow (and stay nested) as the efficiency rises over time.
* **confounders**: dead cells (small, round, very refractile, GFP-negative), debris,
  intercellular gaps; dust on the optics and uneven illumination.
* **optics and camera** (:mod:`acqflow.plugins.virtual_staining.optics`): Zernike phase contrast
  with halo and shade-off, PSF/defocus, vignetting, photon and read noise, 8/12/16-bit.
* **geometry**: sizes are physical (micrometres); the pixel size is drawn per field
  (0.3-1.3 um), so the same cells appear at different pixel scales.

Every appearance parameter is drawn per field from a :class:`PhaseVariety` of ranges.
:data:`TRAINING_VARIETY` is what ``acqflow train virtual-staining --generator
randomised`` draws from; :data:`HELD_OUT_VARIETY` moves thirteen settings outside
those ranges at once (see there) and is what the held-out figures in the model card are
measured on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from acqflow.plugins.virtual_staining.optics import (
    Camera,
    PhaseOptics,
    camera_image,
    illumination,
    phase_contrast,
)
from acqflow.plugins.virtual_staining.synthetic import FieldPlace, SyntheticImage

__all__ = [
    "HELD_OUT_VARIETY",
    "TRAINING_VARIETY",
    "PhaseVariety",
    "RandomisedSpec",
    "generate_randomised",
]

Range = tuple[float, float]


@dataclass(frozen=True)
class PhaseVariety:
    """Ranges (low, high) every field draws its appearance from; physical units."""

    pixel_size_um: Range = (0.3, 1.3)
    field_um: Range = (200.0, 330.0)
    cm_diameter_um: Range = (7.0, 16.0)
    cm_thickness: Range = (0.6, 1.4)  # optical path difference, radians
    cm_granules: Range = (0.1, 0.5)
    cm_cluster: Range = (0.0, 0.8)
    other_diameter_um: Range = (20.0, 42.0)
    other_elongation: Range = (1.2, 4.0)
    other_thickness: Range = (0.15, 0.6)
    fibres: Range = (0.0, 0.15)
    gap_um: Range = (0.0, 1.5)
    dead_per_mm2: Range = (0.0, 500.0)
    debris_per_mm2: Range = (0.0, 800.0)
    ring_um: Range = (1.0, 5.0)
    transmission: Range = (0.08, 0.45)
    retardation: Range = (-1.85, -1.25)  # around -pi/2: positive phase contrast
    blur_um: Range = (0.2, 0.9)
    vignetting: Range = (0.0, 0.6)
    ramp: Range = (0.0, 0.3)
    dust: tuple[int, int] = (0, 5)
    photons: Range = (150.0, 6000.0)
    read_noise_dn: Range = (0.5, 4.0)
    background_level: Range = (0.25, 0.6)
    bit_depths: tuple[int, ...] = (8, 12, 16)
    gfp_brightness_cv: Range = (0.1, 0.4)
    gfp_background: Range = (0.05, 0.3)
    gfp_photons: Range = (80.0, 2000.0)


#: What the bundled weights are trained on.
TRAINING_VARIETY = PhaseVariety()

#: Every one of these settings outside its training range, all at once: smaller and more
#: granular cardiomyocytes, more elongated and flatter other cells, more dead cells and
#: debris, wider halos, a more transparent and less retarding ring, strong vignetting, dim light,
#: 12-bit cameras only, more uneven GFP. The held-out figures of the model card. (Moving
#: the cell shapes towards each other instead, larger cardiomyocytes among thicker
#: fibroblasts, leaves almost nothing in a block that tells them apart.)
HELD_OUT_VARIETY = replace(
    TRAINING_VARIETY,
    cm_diameter_um=(5.5, 7.0),
    cm_granules=(0.5, 0.7),
    other_elongation=(4.0, 5.0),
    other_thickness=(0.08, 0.15),
    dead_per_mm2=(500.0, 800.0),
    debris_per_mm2=(800.0, 1200.0),
    ring_um=(5.0, 6.5),
    transmission=(0.45, 0.6),
    retardation=(-1.25, -1.15),
    vignetting=(0.6, 0.75),
    photons=(80.0, 150.0),
    bit_depths=(12,),
    gfp_brightness_cv=(0.4, 0.5),
)


@dataclass(frozen=True)
class RandomisedSpec:
    """What to generate; validates itself (raises ValueError)."""

    experiments: int = 2
    wells: int = 4
    positions: int = 2
    timepoints: int = 3
    seed: int = 0
    variety: PhaseVariety = TRAINING_VARIETY
    interval_s: float = 12 * 3600.0
    start_time: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z

    def __post_init__(self) -> None:
        if min(self.experiments, self.wells, self.positions, self.timepoints) < 1:
            raise ValueError("experiments, wells, positions and timepoints must be >= 1")
        if self.wells > 96:
            raise ValueError("at most 96 wells")


@dataclass(frozen=True)
class _Tessellation:
    """Voronoi cells of one cell type: seed index, distance to the cell edge and seed."""

    label: np.ndarray
    edge: np.ndarray  # distance to the nearest cell boundary, pixels
    centre: np.ndarray  # distance to the seed, pixels
    seeds: np.ndarray  # (n, 2) pixel coordinates


def _draw(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(*bounds))


def _tessellate(
    rng: np.random.Generator, shape: tuple[int, int], diameter: float, stretch: float, angle: float
) -> _Tessellation:
    """Cells of mean ``diameter`` pixels, stretched ``stretch`` times along ``angle``."""
    from scipy.spatial import cKDTree

    area = shape[0] * shape[1]
    count = max(4, int(rng.poisson(area / (0.8 * diameter**2))))
    seeds = rng.uniform((0, 0), shape, size=(count, 2))
    # Stretching the metric along ``angle`` elongates the Voronoi cells along it.
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    metric = rotation @ np.diag([1.0 / np.sqrt(stretch), np.sqrt(stretch)]) @ rotation.T
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    pixels = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float64)
    tree = cKDTree(seeds @ metric)
    distance, index = tree.query(pixels @ metric, k=2)
    first, second = seeds[index[:, 0]] @ metric, seeds[index[:, 1]] @ metric
    separation = np.linalg.norm(second - first, axis=1) + 1e-6
    # Distance to the bisector of the two nearest seeds: the cell boundary.
    edge = (distance[:, 1] ** 2 - distance[:, 0] ** 2) / (2.0 * separation)
    return _Tessellation(
        label=index[:, 0].reshape(shape).astype(np.int32),
        edge=edge.reshape(shape).astype(np.float32),
        centre=distance[:, 0].reshape(shape).astype(np.float32),
        seeds=seeds,
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    scaled: np.ndarray = (field - field.mean()) / (field.std() + 1e-6)
    return scaled


def _ranks(field: np.ndarray) -> np.ndarray:
    """The field's values replaced by their quantile (0..1)."""
    ranks = np.empty(field.size, dtype=np.float32)
    ranks[np.argsort(field, axis=None)] = np.linspace(0.0, 1.0, field.size, dtype=np.float32)
    return ranks.reshape(field.shape)


@dataclass(frozen=True)
class _Field:
    """Everything about one field of view that stays fixed over time."""

    pixel_um: float
    niche: np.ndarray  # rank field: cardiomyocyte where niche < efficiency
    cm: _Tessellation
    other: _Tessellation
    cm_seed_niche: np.ndarray  # niche value at each cardiomyocyte seed
    cm_brightness: np.ndarray  # relative GFP per cardiomyocyte
    granules: np.ndarray
    fibres: np.ndarray
    cluster: np.ndarray
    confounders: np.ndarray  # optical path of dead cells and debris
    dead_absorption: np.ndarray
    params: dict[str, float]
    optics: PhaseOptics
    light: np.ndarray
    camera: Camera
    gfp_camera: Camera


def _spheres(
    rng: np.random.Generator, shape: tuple[int, int], count: int, radius: Range, height: Range
) -> np.ndarray:
    """Optical path of ``count`` round objects (dead cells, debris), radii in pixels."""
    out = np.zeros(shape, dtype=np.float32)
    for _ in range(count):
        r = _draw(rng, radius)
        y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        y0, y1 = max(0, int(y - r - 1)), min(shape[0], int(y + r + 2))
        x0, x1 = max(0, int(x - r - 1)), min(shape[1], int(x + r + 2))
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = np.clip(1.0 - ((yy - y) ** 2 + (xx - x) ** 2) / r**2, 0, None)
        out[y0:y1, x0:x1] += _draw(rng, height) * np.sqrt(inside).astype(np.float32)
    return out


def _field(rng: np.random.Generator, variety: PhaseVariety) -> _Field:
    from scipy import ndimage

    pixel = _draw(rng, variety.pixel_size_um)
    side = round(_draw(rng, variety.field_um) / pixel)
    shape = (side, side)
    p = {
        name: _draw(rng, getattr(variety, name))
        for name in (
            "cm_thickness",
            "cm_granules",
            "cm_cluster",
            "other_thickness",
            "fibres",
            "gap_um",
            "gfp_brightness_cv",
            "gfp_background",
        )
    }
    angle = rng.uniform(0, np.pi)
    cm = _tessellate(
        rng, shape, _draw(rng, variety.cm_diameter_um) / pixel, rng.uniform(1.0, 1.4), rng.uniform(0, np.pi)
    )
    other = _tessellate(
        rng, shape, _draw(rng, variety.other_diameter_um) / pixel, _draw(rng, variety.other_elongation), angle
    )
    niche = _ranks(_smooth_noise(rng, shape, 35.0 / pixel))
    seeds = np.clip(np.rint(cm.seeds).astype(int), 0, side - 1)
    dots = (rng.random(shape) < 0.05 * pixel**2).astype(np.float32)
    granules = ndimage.gaussian_filter(dots, max(0.35 / pixel, 0.5)) * (4.0 * max(0.35 / pixel, 0.5) ** 2)
    fibre_sigma = (max(0.3 / pixel, 0.4), 4.0 / pixel)
    fibres = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), fibre_sigma)
    fibres = ndimage.rotate(fibres, np.degrees(angle) + 90.0, reshape=False, mode="wrap")
    fibres /= fibres.std() + 1e-6
    area_mm2 = (side * pixel / 1000.0) ** 2
    dead = _spheres(
        rng,
        shape,
        int(rng.poisson(_draw(rng, variety.dead_per_mm2) * area_mm2)),
        (2.5 / pixel, 4.5 / pixel),
        (1.5, 3.0),
    )
    debris = _spheres(
        rng,
        shape,
        int(rng.poisson(_draw(rng, variety.debris_per_mm2) * area_mm2)),
        (0.5 / pixel, 1.8 / pixel),
        (0.5, 2.0),
    )
    bits = int(rng.choice(variety.bit_depths))
    photons = _draw(rng, variety.photons)
    return _Field(
        pixel_um=pixel,
        niche=niche,
        cm=cm,
        other=other,
        cm_seed_niche=niche[seeds[:, 0], seeds[:, 1]],
        cm_brightness=rng.lognormal(0.0, p["gfp_brightness_cv"], len(cm.seeds)).astype(np.float32),
        granules=granules,
        fibres=fibres,
        cluster=_smooth_noise(rng, shape, 12.0 / pixel),
        confounders=dead + debris,
        dead_absorption=np.exp(-0.15 * dead),
        params=p,
        optics=PhaseOptics(
            ring_sigma=_draw(rng, variety.ring_um) / pixel,
            transmission=_draw(rng, variety.transmission),
            retardation=_draw(rng, variety.retardation),
            blur=_draw(rng, variety.blur_um) / pixel,
        ),
        light=illumination(
            rng,
            shape,
            _draw(rng, variety.vignetting),
            _draw(rng, variety.ramp),
            int(rng.integers(variety.dust[0], variety.dust[1] + 1)),
        ),
        camera=Camera(
            bits,
            photons,
            _draw(rng, variety.read_noise_dn) * 2 ** (bits - 8) / 16,
            _draw(rng, variety.background_level),
            rng.uniform(0.0, 0.05),
        ),
        gfp_camera=Camera(
            bits,
            _draw(rng, variety.gfp_photons),
            _draw(rng, variety.read_noise_dn) * 2 ** (bits - 8) / 16,
            rng.uniform(0.05, 0.15),
            rng.uniform(0.0, 0.05),
        ),
    )


def _dome(edge: np.ndarray, width: float) -> np.ndarray:
    """Cell height profile from the distance to the cell edge: flat top, sloped rim."""
    result: np.ndarray = np.clip(1.0 - np.exp(-np.clip(edge, 0, None) / max(width, 0.5)), 0, 1)
    return result


def _render(
    rng: np.random.Generator, field: _Field, efficiency: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phase, GFP and true cardiomyocyte mask of a field at one efficiency."""
    from scipy import ndimage

    p, pixel = field.params, field.pixel_um
    is_cm_cell = field.cm_seed_niche < efficiency
    mask = is_cm_cell[field.cm.label]
    gap = p["gap_um"] / pixel
    cm_shape = _dome(field.cm.edge - gap / 2, 1.5 / pixel)
    other_shape = _dome(field.other.edge - gap / 2, 4.0 / pixel)
    nucleus = np.sqrt(np.clip(1.0 - (field.other.centre / (4.5 / pixel)) ** 2, 0, None))
    cm_path = cm_shape * (
        p["cm_thickness"] * (1.0 + 0.35 * p["cm_cluster"] * (1.0 + field.cluster))
        + p["cm_granules"] * field.granules * 6.0
    )
    other_path = other_shape * (p["other_thickness"] * (1.0 + 0.8 * nucleus) + p["fibres"] * field.fibres)
    phi = np.where(mask, cm_path, other_path) + field.confounders
    phi += 0.02 * rng.standard_normal(phi.shape).astype(np.float32)
    intensity = phase_contrast(phi, field.dead_absorption, field.optics) * field.light
    phase = camera_image(rng, intensity, field.camera)
    # Cytoplasmic GFP fills the cell; only a thin rim at the membrane is dimmer.
    fill = 0.55 + 0.45 * _dome(field.cm.edge, 0.8 / pixel)
    emitters = np.where(mask, fill * field.cm_brightness[field.cm.label], 0.0).astype(np.float32)
    emitters = ndimage.gaussian_filter(emitters, max(0.6 / pixel, 0.5))
    # Dead cells and debris autofluoresce a little; the background is not black.
    glow = p["gfp_background"] + 0.15 * np.clip(field.confounders, 0, 1) + emitters * 4.0
    gfp = camera_image(rng, glow * field.light, field.gfp_camera)
    return phase, gfp, mask


def generate_randomised(spec: RandomisedSpec) -> Iterator[SyntheticImage]:
    """Yield every field of the spec in acquisition order (time point, well, position).

    Each well's final efficiency is drawn from 0.02..0.85 (a fifth of wells below 0.1);
    the efficiency rises over the time points from 30 % of the final value. Deterministic
    for a given spec.
    """
    rng = np.random.default_rng(spec.seed)
    fields = []
    for e in range(spec.experiments):
        for w in range(spec.wells):
            final = float(rng.uniform(0.02, 0.1) if rng.random() < 0.2 else rng.uniform(0.1, 0.85))
            for p in range(spec.positions):
                child = np.random.default_rng(rng.integers(2**63))
                fields.append((e, w, p, final, child, _field(child, spec.variety)))
    for t in range(spec.timepoints):
        progress = 1.0 if spec.timepoints == 1 else t / (spec.timepoints - 1)
        for e, w, p, final, child, field in fields:
            phase, gfp, mask = _render(child, field, final * (0.3 + 0.7 * progress))
            place = FieldPlace(e, w, p, t, spec.positions, spec.start_time, spec.interval_s)
            metadata = place.metadata(field.pixel_um)
            yield SyntheticImage(phase, gfp, mask, metadata, float(mask.mean()))
