"""``train mr-to-ct`` and ``evaluate mr-muscle`` commands.

Both are plain functions whose parameters carry ``typer.Option`` annotations, so the
daemon CLI registers them as ``train_app.command("mr-to-ct")(train)`` and
``evaluate_app.command("mr-muscle")(evaluate)``; ``python -m acqflow.plugins.mr_muscle`` runs
them stand-alone. torch is imported inside the functions, so the CLI starts fast.
"""

from __future__ import annotations

import json
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from acqflow.plugins.mr_muscle.losses import GradientMode

if TYPE_CHECKING:
    from acqflow.models.cyclegan import ResnetGenerator
    from acqflow.models.unet import BayesianUNet
    from acqflow.plugins.ct_muscle.inference import InputGeometry
    from acqflow.plugins.ct_muscle.structures import LabelTable
    from acqflow.plugins.mr_muscle.evaluation import EvaluationOptions
    from acqflow.plugins.mr_muscle.pipeline import MrRoute
    from acqflow.plugins.mr_muscle.translation import IntensityScale

__all__ = ["evaluate", "train"]



class PhantomGenerator(str, Enum):
    """acqflow.plugins.mr_muscle.data.Generator, here so the CLI starts without numpy."""

    FIXED = "fixed"
    RANDOMISED = "randomised"


GeneratorOption = Annotated[PhantomGenerator, typer.Option(
    "--generator", help="Synthetic phantoms: fixed (the demo series' generator) or randomised "
    "(randomised anatomy, a T1 contrast per phantom, 160 px; held-out phantoms draw the held-out "
    "anatomy and contrast variety).")]

Seed = Annotated[int, typer.Option("--seed", min=0, help="Seed for data generation, crops and weights.")]
Threads = Annotated[
    int | None, typer.Option("--threads", min=1, help="torch CPU threads (default: torch's).")
]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars or tables.")]
Device = Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1.")]


def output_folder(value: Path) -> Path:
    """``--output`` of a train command: refused (one line, exit 2) when it is the bundled
    weights folder, which a run from a checkout would otherwise overwrite."""
    from acqflow.models.store import bundled_weights_dir

    if value.expanduser().resolve() == bundled_weights_dir():
        typer.echo(f"error: --output {value} is the bundled weights folder ({bundled_weights_dir()});"
                   " write new weights elsewhere and point pipelines.weights at them", err=True)
        raise typer.Exit(2)
    return value

_TRAIN_DEFAULTS: dict[str, Any] = {
    "--synthetic": 12,
    "--iterations": 2000,
    "--batch-size": 1,
    "--crop": 128,
    "--learning-rate": 2e-4,
    "--decay-from": 0.5,
    "--pool-size": 50,
    "--adversarial-weight": 1.0,
    "--cycle-weight": 10.0,
    "--identity-weight": 0.0,
    "--gradient-weight": 5.0,
    "--gradient-mode": GradientMode.MAGNITUDE,
    "--base-channels": 12,
    "--residual-blocks": 4,
    "--discriminator-channels": 16,
    "--ct-noise": 0.0,
    "--discriminator-layers": 4,
    "--pixel-spacing": 3.0,
    "--version": "1.0.0",
    "--resume": True,
    "--device": "cpu",
    "--generator": "fixed",
    "--mr-augmentation": False,
}


def _command_line(values: dict[str, Any]) -> str:
    """The CLI invocation that reproduces a run (options equal to their default omitted)."""
    parts = ["acqflow", "train", "mr-to-ct"]
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value == _TRAIN_DEFAULTS.get(flag):
            continue
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts += [flag, str(value.value if isinstance(value, Enum) else value)]
    return shlex.join(parts)


def _domain(
    folder: Path | None, modality: str, synthetic: int, seed: int, scale: Any, noise: float = 0.0,
    generator: str = "fixed",
) -> Any:
    """Slices of one domain from a DICOM folder or the synthetic generator."""
    from acqflow.plugins.mr_muscle import data

    try:
        if folder is not None:
            return data.dicom_slices(folder, modality, scale)
        if synthetic < 1:
            raise typer.BadParameter(f"no {modality} data: give a folder or --synthetic N")
        kind = data.Generator(generator)
        if modality == "MR":
            return data.synthetic_mr_slices(synthetic, seed, scale, kind)
        return data.synthetic_ct_slices(synthetic, seed, scale, noise, kind)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def train(
    output: Annotated[
        Path,
        typer.Option(
            "--output", help="Folder for the generator's weights and card, mr_to_ct.* (required;"
            " not the bundled weights folder).", callback=output_folder,
        ),
    ],
    mr_data: Annotated[Path | None, typer.Option("--mr-data", help="Folder of MR DICOM series.")] = None,
    ct_data: Annotated[Path | None, typer.Option("--ct-data", help="Folder of CT DICOM series.")] = None,
    synthetic: Annotated[
        int, typer.Option("--synthetic", min=0, help="Phantoms per domain without data.")
    ] = 12,
    iterations: Annotated[int, typer.Option("--iterations", min=1)] = 2000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 1,
    crop: Annotated[int, typer.Option("--crop", min=16, help="Square crop side (px, multiple of 4).")] = 128,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0.0)] = 2e-4,
    decay_from: Annotated[
        float,
        typer.Option("--decay-from", min=0.0, max=1.0, help="Fraction of iterations before linear LR decay."),
    ] = 0.5,
    pool_size: Annotated[int, typer.Option("--pool-size", min=0)] = 50,
    adversarial_weight: Annotated[float, typer.Option("--adversarial-weight", min=0.0)] = 1.0,
    cycle_weight: Annotated[float, typer.Option("--cycle-weight", min=0.0)] = 10.0,
    identity_weight: Annotated[
        float,
        typer.Option(
            "--identity-weight", min=0.0, help="0 by default: MR and CT intensities mean different things."
        ),
    ] = 0.0,
    gradient_weight: Annotated[float, typer.Option("--gradient-weight", min=0.0)] = 5.0,
    gradient_mode: Annotated[
        GradientMode,
        typer.Option("--gradient-mode", help="Correlate gradient magnitudes or signed derivatives."),
    ] = GradientMode.MAGNITUDE,
    base_channels: Annotated[int, typer.Option("--base-channels", min=1)] = 12,
    residual_blocks: Annotated[int, typer.Option("--residual-blocks", min=0)] = 4,
    discriminator_layers: Annotated[int, typer.Option("--discriminator-layers", min=1)] = 4,
    discriminator_channels: Annotated[int, typer.Option("--discriminator-channels", min=1)] = 16,
    ct_noise: Annotated[
        float,
        typer.Option(
            "--ct-noise",
            min=0.0,
            help="Noise (HU) of synthetic CT phantoms; low noise keeps the generator from imitating noise.",
        ),
    ] = 0.0,
    pixel_spacing: Annotated[
        float, typer.Option("--pixel-spacing", min=0.1, help="Generator grid (mm).")
    ] = 3.0,
    generator: GeneratorOption = PhantomGenerator.FIXED,
    mr_augmentation: Annotated[
        bool, typer.Option("--mr-augmentation/--no-mr-augmentation",
                           help="Random gain field and gamma on every MR crop."),
    ] = False,
    seed: Seed = 0,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Checkpoints + sample grids (default: <output>/work).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Resume from the work-dir checkpoint.")
    ] = True,
    version: Annotated[str, typer.Option("--version", help="Model version written to the card.")] = "1.0.0",
    device: Device = "cpu",
    threads: Threads = None,
    quiet: Quiet = False,
) -> Path:
    """Train the CycleGAN on unpaired MR and CT slices and write the MR-to-CT
    generator and its model card to --output.

    \f
    Returns the model card path. Raises typer.BadParameter when a domain has no
    data.
    """
    params = dict(locals())  # the options as given, for the reproducible command line
    import torch

    from acqflow.plugins.mr_muscle.losses import LossWeights
    from acqflow.plugins.mr_muscle.training import (
        NetworkOptions,
        OutputOptions,
        ScheduleOptions,
        train_cyclegan,
    )
    from acqflow.plugins.mr_muscle.translation import IntensityScale

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    scale = IntensityScale(pixel_spacing_mm=pixel_spacing)
    mr = _domain(mr_data, "MR", synthetic, seed, scale, generator=generator.value)
    ct = _domain(ct_data, "CT", synthetic, seed, scale, ct_noise, generator.value)
    net = NetworkOptions(base_channels, residual_blocks, discriminator_channels, discriminator_layers)
    sched = ScheduleOptions(iterations, batch_size, crop, learning_rate, decay_from, pool_size, seed,
                            mr_augmentation)
    weights = LossWeights(adversarial_weight, cycle_weight, identity_weight, gradient_weight, gradient_mode)
    out = OutputOptions(work_dir or output / "work", resume=resume, progress=not quiet)
    result = train_cyclegan(mr.slices, ct.slices, net, sched, out, weights, device=device)
    training = {
        "command": _command_line({k: v for k, v in params.items() if k not in ("work_dir", "quiet")}),
        "ran_as": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "seed": seed,
        "input": scale.to_dict(),
        "data": {"mr": mr.summary(), "ct": ct.summary(), "unpaired": _UNPAIRED[generator]},
        "schedule": {
            k: params[k]
            for k in ("iterations", "batch_size", "crop", "learning_rate", "decay_from", "pool_size",
                      "mr_augmentation")
        },
        "loss_weights": {
            "adversarial": adversarial_weight,
            "cycle": cycle_weight,
            "identity": identity_weight,
            "gradient_consistency": gradient_weight,
            "gradient_mode": gradient_mode.value,
        },
        "final_losses": {k: round(v, 4) for k, v in result.losses.items()},
        "resumed_from_iteration": result.resumed_from,
        "software": {"torch": torch.__version__},
    }
    return _save(result.generator, net, training, version, output)


_UNPAIRED = {
    PhantomGenerator.FIXED: "MR anatomy from CT-phantom seeds >= 10,000,000 (then warped), CT phantom "
    "seeds < 10,000,000: no anatomy in both domains",
    PhantomGenerator.RANDOMISED: "MR anatomy from randomised-anatomy seeds >= 10,000,000, CT phantom "
    "seeds < 10,000,000: no anatomy in both domains",
}


def _save(generator: Any, net: Any, training: dict[str, Any], version: str, output: Path) -> Path:
    from acqflow.models.store import ModelCard, save_weights
    from acqflow.plugins.mr_muscle.translation import MODEL_NAME

    card = ModelCard(
        name=MODEL_NAME,
        version=version,
        architecture="ResnetGenerator",
        arguments=net.generator_arguments(),
        training=training,
        notes="CycleGAN MR-to-CT generator (acqflow.models.cyclegan.ResnetGenerator); input MR normalised "
        "to [-1, 1] by a high percentile, output CT in [-1, 1], mapped to HU through training.input's "
        "piecewise-linear knots. Demo weights from synthetic phantoms only; not for clinical use. "
        "Trained on unpaired slices; metrics: held-out MR phantom Dice via the CT network.",
    )
    return save_weights(generator, card, output)


def evaluate(
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="Folder of mr_to_ct weights + card (default: bundled demo weights)."),
    ] = None,
    ct_weights: Annotated[
        Path | None, typer.Option("--ct-weights", help="Folder of ct_muscle weights (default: bundled).")
    ] = None,
    contrast_agnostic_weights: Annotated[
        Path | None,
        typer.Option("--contrast-agnostic-weights",
                     help="Folder of the contrast-agnostic ct_muscle network, measured as a third "
                     "column (default: the bundled one when present)."),
    ] = None,
    generator: GeneratorOption = PhantomGenerator.FIXED,
    route: Annotated[
        str, typer.Option("--route", help="With --review: synthetic-ct or contrast-agnostic.")
    ] = "synthetic-ct",
    phantoms: Annotated[int, typer.Option("--phantoms", min=1, help="Held-out MR phantoms.")] = 4,
    first: Annotated[int, typer.Option("--first", min=0, help="Index of the first held-out phantom.")] = 0,
    slices: Annotated[int, typer.Option("--slices", min=1, help="Slices per phantom.")] = 24,
    samples: Annotated[int, typer.Option("--samples", min=1, help="MC-dropout samples.")] = 4,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
    write_card: Annotated[
        bool, typer.Option("--write-card", help="Store the metrics in the mr_to_ct card.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the MC-dropout sampling.")] = 0,
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Instead of Dice: fit the review threshold of each uncertainty measure on these "
            "phantoms, and show how the pipeline's defaults flag them.",
        ),
    ] = False,
    dice_below: Annotated[
        float,
        typer.Option(
            "--dice-below",
            min=0.0,
            max=1.0,
            help="With --review: a structure below this Dice should be flagged.",
        ),
    ] = 0.7,
    device: Device = "cpu",
    threads: Threads = None,
    quiet: Quiet = False,
) -> dict[str, Any]:
    """Held-out Dice of MR segmentation through synthetic CT, next to segmenting
    the MR directly. With --review, the review thresholds instead
    (docs/models/mr-muscle.md).

    \f
    Returns the report as a dict. Raises acqflow.models.store.WeightsError on
    missing or corrupt weights.
    """
    import torch

    from acqflow.models.store import bundled_weights_dir
    from acqflow.plugins.ct_muscle.inference import load_model
    from acqflow.plugins.ct_muscle.structures import default_label_table
    from acqflow.plugins.mr_muscle.evaluation import EvaluationOptions, evaluate_held_out
    from acqflow.plugins.mr_muscle.translation import load_generator

    if review and write_card:
        raise typer.BadParameter("--write-card stores the Dice report; it does not go with --review")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    table = default_label_table()
    gen_dir = weights or bundled_weights_dir()
    generator_model, card, scale = load_generator(gen_dir, device)
    from acqflow.plugins.mr_muscle.pipeline import MrRoute, bundled_segmenter_dir

    try:
        chosen = MrRoute(route)
    except ValueError as exc:
        raise typer.BadParameter(f"--route must be one of {', '.join(r.value for r in MrRoute)}") from exc
    ct_model, _, geo = load_model(ct_weights or bundled_segmenter_dir(), device, [s.key for s in table])
    agnostic_dir = contrast_agnostic_weights or bundled_segmenter_dir(MrRoute.CONTRAST_AGNOSTIC)
    agnostic = None
    if contrast_agnostic_weights is not None or (agnostic_dir / "ct_muscle.json").is_file():
        model, agnostic_card, agnostic_geo = load_model(agnostic_dir, device, [s.key for s in table])
        agnostic = (model, agnostic_geo)
    size = 160 if generator is PhantomGenerator.RANDOMISED else 128
    options = EvaluationOptions(phantoms=phantoms, first=first, shape=(slices, size, size), samples=samples,
                                generator=generator.value)
    held_out: dict[str, Any] = {
        "mc_seed": seed,
        "phantoms": phantoms,
        "first": first,
        "slices": slices,
        "samples": samples,
        "generator": generator.value,
        "seeds": ("generate_mr_phantom(10,000,000 + first + i): anatomy seeds >= 20,000,000"
                  if generator is PhantomGenerator.FIXED else
                  "randomised_mr_phantom(20,000,000 + first + i, MR_HELD_OUT_VARIETY): ellipse anatomy, "
                  "body size / fat / aspect tails, muscle, flat-bone and bias-field tails"),
    }
    if agnostic is not None:
        held_out["contrast_agnostic"] = {"version": agnostic_card.version, "sha256": agnostic_card.sha256}
    if review:
        if chosen is MrRoute.CONTRAST_AGNOSTIC:
            if agnostic is None:
                raise typer.BadParameter("--route contrast-agnostic needs the contrast-agnostic weights")
            result = _review(None, scale, agnostic[0], agnostic[1], table, options, dice_below, seed, quiet,
                             chosen)
        else:
            result = _review(generator_model, scale, ct_model, geo, table, options, dice_below, seed, quiet,
                             chosen)
        result["route"] = chosen.value
        result["held_out"] = held_out
        if json_out is not None:
            json_out.write_text(json.dumps(result, indent=2) + "\n")
        return result

    def show(index: int, row: dict[str, Any]) -> None:
        if not quiet:
            third = (f", contrast-agnostic {row['mean_dice_contrast_agnostic']:.3f}"
                     if "mean_dice_contrast_agnostic" in row else "")
            typer.echo(
                f"phantom {index + 1}/{phantoms}: translated {row['mean_dice_translated']:.3f}, "
                f"baseline {row['mean_dice_baseline']:.3f}{third}; synthetic CT HU {row['synthetic_ct_hu']}"
            )

    report = evaluate_held_out(generator_model, scale, ct_model, geo, table, options, show,
                               agnostic).to_dict()
    report["held_out"] = held_out
    if not quiet:
        _print_report(report)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    if write_card:
        _write_metrics(gen_dir, card, report)
    return report


def _review(
    generator: ResnetGenerator | None,
    scale: IntensityScale,
    ct_model: BayesianUNet,
    geo: InputGeometry,
    table: LabelTable,
    options: EvaluationOptions,
    dice_below: float,
    seed: int,
    quiet: bool,
    route: MrRoute,
) -> dict[str, Any]:
    """Fit review thresholds on the phantoms; how the pipeline's defaults do on them."""
    from rich.console import Console
    from rich.table import Table

    from acqflow.plugins.mr_muscle.evaluation import calibrate_review_thresholds, review_performance
    from acqflow.plugins.mr_muscle.pipeline import (
        CONTRAST_AGNOSTIC_REVIEW_THRESHOLDS,
        MR_REVIEW_THRESHOLDS,
        MrRoute,
    )

    def show(index: int, structures: int) -> None:
        if not quiet:
            typer.echo(f"phantom {index + 1}/{options.phantoms}: {structures} structures predicted")

    calibration = calibrate_review_thresholds(
        generator, scale, ct_model, geo, table, options, dice_below, seed, show
    )
    in_use = MR_REVIEW_THRESHOLDS if route is MrRoute.SYNTHETIC_CT else CONTRAST_AGNOSTIC_REVIEW_THRESHOLDS
    defaults = review_performance(calibration.pairs, in_use, dice_below)
    if not quiet:
        shown = Table(title=f"review thresholds: flagging structures with Dice < {dice_below}")
        shown.add_column("measure", no_wrap=True)
        for column in ("fitted", "sens.", "prec.", "F1", "default", "sens.", "prec.", "F1"):
            shown.add_column(column, justify="right")
        for measure, fit in calibration.fits.items():
            at = defaults[measure]
            shown.add_row(
                measure,
                *(f"{fit.threshold:.4f}", f"{fit.sensitivity:.2f}", f"{fit.precision:.2f}", f"{fit.f1:.2f}"),
                *(f"{at.threshold:.4f}", f"{at.sensitivity:.2f}", f"{at.precision:.2f}", f"{at.f1:.2f}"),
            )
        Console().print(shown)
        fit = next(iter(calibration.fits.values()))
        typer.echo(f"{fit.structures} predicted structures, {fit.poor} with Dice < {dice_below}")
    result = calibration.to_dict()
    result["defaults"] = {m: f.as_dict() for m, f in defaults.items()}
    return result


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    third = "dice_contrast_agnostic" in report
    table = Table(title="held-out MR phantoms: Dice")
    columns = ["structure", "via synthetic CT", "direct MR (baseline)"]
    for column in columns + (["contrast-agnostic"] if third else []):
        table.add_column(column, justify="right" if column != "structure" else "left")
    for key, value in report["dice_translated"].items():
        extra = [f"{report['dice_contrast_agnostic'].get(key, 0.0):.3f}"] if third else []
        table.add_row(key, f"{value:.3f}", f"{report['dice_baseline'].get(key, 0.0):.3f}", *extra)
    extra = [f"{report['mean_dice_contrast_agnostic']:.3f}"] if third else []
    table.add_row("mean", f"{report['mean_dice_translated']:.3f}",
                  f"{report['mean_dice_baseline']:.3f}", *extra)
    Console().print(table)
    hu = report["synthetic_ct_hu"]
    typer.echo("mean synthetic-CT HU: " + ", ".join(f"{k} {v:.0f}" for k, v in hu.items()))


def _write_metrics(directory: Path, card: Any, report: dict[str, Any]) -> None:
    """Rewrite the card with the held-out metrics; the weights (and their sha256) are untouched.

    The fixed generator's report is the card's metrics; the randomised one's goes under
    ``randomised``, so both are kept.
    """
    import os
    from dataclasses import replace

    keys = ("mean_dice_translated", "mean_dice_baseline", "improvement", "dice_translated",
            "dice_baseline", "mean_dice_contrast_agnostic", "dice_contrast_agnostic",
            "synthetic_ct_hu", "held_out")
    metrics = {k: report[k] for k in keys if k in report}
    previous = dict(card.metrics or {})
    if report["held_out"].get("generator") == "randomised":
        metrics = {**previous, "randomised": metrics}
    elif "randomised" in previous:
        metrics["randomised"] = previous["randomised"]
    updated = replace(card, metrics=metrics)
    path = directory / f"{card.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(updated.to_json())
    os.replace(tmp, path)
