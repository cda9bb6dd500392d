"""Versioned weights: a safetensors file plus a JSON model card with its sha256.

A card records the architecture and its constructor arguments (so the network can be
rebuilt without code changes), the version, the training data summary and command, the
held-out metrics, and the sha256 of the weights file, which is checked on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "ModelCard",
    "WeightsError",
    "bundled_weights_dir",
    "load_weights",
    "read_card",
    "save_weights",
]


class WeightsError(RuntimeError):
    """Weights are missing, do not match their card, or do not fit the architecture."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    architecture: str
    arguments: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("a model card needs a name and a version")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        return cls(**data)


def bundled_weights_dir() -> Path:
    """The folder of the demo weights that ship with the package."""
    return Path(__file__).resolve().parent / "weights"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _process_umask() -> int:
    """The process umask: from /proc on Linux, else by setting it and setting it straight
    back (stricter meanwhile, so a file another thread creates is never too open)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file and a rename, with the mode an ordinary
    ``open`` would give it (0o666 less the umask; mkstemp alone would leave 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_process_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(module: torch.nn.Module, card: ModelCard, directory: Path) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``directory`` (each atomically,
    readable as the process umask allows, as any file it writes); returns the card path."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    weights_path = directory / f"{card.name}.safetensors"
    _atomic_write(weights_path, save(tensors, metadata={"version": card.version}))
    final = ModelCard(**{**asdict(card), "sha256": _sha256(weights_path)})
    card_path = directory / f"{card.name}.json"
    _atomic_write(card_path, final.to_json().encode())
    return card_path


def read_card(directory: Path, name: str) -> ModelCard:
    """Read the card of ``name`` in ``directory``; raises WeightsError when absent or invalid."""
    card_path = directory / f"{name}.json"
    try:
        return ModelCard.from_json(card_path.read_text())
    except FileNotFoundError as exc:
        raise WeightsError(f"no model card {card_path}") from exc
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"invalid model card {card_path}: {exc}") from exc


def load_weights(module: torch.nn.Module, directory: Path, name: str, device: str = "cpu") -> ModelCard:
    """Load ``name`` from ``directory`` into ``module`` after checking the sha256.

    Raises WeightsError when files are missing, the checksum differs, or keys/shapes
    do not fit the module.
    """
    from safetensors.torch import load_file

    card = read_card(directory, name)
    weights_path = directory / f"{name}.safetensors"
    if not weights_path.is_file():
        raise WeightsError(f"no weights file {weights_path}")
    actual = _sha256(weights_path)
    if card.sha256 and actual != card.sha256:
        raise WeightsError(f"{weights_path} sha256 {actual[:12]} does not match card {card.sha256[:12]}")
    state = load_file(str(weights_path), device=device)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{weights_path} does not fit {card.architecture}: {exc}") from exc
    return card
