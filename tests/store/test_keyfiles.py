"""Generated keys: processes that start together agree on them, none reads one half-written, and
every generated file (keys, the SQLite database) is private."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

import calsync.store.keyfiles
from calsync.errors import ConfigError
from calsync.store.crypto import KEY_FILE
from calsync.store.keyfiles import read_or_create
from calsync.web.app import SESSION_KEY_FILE

ROUNDS = 20
PROCESSES = 4

# One Python process that imports calsync once, then per round forks PROCESSES children held at a
# gate (a pipe) and opens it: each child boots as a process would (the database, the session key,
# the token cipher) at the same instant as its siblings, and reports what it got.
_PROBE = """
import json, os, sys, traceback
from pathlib import Path
from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.web.app import session_secret

base, rounds, processes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
report = []
for r in range(rounds):
    folder = base / f"round{r}"
    folder.mkdir()
    gate_r, gate_w = os.pipe()
    out_r, out_w = os.pipe()
    pids = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            os.close(out_r)
            os.read(gate_r, 1)  # returns when the parent closes the gate: all start together
            try:
                settings = Settings(database_url=f"sqlite:///{folder}/calsync.db", instance_path=folder / "instance")
                runtime = Runtime.create(settings)
                with runtime.engine.connect():
                    pass
                line = {"secret": session_secret(settings), "token": runtime.cipher.encrypt_str("probe").decode()}
                code = 0
            except BaseException:
                line, code = {"error": traceback.format_exc()}, 1
            os.write(out_w, (json.dumps(line) + "\\n").encode())
            os._exit(code)
        pids.append(pid)
    os.close(gate_r)
    os.close(out_w)
    os.close(gate_w)
    exits = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    with os.fdopen(out_r) as out:
        lines = [json.loads(line) for line in out]
    report.append({"folder": str(folder), "exits": exits, "children": lines})
print(json.dumps(report))
"""


def test_processes_started_together_agree_on_every_key_and_none_crashes(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path), str(ROUNDS), str(PROCESSES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    problems: list[str] = []
    for round_ in json.loads(run.stdout):
        instance = Path(round_["folder"]) / "instance"
        errors = [child["error"] for child in round_["children"] if "error" in child]
        if errors or round_["exits"] != [0] * PROCESSES:
            problems.append(f"{round_['folder']}: exits {round_['exits']}: {errors[:1]}")
            continue
        secret = (instance / SESSION_KEY_FILE).read_text().strip()
        cipher = Fernet((instance / KEY_FILE).read_bytes().strip())
        if {child["secret"] for child in round_["children"]} != {secret}:
            problems.append(f"{round_['folder']}: the processes got different session keys")
        try:
            for child in round_["children"]:
                cipher.decrypt(child["token"].encode())
        except Exception:
            problems.append(f"{round_['folder']}: a process encrypted with another token key")
        for name in (instance / SESSION_KEY_FILE, instance / KEY_FILE, instance.parent / "calsync.db"):
            if stat.S_IMODE(name.stat().st_mode) != 0o600:
                problems.append(f"{name}: mode {stat.S_IMODE(name.stat().st_mode):o}")
        leftovers = [p.name for p in instance.iterdir() if p.name not in {SESSION_KEY_FILE, KEY_FILE}]
        if leftovers:
            problems.append(f"{instance}: left behind {leftovers}")
    assert problems == [], "\n".join(problems)


def test_a_key_file_found_empty_is_read_once_its_writer_has_filled_it(tmp_path: Path) -> None:
    """A writer that made the file but has not written yet (a filesystem without hard links)."""
    path = tmp_path / "token.key"
    path.touch(mode=0o600)
    filler = threading.Timer(0.2, path.write_bytes, args=(b"the-key\n",))
    filler.start()
    started = time.monotonic()
    key, created = read_or_create(path, lambda: b"another-key")
    filler.join()
    assert (key, created) == (b"the-key", False)
    assert time.monotonic() - started >= 0.15


def test_a_key_file_that_stays_empty_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(calsync.store.keyfiles, "WAIT_FOR_WRITER", 0.1)
    path = tmp_path / "secret.key"
    path.touch()
    with pytest.raises(ConfigError, match=str(path)):
        read_or_create(path, lambda: b"new")
    assert path.read_bytes() == b"", "an existing file is never replaced"


def test_a_new_key_is_private_whatever_the_umask(tmp_path: Path) -> None:
    key, created = read_or_create(tmp_path / "instance" / "k.key", lambda: b"k1")
    again, created_again = read_or_create(tmp_path / "instance" / "k.key", lambda: b"k2")
    assert (key, created, again, created_again) == (b"k1", True, b"k1", False)
    assert stat.S_IMODE((tmp_path / "instance" / "k.key").stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "instance").iterdir()] == ["k.key"]
