from __future__ import annotations

from pathlib import Path

import pytest

from acqflow.daemon.config import load_settings
from acqflow.daemon.errors import ConfigError


def test_defaults_are_valid_and_relative_paths_resolve_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, environ={})
    assert settings.paths.state_dir == tmp_path / "var"
    assert settings.paths.journal == tmp_path / "var" / "journal.sqlite3"
    assert settings.folders[0].path == tmp_path / "var" / "inbox"
    assert settings.dicom.host == "127.0.0.1" and settings.metrics.host == "127.0.0.1"
    assert [r.name for r in settings.routes] == ["microscopy", "ct", "mr"]


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "acqflow.toml"
    config.write_text(
        '[paths]\nstate_dir = "state"\n[dicom]\nport = 4242\nae_title = "LAB"\n'
        '[[export.destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4243\n'
        '[[routes]]\nname = "ct"\nmodality = ["CT"]\npipelines = ["ct-muscle"]\nexport = ["pacs"]\n'
    )
    env = {
        "ACQFLOW_DICOM__PORT": "5000",
        "ACQFLOW_WORKERS__DEVICE": "cpu",
        "ACQFLOW_DICOM__ALLOWED_CALLING_AES": '["MODALITY", "PACS"]',
    }
    settings = load_settings(config, environ=env, overrides={"workers.count": 3})
    assert settings.paths.state_dir == tmp_path / "state"
    assert settings.dicom.port == 5000 and settings.dicom.ae_title == "LAB"
    assert settings.dicom.allowed_calling_aes == ("MODALITY", "PACS")
    assert settings.workers.device == "cpu" and settings.workers.count == 3
    assert settings.routes[0].export == ("pacs",)
    assert settings.destination("pacs").port == 4243


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (
            "[dicom]\nport = 70000\n",
            {},
            "dicom.port: Input should be less than or equal to 65535 (got 70000)",
        ),
        ("", {"ACQFLOW_DICOM__AE_TITLE": "A\\\\B"}, "dicom.ae_title: not a valid AE title"),
        ('[workers]\ndevice = "tpu"\n', {}, "workers.device: device must be auto, cpu, cuda or cuda:N"),
        ("[dicom]\nporrt = 1\n", {}, "dicom.porrt: Extra inputs are not permitted"),
        (
            '[[routes]]\nname = "x"\npipelines = ["a"]\nexport = ["nowhere"]\n',
            {},
            "exports to unknown destination 'nowhere'",
        ),
        (
            '[[folders]]\npath = "in"\npatterns = ["(unclosed"]\n',
            {},
            "folders.0.patterns: invalid regular expression",
        ),
    ],
)
def test_invalid_values_give_one_line_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    config = tmp_path / "acqflow.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ=env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "acqflow.example.toml"
    settings = load_settings(example, environ={})
    assert settings.export.destinations


def test_example_pipeline_options_are_accepted_by_the_pipelines() -> None:
    from acqflow.plugins.ct_muscle.pipeline import CtMuscleOptions
    from acqflow.plugins.mr_muscle.pipeline import MrMuscleOptions
    from acqflow.plugins.virtual_staining.pipeline import VirtualStainingOptions

    example = Path(__file__).resolve().parents[2] / "deploy" / "acqflow.example.toml"
    options = load_settings(example, environ={}).pipelines.options
    assert VirtualStainingOptions.from_mapping(options["virtual-staining"]).stride == 12
    assert CtMuscleOptions.from_mapping(options["ct-muscle"]).samples == 10
    assert MrMuscleOptions.from_mapping(options["mr-muscle"]).synthetic_ct_series is False
