"""The `calsync` console script offers every command the contract names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONTRACT_COMMANDS = {
    "db",
    "serve",
    "web",
    "worker",
    "emulator",
    "demo",
    "changes",
    "status",
    "sync",
    "channels",
    "webhooks",
    "keygen",
}


def _calsync(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("calsync")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)


def test_every_contract_command_is_registered() -> None:
    result = _calsync("--help")
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed >= CONTRACT_COMMANDS


def test_keygen_prints_a_fernet_key_that_calsync_accepts() -> None:
    from calsync.store.crypto import TokenCipher

    key = _calsync("keygen").stdout.strip()
    cipher = TokenCipher([key.encode()])
    assert cipher.decrypt_str(cipher.encrypt_str("x")) == "x"


def test_a_malformed_setting_is_one_clear_line_without_a_traceback() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("calsync")), "db", "current"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "CALSYNC_RECONCILE_EVERY": "often"},
    )
    assert result.returncode != 0
    assert "CALSYNC_RECONCILE_EVERY" in result.stderr and "Traceback" not in result.stderr


def test_the_command_line_imports_no_prometheus_client_before_a_command_runs() -> None:
    """`calsync web` turns on prometheus-client's multiprocess mode before forking, which only works
    if nothing imported prometheus-client first; the CLI imports every command's module up front."""
    code = "import sys; from calsync import cli; cli._register(); print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_an_argument_that_is_not_utf8_is_one_clear_line() -> None:
    """Bytes the locale cannot decode reached the database driver, which raised a traceback."""
    exe = Path(sys.executable).with_name("calsync")
    for args in ([b"changes", b"--calendar", b"\xff\xfe"], [b"freebusy", b"\xff\xfe"]):
        done = subprocess.run([bytes(exe), *args], capture_output=True, timeout=60)
        assert done.returncode == 2 and b"Traceback" not in done.stderr
        assert done.stderr.startswith(b"error: argument") and b"UTF-8" in done.stderr


def test_commands_that_read_a_missing_sqlite_file_do_not_make_one(tmp_path: Path) -> None:
    """`webhooks list`, `events` and `db current` made an empty file where the database should be,
    then said "no such table" (or "empty", exit 0)."""
    missing = tmp_path / "nothere.db"
    exe = Path(sys.executable).with_name("calsync")
    env = {**os.environ, "CALSYNC_DATABASE_URL": f"sqlite:///{missing}"}
    for args in (["webhooks", "list"], ["db", "current"], ["events", "delete", "cal@example.com", "ev1"]):
        done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 2 and "no database at" in done.stderr, (args, done.stderr)
        assert not missing.exists()
