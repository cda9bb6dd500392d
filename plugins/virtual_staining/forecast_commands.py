"""``train efficiency-forecast`` and ``evaluate efficiency-forecast``.

Plain functions with typer annotations, registered by the daemon CLI as
``train_app.command("efficiency-forecast")(train)`` and the same for ``evaluate``;
``python -m acqflow.plugins.virtual_staining.forecast_commands train|evaluate`` runs them
stand-alone. Data: generated experiments (``--generator synthetic``: training kinetics
for ``train``, the held-out kinetics for ``evaluate`` by default) or your own
(``--courses`` efficiency.csv files + ``--finals`` CSV, see
:mod:`acqflow.plugins.virtual_staining.forecast_data`). Progress goes to the terminal (plain
lines when it is not one).
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from acqflow.plugins.virtual_staining.commands import output_folder
from acqflow.plugins.virtual_staining.forecast_options import (
    DEFAULT_COURSE_DAYS,
    DEFAULT_THRESHOLD,
    FORECAST_MODEL,
)

if TYPE_CHECKING:
    from acqflow.models.store import ModelCard
    from acqflow.plugins.virtual_staining.experiments import Kinetics
    from acqflow.plugins.virtual_staining.forecast import EfficiencyForecaster, WellCourse
    from acqflow.plugins.virtual_staining.forecast_eval import FractionResult

__all__ = ["evaluate", "train"]

DEFAULT_FRACTIONS = "0.2,0.3,0.5,0.7"
EVALUATION_SEED = 5_000_000  # evaluate's default: far from any training seed


class Generator(str, Enum):
    SYNTHETIC = "synthetic"


class Variety(str, Enum):
    TRAINING = "training"
    HELD_OUT = "held-out"


GeneratorOption = Annotated[
    Generator | None, typer.Option("--generator", help="Generate experiments instead of reading --courses.")
]
VarietyOption = Annotated[
    Variety | None, typer.Option("--variety", help="Kinetics of generated experiments.")
]
Experiments = Annotated[int, typer.Option("--experiments", min=1, help="Generated experiments (plates).")]
Wells = Annotated[int, typer.Option("--wells", min=1, max=96, help="Wells per generated plate.")]
Courses = Annotated[
    list[Path] | None,
    typer.Option("--courses", help="A time-course CSV (acqflow's efficiency.csv); repeat for more."),
]
Finals = Annotated[
    Path | None, typer.Option("--finals", help="CSV: experiment, well, final_efficiency (0-1).")
]
CourseDays = Annotated[
    float, typer.Option("--course-days", min=0.01, help="Days from the first image to the final day.")
]
FinalTimepoint = Annotated[
    int | None, typer.Option("--final-timepoint", min=1, help="Final day's time point (rows without times).")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the generator and of the calibration split.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress and no table.")]


def _command_line(name: str, values: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The invocation that reproduces a run: the options that differ from their defaults."""
    parts = ["acqflow", name, "efficiency-forecast"]
    for key, value in values.items():
        if key == "quiet" or value is None or value == defaults.get(key) or value == []:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            for item in value:
                parts += [flag, str(item)]
        else:
            parts += [flag, str(getattr(value, "value", value))]
    return shlex.join(parts)


@contextmanager
def _steps(description: str, total: int, quiet: bool) -> Iterator[Callable[[], None] | None]:
    """A progress callback (a bar on a terminal, plain lines otherwise), None when quiet."""
    from acqflow.plugins.common.progress import TrainingProgress

    if quiet:
        yield None
        return
    with TrainingProgress(description, total) as progress:
        yield progress.advance


def _kinetics(variety: Variety, morphology_noise: float | None = None) -> Kinetics:
    from acqflow.plugins.virtual_staining.experiments import KINETICS

    kinetics = KINETICS[variety.value]
    return kinetics if morphology_noise is None else replace(kinetics, morphology_noise=morphology_noise)


def _courses(
    generator: Generator | None,
    kinetics: Kinetics,
    generated: tuple[int, int, int],
    files: tuple[Sequence[Path], Path | None],
    horizon: tuple[float, int | None],
    quiet: bool,
) -> tuple[list[WellCourse], dict[str, Any]]:
    """Courses and a description of their source; raises typer.BadParameter on bad input."""
    from acqflow.plugins.virtual_staining.experiments import generate_experiments
    from acqflow.plugins.virtual_staining.forecast_data import (
        CourseHorizon,
        courses_from_experiments,
        read_courses,
    )

    courses_files, finals = files
    if (generator is None) == (not courses_files):
        raise typer.BadParameter("give either --generator synthetic or --courses (with --finals)")
    if generator is None:
        if finals is None:
            raise typer.BadParameter("--courses needs --finals: the measured final efficiency per well")
        try:
            courses, left_out = read_courses(courses_files, finals, CourseHorizon(*horizon))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        if left_out and not quiet:
            shown = ", ".join(left_out[:8])
            typer.echo(f"{len(left_out)} well(s) without a final efficiency left out: {shown}")
        files_ = [str(p) for p in courses_files]
        return courses, {"source": "csv", "courses": files_, "finals": str(finals), "wells": len(courses)}
    experiments, wells, seed = generated
    with _steps(f"generating {kinetics.name} experiments", experiments, quiet) as advance:
        plates = generate_experiments(experiments, kinetics, seed, wells, advance)
    courses = courses_from_experiments(plates)
    source = {"source": "synthetic", "kinetics": kinetics.describe(), "experiments": experiments,
              "wells_per_experiment": wells, "seed": seed, "wells": len(courses)}
    return courses, source


def _fractions(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"--fractions must be numbers separated by commas: {text!r}") from None
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise typer.BadParameter(f"--fractions must lie in (0, 1]: {text!r}")
    return values


def _evaluate(
    model: EfficiencyForecaster,
    courses: list[WellCourse],
    fractions: list[float],
    threshold: float,
    quiet: bool,
) -> list[FractionResult]:
    from acqflow.plugins.virtual_staining.forecast_eval import evaluate_forecasts

    with _steps("evaluating per observed fraction", len(fractions), quiet) as advance:
        try:
            return evaluate_forecasts(model, courses, fractions, threshold, advance)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc


def _print_results(title: str, results: list[FractionResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("seen", "wells", "acc", "acc last", "acc logit", "MAE", "MAE last", "MAE logit",
                   "cover", "width"):
        table.add_column(column, justify="right")
    for r in results:
        s = r.scores
        table.add_row(
            f"{r.fraction:.0%}", str(r.wells),
            *(f"{s[m].accuracy:.3f}" for m in ("forecaster", "last_value", "logistic")),
            *(f"{s[m].mae:.3f}" for m in ("forecaster", "last_value", "logistic")),
            f"{r.coverage:.3f}", f"{r.mean_width:.3f}",
        )
    Console().print(table)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _card_metrics(results: list[FractionResult]) -> dict[str, Any]:
    """The card's metrics: the figures at half of the course first (``acqflow models``), then all."""
    half = min(results, key=lambda r: abs(r.fraction - 0.5))
    return {
        "fraction": half.fraction,
        "accuracy": half.scores["forecaster"].accuracy,
        "mae": half.scores["forecaster"].mae,
        "last_value_accuracy": half.scores["last_value"].accuracy,
        "logistic_accuracy": half.scores["logistic"].accuracy,
        "coverage": half.coverage,
        "wells": half.wells,
        "per_fraction": [r.to_json() for r in results],
    }


def _card(model: EfficiencyForecaster, training: dict[str, Any], metrics: dict[str, Any],
          version: str) -> ModelCard:
    from acqflow.models.store import ModelCard
    from acqflow.plugins.virtual_staining.forecast import ARCHITECTURE, arguments_digest

    arguments = model.to_arguments()
    return ModelCard(
        name=FORECAST_MODEL,
        version=version,
        architecture=ARCHITECTURE,
        arguments=arguments,
        training=training,
        metrics=metrics,
        notes="Forecast of each well's final-day differentiation efficiency from its course so far: "
        "ridge per observed-fraction bin, split-conformal interval. Metrics: held-out wells "
        "(generated with kinetics training never saw) at half of the course; sha256 is that of "
        "the canonical JSON of the arguments.",
        sha256=arguments_digest(arguments),
    )


def train(
    *,  # keyword-only: the required --output keeps its place among the options
    generator: GeneratorOption = None,
    variety: VarietyOption = None,
    experiments: Experiments = 40,
    wells: Wells = 24,
    courses: Courses = None,
    finals: Finals = None,
    course_days: CourseDays = DEFAULT_COURSE_DAYS,
    final_timepoint: FinalTimepoint = None,
    threshold: Annotated[
        float, typer.Option("--threshold", min=0.01, max=0.99, help="Sufficient from this final efficiency.")
    ] = DEFAULT_THRESHOLD,
    coverage: Annotated[
        float, typer.Option("--coverage", min=0.5, max=0.99, help="Nominal coverage of the interval.")
    ] = 0.9,
    image_features: Annotated[
        bool, typer.Option("--image-features/--no-image-features", help="Use the mean block probability.")
    ] = True,
    held_out_experiments: Annotated[
        int, typer.Option("--held-out-experiments", min=0, help="Generated held-out plates for the card.")
    ] = 20,
    seed: Seed = 0,
    output: Annotated[
        Path,
        typer.Option(
            "--output", help="Folder for efficiency_forecast.json (required; not the bundled weights"
            " folder).", callback=output_folder,
        ),
    ],
    version: Annotated[str, typer.Option("--version", help="Model version written to the card.")] = "1.0.0",
    quiet: Quiet = False,
) -> Path:
    """Fit the final-day efficiency forecaster on past experiments and write its
    model card.

    The experiments are --courses (time courses, CSV) with their --finals
    (final-day efficiencies, CSV), or --generator synthetic plates. With
    generated plates the card also gets held-out metrics, on plates of the held-
    out kinetics (seed + 1).

    \f
    Returns the card path. Raises typer.BadParameter on inconsistent options or
    invalid CSV data.
    """
    command = _command_line("train", dict(locals()), _defaults(train))
    from acqflow.plugins.virtual_staining.forecast import BIN_CENTRES, FitSettings, fit_forecaster

    data, source = _courses(generator, _kinetics(variety or Variety.TRAINING), (experiments, wells, seed),
                            (courses or [], finals), (course_days, final_timepoint), quiet)
    settings = FitSettings(coverage=coverage, image_features=image_features, seed=seed)
    with _steps("fitting the forecast per observed fraction", len(BIN_CENTRES), quiet) as advance:
        try:
            model = fit_forecaster(data, settings, advance)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    metrics: dict[str, Any] = {}
    if generator is not None and held_out_experiments:
        metrics = _held_out_metrics(model, (held_out_experiments, wells, seed + 1), threshold, quiet)
    fit = {"coverage": coverage, "image_features": image_features, "pairs": settings.pairs,
           "calibration_share": settings.calibration_share, "alphas": list(settings.alphas)}
    training = {"command": command, "seed": seed, "data": source, "threshold": threshold,
                "course_days": course_days, "fit": fit}
    path = output / f"{FORECAST_MODEL}.json"
    _write_json(path, json.loads(_card(model, training, metrics, version).to_json()))
    if not quiet:
        typer.echo(f"wrote {path}")
    return path


def _held_out_metrics(
    model: EfficiencyForecaster, generated: tuple[int, int, int], threshold: float, quiet: bool
) -> dict[str, Any]:
    """The card's metrics on generated plates of the held-out kinetics."""
    held_out, _ = _courses(Generator.SYNTHETIC, _kinetics(Variety.HELD_OUT), generated, ([], None),
                           (DEFAULT_COURSE_DAYS, None), quiet)
    results = _evaluate(model, held_out, _fractions(DEFAULT_FRACTIONS), threshold, quiet)
    if not quiet:
        _print_results(f"held-out wells (held-out kinetics, seed {generated[2]})", results)
    return {**_card_metrics(results), "held_out_seed": generated[2]}


def _warn_if_seen(directory: Path, name: str, seed: int, variety: str) -> None:
    """Say so when the generated plates are the ones the model was trained on."""
    from acqflow.models.store import read_card

    training = read_card(directory, name).training
    data = training.get("data", {})
    if data.get("source") == "synthetic" and training.get("seed") == seed and (
        data.get("kinetics", {}).get("name") == variety
    ):
        typer.echo(f"warning: seed {seed} with the {variety} kinetics generated this model's training "
                   "data: these are not held-out figures", err=True)


def _defaults(function: Any) -> dict[str, Any]:
    import inspect

    return {name: p.default for name, p in inspect.signature(function).parameters.items()}


def evaluate(
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Folder with the model card (default: bundled).")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="Model card name in the folder.")] = FORECAST_MODEL,
    generator: GeneratorOption = None,
    variety: VarietyOption = None,
    experiments: Experiments = 40,
    wells: Wells = 24,
    morphology_noise: Annotated[
        float | None,
        typer.Option("--morphology-noise", min=0.0, help="Override the generator's (sensitivity checks)."),
    ] = None,
    courses: Courses = None,
    finals: Finals = None,
    course_days: CourseDays = DEFAULT_COURSE_DAYS,
    final_timepoint: FinalTimepoint = None,
    fractions: Annotated[
        str, typer.Option("--fractions", help="Observed fractions of the course, comma-separated.")
    ] = DEFAULT_FRACTIONS,
    threshold: Annotated[
        float | None, typer.Option("--threshold", min=0.01, max=0.99, help="Default: the card's.")
    ] = None,
    seed: Seed = EVALUATION_SEED,
    output: Annotated[Path | None, typer.Option("--output", help="Write the results as JSON here.")] = None,
    quiet: Quiet = False,
) -> list[dict[str, object]]:
    """Compare the forecaster with last-value and logistic-fit baselines, for each
    observed fraction of the course (--fractions).

    Generated plates use the held-out kinetics unless --variety training.

    \f
    Returns the per-fraction results. Raises typer.BadParameter on inconsistent
    options or invalid data and acqflow.models.store.WeightsError on a missing
    or invalid card.
    """
    from acqflow.models.store import bundled_weights_dir
    from acqflow.plugins.virtual_staining.forecast_options import ForecastOptions
    from acqflow.plugins.virtual_staining.forecast_summary import load_forecaster

    steps = _fractions(fractions)
    loaded = load_forecaster(weights or bundled_weights_dir(), ForecastOptions(model=model))
    if loaded is None:
        raise typer.BadParameter(f"no model card {model}.json in {weights or bundled_weights_dir()}")
    kinetics = _kinetics(variety or Variety.HELD_OUT, morphology_noise)
    data, source = _courses(generator, kinetics, (experiments, wells, seed),
                            (courses or [], finals), (course_days, final_timepoint), quiet)
    if generator is not None:
        _warn_if_seen(weights or bundled_weights_dir(), model, seed, kinetics.name)
    decision = threshold or loaded.threshold
    results = _evaluate(loaded.model, data, steps, decision, quiet)
    if not quiet:
        title = f"{model} {loaded.version}: {len(data)} wells, sufficient from {decision:.2f}"
        _print_results(title, results)
    rows = [r.to_json() for r in results]
    if output is not None:
        _write_json(output, {"model": model, "version": loaded.version, "threshold": decision,
                             "data": source, "fractions": rows})
    return rows


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Efficiency forecast tools.")
app.command("train")(train)
app.command("evaluate")(evaluate)

if __name__ == "__main__":
    app()
