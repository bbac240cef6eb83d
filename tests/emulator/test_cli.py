"""The ``emulator`` click group: client-secrets writes a file a running emulator accepts."""

from __future__ import annotations

import json
from pathlib import Path

import requests
from click.testing import CliRunner

from calsync.emulator import Emulator
from calsync.emulator.cli import emulator


def test_client_secrets_registers_with_a_running_emulator(emu: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "client_secret.json"
    callback = "http://127.0.0.1:5000/oauth2callback"
    result = CliRunner().invoke(
        emulator, ["client-secrets", "--url", emu.url, "--redirect-uri", callback, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    web = json.loads(out.read_text())["web"]
    assert web["auth_uri"] == emu.url + "/o/oauth2/auth" and web["token_uri"] == emu.url + "/token"
    assert web["redirect_uris"] == [callback]
    emu.create_user("alice@example.com")
    page = requests.get(
        web["auth_uri"],
        params={"client_id": web["client_id"], "redirect_uri": callback, "response_type": "code", "scope": "openid"},
    )
    assert page.status_code == 200 and "alice@example.com" in page.text


def test_client_secrets_without_an_emulator_still_writes(tmp_path: Path) -> None:
    out = tmp_path / "cs.json"
    result = CliRunner().invoke(
        emulator, ["client-secrets", "--url", "http://127.0.0.1:9", "--redirect-uri", "http://x/cb", "--out", str(out)]
    )
    assert result.exit_code == 0 and out.exists()
    assert "--redirect-uri http://x/cb" in result.output


def test_group_help_lists_serving_options() -> None:
    result = CliRunner().invoke(emulator, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--access-token-ttl", "--max-channel-ttl"):
        assert option in result.output


def test_serves_in_its_own_process_until_interrupted() -> None:
    import signal
    import subprocess
    import sys

    code = "from calsync.emulator.cli import emulator; emulator(['--port', '0', '--user', 'a@example.com'])"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        assert requests.get(url + "/healthz", timeout=5).json() == {"status": "ok"}
        assert requests.get(url + "/_emulator/users", timeout=5).json()[0]["email"] == "a@example.com"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
