"""The house's rules, checked the way CI should check them: the import contracts of
pyproject.toml (import-linter: layers only downward, no cycles, the daemon imports no
plugin module), ruff and mypy over the acqflow namespace, no private imports from
dependencies, and a wheel that installs as ``acqflow.*`` beside python-daemon."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FOLDERS = ("daemon", "plugins", "models")


def _run(*command: str | Path, cwd: Path = REPO, timeout: float = 600,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_import_contracts_hold() -> None:
    result = _run(BIN / "lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    kept = [line for line in result.stdout.splitlines() if line.endswith(" KEPT")]
    assert len(kept) == 5, result.stdout  # every contract of pyproject.toml was checked


def test_import_contracts_catch_a_plugin_import(tmp_path: Path) -> None:
    """The forbidden contract is live: a daemon module naming a plugin module breaks it."""
    probe = REPO / "daemon" / "_contract_probe.py"
    probe.write_text("from acqflow.plugins.ct_muscle import structures  # noqa\n")
    try:
        result = _run(BIN / "lint-imports", "--no-cache")
    finally:
        probe.unlink()
    assert result.returncode != 0
    assert "acqflow.daemon._contract_probe -> acqflow.plugins.ct_muscle.structures" in result.stdout


def test_ruff_passes() -> None:
    result = _run(BIN / "ruff", "check", *FOLDERS, "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_passes() -> None:
    result = _run(REPO / ".ci" / "typecheck", env={**os.environ, "MYPY": str(BIN / "mypy")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "acqflow" and any(p.startswith("_") and not p.startswith("__") for p in parts):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    return found


def test_no_private_imports_from_dependencies() -> None:
    found = [hit for folder in FOLDERS for path in sorted((REPO / folder).rglob("*.py"))
             for hit in _private_imports(path)]
    assert not found, found


def test_the_private_import_check_sees_one(tmp_path: Path) -> None:
    sample = REPO / "daemon" / "_private_probe.py"
    sample.write_text("from pynetdicom._globals import APPLICATION_CONTEXT_NAME\n")
    try:
        assert _private_imports(sample) == [
            "daemon/_private_probe.py:1 pynetdicom._globals",
            "daemon/_private_probe.py:1 pynetdicom._globals.APPLICATION_CONTEXT_NAME"]
    finally:
        sample.unlink()


def _modules_on_disk() -> set[str]:
    return {f"acqflow/{path.relative_to(REPO)}" for folder in FOLDERS
            for path in (REPO / folder).rglob("*.py") if "__pycache__" not in path.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--wheel-dir", out, REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [built] = out.glob("acqflow-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_every_module_under_acqflow(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {n for n in names if n.endswith(".py")}
    assert modules == _modules_on_disk()  # every module, and nothing outside acqflow/
    assert not any(n.startswith(f"{folder}/") for folder in FOLDERS for n in names)
    assert "acqflow/__init__.py" not in names  # a namespace package others may add to
    assert {"acqflow/models/weights/ct_muscle.safetensors", "acqflow/models/weights/ct_muscle.json",
            "acqflow/daemon/py.typed"} <= names
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "acqflow = acqflow.daemon.cli:main" in text
    assert "ct-muscle = acqflow.plugins.ct_muscle.pipeline:CtMusclePipeline" in text


@pytest.mark.slow
def test_the_wheel_installs_beside_python_daemon(wheel: Path, tmp_path: Path) -> None:
    """A fresh environment holding python-daemon and acqflow imports both: the folder
    daemon/ is acqflow.daemon once installed, and python-daemon keeps its name."""
    venv = tmp_path / "fresh"
    assert _run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                .stdout.strip())
    # The dependencies (and python-daemon) come from this environment's site-packages as a
    # plain path, so its .pth files (the editable install of the checkout) are not read.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    installed = _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                     "--no-index", "--no-build-isolation", wheel, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    probe = ("import daemon, acqflow.daemon, acqflow.daemon.cli, acqflow.plugins.api, acqflow.models.store;"
             "print(daemon.__file__); print(daemon.DaemonContext.__module__); print(acqflow.daemon.__file__);"
             "print(acqflow.models.store.bundled_weights_dir())")
    result = _run(python, "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    python_daemon, context_module, acqflow_file, weights = result.stdout.split()
    assert context_module == "daemon.daemon"  # python-daemon's DaemonContext
    assert python_daemon.startswith(sysconfig.get_path("purelib"))
    assert acqflow_file.startswith(str(site)) and acqflow_file.endswith("acqflow/daemon/__init__.py")
    assert (Path(weights) / "ct_muscle.safetensors").is_file()
    version = _run(venv / "bin" / "acqflow", "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("acqflow "), version.stderr
