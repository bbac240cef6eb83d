"""``calsync emulator``: run the local Google in its own process, or write a client-secret file."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import click
import requests

from .emulator import Emulator, client_config


@click.group("emulator", invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8085, show_default=True, type=int, help="Port (0 picks a free one).")
@click.option("--access-token-ttl", default=3600, show_default=True, type=int, help="Access token lifetime (s).")
@click.option(
    "--max-channel-ttl", default=30 * 86400, show_default=True, type=int, help="Cap on push channel lifetime (s)."
)
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    help="Register an OAuth redirect URI for the emulator's web client (repeatable).",
)
@click.option("--user", "users", multiple=True, help="Create this account at start (repeatable).")
@click.option("--seed", type=int, default=None, help="Seed for push fault randomness.")
@click.pass_context
def emulator(
    ctx: click.Context,
    host: str,
    port: int,
    access_token_ttl: int,
    max_channel_ttl: int,
    redirect_uris: tuple[str, ...],
    users: tuple[str, ...],
    seed: int | None,
) -> None:
    """Serve a local Google (OAuth 2.0 + Calendar API v3 + push) until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    emu = Emulator(access_token_ttl=access_token_ttl, max_channel_ttl=max_channel_ttl, seed=seed)
    emu.start(host=host, port=port)
    if redirect_uris:
        emu.client_config(list(redirect_uris))
    for email in users:
        emu.create_user(email)
    click.echo(f"Google emulator on {emu.url} (Calendar API at {emu.api_url}calendar/v3/); Ctrl-C stops it.")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        click.echo("stopping")
    finally:
        emu.stop()


@emulator.command("client-secrets")
@click.option("--url", default="http://127.0.0.1:8085", show_default=True, help="The emulator's URL.")
@click.option(
    "--redirect-uri", "redirect_uris", multiple=True, required=True, help="The app's OAuth callback URL (repeatable)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("client_secret.json"),
    show_default=True,
    help="Where to write the client-secret JSON.",
)
def client_secrets(url: str, redirect_uris: tuple[str, ...], out: Path) -> None:
    """Write the emulator's web client JSON and register its redirect URIs with a running emulator."""
    url = url.rstrip("/")
    out.write_text(json.dumps(client_config(url, list(redirect_uris)), indent=2) + "\n")
    click.echo(f"wrote {out}")
    try:
        response = requests.post(f"{url}/_emulator/clients", json={"redirect_uris": list(redirect_uris)}, timeout=5)
        response.raise_for_status()
        click.echo(f"registered {', '.join(redirect_uris)} with the emulator at {url}")
    except requests.RequestException:
        click.echo(
            f"note: no emulator answered at {url}; start it with "
            + " ".join(f"--redirect-uri {u}" for u in redirect_uris),
            err=True,
        )
