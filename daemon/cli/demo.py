"""``acqflow demo …`` feeds the running daemon generated data the way instruments do.

The demos are what plugins contribute through the entry-point group ``acqflow.demos``
(a :class:`~acqflow.plugins.api.DemoInput` each); ``acqflow demo`` lists them. A folder
demo's files are written into the watched folder one by one in acquisition order (each
under a temporary name, then renamed, as acquisition software does); a DICOM demo's
series is sent to the daemon's DICOM port by C-STORE, exactly as a modality would.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from acqflow.daemon.cli.base import (
    ConfigOption,
    console,
    fail,
    handles_errors,
    load_settings_for,
)
from acqflow.daemon.cli.contributions import (
    PERMISSIVE,
    Unavailable,
    load_contributions,
    unavailable_command,
)
from acqflow.daemon.config import Settings
from acqflow.plugins.api import DEMO_ENTRY_POINT_GROUP, DemoFiles, DemoInput, DemoOption, DemoValue

__all__ = ["DemoCatalogue", "app", "demo_command", "discover_demos", "register_demo_commands"]

app = typer.Typer(rich_markup_mode=None,
                  help="Feed the daemon generated demo data; without a name, list the demos.")


@dataclass(frozen=True)
class DemoCatalogue:
    """The demos that loaded, in listing order, and the contributions that did not."""

    demos: tuple[DemoInput, ...]
    unavailable: tuple[Unavailable, ...] = ()


def _as_demo(name: str, obj: object) -> DemoInput:
    if not isinstance(obj, DemoInput):
        raise TypeError(f"the entry point names a {type(obj).__name__}, not a DemoInput")
    if obj.name != name:
        raise ValueError(f"the entry point is named {name!r} but its demo {obj.name!r}")
    return obj


def discover_demos(extra: Sequence[DemoInput] = ()) -> DemoCatalogue:
    """The demos installed plugins contribute (``acqflow.demos``), then ``extra`` (demos
    defined in memory: tests, embedding applications); a name already taken makes the
    later one unavailable."""
    found = load_contributions(DEMO_ENTRY_POINT_GROUP, _as_demo)
    demos = dict(found.loaded)
    unavailable = list(found.unavailable)
    for demo in extra:
        if demo.name in demos:
            unavailable.append(Unavailable(demo.name, "in memory", "another plugin contributes this name"))
        else:
            demos[demo.name] = demo
    return DemoCatalogue(tuple(demos.values()), tuple(unavailable))


# What every folder demo, and every DICOM demo, takes besides its own options.
Seed = Annotated[int, typer.Option(help="Seed of the generated data.")]
Into = Annotated[Path | None, typer.Option(help="Folder to write into (default: the first watched folder).")]
Interval = Annotated[float, typer.Option(min=0, help="Seconds between files.")]
CallingAe = Annotated[str, typer.Option(help="AE title the series is sent from.")]


def _parameter(name: str, annotation: object, default: object) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _option_parameter(option: DemoOption) -> inspect.Parameter:
    info = typer.Option(help=option.help or None, min=option.min, max=option.max)
    if not option.choices:
        return _parameter(option.name, Annotated[option.value_type, info], option.default)
    # typer turns an Enum into a choice of its values (its member names may be any text)
    choice = Enum(f"{option.name}_choice", [(c, c) for c in option.choices], type=str)  # type: ignore[misc]
    return _parameter(option.name, Annotated[choice, info], choice(option.default))


def demo_command(demo: DemoInput) -> Callable[..., None]:
    """The ``acqflow demo <name>`` command of ``demo``: its own options beside ``--config``
    and ``--seed``, and ``--into``/``--interval`` (folder demo) or ``--calling-ae`` (DICOM)."""
    common = [_parameter("config", ConfigOption, None), _parameter("seed", Seed, 0)]
    if demo.writes_files:
        common += [_parameter("into", Into, None), _parameter("interval", Interval, 0.5)]
    else:
        common.append(_parameter("calling_ae", CallingAe, "ACQFLOW_DEMO"))

    def run(**values: Any) -> None:
        settings = load_settings_for(values.pop("config"))
        seed = int(values.pop("seed"))
        if demo.writes_files:
            into, interval = values.pop("into"), float(values.pop("interval"))
            feed_folder(demo, settings, seed, _resolve(demo, values), into, interval)
        else:
            calling_ae = str(values.pop("calling_ae"))
            send_series(demo, settings, seed, _resolve(demo, values), calling_ae)

    command = handles_errors(run)
    # typer reads the parameters through inspect.signature, which honours __signature__.
    command.__signature__ = inspect.Signature([*common, *map(_option_parameter, demo.options)])  # type: ignore[attr-defined]
    command.__annotations__ = {}
    command.__name__ = f"demo_{demo.name.replace('-', '_')}"
    command.__doc__ = f"{demo.summary}\n\nData for the {demo.pipeline} pipeline."
    return command


def _resolve(demo: DemoInput, values: Mapping[str, object]) -> dict[str, DemoValue]:
    plain = {name: value.value if isinstance(value, Enum) else value for name, value in values.items()}
    try:
        return demo.resolve(plain)
    except ValueError as exc:
        raise fail(str(exc)) from None


def feed_folder(
    demo: DemoInput,
    settings: Settings,
    seed: int,
    options: Mapping[str, DemoValue],
    into: Path | None,
    interval: float,
) -> None:
    """Generate ``demo``'s files in a staging folder, keep its companion files under
    ``<state_dir>/demo/`` and feed the others into ``into`` (default: the first watched
    folder) one by one, ``interval`` seconds apart. Raises typer.Exit (one line) when
    there is no folder or the demo fails."""
    target = into or (settings.folders[0].path if settings.folders else None)
    if target is None:
        raise fail("no watched folder configured; pass --into")
    kept_root = settings.paths.state_dir / "demo"
    with tempfile.TemporaryDirectory(prefix="acqflow-demo-") as name:
        staging = Path(name)
        files = _write_files(demo, staging, seed, options)
        for relative in files.keep:
            kept = kept_root / relative
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(staging / relative, kept)
        for index, relative in enumerate(files.feed, start=1):
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            temporary = destination.parent / f".{destination.name}.part"
            shutil.copy2(staging / relative, temporary)
            temporary.rename(destination)
            console.print(f"[{index}/{len(files.feed)}] {destination}", soft_wrap=True, markup=False)
            if index < len(files.feed):
                time.sleep(interval)
    if files.keep:
        folders = sorted({str((kept_root / relative).parent) for relative in files.keep})
        note = files.note or "companion files"
        console.print(f"{note} kept in {', '.join(folders)}", soft_wrap=True, markup=False)


def _write_files(demo: DemoInput, staging: Path, seed: int, options: Mapping[str, DemoValue]) -> DemoFiles:
    if demo.write_files is None:
        raise fail(f"demo {demo.name} sends DICOM; it writes no files")
    try:
        files = demo.write_files(staging, seed, options)
    except (ValueError, OSError) as exc:
        raise fail(f"demo {demo.name}: {exc}") from None
    if not isinstance(files, DemoFiles):
        raise fail(f"demo {demo.name} returned a {type(files).__name__}, not DemoFiles")
    missing = [str(p) for p in (*files.feed, *files.keep) if not (staging / p).is_file()]
    if missing:
        raise fail(f"demo {demo.name} did not write {', '.join(missing)}")
    return files


def send_series(
    demo: DemoInput, settings: Settings, seed: int, options: Mapping[str, DemoValue], calling_ae: str
) -> None:
    """Generate ``demo``'s series and send it to the daemon by C-STORE. Raises typer.Exit
    (one line) when the demo fails, the daemon refuses the association or an instance."""
    if demo.dicom_series is None:
        raise fail(f"demo {demo.name} writes files; it sends no DICOM")
    try:
        datasets = list(demo.dicom_series(seed, options))
    except (ValueError, OSError) as exc:
        raise fail(f"demo {demo.name}: {exc}") from None
    if not datasets:
        raise fail(f"demo {demo.name} produced no instances")
    _send(settings, datasets, calling_ae)


def _daemon_address(settings: Settings) -> tuple[str, int]:
    state_file = settings.paths.state_dir / "daemon.json"
    try:
        state = json.loads(state_file.read_text())
        port = int(state["dicom_port"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        port = settings.dicom.port
    host = "127.0.0.1" if settings.dicom.host in ("0.0.0.0", "::") else settings.dicom.host
    return host, port


def _send(settings: Settings, datasets: Sequence[Any], calling_ae: str) -> None:
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    host, port = _daemon_address(settings)
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = [build_context(uid) for uid in sorted({str(ds.SOPClassUID) for ds in datasets})]
    assoc = ae.associate(host, port, ae_title=settings.dicom.ae_title)
    if not assoc.is_established:
        raise fail(f"the daemon at {settings.dicom.ae_title}@{host}:{port} refused or is not running", 1)
    failed = 0
    try:
        for index, dataset in enumerate(datasets, start=1):
            status = assoc.send_c_store(dataset)
            if getattr(status, "Status", 0xFFFF) != 0:
                failed += 1
            if index % 10 == 0 or index == len(datasets):
                console.print(f"sent {index}/{len(datasets)}")
    finally:
        assoc.release()
    if failed:
        raise fail(f"{failed} of {len(datasets)} instances were refused", 1)
    console.print(
        f"series sent to {settings.dicom.ae_title}@{host}:{port}; results follow after the quiet time"
    )


def _listing(catalogue: DemoCatalogue) -> Callable[[typer.Context], None]:
    def list_demos(ctx: typer.Context) -> None:
        """Feed the daemon generated demo data; without a name, list the demos."""
        if ctx.invoked_subcommand is not None:
            return
        if catalogue.demos:
            table = Table("demo", "pipeline", "what it does", title="demos")
            for demo in catalogue.demos:
                table.add_row(demo.name, demo.pipeline, demo.summary)
            console.print(table)
        else:
            console.print("no demos installed")
        for item in catalogue.unavailable:
            console.print(item.line("demo"), soft_wrap=True, markup=False, highlight=False)
        console.print("run one with: acqflow demo NAME [OPTIONS] (acqflow demo NAME --help)", markup=False)

    return list_demos


def register_demo_commands(extra: Sequence[DemoInput] = ()) -> DemoCatalogue:
    """Make one ``acqflow demo`` command per demo of :func:`discover_demos` (and ``extra``),
    and the listing for ``acqflow demo`` alone; registering again replaces them all."""
    catalogue = discover_demos(extra)
    app.registered_commands.clear()
    for demo in catalogue.demos:
        app.command(demo.name)(demo_command(demo))
    names = {demo.name for demo in catalogue.demos}
    for item in catalogue.unavailable:
        if item.name not in names:  # a second contribution of a name keeps the first one's command
            app.command(item.name, context_settings=PERMISSIVE)(unavailable_command(item, "demo"))
    app.callback(invoke_without_command=True)(_listing(catalogue))
    return catalogue
