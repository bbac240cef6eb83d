"""`calsync demo`: the README's first command."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console


@click.command()
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port for calsync on 127.0.0.1 (default: a free one)."
)
@click.option(
    "--emulator-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port for the emulated Google on 127.0.0.1 (default: a free one).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=4.0,
    show_default=True,
    help="Seconds between the simulated person's edits.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop by itself this many seconds after the demo is running (default: until Ctrl-C).",
)
@click.option("--no-edits", is_flag=True, help="No simulated person: edit the emulator's calendars yourself.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the database and logs here (default: a temporary folder removed at the end).",
)
@click.option("--seed", type=int, default=None, help="Make the simulated person's choices repeatable.")
def demo(
    port: int | None,
    emulator_port: int | None,
    interval: float,
    duration: float | None,
    no_edits: bool,
    directory: Path | None,
    seed: int | None,
) -> None:
    """Watch calsync work: a local Google, calsync, and a person editing calendars.

    Starts the Google emulator and `calsync serve` on loopback with a fresh SQLite database,
    connects a demo account through the real /connect consent flow, then prints every diff as it
    arrives, with the dashboard address and its password. Ctrl-C stops everything.
    """
    from calsync.demo.runner import DemoOptions, DemoStopped, run_demo
    from calsync.stopping import stop_on_signals

    console = Console(highlight=False)
    options = DemoOptions(
        port=port,
        emulator_port=emulator_port,
        interval=interval,
        duration=duration,
        edits=not no_edits,
        directory=directory,
        seed=seed,
    )
    with stop_on_signals() as stop:
        try:
            run_demo(options, stop, console)
        except DemoStopped:
            console.print("demo stopped before it was running.")
