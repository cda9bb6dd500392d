"""``train`` and ``evaluate`` commands for the virtual-staining model.

Both are plain functions whose parameters carry ``typer.Option`` annotations, so the
daemon CLI registers them as ``train_app.command("virtual-staining")(train)`` and
``evaluate_app.command("virtual-staining")(evaluate)``; ``python -m
acqflow.plugins.virtual_staining`` runs them stand-alone. Data come from a folder (pairs matched
by ``--pattern``), a CSV manifest (``--manifest``) or the synthetic generator
(``--synthetic N``: N experiments of 4 wells x 2 positions x 3 time points).
"""

from __future__ import annotations

import inspect
import json
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from acqflow.plugins.virtual_staining.labels import BinarizeMethod
from acqflow.plugins.virtual_staining.synthetic import FILE_NAME_PATTERN

if TYPE_CHECKING:
    from acqflow.models.store import ModelCard
    from acqflow.models.tile_cnn import TileCNN
    from acqflow.plugins.virtual_staining.calibration import EfficiencyCalibration
    from acqflow.plugins.virtual_staining.data import LabelledImage, Split
    from acqflow.plugins.virtual_staining.labels import LabelOptions
    from acqflow.plugins.virtual_staining.training import (
        SearchSpace,
        StudyResult,
        TrainingSettings,
        TrialOutcome,
    )

__all__ = [
    "DataRequest",
    "Generator",
    "VarietyName",
    "demo_data",
    "evaluate",
    "train",
]


class Generator(str, Enum):
    """``--generator``: which synthetic data ``--synthetic N`` draws."""

    DEMO = "demo"
    RANDOMISED = "randomised"


class VarietyName(str, Enum):
    """``--variety``: the randomised generator's training ranges or its held-out settings."""

    TRAINING = "training"
    HELD_OUT = "held-out"


#: The scale the randomised-generator weights work at (a 10x objective on a 6.5 um camera).
DEFAULT_PIXEL_SIZE_UM = 0.65
Data = Annotated[Path | None, typer.Option("--data", help="Folder of phase/fluorescence TIFF pairs.")]
Manifest = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help="CSV with columns phase and fluorescence (paths), optionally experiment, well, position"
        " and timepoint.",
    ),
]
Pattern = Annotated[
    str,
    typer.Option(
        "--pattern",
        help="Regex on paths below --data with a (?P<channel>) group (and experiment, well, position,"
        " timepoint groups).",
        show_default="the regex shown above",
    ),
]
PhaseToken = Annotated[
    str, typer.Option("--phase-token", help="Value of the channel group for phase images.")
]
GfpToken = Annotated[
    str, typer.Option("--fluorescence-token", help="Value of the channel group for fluorescence.")
]
PhaseChannel = Annotated[
    str | None, typer.Option("--phase-channel", help="Channel index/name in multi-channel files.")
]
GfpChannel = Annotated[
    str | None, typer.Option("--fluorescence-channel", help="Fluorescence channel index/name.")
]
Synthetic = Annotated[
    int, typer.Option("--synthetic", min=0, help="Use N generated experiments instead of files.")
]
SyntheticSize = Annotated[
    int, typer.Option("--synthetic-size", min=64, help="Side of demo-generator images (px).")
]
GeneratorOption = Annotated[
    Generator,
    typer.Option(
        "--generator", help="Synthetic data: demo texture fields, or cells through randomised optics."
    ),
]
VarietyOption = Annotated[
    VarietyName,
    typer.Option("--variety", help="Randomised generator: training ranges or the held-out settings."),
]
Method = Annotated[BinarizeMethod, typer.Option("--binarize", help="Fluorescence binarisation method.")]
GfpThreshold = Annotated[
    float | None, typer.Option("--fluorescence-threshold", help="Intensity threshold for --binarize fixed.")
]
PositiveFraction = Annotated[
    float,
    typer.Option(
        "--positive-fraction", min=0.01, max=1.0, help="GFP area fraction from which a block is positive."
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for data generation, splits, search and training.")]
Threads = Annotated[
    int | None, typer.Option("--threads", min=1, help="torch CPU threads (default: torch's choice).")
]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]


def output_folder(value: Path) -> Path:
    """``--output`` of a train command: refused (one line, exit 2) when it is the bundled
    weights folder, which a run from a checkout would otherwise overwrite."""
    from acqflow.models.store import bundled_weights_dir

    if value.expanduser().resolve() == bundled_weights_dir():
        typer.echo(f"error: --output {value} is the bundled weights folder ({bundled_weights_dir()});"
                   " write new weights elsewhere and point pipelines.weights at them", err=True)
        raise typer.Exit(2)
    return value


@dataclass(frozen=True)
class DataRequest:
    """Where the images come from (exactly one of files, manifest or generator)."""

    data: Path | None
    manifest: Path | None
    synthetic: int
    synthetic_size: int
    generator: Generator
    variety: VarietyName
    pattern: str
    tokens: tuple[str, str]
    channels: tuple[str | None, str | None]
    seed: int


def _dataset(
    request: DataRequest, labels: LabelOptions, model_pixel_um: float | None
) -> tuple[list[LabelledImage], dict[str, Any]]:
    """Labelled images (at the model's pixel size where known) and where they came from.

    Raises typer.BadParameter.
    """
    from acqflow.plugins.virtual_staining import data as vsdata

    if sum([request.data is not None, request.manifest is not None, request.synthetic > 0]) != 1:
        raise typer.BadParameter("give exactly one of --data, --manifest or --synthetic")
    if request.synthetic:
        variety = None
        source: dict[str, Any] = {
            "source": "synthetic",
            "generator": request.generator.value,
            "experiments": request.synthetic,
            "seed": request.seed,
        }
        if request.generator is Generator.RANDOMISED:
            from acqflow.plugins.virtual_staining import randomised

            held_out = request.variety is VarietyName.HELD_OUT
            variety = randomised.HELD_OUT_VARIETY if held_out else randomised.TRAINING_VARIETY
            source["variety"] = request.variety.value
        else:
            source["size"] = request.synthetic_size
        images = vsdata.synthetic_images(
            request.synthetic, labels, request.seed, request.synthetic_size, variety, model_pixel_um
        )
        return images, source
    try:
        pairs = (
            vsdata.pairs_from_manifest(request.manifest)
            if request.manifest is not None
            else vsdata.pairs_from_pattern(request.data or Path("."), request.pattern, *request.tokens)
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    skipped: list[tuple[str, str]] = []
    images = vsdata.load_pairs(
        pairs, labels, *request.channels, model_pixel_um=model_pixel_um, skipped=skipped
    )
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr, flush=True)
    print(f"{len(images)} of {len(pairs)} image pairs usable", file=sys.stderr, flush=True)
    if not images:
        raise typer.BadParameter(f"none of the {len(pairs)} image pairs could be used")
    source = {"source": str(request.manifest or request.data), "pairs": len(pairs), "skipped": len(skipped)}
    return images, source


def _command_line(name: str, function: Callable[..., object], values: dict[str, Any]) -> str:
    """The CLI invocation that reproduces a run: options that differ from their default.

    Flags are the parameter names with dashes; ``--work-dir`` and ``--quiet`` do not
    change the result and are left out.
    """
    parts = ["acqflow", name, "virtual-staining"]
    for parameter in inspect.signature(function).parameters.values():
        value = values[parameter.name]
        if parameter.name in ("work_dir", "quiet") or value in (None, False) or value == parameter.default:
            continue
        flag = "--" + parameter.name.replace("_", "-")
        parts += [flag] if value is True else [flag, str(getattr(value, "value", value))]
    return shlex.join(parts)


def _split_summary(split: Split) -> dict[str, Any]:
    def part(images: Sequence[LabelledImage]) -> dict[str, Any]:
        return {
            "images": len(images),
            "experiments": sorted({i.experiment for i in images}),
            "fields": len({i.field for i in images}),
        }

    return {
        "grouped_by": split.grouped_by,
        "train": part(split.train),
        "validation": part(split.validation),
        "test": part(split.test),
    }


def _print_split(split: Split) -> None:
    """Which images train, validate and test, and why none is left out."""
    summary = _split_summary(split)
    parts = ", ".join(
        f"{summary[name]['images']} {name} images ({summary[name]['fields']} fields)"
        for name in ("train", "validation", "test")
    )
    print(
        f"split by {split.grouped_by}: {parts}; validation images choose the model and its "
        "threshold, test images give the held-out figures, none is dropped",
        file=sys.stderr,
        flush=True,
    )


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def train(
    output: Annotated[
        Path,
        typer.Option(
            "--output", help="Folder for <name>.safetensors and <name>.json (required; not the"
            " bundled weights folder).", callback=output_folder,
        ),
    ],
    data: Data = None,
    manifest: Manifest = None,
    synthetic: Synthetic = 0,
    synthetic_size: SyntheticSize = 256,
    generator: GeneratorOption = Generator.DEMO,
    variety: VarietyOption = VarietyName.TRAINING,
    pattern: Pattern = FILE_NAME_PATTERN,
    phase_token: PhaseToken = "phase",
    fluorescence_token: GfpToken = "gfp",
    phase_channel: PhaseChannel = None,
    fluorescence_channel: GfpChannel = None,
    binarize: Method = BinarizeMethod.OTSU,
    fluorescence_threshold: GfpThreshold = None,
    positive_fraction: PositiveFraction = 0.5,
    block_sizes: Annotated[
        str, typer.Option("--block-sizes", help="Block sizes to search, comma-separated (multiples of 8).")
    ] = "24,32,48",
    widths: Annotated[
        str, typer.Option("--widths", help="Network widths (channels) to search, comma-separated.")
    ] = "8,12,16",
    trials: Annotated[int, typer.Option("--trials", min=1, help="Optuna trial budget.")] = 8,
    max_epochs: Annotated[int, typer.Option("--max-epochs", min=1)] = 12,
    patience: Annotated[int, typer.Option("--patience", min=1, help="Early-stopping patience (epochs).")] = 3,
    blocks_per_epoch: Annotated[int, typer.Option("--blocks-per-epoch", min=64)] = 8192,
    seed: Seed = 0,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir", help="Study database + checkpoints; reuse to resume (default: a temporary folder)."
        ),
    ] = None,
    version: Annotated[str, typer.Option("--version", help="Model version written to the card.")] = "1.0.0",
    pixel_size: Annotated[
        float | None,
        typer.Option(
            "--pixel-size",
            min=0.05,
            help="Model scale (um per pixel): images with a pixel size are resampled to it, "
            "in training and at inference. Default: 0.65 with --generator randomised, else none.",
        ),
    ] = None,
    threads: Threads = None,
    quiet: Quiet = False,
) -> Path:
    """Train the virtual-staining block classifier and write its weights and model
    card.

    The images come from --data (phase/fluorescence TIFF pairs named as
    --pattern says), a --manifest, or --synthetic N generated experiments. The
    hyper-parameters (block size, width) are tuned by Bayesian optimisation over
    --trials; the best model is evaluated on held-out images and written to
    --output with its card.

    Default --pattern (names like EXP1_A01_pos1_t0_phase.tif):

    {default pattern}

    \f
    Returns the model card path. Raises typer.BadParameter on inconsistent
    options and ValueError when the data cannot be split or no trial completes.
    """
    import torch

    from acqflow.plugins.virtual_staining.labels import LabelOptions
    from acqflow.plugins.virtual_staining.training import SearchSpace, TrainingSettings

    command = _command_line("train", train, dict(locals()))
    if threads:
        torch.set_num_threads(threads)
    try:
        space = SearchSpace(
            block_size=tuple(int(size) for size in block_sizes.split(",")),
            width=tuple(int(width) for width in widths.split(",")),
        )
    except ValueError as exc:
        message = f"--block-sizes and --widths must be integers: {block_sizes} {widths}"
        raise typer.BadParameter(message) from exc
    labels = LabelOptions(binarize, fluorescence_threshold, positive_fraction=positive_fraction)
    request = DataRequest(
        data,
        manifest,
        synthetic,
        synthetic_size,
        generator,
        variety,
        pattern,
        (phase_token, fluorescence_token),
        (phase_channel, fluorescence_channel),
        seed,
    )
    if pixel_size is None and synthetic and generator is Generator.RANDOMISED:
        pixel_size = DEFAULT_PIXEL_SIZE_UM
    images, source = _dataset(request, labels, pixel_size)
    source["pixel_size_um"] = pixel_size
    settings = TrainingSettings(trials, max_epochs, patience, blocks_per_epoch, positive_fraction, seed)
    return _train_and_save(images, source, labels, settings, space, output, work_dir, version, command, quiet)


train.__doc__ = (train.__doc__ or "").replace("{default pattern}", FILE_NAME_PATTERN)  # one source


def _train_and_save(
    images: list[LabelledImage],
    source: dict[str, Any],
    labels: LabelOptions,
    settings: TrainingSettings,
    space: SearchSpace,
    output: Path,
    work_dir: Path | None,
    version: str,
    command: str,
    quiet: bool,
) -> Path:
    """Split, search, evaluate on the test images and write the weights and card."""
    from acqflow.plugins.common.progress import TrainingProgress
    from acqflow.plugins.virtual_staining.data import split_images
    from acqflow.plugins.virtual_staining.training import run_study

    split = split_images(images, settings.seed)
    if not quiet:
        _print_split(split)
    total = settings.trials * settings.max_epochs
    with tempfile.TemporaryDirectory(prefix="vs-study-") as scratch:
        if quiet:
            result = run_study(split, settings, work_dir or Path(scratch), space)
        else:
            with TrainingProgress("training virtual-staining (epochs, at most)", total) as progress:
                result = run_study(split, settings, work_dir or Path(scratch), space, progress)
    best = result.best
    model = best.params.network()
    model.load_state_dict(best.state)
    calibration = _fit_calibration(model, split.validation, best.threshold)
    metrics = _held_out_metrics(model, split.test, best.threshold, labels.positive_fraction, calibration)
    if not quiet:
        _print_metrics("held-out test images", metrics)
    training = _training_record(best, result, labels, source, split, settings, command)
    training["inference"]["efficiency_calibration"] = calibration.to_dict()
    card_metrics: dict[str, Any] = dict(metrics)
    if source.get("generator") == Generator.RANDOMISED.value:
        card_metrics.update(other_source_figures(model, training, labels, settings.seed))
        if not quiet:
            for name in ("held_out_variety", "texture_generator"):
                _print_metrics(card_metrics[name]["data"], card_metrics[name])
    card = _card(model, training, card_metrics, version)
    from acqflow.models.store import save_weights

    return save_weights(model, card, output)


def other_source_figures(
    model: TileCNN, training: dict[str, Any], labels: LabelOptions, seed: int
) -> dict[str, dict[str, Any]]:
    """Figures on data from sources training never saw, for the card of randomised-generator weights.

    ``held_out_variety``: 3 experiments (72 fields) of the randomised generator's held-out
    settings; ``texture_generator``: 2 experiments (48 fields, 512 px) of the texture
    generator. Seeds derive from the training seed (+1, +2), so the command rebuilds them.
    """
    from acqflow.plugins.virtual_staining import imaging, randomised
    from acqflow.plugins.virtual_staining.calibration import EfficiencyCalibration
    from acqflow.plugins.virtual_staining.data import synthetic_images
    from acqflow.plugins.virtual_staining.evaluation import evaluate_images
    from acqflow.plugins.virtual_staining.inference import BlockPredictor, InferenceOptions

    inference = training["inference"]
    predictor = BlockPredictor(model, "cpu", InferenceOptions(threshold=inference["threshold"]))
    calibration = EfficiencyCalibration.from_card(inference)
    scale = imaging.model_pixel_size(training)
    sets = {
        "held_out_variety": (
            synthetic_images(3, labels, seed + 1, variety=randomised.HELD_OUT_VARIETY, model_pixel_um=scale),
            f"acqflow evaluate virtual-staining --synthetic 3 --generator randomised --variety held-out "
            f"--seed {seed + 1}",
        ),
        "texture_generator": (
            synthetic_images(2, labels, seed + 2, 512),
            f"acqflow evaluate virtual-staining --synthetic 2 --synthetic-size 512 --seed {seed + 2}",
        ),
    }
    return {
        name: {**evaluate_images(predictor, images, labels.positive_fraction, calibration), "data": command}
        for name, (images, command) in sets.items()
    }


def _fit_calibration(
    model: TileCNN, validation: list[LabelledImage], threshold: float
) -> EfficiencyCalibration:
    """The efficiency calibration fitted on the validation images."""
    from acqflow.plugins.virtual_staining.calibration import EfficiencyCalibration
    from acqflow.plugins.virtual_staining.inference import BlockPredictor, InferenceOptions

    predictor = BlockPredictor(model, "cpu", InferenceOptions(threshold=threshold))
    predicted = [predictor.predict(image.phase).positive_fraction for image in validation]
    return EfficiencyCalibration.fit(predicted, [image.measured_efficiency for image in validation])


def _held_out_metrics(
    model: TileCNN,
    test: list[LabelledImage],
    threshold: float,
    positive_fraction: float,
    calibration: EfficiencyCalibration,
) -> dict[str, float]:
    from acqflow.plugins.virtual_staining.evaluation import evaluate_images
    from acqflow.plugins.virtual_staining.inference import BlockPredictor, InferenceOptions

    predictor = BlockPredictor(model, "cpu", InferenceOptions(threshold=threshold))
    return evaluate_images(predictor, test, positive_fraction, calibration)


def _training_record(
    best: TrialOutcome,
    result: StudyResult,
    labels: LabelOptions,
    source: dict[str, Any],
    split: Split,
    settings: TrainingSettings,
    command: str,
) -> dict[str, Any]:
    """The card's ``training`` section: how to rebuild the weights and what the search found."""
    import optuna
    import torch

    search = {
        "sampler": "optuna TPE",
        "objective": "mean of validation block F1, pixel Dice and efficiency Pearson r",
        "trials": settings.trials,
        "completed": result.trials_completed,
        "pruned": result.trials_pruned,
        "best_params": asdict(best.params),
        "validation": result.validation,
        "best_epoch": best.best_epoch,
        "max_epochs": settings.max_epochs,
        "patience": settings.patience,
        "blocks_per_epoch": settings.blocks_per_epoch,
    }
    label_settings = {
        "method": labels.method.value,
        "threshold": labels.threshold,
        "smooth_sigma": labels.smooth_sigma,
        "positive_fraction": labels.positive_fraction,
        "block_size": best.params.block_size,
    }
    return {
        "command": command,
        "seed": settings.seed,
        "data": source,
        "split": _split_summary(split),
        "labels": label_settings,
        "normalization": "per image: (x - median) / (p99 - p1)",
        "search": search,
        "inference": {"threshold": best.threshold, "stride": None},
        "pixel_size_um": source.get("pixel_size_um"),
        "software": {"torch": torch.__version__, "optuna": optuna.__version__},
    }


def _card(model: TileCNN, training: dict[str, Any], metrics: dict[str, float], version: str) -> ModelCard:
    from acqflow.models.store import ModelCard
    from acqflow.plugins.virtual_staining.pipeline import MODEL_NAME

    return ModelCard(
        name=MODEL_NAME,
        version=version,
        architecture="acqflow.models.tile_cnn.TileCNN",
        arguments=model.config.to_dict(),
        training=training,
        metrics=metrics,
        notes="Block classifier for virtual NKX2.5-GFP staining of phase-contrast images; metrics are "
        "on held-out test images (split by experiment or field, never by block).",
    )


def evaluate(
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="Folder with the weights + card (default: bundled demo weights)."),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="Weights name inside the folder.")
    ] = "virtual_staining",
    data: Data = None,
    manifest: Manifest = None,
    synthetic: Synthetic = 0,
    synthetic_size: SyntheticSize = 256,
    generator: GeneratorOption = Generator.DEMO,
    variety: VarietyOption = VarietyName.TRAINING,
    pattern: Pattern = FILE_NAME_PATTERN,
    phase_token: PhaseToken = "phase",
    fluorescence_token: GfpToken = "gfp",
    phase_channel: PhaseChannel = None,
    fluorescence_channel: GfpChannel = None,
    binarize: Method = BinarizeMethod.OTSU,
    fluorescence_threshold: GfpThreshold = None,
    positive_fraction: Annotated[
        float | None, typer.Option("--positive-fraction", help="Default: the card's.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Block decision threshold (default: the card's).")
    ] = None,
    stride: Annotated[
        int | None, typer.Option("--stride", min=1, help="Stride of overlapping blocks (px).")
    ] = None,
    seed: Seed = 1,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the metrics as JSON here.")
    ] = None,
    threads: Threads = None,
    quiet: Quiet = False,
) -> dict[str, float]:
    """Evaluate virtual-staining weights on images: block F1, accuracy, ROC AUC and
    how well the stained fraction predicts the measured efficiency.

    Every given image counts as held out; the images come from --data, a
    --manifest or --synthetic N, as for train. Default --pattern (names like
    EXP1_A01_pos1_t0_phase.tif):

    {default pattern}

    \f
    Returns the metrics. Raises typer.BadParameter on inconsistent options and
    acqflow.models.store.WeightsError on missing or corrupt weights.
    """
    import torch

    from acqflow.plugins.virtual_staining import imaging
    from acqflow.plugins.virtual_staining.calibration import EfficiencyCalibration
    from acqflow.plugins.virtual_staining.evaluation import evaluate_images
    from acqflow.plugins.virtual_staining.inference import BlockPredictor, InferenceOptions
    from acqflow.plugins.virtual_staining.labels import LabelOptions

    if threads:
        torch.set_num_threads(threads)
    network, card = _load_model(weights, model)
    fraction = positive_fraction or float(card.training.get("labels", {}).get("positive_fraction", 0.5))
    labels = LabelOptions(binarize, fluorescence_threshold, positive_fraction=fraction)
    request = DataRequest(
        data,
        manifest,
        synthetic,
        synthetic_size,
        generator,
        variety,
        pattern,
        (phase_token, fluorescence_token),
        (phase_channel, fluorescence_channel),
        seed,
    )
    images, _ = _dataset(request, labels, imaging.model_pixel_size(card.training))
    decision = threshold or float(card.training.get("inference", {}).get("threshold", 0.5))
    predictor = BlockPredictor(network, "cpu", InferenceOptions(stride=stride, threshold=decision))
    calibration = EfficiencyCalibration.from_card(card.training.get("inference", {}))
    metrics = evaluate_images(predictor, images, fraction, calibration)
    if not quiet:
        _print_metrics(f"{model} {card.version} on {len(images)} images", metrics)
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


evaluate.__doc__ = (evaluate.__doc__ or "").replace("{default pattern}", FILE_NAME_PATTERN)


def _load_model(weights: Path | None, name: str) -> tuple[TileCNN, ModelCard]:
    """The TileCNN and card ``name`` from ``weights`` (default: bundled); raises WeightsError."""
    from acqflow.models.store import bundled_weights_dir, load_weights, read_card
    from acqflow.models.tile_cnn import TileCNN

    directory = weights or bundled_weights_dir()
    card = read_card(directory, name)
    network = TileCNN(**card.arguments)
    load_weights(network, directory, name)
    return network, card


def demo_data(
    output: Annotated[Path, typer.Option("--output", help="Folder to write the TIFFs into.")],
    experiments: Annotated[int, typer.Option("--experiments", min=1)] = 1,
    wells: Annotated[int, typer.Option("--wells", min=1, max=96)] = 3,
    positions: Annotated[int, typer.Option("--positions", min=1)] = 2,
    timepoints: Annotated[int, typer.Option("--timepoints", min=1)] = 4,
    size: Annotated[int, typer.Option("--size", min=16, help="Image side (px, --generator demo).")] = 512,
    bit_depth: Annotated[int, typer.Option("--bit-depth", help="8 or 16.")] = 16,
    generator: Annotated[
        Generator,
        typer.Option(
            "--generator",
            help="randomised: cells through randomised optics (training settings; fields of "
            "200-330 um at 0.3-1.3 um pixels); demo: texture fields of --size pixels.",
        ),
    ] = Generator.RANDOMISED,
    seed: Seed = 0,
) -> list[Path]:
    """Write a synthetic time series (phase + GFP TIFFs) in acquisition order.

    Names follow ``EXP1_B03_pos1_t005_phase.tif`` / ``..._gfp.tif``. Returns the paths;
    raises ValueError on an invalid spec and OSError when the folder cannot be written.
    """
    from dataclasses import replace

    from acqflow.plugins.virtual_staining.randomised import (
        TRAINING_VARIETY,
        RandomisedSpec,
        generate_randomised,
    )
    from acqflow.plugins.virtual_staining.synthetic import SyntheticSpec, generate_series, write_images

    if bit_depth not in (8, 16):
        raise typer.BadParameter(f"--bit-depth must be 8 or 16, got {bit_depth}")
    counts = {"experiments": experiments, "wells": wells, "positions": positions, "timepoints": timepoints}
    if generator is Generator.RANDOMISED:
        variety = replace(TRAINING_VARIETY, bit_depths=(bit_depth,))
        return write_images(output, generate_randomised(RandomisedSpec(**counts, seed=seed, variety=variety)))
    spec = SyntheticSpec(**counts, shape=(size, size), bit_depth=bit_depth, seed=seed)
    return write_images(output, generate_series(spec))
