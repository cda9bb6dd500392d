"""``acqflow models``: the installed pipelines and the cards of their weights."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from acqflow.daemon.cli.base import (
    ConfigOption,
    console,
    handles_errors,
    load_settings_for,
)


@handles_errors
def models(config: ConfigOption = None) -> None:
    """List the installed pipelines and the model cards of the weights each one uses."""
    from acqflow.daemon.registry import PipelineRegistry
    from acqflow.models.store import bundled_weights_dir

    settings = load_settings_for(config)
    registry = PipelineRegistry(settings.pipelines, settings.workers.device)
    names = registry.discover()
    table = Table("pipeline", "found through", title="pipelines")
    for name in names:
        table.add_row(name, registry.origin(name))
    console.print(table if names else "no pipelines installed")
    folders: dict[Path, list[str]] = {}
    for name in names:
        folders.setdefault(settings.pipelines.weights_for(name) or bundled_weights_dir(), []).append(name)
    for folder, users in sorted(folders.items()):
        console.print(_cards_table(folder, users))


def _cards_table(weights: Path, pipelines: list[str]) -> Table:
    """The model cards in one weights folder, titled with the pipelines that use it."""
    cards = Table(
        "model",
        "version",
        "architecture",
        "held-out metrics",
        "sha256",
        title=f"model cards in {weights} (used by {', '.join(pipelines)})",
    )
    for card_path in sorted(weights.glob("*.json")):
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as exc:
            cards.add_row(card_path.stem, "-", f"unreadable: {exc}", "", "")
            continue
        metrics = card.get("metrics") or {}
        shown = ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in list(metrics.items())[:6]
            if not isinstance(v, (dict, list))
        )
        cards.add_row(
            str(card.get("name")),
            str(card.get("version")),
            str(card.get("architecture")),
            shown,
            str(card.get("sha256", ""))[:12],
        )
    return cards

