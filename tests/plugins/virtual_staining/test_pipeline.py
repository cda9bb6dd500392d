from __future__ import annotations

import io
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from acqflow.models.store import WeightsError, bundled_weights_dir
from acqflow.plugins.api import (
    ImageItem,
    ImageMetadata,
    InputKind,
    InvalidInputError,
    Pipeline,
    PipelineContext,
    RecordValue,
    Summarizer,
)
from acqflow.plugins.virtual_staining.pipeline import VirtualStainingPipeline
from acqflow.plugins.virtual_staining.synthetic import SyntheticImage, SyntheticSpec, generate_series


@pytest.fixture(scope="module")
def pipeline() -> VirtualStainingPipeline:
    loaded = VirtualStainingPipeline()
    loaded.load(PipelineContext(device="cpu"))
    return loaded


def _generated(shape: tuple[int, int], bits: int, seed: int) -> SyntheticImage:
    spec = SyntheticSpec(
        experiments=1,
        wells=1,
        positions=1,
        timepoints=1,
        shape=shape,
        bit_depth=bits,
        seed=seed,
        pixel_size_um=0.325,
    )
    return next(generate_series(spec))


def _item(
    image: SyntheticImage, array: np.ndarray | None = None, axes: str = "YX", names: tuple[str, ...] = ()
) -> ImageItem:
    data = image.phase if array is None else array
    return ImageItem(f"id-{image.stem}", Path(f"{image.stem}_phase.tif"), data, axes, image.metadata, names)


def _float(value: RecordValue) -> float:
    assert isinstance(value, float)
    return value


def _int(value: RecordValue) -> int:
    assert isinstance(value, int)
    return value


def test_declares_the_contract() -> None:
    instance = VirtualStainingPipeline()
    assert isinstance(instance, Pipeline) and isinstance(instance, Summarizer)
    assert instance.name == "virtual-staining" and instance.input_kind is InputKind.IMAGE


def _check_tiff(data: bytes, phase: np.ndarray, pixel_size: float) -> np.ndarray:
    """The virtual stain opens as an ImageJ CYX hyperstack with phase + probability."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert tif.is_imagej
        series = tif.series[0]
        assert series.axes == "CYX" and series.shape == (2, *phase.shape)
        metadata = tif.imagej_metadata or {}
        assert metadata["unit"] == "um" and metadata["channels"] == 2
        x_num, x_den = tif.pages.first.tags["XResolution"].value
        y_num, y_den = tif.pages.first.tags["YResolution"].value
        assert x_den / x_num == pytest.approx(pixel_size, rel=1e-4)
        assert y_den / y_num == pytest.approx(pixel_size, rel=1e-4)
        stack = series.asarray()
    assert stack.dtype == phase.dtype
    np.testing.assert_array_equal(stack[0], phase)
    probability: np.ndarray = stack[1]
    return probability


def _cells(shape: tuple[int, int], bits: int, seed: int, pixel_um: float = 0.325) -> SyntheticImage:
    """A field of the cell generator (training settings) at ``pixel_um``, cropped to ``shape``."""
    from acqflow.plugins.virtual_staining.randomised import (
        TRAINING_VARIETY,
        RandomisedSpec,
        generate_randomised,
    )

    side = max(shape) * pixel_um
    variety = replace(
        TRAINING_VARIETY, pixel_size_um=(pixel_um, pixel_um), field_um=(side, side), bit_depths=(bits,)
    )
    spec = RandomisedSpec(experiments=1, wells=1, positions=1, timepoints=1, seed=seed, variety=variety)
    field = next(generate_randomised(spec))
    crop = (slice(0, shape[0]), slice(0, shape[1]))
    mask = field.mask[crop]
    return SyntheticImage(field.phase[crop], field.gfp[crop], mask, field.metadata, float(mask.mean()))


@pytest.mark.parametrize(("shape", "bits"), [((2048, 2048), 16), ((1000, 1300), 8)])
def test_large_and_odd_sized_images(
    pipeline: VirtualStainingPipeline, shape: tuple[int, int], bits: int
) -> None:
    image = _cells(shape, bits, seed=31)
    result = pipeline.run(_item(image))
    files = {f.name: f for f in result.files}
    assert set(files) == {"virtual_stain.tif", "overlay.png"}
    probability = _check_tiff(files["virtual_stain.tif"].data, image.phase, 0.325)
    full = 255 if bits == 8 else 65535
    stained = probability.astype(np.float64) / full >= pipeline.card.training["inference"]["threshold"]

    def overlap(mask: np.ndarray) -> float:
        return float(2 * (stained & mask).sum() / (stained.sum() + mask.sum()))

    # The stain lies on the cardiomyocytes of this image, not anywhere: far better than on
    # the same mask moved by half the image (a flipped, shifted or rescaled map fails).
    # Accuracy over many fields is test_demo_weights' business.
    moved = np.roll(image.mask, (shape[0] // 2, shape[1] // 2), axis=(0, 1))
    assert overlap(image.mask) > 0.45 and overlap(image.mask) > 3 * overlap(moved)
    overlay = Image.open(io.BytesIO(files["overlay.png"].data))
    assert overlay.mode == "RGB" and overlay.size == (shape[1], shape[0])
    (record,) = result.records
    assert record.kind == "efficiency" and record.group == "EXP1"
    fields = record.fields
    block = pipeline.card.arguments["block_size"]
    # Blocks are counted at the weights' 0.65 um: half the sides of a 0.325 um image.
    scaled = [round(side * 0.325 / pipeline.card.training["pixel_size_um"]) for side in shape]
    assert fields["blocks_total"] == -(-scaled[0] // block) * -(-scaled[1] // block)
    assert fields["height"] == shape[0] and fields["width"] == shape[1]
    assert fields["positive_fraction"] == pytest.approx(
        _int(fields["blocks_positive"]) / _int(fields["blocks_total"])
    )
    assert fields["well"] == "A01" and fields["timepoint"] == 0 and fields["position"] == "pos1"
    assert fields["identity"] == f"id-{image.stem}" and fields["acquired_at"] == image.metadata.acquired_at
    assert isinstance(fields["efficiency"], float)
    assert abs(fields["efficiency"] - image.efficiency) < 0.1
    assert result.figures == ()


def test_phase_channel_from_metadata_names_or_option(pipeline: VirtualStainingPipeline) -> None:
    image = _generated((128, 160), 16, seed=3)
    stack = np.stack([image.gfp, image.phase])
    by_name = pipeline.run(_item(image, stack, "CYX", ("NKX2.5-GFP", "Phase")))
    assert _check_tiff(by_name.files[0].data, image.phase, 0.325).shape == (128, 160)
    by_index = VirtualStainingPipeline()
    by_index.load(PipelineContext(device="cpu", options={"phase_channel": 1, "stride": 8}))
    result = by_index.run(_item(image, stack[:, None], "CZYX"))
    _check_tiff(result.files[0].data, image.phase, 0.325)


@pytest.mark.parametrize(
    ("array", "axes", "names"),
    [
        (np.zeros((3, 64, 64), dtype=np.uint16), "TYX", ()),
        (np.zeros((2, 64, 64), dtype=np.uint16), "CYX", ("GFP", "DAPI")),
        (np.zeros((2, 64, 64), dtype=np.uint16), "CYX", ()),
        (np.zeros((64,), dtype=np.uint16), "X", ()),
        (np.zeros((4, 64), dtype=np.uint16), "YX", ()),
    ],
)
def test_invalid_input(
    pipeline: VirtualStainingPipeline, array: np.ndarray, axes: str, names: tuple[str, ...]
) -> None:
    item = ImageItem("bad", Path("bad.tif"), array, axes, ImageMetadata(), names)
    with pytest.raises(InvalidInputError):
        pipeline.run(item)


def test_fluorescence_images_are_refused(pipeline: VirtualStainingPipeline) -> None:
    image = _generated((64, 64), 16, seed=5)
    gfp = ImageItem("g", Path("g.tif"), image.gfp, "YX", ImageMetadata(channel="gfp"))
    with pytest.raises(InvalidInputError, match="fluorescence"):
        pipeline.run(gfp)
    phase = ImageItem("p", Path("p.tif"), image.phase, "YX", ImageMetadata(channel="phase"))
    assert pipeline.run(phase).records


def test_without_pixel_size_or_metadata(pipeline: VirtualStainingPipeline) -> None:
    image = _generated((96, 96), 8, seed=4)
    result = pipeline.run(ImageItem("x", Path("/data/in/x.tif"), image.phase, "YX", ImageMetadata()))
    with tifffile.TiffFile(io.BytesIO(result.files[0].data)) as tif:
        assert tif.is_imagej and tif.series[0].axes == "CYX"
    assert result.records[0].group == "unassigned"
    assert result.records[0].fields["relative_path"] == "x.tif"


def test_load_errors(tmp_path: Path) -> None:
    pipeline = VirtualStainingPipeline()
    with pytest.raises(RuntimeError, match="load"):
        pipeline.run(ImageItem("x", Path("x.tif"), np.zeros((64, 64)), "YX", ImageMetadata()))
    with pytest.raises(ValueError, match="unknown virtual-staining options"):
        pipeline.load(PipelineContext(device="cpu", options={"strid": 8}))
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        pipeline.load(PipelineContext(device="cpu", options={"stride": "8"}))
    with pytest.raises(ValueError, match="multiple"):
        pipeline.load(PipelineContext(device="cpu", options={"stride": 6}))
    with pytest.raises(WeightsError):
        pipeline.load(PipelineContext(device="cpu", weights_dir=tmp_path))
    for name in ("virtual_staining.json", "virtual_staining.safetensors"):
        shutil.copy(bundled_weights_dir() / name, tmp_path / name)
    pipeline.load(PipelineContext(device="cpu", weights_dir=tmp_path))
    weights = tmp_path / "virtual_staining.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(WeightsError, match="sha256"):
        VirtualStainingPipeline().load(PipelineContext(device="cpu", weights_dir=tmp_path))


def _records(pipeline: VirtualStainingPipeline) -> list[Mapping[str, RecordValue]]:
    """Efficiency records of a small generated series, in arrival order, as the journal keeps them."""
    spec = SyntheticSpec(experiments=1, wells=2, positions=2, timepoints=3, shape=(128, 128), seed=8)
    rows: list[Mapping[str, RecordValue]] = []
    for number, image in enumerate(generate_series(spec)):
        (record,) = pipeline.run(_item(image)).records
        rows.append({**record.fields, "recorded_at": 1e9 + number})
    return rows


def test_summary_time_course(pipeline: VirtualStainingPipeline) -> None:
    records = _records(pipeline)
    # A re-processed image replaces its earlier record.
    rerun = {**records[0], "blocks_positive": 0, "positive_fraction": 0.0, "efficiency": 0.0}
    result = pipeline.summarize("EXP1", [*records, rerun])
    files = {f.name: f.data for f in result.files}
    assert set(files) == {"efficiency.csv", "efficiency.png", "report.html"}
    lines = files["efficiency.csv"].decode().splitlines()
    header, rows = (
        lines[0].split(","),
        [dict(zip(lines[0].split(","), r.split(","), strict=True)) for r in lines[1:]],
    )
    assert header[:3] == ["experiment", "well", "timepoint"] and len(rows) == 6
    a01 = [r for r in rows if r["well"] == "A01"]
    assert [r["timepoint"] for r in a01] == ["0", "1", "2"] and all(r["positions"] == "2" for r in a01)
    assert float(a01[0]["elapsed_s"]) == 0.0 and float(a01[2]["elapsed_h"]) == pytest.approx(12.0, abs=0.1)
    first = [r for r in records[1:] if r["well"] == "A01" and r["timepoint"] == 0]
    # Positions pooled by their blocks, each with its calibrated efficiency.
    expected = sum(_float(r["efficiency"]) * _int(r["blocks_total"]) for r in first) / sum(
        _int(r["blocks_total"]) for r in [*first, rerun]
    )
    assert float(a01[0]["efficiency"]) == pytest.approx(expected, abs=1e-6)
    assert files["efficiency.png"].startswith(b"\x89PNG")
    html = files["report.html"].decode()
    assert "../../EXP1_A01_pos1_t002_phase/overlay.png" in html and "EXP1_A01_pos1_t000" not in html
    provenance = html[html.index("<h2>Provenance</h2>"):]
    assert f"<td>virtual-staining {pipeline.version}</td>" in provenance
    assert f"<th>model version</th><td>{pipeline.card.version}</td>" in provenance
    gauges = {f.labels["well"]: f for f in result.figures if f.name == "differentiation_efficiency"}
    assert set(gauges) == {"A01", "A02"}
    assert all(
        f.name == "differentiation_efficiency" and f.labels["experiment"] == "EXP1" for f in gauges.values()
    )
    assert gauges["A01"].value == pytest.approx(float(a01[2]["efficiency"]), abs=1e-6)


def test_summary_needs_records(pipeline: VirtualStainingPipeline) -> None:
    with pytest.raises(ValueError, match="no efficiency records"):
        pipeline.summarize("EXP1", [])


def test_images_are_stained_at_the_weights_pixel_size(pipeline: VirtualStainingPipeline) -> None:
    """The same field imaged at half the pixel size gives the same efficiency, and the
    stain comes back at the input's own size."""
    from acqflow.plugins.virtual_staining.imaging import rescale_plane
    from acqflow.plugins.virtual_staining.randomised import RandomisedSpec, generate_randomised

    scale = pipeline.card.training["pixel_size_um"]
    assert scale == pytest.approx(0.65)
    spec = RandomisedSpec(experiments=1, wells=4, positions=1, timepoints=1, seed=12)
    differences = []
    for image in generate_randomised(spec):  # four fields, efficiencies from a few % to ~80 %
        size = image.metadata.pixel_size_um
        assert size is not None
        fine = rescale_plane(image.phase, size, size[0] / 2)  # twice the pixels, half their size
        fine_md = replace(image.metadata, pixel_size_um=(size[0] / 2, size[1] / 2))
        fine_item = ImageItem("fine", Path("fine.tif"), fine, "YX", fine_md)
        coarse, fine_result = pipeline.run(_item(image)), pipeline.run(fine_item)
        efficiency = [r.records[0].fields["efficiency"] for r in (coarse, fine_result)]
        assert isinstance(efficiency[0], float) and isinstance(efficiency[1], float)
        differences.append(abs(efficiency[0] - efficiency[1]))
    # Both are resampled to 0.65 um (the fine one twice interpolated): the same efficiency
    # within a few points, where staining without resampling would count 4x the blocks.
    assert np.mean(differences) < 0.03 and max(differences) < 0.05, differences
    assert fine_result.records[0].fields["height"] == fine.shape[0]
    assert fine_result.records[0].fields["model_pixel_size_um"] == pytest.approx(scale)
    with tifffile.TiffFile(io.BytesIO(fine_result.files[0].data)) as tif:
        assert tif.series[0].shape[-2:] == fine.shape
    # Without a pixel size the image is taken at the model's scale unless an option says otherwise.
    bare = ImageItem("bare", Path("bare.tif"), fine, "YX", ImageMetadata())
    block = pipeline.card.arguments["block_size"]
    as_is = -(-fine.shape[0] // block) * -(-fine.shape[1] // block)
    assert pipeline.run(bare).records[0].fields["blocks_total"] == as_is
    assert fine_result.records[0].fields["blocks_total"] != as_is
