"""``train`` and ``evaluate`` commands of the CT muscle pipeline.

Plain functions with typer annotations, so the daemon CLI registers them with
``train_app.command("ct-muscle")(train)``; ``python -m acqflow.plugins.ct_muscle.commands`` runs
them stand-alone.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from acqflow.plugins.ct_muscle.labelled_data import LabelledData
    from acqflow.plugins.ct_muscle.structures import LabelTable
    from acqflow.plugins.ct_muscle.training import LabelledVolume

__all__ = ["evaluate", "train"]

TRAIN_SEED_STRIDE = 100_000
VALIDATION_OFFSET = 50_000
HELD_OUT_FIRST_SEED = 900_000_000  # far from every training/validation seed


def _phantom_seeds(seed: int, count: int, offset: int = 0) -> range:
    start = seed * TRAIN_SEED_STRIDE + offset
    return range(start, start + count)


def _command_line() -> str:
    """How this process was started, for the model card."""
    if sys.argv and sys.argv[0].endswith("commands.py"):
        return shlex.join(["python", "-m", "acqflow.plugins.ct_muscle.commands", *sys.argv[1:]])
    return shlex.join([Path(sys.argv[0]).name if sys.argv else "acqflow", *sys.argv[1:]])


def output_folder(value: Path) -> Path:
    """``--output`` of a train command: refused (one line, exit 2) when it is the bundled
    weights folder, which a run from a checkout would otherwise overwrite."""
    from acqflow.models.store import bundled_weights_dir

    if value.expanduser().resolve() == bundled_weights_dir():
        typer.echo(f"error: --output {value} is the bundled weights folder ({bundled_weights_dir()});"
                   " write new weights elsewhere and point pipelines.weights at them", err=True)
        raise typer.Exit(2)
    return value


DATA_DIR_HELP = ("Labelled cases: nnU-Net raw folder, images/ + labels/ (or <case>_image/<case>_label) "
                 "NIfTI/NRRD files, or DICOM series + SEG per folder; see docs/models/ct-muscle.md")
LABEL_MAP_HELP = ("TOML/JSON [labels] table: label value or dataset.json name -> structure key "
                  "(default: dataset.json names matched to the structure table)")


def _labelled_data(data_dir: Path, table: LabelTable, label_map: Path | None) -> LabelledData:
    """The cases of ``data_dir`` with the mapping warnings printed; bad data as BadParameter."""
    from acqflow.plugins.api import InvalidInputError
    from acqflow.plugins.ct_muscle.labelled_data import load_labelled_data

    try:
        data = load_labelled_data(data_dir, table, label_map)
    except InvalidInputError as exc:
        about_map = label_map is not None and str(exc).startswith(str(label_map))
        hint = "--label-map" if about_map else "--data-dir"
        raise typer.BadParameter(str(exc), param_hint=hint) from exc
    for message in data.warnings:
        typer.echo(f"warning: {message}", err=True)
    return data


def _training_sets(
    table: LabelTable, data_dir: Path | None, label_map: Path | None, phantoms: int,
    validation: int, seed: int, generator: PhantomSource | None = None, grid_mm: float = 3.0,
) -> tuple[list[LabelledVolume], list[LabelledVolume], dict[str, object]]:
    """Training and validation volumes plus a summary for the card.

    Cases split whole: the first ``validation`` cases by name validate, the rest train.
    """
    from acqflow.plugins.ct_muscle.datasets import phantom_volumes

    if data_dir is not None:
        data = _labelled_data(data_dir, table, label_map)
        cases = [c.volume for c in data.cases]
        if len(cases) <= validation:
            raise typer.BadParameter(f"{len(cases)} cases cannot leave {validation} for validation",
                                     param_hint="--validation")
        return cases[validation:], cases[:validation], {
            **data.summary(), "train_cases": len(cases) - validation, "validation_cases": validation}
    summary: dict[str, object] = {
        "source": "phantoms", "train_phantoms": phantoms,
        "validation_phantoms": validation,
        "train_seeds": f"{seed * TRAIN_SEED_STRIDE}+[0,{phantoms})"}
    train_seeds = _phantom_seeds(seed, phantoms)
    validation_seeds = _phantom_seeds(seed, validation, VALIDATION_OFFSET)
    generator = generator or PhantomSource.RANDOMISED
    summary["generator"] = generator.value
    if generator is PhantomSource.FIXED:
        return phantom_volumes(train_seeds), phantom_volumes(validation_seeds), summary
    from acqflow.plugins.ct_muscle.anatomy import TRAINING_VARIETY, randomised_volumes

    size = _randomised_size(grid_mm)
    shape = (RANDOMISED_SLICES, size, size)
    summary["variety"] = asdict(TRAINING_VARIETY)
    return (randomised_volumes(train_seeds, shape=shape, pixel_spacing_mm=grid_mm, table=table),
            randomised_volumes(validation_seeds, shape=shape, pixel_spacing_mm=grid_mm,
                               table=table), summary)


class PhantomSource(str, Enum):
    """Which phantom generator trains (and evaluates) the network."""

    RANDOMISED = "randomised"  # acqflow.plugins.ct_muscle.anatomy: three anatomy models, wide ranges
    FIXED = "fixed"  # acqflow.plugins.ct_muscle.phantoms: the demo series' generator


class Augmentation(str, Enum):
    ROBUST = "robust"  # acqflow.plugins.ct_muscle.augmentation (nnU-Net / SynthSeg style)
    CONTRAST_AGNOSTIC = "contrast-agnostic"  # random tissue intensities on most slices (MR route)
    BASIC = "basic"  # small flips, rotations and contrast changes


RANDOMISED_FOV_MM = 480.0  # field of view of a randomised training phantom
RANDOMISED_SLICES = 24


def _randomised_size(grid_mm: float) -> int:
    """Pixels across :data:`RANDOMISED_FOV_MM` on a ``grid_mm`` grid, a multiple of 8."""
    return round(RANDOMISED_FOV_MM / grid_mm / 8) * 8


def train(
    output: Annotated[Path, typer.Option(
        help="Folder for ct_muscle.safetensors + .json (required; not the bundled weights folder)",
        callback=output_folder)],
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP + "; phantoms when absent")] = None,
    label_map: Annotated[Path | None, typer.Option(help=LABEL_MAP_HELP)] = None,
    phantoms: Annotated[int, typer.Option(help="Training phantoms when no data dir")] = 30,
    validation: Annotated[int, typer.Option(
        min=1, help="Validation phantoms, or cases (whole cases, the first by name)")] = 6,
    epochs: Annotated[int, typer.Option(min=1)] = 16,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    learning_rate: Annotated[float, typer.Option()] = 3e-3,
    seed: Annotated[int, typer.Option(help="Seed of phantoms, init and augmentation")] = 0,
    checkpoint_dir: Annotated[Path | None, typer.Option(
        help="Resumable checkpoint folder (resumes when a checkpoint exists)")] = None,
    version: Annotated[str, typer.Option(help="Model version in the card")] = "1.0.0",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for torch")] = 1,
    init_weights: Annotated[Path | None, typer.Option(
        help="Folder with ct_muscle weights to start from (fine-tuning); random when absent")] = None,
    noise_hu_max: Annotated[float, typer.Option(
        min=0, help="Extra augmentation: largest noise SD (HU) added to slices; 0 = off")] = 0.0,
    blur_sigma_max: Annotated[float, typer.Option(
        min=0, help="Extra augmentation: largest Gaussian blur sigma (pixels); 0 = off")] = 0.0,
    generator: Annotated[PhantomSource, typer.Option(
        help="Phantom generator when there is no data dir")] = PhantomSource.RANDOMISED,
    augmentation: Annotated[Augmentation, typer.Option(
        help="robust: scale, rotation, elastic, per-structure HU, random intensities, bias, "
             "noise, blur, low resolution; contrast-agnostic: the same with random tissue "
             "intensities on most slices and a gain field (weights for MR without "
             "translation); basic: small flips, rotations, contrast")] = (
        Augmentation.ROBUST),
    grid_mm: Annotated[float, typer.Option(
        min=0.3, help="Model pixel spacing in mm (3 = CPU demo; 1 or 0.8 for GPU sites)")] = 3.0,
    size: Annotated[int | None, typer.Option(
        help="Training slice size in pixels (multiple of 8; default 480 mm of field)")] = None,
    base_channels: Annotated[int, typer.Option(min=4, help="U-net width")] = 16,
    depth: Annotated[int, typer.Option(min=1, max=6, help="U-net depth")] = 3,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    elastic: Annotated[float | None, typer.Option(
        min=0.0, help="Robust augmentation: elastic displacement SD, fraction of the field")] = None,
    elastic_cells: Annotated[int | None, typer.Option(
        min=2, help="Robust augmentation: elastic control points per side")] = None,
    body_size_px: Annotated[float | None, typer.Option(
        min=1.0, help="Segment bodies smaller than this many model pixels (square root of "
                      "the cross-section area) on a finer grid that brings them to it, in "
                      "training and inference; default: that of --init-weights, else off")] = None,
) -> None:
    """Train (or fine-tune, --init-weights) the hip/thigh Bayesian U-net and write
    its weights and model card to --output.

    It trains on labelled cases (--data-dir) or on generated phantoms
    (--generator).
    """
    import torch

    from acqflow.models.store import ModelCard, save_weights
    from acqflow.plugins.ct_muscle.augmentation import CONTRAST_AGNOSTIC
    from acqflow.plugins.ct_muscle.inference import InputGeometry
    from acqflow.plugins.ct_muscle.structures import default_label_table
    from acqflow.plugins.ct_muscle.training import (
        AppearanceAugmentation,
        NetworkOptions,
        RobustAugmentation,
        TrainingOptions,
        train_network,
    )

    torch.set_num_threads(threads)
    table = default_label_table()
    train_set, val_set, data = _training_sets(table, data_dir, label_map, phantoms, validation,
                                              seed, generator, grid_mm)
    appearance = (AppearanceAugmentation(noise_hu_max=noise_hu_max, blur_sigma_max=blur_sigma_max)
                  if noise_hu_max > 0 or blur_sigma_max > 0 else None)
    robust = {Augmentation.ROBUST: RobustAugmentation(),
              Augmentation.CONTRAST_AGNOSTIC: CONTRAST_AGNOSTIC}.get(augmentation)
    if robust is not None:
        robust = replace(robust, elastic=robust.elastic if elastic is None else elastic,
                         elastic_cells=robust.elastic_cells if elastic_cells is None else elastic_cells)
    elif elastic is not None or elastic_cells is not None:
        raise typer.BadParameter("needs --augmentation robust or contrast-agnostic",
                                 param_hint="--elastic")
    side = size if size is not None else _randomised_size(grid_mm)
    initial, base = None, None
    if init_weights is not None:
        from acqflow.plugins.ct_muscle.inference import load_model

        start, base, base_geometry = load_model(init_weights, expected=[s.key for s in table])
        initial = start.state_dict()
        if body_size_px is None:
            body_size_px = base_geometry.body_size_px
    try:
        options = TrainingOptions(
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
            size=side, geometry=InputGeometry(pixel_spacing_mm=grid_mm, body_size_px=body_size_px),
            network=NetworkOptions(base_channels=base_channels, depth=depth),
            appearance=appearance, robust=robust, device=device)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    result = train_network(train_set, val_set, table, options, checkpoint_dir, initial)
    card = ModelCard(
        name="ct_muscle", version=version, architecture="BayesianUNet",
        arguments={"in_channels": 1, "num_classes": table.num_classes,
                   "base_channels": options.network.base_channels,
                   "depth": options.network.depth, "dropout": options.network.dropout},
        training={"command": _command_line(),
                  "seed": seed, "data": data, "epochs": epochs, "batch_size": batch_size,
                  "learning_rate": learning_rate, "input": options.geometry.to_dict(),
                  "labels": [s.key for s in table], "threads": threads, "device": device,
                  "augmentation": {"kind": augmentation.value,
                                   "robust": asdict(robust) if robust else None,
                                   "appearance": asdict(appearance) if appearance else None},
                  "size": side,
                  "fine_tuned_from": ({"version": base.version, "sha256": base.sha256,
                                       "command": base.training.get("command")}
                                      if base is not None else None),
                  "history": [{k: v for k, v in h.items() if k != "validation_dice"}
                              for h in result.history]},
        metrics={"validation_dice": result.validation_dice},
        notes=("Demo weights trained on synthetic phantoms only; not for clinical use."
               if data_dir is None else
               f"Trained on {data['cases']} labelled cases ({data['source']}, {data['layout']} layout); "
               "not validated for clinical use."),
    )
    path = save_weights(result.model, card, output)
    typer.echo(f"wrote {path}")


def evaluate(
    weights_dir: Annotated[Path, typer.Option(
        help="Folder holding ct_muscle.json (models/weights: relative to the working folder)")] = Path(
        "models/weights"),
    data_dir: Annotated[Path | None, typer.Option(
        help=DATA_DIR_HELP + "; held-out phantoms when absent")] = None,
    label_map: Annotated[Path | None, typer.Option(help=LABEL_MAP_HELP)] = None,
    phantoms: Annotated[int, typer.Option(help="Held-out phantoms when no data dir")] = 6,
    first_seed: Annotated[int, typer.Option(help="Seed of the first held-out phantom")] = (
        HELD_OUT_FIRST_SEED),
    samples: Annotated[int, typer.Option(min=1, help="Monte-Carlo samples T")] = 10,
    measure: Annotated[str, typer.Option(
        help="variance | entropy | mutual_information")] = "entropy",
    dice_below: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Review threshold: a structure below this Dice should be flagged")] = 0.9,
    review_threshold: Annotated[float | None, typer.Option(
        min=0.0, help="Review threshold to score (default: the pipeline's for --measure)")] = None,
    write_card: Annotated[bool, typer.Option(help="Store the metrics in the card")] = False,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    generator: Annotated[PhantomSource, typer.Option(
        help="Phantom generator when there is no data dir")] = PhantomSource.RANDOMISED,
    variety: Annotated[str, typer.Option(
        help="Randomised phantoms: held-out (settings training never used) or training")] = (
        "held-out"),
    failure_dice: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Failure detection: a structure below this Dice is a failure")] = 0.8,
) -> None:
    """Evaluate CT muscle weights on held-out volumes; the results are printed as
    JSON.

    Per structure: Dice and ASSD; the uncertainty of wrong and of correct
    voxels, and how per-structure uncertainty correlates with Dice; how well the
    mean uncertainty and the samples' disagreement detect failures (AUROC), with
    the best review thresholds for these volumes and how the pipeline's defaults
    do. --write-card stores them in the card.
    """
    import torch

    from acqflow.plugins.ct_muscle.datasets import phantom_volumes
    from acqflow.plugins.ct_muscle.evaluation import evaluate_model
    from acqflow.plugins.ct_muscle.inference import McOptions, UncertaintyMeasure, load_model
    from acqflow.plugins.ct_muscle.phantoms import PhantomOptions
    from acqflow.plugins.ct_muscle.pipeline import DEFAULT_DISAGREEMENT_THRESHOLD, DEFAULT_REVIEW_THRESHOLDS
    from acqflow.plugins.ct_muscle.structures import default_label_table

    torch.set_num_threads(threads)
    torch.manual_seed(first_seed % 2**31)  # the dropout masks, so the report is repeatable
    table = default_label_table()
    model, card, geo = load_model(weights_dir, expected=[s.key for s in table])
    data: dict[str, object]
    if data_dir is not None:
        labelled = _labelled_data(data_dir, table, label_map)
        volumes = [c.volume for c in labelled.cases]
        slices_mm = [c.slice_spacing_mm for c in labelled.cases]
        data = labelled.summary()
    elif generator is PhantomSource.FIXED:
        volumes = phantom_volumes(range(first_seed, first_seed + phantoms))
        slices_mm = [PhantomOptions().slice_spacing_mm] * len(volumes)
        data = {"source": "phantoms", "generator": generator.value,
                "held_out_first_seed": first_seed, "phantoms": phantoms}
    else:
        from acqflow.plugins.ct_muscle.anatomy import VARIETIES, randomised_volumes

        if variety not in VARIETIES:
            raise typer.BadParameter(f"variety must be one of {', '.join(VARIETIES)}, got {variety!r}")
        size = _randomised_size(geo.pixel_spacing_mm)
        volumes = randomised_volumes(range(first_seed, first_seed + phantoms), VARIETIES[variety],
                                     (RANDOMISED_SLICES, size, size), geo.pixel_spacing_mm, table)
        slices_mm = [6.0] * len(volumes)
        data = {"source": "phantoms", "generator": generator.value, "variety": variety,
                "held_out_first_seed": first_seed, "phantoms": phantoms}
    chosen = UncertaintyMeasure(measure)
    report = evaluate_model(model, geo, volumes, table, McOptions(samples=samples, measure=chosen),
                            slice_spacings_mm=slices_mm, dice_below=dice_below,
                            review_threshold=(DEFAULT_REVIEW_THRESHOLDS[chosen] if review_threshold is None
                                              else review_threshold), failure_dice=failure_dice,
                            disagreement_threshold=DEFAULT_DISAGREEMENT_THRESHOLD)
    result = {"model": card.name, "version": card.version, "samples": samples,
              "measure": measure, "held_out_first_seed": first_seed, "data": data, **report.as_dict()}
    typer.echo(json.dumps(result, indent=2, sort_keys=True))
    if write_card:
        updated = replace(card, metrics={**card.metrics, "held_out": result})
        (weights_dir / f"{card.name}.json").write_text(updated.to_json())


def _main() -> None:
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app()


if __name__ == "__main__":
    _main()
