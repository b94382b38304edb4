"""Fixtures for the Python tests of the generated bindings: a real fieldsync-server process and
device stores opened through the generated `fieldsync` module.

Paths (set by bindings/test.sh; the defaults fit a plain `cargo build` in the repository):
  FIELDSYNC_BINDINGS_PY   folder with fieldsync.py and libfieldsync_bindings.so
                          (default: <repo>/target/bindings/python, made by bindings/generate.sh)
  FIELDSYNC_SERVER_BIN    the fieldsync-server binary (default: <repo>/target/debug/fieldsync-server)
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BINDINGS_PY = Path(os.environ.get("FIELDSYNC_BINDINGS_PY", TARGET / "bindings" / "python"))
SERVER_BIN = Path(os.environ.get("FIELDSYNC_SERVER_BIN", TARGET / "debug" / "fieldsync-server"))

if not (BINDINGS_PY / "fieldsync.py").exists():
    raise RuntimeError(f"{BINDINGS_PY}/fieldsync.py is missing: run bindings/generate.sh first")
sys.path.insert(0, str(BINDINGS_PY))

import fieldsync  # noqa: E402  (the generated module, found through the path above)

# How long a server may take to print `listening on` (a debug build on a busy 2-core machine).
START_TIMEOUT_S = 60


@dataclass
class User:
    """A user the admin enrolls: one one-time code each."""

    id: str
    name: str
    role: str
    scopes: list[str] = field(default_factory=list)


class Server:
    """One `fieldsync-server` data folder, served by a child process that can be stopped and
    started again on the same port (devices keep the address they enrolled with).

    `enroll`, `revoke` and `init` open the redb file themselves, so they run only while the
    server is stopped, exactly as an admin would run them.
    """

    def __init__(self, data: Path, log_dir: Path):
        self.data = data
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.fingerprint = ""
        self.starts = 0

    def admin(self, *args: str) -> str:
        """Runs an admin command against the data folder; returns its stdout."""
        assert self.proc is None, "admin commands need the server stopped (redb is single-process)"
        out = subprocess.run(
            [str(SERVER_BIN), *args, "--data", str(self.data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"fieldsync-server {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def init(self) -> None:
        self.fingerprint = _line_value(self.admin("init"), "fingerprint")

    def enroll(self, user: User, replace: bool = False) -> str:
        args = ["enroll", "--user", user.id, "--name", user.name, "--role", user.role]
        for scope in user.scopes:
            args += ["--scope", scope]
        if replace:
            args.append("--replace")
        return _line_value(self.admin(*args), "code")

    def revoke(self, device_id: str) -> None:
        self.admin("revoke", "--device", device_id)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts `serve` (on the port of the first start) and waits for `listening on`."""
        assert self.proc is None
        self.starts += 1
        log = open(self.log_dir / f"server-{self.starts}.log", "w")
        self.proc = subprocess.Popen(
            [str(SERVER_BIN), "serve", "--data", str(self.data), "--listen", self.address],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        log.close()
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream) -> None:
            # Drains stdout for the server's whole life so it never blocks on a full pipe.
            for line in stream:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"server did not listen within {START_TIMEOUT_S}s")
            if line is None:
                code = self.proc.wait()
                self.proc = None
                raise RuntimeError(f"server exited ({code}) before listening; see {self.log_dir}")
            if line.startswith("fingerprint: "):
                self.fingerprint = line.split(": ", 1)[1].strip()
            if line.startswith("listening on "):
                self.port = int(line.rsplit(":", 1)[1])
                return

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it hangs."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _line_value(out: str, key: str) -> str:
    for line in out.splitlines():
        if line.startswith(f"{key}: "):
            return line.split(": ", 1)[1].strip()
    raise RuntimeError(f"no `{key}:` line in {out!r}")


@dataclass
class Cluster:
    """A running server with a one-time code per user."""

    server: Server
    codes: dict[str, str]


@pytest.fixture
def make_server(tmp_path):
    """`make_server(*users)`: a new data folder with a code for each user, served."""
    servers: list[Server] = []

    def make(*users: User) -> Cluster:
        if not SERVER_BIN.exists():
            raise RuntimeError(f"{SERVER_BIN} is missing: cargo build -p fieldsync-server")
        n = len(servers)
        server = Server(tmp_path / f"server{n}", tmp_path)
        servers.append(server)
        server.init()
        codes = {u.id: server.enroll(u) for u in users}
        server.start()
        return Cluster(server, codes)

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def open_store(tmp_path):
    """`open_store(name)`: a device store (a phone) in its own folder."""

    def open_(name: str) -> fieldsync.FieldStore:
        return fieldsync.FieldStore.open(str(tmp_path / "phones" / name))

    return open_


class Progress(fieldsync.SyncProgressListener):
    """Records every progress report of a sync round."""

    def __init__(self) -> None:
        self.calls: list[fieldsync.SyncProgress] = []

    def on_progress(self, progress: fieldsync.SyncProgress) -> None:
        self.calls.append(progress)

    def assert_sane(self, report: fieldsync.SyncReport, pending_before: int) -> None:
        """Starts with nothing done of what was pending; never goes backwards or past its
        totals; ends with everything sent and received that the report counts."""
        calls = [(p.sent, p.to_send, p.received, p.to_receive) for p in self.calls]
        assert calls, "the progress listener was never called"
        assert calls[0] == (0, pending_before, 0, 0), calls
        for a, b in zip(calls, calls[1:]):
            assert b[0] >= a[0] and b[2] >= a[2] and b[3] >= a[3], f"progress went backwards: {calls}"
        assert all(s <= ts and r <= tr for s, ts, r, tr in calls), calls
        sent, to_send, received, to_receive = calls[-1]
        assert sent == to_send == report.sent + len(report.refused) + len(report.deferred), (calls, report)
        assert received == to_receive == report.received, (calls, report)


def copy_data(src: Path, dst: Path) -> None:
    """Copies a stopped server's data folder (a backup, as an admin would take one)."""
    shutil.copytree(src, dst)
