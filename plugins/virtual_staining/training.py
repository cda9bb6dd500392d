"""Training the block classifier with Bayesian hyper-parameter search (Optuna TPE).

Each trial trains one :class:`~acqflow.models.tile_cnn.TileCNN` configuration on blocks of the
training images and stops early on the validation loss. Its decision threshold is the
one with the best block F1 on the validation images, and its score is the mean of three
figures on the validation images, measured with the whole-image predictor the pipeline
uses: block F1, pixel Dice of the virtual stain and Pearson r of the per-image
efficiency. Block F1 alone would favour large blocks (fewer ambiguous border blocks)
even when they blur the stain and coarsen the efficiency. The best-threshold block F1
is reported after every epoch so the median pruner can stop hopeless trials.

The study lives in an SQLite database and every trial writes an epoch checkpoint, so an
interrupted run resumes where it stopped: finished trials are kept, an interrupted trial
is re-queued with the same parameters and continues from its last finished epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from acqflow.models.tile_cnn import TileCNN
from acqflow.plugins.virtual_staining.data import LabelledImage, Split
from acqflow.plugins.virtual_staining.labels import block_fractions
from acqflow.plugins.virtual_staining.metrics import best_f1_threshold, roc_auc

if TYPE_CHECKING:
    import optuna

    from acqflow.plugins.common.progress import TrainingProgress

__all__ = [
    "BlockSet",
    "SearchSpace",
    "StudyResult",
    "TrainingSettings",
    "TrialOutcome",
    "TrialParams",
    "make_blocks",
    "run_study",
    "train_trial",
    "validation_scores",
]

EpochReport = Callable[[int, float], None]


@dataclass(frozen=True)
class TrialParams:
    """One point of the search space."""

    learning_rate: float
    depth: int
    width: int
    dropout: float
    weight_decay: float
    batch_size: int
    class_weighting: bool
    block_size: int

    def network(self) -> TileCNN:
        return TileCNN(self.block_size, self.depth, self.width, self.dropout)

    def describe(self) -> str:
        """The configuration in a few words, for progress lines."""
        return f"block {self.block_size}, depth {self.depth}, width {self.width}, lr {self.learning_rate:.1e}"

    def key(self, seed: int) -> str:
        """Stable name of this configuration's checkpoint."""
        text = json.dumps({**asdict(self), "seed": seed}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def _float(trial: optuna.Trial, name: str, bounds: tuple[float, float], log: bool) -> float:
    return bounds[0] if bounds[0] == bounds[1] else trial.suggest_float(name, *bounds, log=log)


@dataclass(frozen=True)
class SearchSpace:
    """Ranges searched by TPE; a one-element choice or equal bounds fixes a parameter."""

    learning_rate: tuple[float, float] = (5e-4, 1e-2)
    depth: tuple[int, ...] = (2, 3)
    width: tuple[int, ...] = (8, 12, 16)
    dropout: tuple[float, float] = (0.0, 0.4)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    batch_size: tuple[int, ...] = (64, 128, 256)
    class_weighting: tuple[bool, ...] = (False, True)
    block_size: tuple[int, ...] = (24, 32, 48)

    def suggest(self, trial: optuna.Trial) -> TrialParams:
        """Ask the trial for one configuration."""
        return TrialParams(
            learning_rate=_float(trial, "learning_rate", self.learning_rate, log=True),
            depth=int(trial.suggest_categorical("depth", list(self.depth))),
            width=int(trial.suggest_categorical("width", list(self.width))),
            dropout=_float(trial, "dropout", self.dropout, log=False),
            weight_decay=_float(trial, "weight_decay", self.weight_decay, log=True),
            batch_size=int(trial.suggest_categorical("batch_size", list(self.batch_size))),
            class_weighting=bool(trial.suggest_categorical("class_weighting", list(self.class_weighting))),
            block_size=int(trial.suggest_categorical("block_size", list(self.block_size))),
        )


@dataclass(frozen=True)
class TrainingSettings:
    """Budget and seed of a run; validates itself (raises ValueError)."""

    trials: int = 8
    max_epochs: int = 12
    patience: int = 3
    blocks_per_epoch: int = 8192
    positive_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.trials, self.max_epochs, self.patience, self.blocks_per_epoch) < 1:
            raise ValueError("trials, max_epochs, patience and blocks_per_epoch must be >= 1")


@dataclass(frozen=True)
class BlockSet:
    """Normalised blocks ``(N, 1, B, B)`` and their labels ``(N,)``."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def positive_rate(self) -> float:
        return float(self.y.mean()) if len(self.y) else 0.0


def make_blocks(
    images: Sequence[LabelledImage], block_size: int, stride: int, positive_fraction: float
) -> BlockSet:
    """Cut every image into blocks at multiples of ``stride`` (no loop over blocks)."""
    xs, ys = [], []
    for image in images:
        phase = torch.from_numpy(image.normalized())
        cut = phase.unfold(0, block_size, stride).unfold(1, block_size, stride)
        xs.append(cut.reshape(-1, 1, block_size, block_size))
        fractions = block_fractions(image.mask, block_size, stride)
        ys.append(torch.from_numpy((fractions >= positive_fraction - 1e-6).astype(np.float32)).flatten())
    return BlockSet(torch.cat(xs).contiguous(), torch.cat(ys))


@dataclass
class TrialOutcome:
    """What one trained configuration achieved on the validation images."""

    params: TrialParams
    state: dict[str, torch.Tensor]
    validation_auc: float
    validation_f1: float
    threshold: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation/flip, then per block a gain/offset, a gamma-like bend, noise, and
    for the whole batch sometimes a blur: intensity and sharpness vary between
    microscopes more than the generator alone covers."""
    k = int(torch.randint(4, (1,), generator=generator))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(2, (1,), generator=generator)):
        x = torch.flip(x, dims=(3,))
    shape = (x.shape[0], 1, 1, 1)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    bend = uniform(-0.3, 0.3)  # x + bend * x|x|: a monotone change of the tone curve
    x = x + bend * x * x.abs()
    x = x * uniform(0.75, 1.3) + uniform(-0.15, 0.15)
    x = x + uniform(0.0, 0.08) * torch.randn(x.shape, generator=generator)
    if float(torch.rand((1,), generator=generator)) < 0.3:
        sigma = 0.4 + 0.8 * float(torch.rand((1,), generator=generator))
        taps = torch.arange(-2, 3, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = (kernel / kernel.sum())[:, None] * (kernel / kernel.sum())[None, :]
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel[None, None])
    return x


def _run_epoch(
    model: TileCNN,
    optimizer: torch.optim.Optimizer,
    blocks: BlockSet,
    params: TrialParams,
    settings: TrainingSettings,
    generator: torch.Generator,
) -> float:
    """One pass over a random subset of the training blocks; returns the mean loss."""
    model.train()
    count = min(len(blocks.y), settings.blocks_per_epoch)
    order = torch.randperm(len(blocks.y), generator=generator)[:count]
    rate = min(max(blocks.positive_rate, 1e-3), 1 - 1e-3)
    pos_weight = torch.tensor((1 - rate) / rate) if params.class_weighting else None
    total = 0.0
    for start in range(0, count, params.batch_size):
        index = order[start : start + params.batch_size]
        if len(index) < 2:
            continue  # batch norm needs more than one sample
        logits = model(_augment(blocks.x[index], generator))
        loss = F.binary_cross_entropy_with_logits(logits, blocks.y[index], pos_weight=pos_weight)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += loss.item() * len(index)
    return total / max(count, 1)


@torch.inference_mode()
def _validate(model: TileCNN, blocks: BlockSet) -> tuple[float, np.ndarray]:
    """Validation loss and block probabilities."""
    model.eval()
    logits = torch.cat([model(blocks.x[i : i + 1024]) for i in range(0, len(blocks.y), 1024)])
    loss = float(F.binary_cross_entropy_with_logits(logits, blocks.y))
    return loss, torch.sigmoid(logits).numpy()


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def train_trial(
    params: TrialParams,
    train: BlockSet,
    validation: BlockSet,
    settings: TrainingSettings,
    checkpoint: Path | None = None,
    report: EpochReport | None = None,
) -> TrialOutcome:
    """Train one configuration with early stopping; resumes from ``checkpoint`` if present.

    ``report(epoch, validation_f1)`` is called after each epoch and may raise (Optuna's
    TrialPruned) to stop the trial. Raises ValueError when the validation blocks hold
    only one class.
    """
    torch.manual_seed(settings.seed)
    model = params.network()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    generator = torch.Generator().manual_seed(settings.seed)
    state = _restore(checkpoint, model, optimizer, generator)
    labels = validation.y.numpy()
    while state["epoch"] < settings.max_epochs and state["epoch"] - state["best_epoch"] < settings.patience:
        train_loss = _run_epoch(model, optimizer, train, params, settings, generator)
        val_loss, scores = _validate(model, validation)
        f1 = best_f1_threshold(labels, scores)[1]
        epoch = {
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_auc": roc_auc(labels, scores),
            "val_f1": f1,
        }
        _record_epoch(state, model, epoch)
        if checkpoint is not None:
            state.update(
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                generator=generator.get_state(),
                torch_rng=torch.get_rng_state(),
            )
            _save_checkpoint(checkpoint, state)
        if report is not None:
            report(state["epoch"], f1)
    return _outcome(params, model, state, validation)


def _restore(
    checkpoint: Path | None, model: TileCNN, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> dict[str, Any]:
    """Training state from ``checkpoint`` (model, optimizer and RNGs restored) or a fresh one."""
    if checkpoint is None or not checkpoint.is_file():
        return {"epoch": 0, "best_loss": float("inf"), "best_epoch": 0, "best_state": None, "history": []}
    state: dict[str, Any] = torch.load(checkpoint, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])  # dropout masks come from the global RNG
    return state


def _record_epoch(state: dict[str, Any], model: TileCNN, epoch: dict[str, float]) -> None:
    """Append the epoch to the history; keep a copy of the weights when validation loss improved."""
    state["epoch"] += 1
    state["history"].append({"epoch": state["epoch"], **epoch})
    if epoch["val_loss"] < state["best_loss"]:
        state.update(
            best_loss=epoch["val_loss"],
            best_epoch=state["epoch"],
            best_state={k: v.clone() for k, v in model.state_dict().items()},
        )


def _outcome(
    params: TrialParams, model: TileCNN, state: dict[str, Any], validation: BlockSet
) -> TrialOutcome:
    """Score the best epoch's weights on the validation blocks."""
    model.load_state_dict(state["best_state"])
    _, scores = _validate(model, validation)
    labels = validation.y.numpy()
    if labels.min() == labels.max():
        raise ValueError("validation blocks hold a single class; use more or other images")
    threshold, f1 = best_f1_threshold(labels, scores)
    return TrialOutcome(
        params,
        state["best_state"],
        roc_auc(labels, scores),
        f1,
        threshold,
        state["best_epoch"],
        state["history"],
    )


def validation_scores(
    outcome: TrialOutcome, validation: Sequence[LabelledImage], positive_fraction: float
) -> dict[str, float]:
    """Whole-image validation figures of a trained trial and the search objective."""
    from acqflow.plugins.virtual_staining.evaluation import evaluate_images
    from acqflow.plugins.virtual_staining.inference import BlockPredictor, InferenceOptions

    model = outcome.params.network()
    model.load_state_dict(outcome.state)
    predictor = BlockPredictor(model, "cpu", InferenceOptions(threshold=outcome.threshold))
    metrics = evaluate_images(predictor, validation, positive_fraction)
    r = metrics["efficiency_pearson_r"]
    parts = (metrics["f1"], metrics["dice"], r if np.isfinite(r) else 0.0)
    return {
        "validation_f1": metrics["f1"],
        "validation_roc_auc": metrics["roc_auc"],
        "validation_dice": metrics["dice"],
        "validation_efficiency_r": r,
        "objective": float(np.mean(parts)),
    }


@dataclass(frozen=True)
class StudyResult:
    best: TrialOutcome
    trials_completed: int
    trials_pruned: int
    validation: dict[str, float] = field(default_factory=dict)  # the best trial's scores


class _StudyRunner:
    """Objective for Optuna: caches block sets per block size, reports every epoch."""

    def __init__(
        self,
        split: Split,
        settings: TrainingSettings,
        space: SearchSpace,
        work_dir: Path,
        progress: TrainingProgress | None,
    ) -> None:
        self.split, self.settings, self.space = split, settings, space
        self.checkpoints = work_dir / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.cache: dict[int, tuple[BlockSet, BlockSet]] = {}

    def blocks(self, block_size: int) -> tuple[BlockSet, BlockSet]:
        if block_size not in self.cache:
            fraction = self.settings.positive_fraction
            self.cache[block_size] = (
                make_blocks(self.split.train, block_size, block_size // 2, fraction),
                make_blocks(self.split.validation, block_size, block_size, fraction),
            )
        return self.cache[block_size]

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        params = self.space.suggest(trial)
        trial.set_user_attr("params", asdict(params))
        train, validation = self.blocks(params.block_size)
        progress = self.progress

        def report(epoch: int, f1: float) -> None:
            if progress is not None:
                progress.advance()
                progress.line(
                    f"trial {trial.number} ({params.describe()}) epoch {epoch}: validation F1 {f1:.3f}"
                )
            trial.report(f1, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        checkpoint = self.checkpoints / f"{params.key(self.settings.seed)}.pt"
        outcome = train_trial(params, train, validation, self.settings, checkpoint, report)
        scores = validation_scores(outcome, self.split.validation, self.settings.positive_fraction)
        for name, value in scores.items():
            trial.set_user_attr(name, value)
        trial.set_user_attr("threshold", outcome.threshold)
        trial.set_user_attr("best_epoch", outcome.best_epoch)
        return scores["objective"]


def _requeue_interrupted(study: optuna.Study) -> None:
    """Fail trials left RUNNING by a crash and queue their parameters again.

    The re-queued trial has the same parameters, hence the same checkpoint, so it
    continues from its last finished epoch.
    """
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)


def _open_study(work_dir: Path, settings: TrainingSettings) -> optuna.Study:
    """Create or load the study stored in ``work_dir/study.db`` (TPE sampler, median pruner)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work_dir.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        study_name="virtual-staining",
        storage=f"sqlite:///{work_dir / 'study.db'}",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(
            seed=settings.seed, n_startup_trials=max(1, min(4, settings.trials // 2))
        ),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=4, n_warmup_steps=max(1, settings.max_epochs // 3)
        ),
        load_if_exists=True,
    )


def run_study(
    split: Split,
    settings: TrainingSettings,
    work_dir: Path,
    space: SearchSpace | None = None,
    progress: TrainingProgress | None = None,
) -> StudyResult:
    """Run (or resume) the search in ``work_dir`` until ``settings.trials`` trials finished.

    Returns the best trial re-loaded from its checkpoint. Raises ValueError when no trial
    completes (all pruned or failed).
    """
    from optuna.trial import TrialState

    study = _open_study(work_dir, settings)
    _requeue_interrupted(study)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    runner = _StudyRunner(split, settings, space or SearchSpace(), work_dir, progress)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if progress is not None:
        progress.advance(done * settings.max_epochs)

    def advance(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # A pruned or early-stopped trial ends before max_epochs: count its epochs as done.
        if progress is not None:
            finished_trials = len(study.get_trials(deepcopy=False, states=finished))
            progress.advance(max(0, finished_trials * settings.max_epochs - progress.completed))
            progress.line(
                f"trial {trial.number}: {trial.state.name.lower()}, objective {trial.value or 0.0:.3f}"
            )

    study.optimize(runner, n_trials=max(0, settings.trials - done), callbacks=[advance])
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ValueError("no trial completed; raise the trial budget or max epochs")
    best = max(complete, key=lambda t: (t.value or 0.0, t.user_attrs.get("validation_roc_auc", 0.0)))
    params = TrialParams(**best.user_attrs["params"])
    train, validation = runner.blocks(params.block_size)
    checkpoint = runner.checkpoints / f"{params.key(settings.seed)}.pt"
    outcome = train_trial(params, train, validation, settings, checkpoint)
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    scores = {k: float(v) for k, v in best.user_attrs.items() if k.startswith("validation_")}
    return StudyResult(outcome, len(complete), pruned, {**scores, "objective": float(best.value or 0.0)})
