"""``acqflow models``: the installed pipelines and the cards of their weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from acqflow.daemon.cli.base import (
    ConfigOption,
    JsonOption,
    console,
    handles_errors,
    load_settings_for,
    print_json,
)

#: Metric names worth a headline, most telling first (the leaf of a dotted name).
HEADLINE = (
    "mean_dice", "mean_dice_translated", "f1", "accuracy", "roc_auc", "efficiency_pearson_r",
    "mae", "coverage", "improvement",
)
#: Groups of a card's ``metrics`` whose figures lead: the top level, then held-out data.
LEADING_GROUPS = ("", "held_out")
HEADLINES_SHOWN = 4


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """A card's metrics flattened one level with dotted names (``held_out.mean_dice``);
    a nested table of numbers only (Dice per structure) becomes its mean (``name mean``)."""
    flat: dict[str, float] = {}
    means: dict[str, float] = {}
    for key, value in metrics.items():
        if _number(value):
            flat[key] = float(value)
        elif isinstance(value, dict):
            numbers = {k: float(v) for k, v in value.items() if _number(v)}
            if numbers and len(numbers) == len(value) and not set(numbers) & set(HEADLINE):
                means[f"{key} mean"] = sum(numbers.values()) / len(numbers)
            else:
                flat.update({f"{key}.{k}": v for k, v in numbers.items()})
    return {**flat, **means}


def headline_metrics(metrics: dict[str, Any], limit: int = HEADLINES_SHOWN) -> dict[str, float]:
    """The few figures that say how good a model is: :data:`HEADLINE` names of the top
    level and of ``held_out`` first, then those of the other groups, then per-structure
    means; at most ``limit``."""
    flat = flat_metrics(metrics)

    def group(name: str) -> str:
        return name.rpartition(".")[0] if "." in name else ""

    def rank(name: str) -> tuple[int, int, int]:
        leaf = name.rpartition(".")[2]
        lead = LEADING_GROUPS.index(group(name)) if group(name) in LEADING_GROUPS else len(LEADING_GROUPS)
        return (0 if leaf in HEADLINE else 1, lead, HEADLINE.index(leaf) if leaf in HEADLINE else 0)

    chosen = [n for n in flat if n.rpartition(".")[2] in HEADLINE or n.endswith(" mean")]
    return {name: flat[name] for name in sorted(chosen, key=rank)[:limit]}


def _read_card(card_path: Path) -> dict[str, Any]:
    """A card as JSON for ``--json`` (stable keys; ``error`` set when it cannot be read)."""
    entry: dict[str, Any] = {"card": str(card_path), "name": card_path.stem, "version": None,
                             "architecture": None, "sha256": None, "headline_metrics": {}, "error": None}
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        entry["error"] = f"unreadable: {exc}"
        return entry
    entry.update(name=str(card.get("name", card_path.stem)), version=card.get("version"),
                 architecture=card.get("architecture"), sha256=card.get("sha256"),
                 headline_metrics=headline_metrics(dict(card.get("metrics") or {})))
    return entry


@handles_errors
def models(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List the installed pipelines and the model cards of the weights each one uses,
    with each card's headline metrics."""
    from acqflow.daemon.registry import PipelineRegistry
    from acqflow.models.store import bundled_weights_dir

    settings = load_settings_for(config)
    registry = PipelineRegistry(settings.pipelines, settings.workers.device)
    names = registry.discover()
    folders: dict[Path, list[str]] = {}
    for name in names:
        folders.setdefault(settings.pipelines.weights_for(name) or bundled_weights_dir(), []).append(name)
    if as_json:
        print_json({
            "pipelines": [{"name": name, "origin": registry.origin(name)} for name in names],
            "weights": [
                {"folder": str(folder), "used_by": users,
                 "cards": [_read_card(path) for path in sorted(folder.glob("*.json"))]}
                for folder, users in sorted(folders.items())
            ],
        })
        return
    table = Table("pipeline", "found through", title="pipelines")
    table.columns[0].no_wrap = True
    for name in names:
        table.add_row(escape(name), escape(_origin_lines(registry.origin(name))))
    console.print(table if names else "no pipelines installed")
    for folder, users in sorted(folders.items()):
        console.print(_cards_table(folder, users))


def _origin_lines(origin: str) -> str:
    """``entry point module:attr`` on lines that fit 80 columns: kind, then the object."""
    kind, _, target = origin.rpartition(" ")
    module, colon, attr = target.partition(":")
    where = f"{module}:\n{attr}" if colon and len(target) > 50 else target
    return f"{kind}\n{where}" if kind else where


def _cards_table(weights: Path, pipelines: list[str]) -> Table:
    """The model cards in one weights folder, titled with the pipelines that use it."""
    cards = Table(
        "model", "version", "headline metrics", "sha256",
        title=f"model cards in {escape(str(weights))} (used by {', '.join(pipelines)})",
    )
    cards.columns[0].no_wrap = cards.columns[1].no_wrap = cards.columns[3].no_wrap = True
    cards.columns[2].overflow = "fold"
    for card_path in sorted(weights.glob("*.json")):
        card = _read_card(card_path)
        if card["error"] is not None:
            cards.add_row(escape(card["name"]), "-", escape(card["error"]), "")
            continue
        architecture = str(card["architecture"] or "-").rpartition(".")[2]  # the class, not its module
        shown = "\n".join(f"{name} {value:.3f}" for name, value in card["headline_metrics"].items())
        cards.add_row(
            f"{escape(card['name'])}\n[dim]{escape(architecture)}[/dim]",
            escape(str(card["version"])),
            escape(shown or "none in the card"),
            str(card["sha256"] or "")[:12],
        )
    return cards
