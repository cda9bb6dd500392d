"""The daemon knows pipelines only through ``acqflow.plugins.api`` and entry points: no
module of ``daemon/`` imports a plugin module or names one in a string (which would be the
``importlib.import_module`` route around the rule)."""

from __future__ import annotations

import ast
from pathlib import Path

import acqflow.daemon

DAEMON = Path(acqflow.daemon.__file__).parent
ALLOWED = "acqflow.plugins.api"


def _names_a_plugin(name: str) -> bool:
    return name.startswith("acqflow.plugins.") and name != ALLOWED and not name.startswith(ALLOWED + ".")


def _named(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        if node.module == "acqflow.plugins":  # from acqflow.plugins import ct_muscle
            return [f"acqflow.plugins.{alias.name}" for alias in node.names]
        return [node.module]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [word.strip("`'\",:;()[]") for word in node.value.split()]
    return []


def offences(source: str, label: str) -> list[str]:
    """``label:line: name`` for every plugin module ``source`` imports or names."""
    return [
        f"{label}:{getattr(node, 'lineno', '?')}: {name}"
        for node in ast.walk(ast.parse(source))
        for name in _named(node)
        if _names_a_plugin(name)
    ]


def test_the_daemon_imports_no_plugin_module() -> None:
    modules = sorted(DAEMON.rglob("*.py"))
    assert len(modules) > 20  # the daemon's own folder, not an empty one
    found = [o for path in modules for o in offences(path.read_text(), str(path.relative_to(DAEMON)))]
    assert found == []


def test_the_check_catches_imports_and_names() -> None:
    source = (
        "import acqflow.plugins.ct_muscle.phantoms\n"
        "from acqflow.plugins import mr_muscle\n"
        "from acqflow.plugins import api\n"
        "from acqflow.plugins.api import DemoInput\n"
        "importlib.import_module('acqflow.plugins.virtual_staining.commands')\n"
        'LOGGERS = ("acqflow.plugins",)\n'
    )
    assert sorted(o.split(": ")[1] for o in offences(source, "sample")) == [
        "acqflow.plugins.ct_muscle.phantoms",
        "acqflow.plugins.mr_muscle",
        "acqflow.plugins.virtual_staining.commands",
    ]
