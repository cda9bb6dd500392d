"""The operations settings: ``log_format``, ``paths.umask`` and ``[health]``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from acqflow.daemon.config import load_settings
from acqflow.daemon.errors import ConfigError


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.log_format == "text"
    assert settings.paths.umask == "0027" and settings.paths.umask_bits == 0o027
    assert settings.health.stall_seconds == 120.0 and settings.health.busy_seconds == 3600.0


def test_values_from_the_file_and_the_environment_survive_path_resolution(tmp_path: Path) -> None:
    config = tmp_path / "acqflow.toml"
    config.write_text('log_format = "json"\n[paths]\nstate_dir = "state"\numask = "007"\n')
    settings = load_settings(config, environ={"ACQFLOW_HEALTH__BUSY_SECONDS": "7200"})
    assert settings.log_format == "json"
    assert settings.paths.state_dir == tmp_path / "state"
    assert settings.paths.umask_bits == 0o007  # kept when relative paths are resolved
    assert settings.health.busy_seconds == 7200.0


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"ACQFLOW_LOG_FORMAT": "xml"}, "log_format"),
        ({"ACQFLOW_PATHS__UMASK": '"0089"'}, "paths.umask"),
        ({"ACQFLOW_PATHS__UMASK": '"27"'}, "paths.umask"),
        ({"ACQFLOW_HEALTH__STALL_SECONDS": "0"}, "health.stall_seconds"),
        ({"ACQFLOW_WORKERS__MIN_FREE_BYTES": "-1"}, "workers.min_free_bytes"),
    ],
)
def test_invalid_values_name_their_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": "):
        load_settings(environ=environ)
