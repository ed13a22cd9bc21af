"""Starting and stopping a deadsfu host (the one-host supervisor) for a test, and asking it questions.

The binaries come from `$DEADSFU_BIN_DIR`, default `target/release` under the repository root. Extra flags
for the supervisor can be given in `$DEADSFU_EXTRA_ARGS` (shell words).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from rtc import Response, http_request

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("DEADSFU_BIN_DIR", REPO_ROOT / "target" / "release"))
SUPERVISOR = BIN_DIR / "deadsfu"
RING_TOOL = BIN_DIR / "deadsfu-ring"

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# SFUs running right now, so a failing test's report can carry their logs (see conftest.py).
RUNNING: list["Sfu"] = []


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def media_ports_free(base: int, count: int) -> bool:
    """Whether `base .. base+count-1` are free as UDP ports and as TCP ports (ICE over TCP listens on the same
    numbers)."""
    socks = []
    try:
        for p in range(base, base + count):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind(("0.0.0.0", p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_udp_range(count: int) -> int:
    """A base port such that `base .. base+count-1` are free UDP and TCP ports right now. Below Linux's
    ephemeral range (32768+), where no outgoing connection takes one of them meanwhile."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        if media_ports_free(base, count):
            return base
    raise RuntimeError(f"no {count} consecutive free UDP and TCP ports found")


def proc_exe_name(pid: int) -> str:
    """The file name of the executable running as `pid` (from /proc/PID/exe, else argv[0])."""
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name.removesuffix(" (deleted)")
    except OSError:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return Path(argv[0].decode()).name


def proc_cmdline(pid: int) -> list[str]:
    return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Sfu:
    """One `deadsfu` supervisor with its signaling, ingest and workers, on loopback."""

    def __init__(
        self, log_dir: Path, workers: int = 2, token: str | None = None, name: str = "deadsfu",
        extra_args: list[str] | None = None, http_port: int | None = None, http_host: str = "127.0.0.1",
        runtime_dir: Path | None = None,
    ) -> None:
        for binary in (SUPERVISOR, RING_TOOL):
            if not binary.exists():
                raise FileNotFoundError(
                    f"{binary} not found: run `cargo build --release --workspace` or set DEADSFU_BIN_DIR"
                )
        self.name = name
        self.workers = workers
        self.token = token
        self.http_port = http_port or free_tcp_port()
        self.ingest_port = free_udp_range(1)
        self.fanout_port = free_udp_range(workers)
        self.url = f"http://{http_host}:{self.http_port}"
        shm = Path("/dev/shm")
        self.runtime_dir = runtime_dir or Path(
            tempfile.mkdtemp(prefix="deadsfu-test-", dir=shm if shm.is_dir() else None)
        )
        self.log_path = log_dir / f"{name}.log"
        self.args = [
            str(SUPERVISOR),
            "--http", f"{http_host}:{self.http_port}",
            "--workers", str(workers),
            "--runtime-dir", str(self.runtime_dir),
            "--ingest-port", str(self.ingest_port),
            "--fanout-port", str(self.fanout_port),
        ]
        if token is not None:
            self.args += ["--bearer-token", token]
        self.args += list(extra_args or [])
        self.args += shlex.split(os.environ.get("DEADSFU_EXTRA_ARGS", ""))
        self.proc: subprocess.Popen | None = None
        self.child_pids: set[int] = set()
        self.health: dict | None = None
        self.stop_seconds: float | None = None
        self.exit_code: int | None = None

    # --- lifecycle ---

    def start(self) -> "Sfu":
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        RUNNING.append(self)
        try:
            self._wait_healthy()
        except BaseException as e:
            problems = self.stop()
            raise AssertionError(f"{e}; stopping it: {problems or 'ok'}; log:\n{self.log_text()}") from None
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last = "no answer"
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} while starting")
            try:
                r = self.get("/healthz", timeout=2)
                last = f"{r.status} {r.body.strip()[:300]}"
                if r.status == 200:
                    h = json.loads(r.body)
                    if h.get("ok") and len(h.get("workers", [])) == self.workers and all(
                        w.get("pid") for w in h["workers"]
                    ):
                        self._note_children(h)
                        return
            except (OSError, ValueError) as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not healthy after {STARTUP_TIMEOUT:.0f} s (last /healthz: {last})")
            time.sleep(0.05)  # polling interval of a deadline loop

    def _note_children(self, h: dict) -> None:
        self.health = h
        for part in ("signaling", "ingest"):
            if isinstance(h.get(part), dict) and h[part].get("pid"):
                self.child_pids.add(int(h[part]["pid"]))
        for w in h.get("workers", []):
            if w.get("pid"):
                self.child_pids.add(int(w["pid"]))

    def stop(self) -> list[str]:
        """SIGTERMs the supervisor; returns the problems seen (it did not exit, children left behind)."""
        problems: list[str] = []
        if self.proc is None:
            return problems
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"supervisor pid {self.proc.pid} still running {STOP_TIMEOUT:.0f} s after SIGTERM")
                self.proc.kill()
                self.proc.wait()
        else:
            problems.append(f"supervisor had already exited with {self.proc.returncode}")
        self.stop_seconds = time.monotonic() - t0
        self.exit_code = self.proc.returncode
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in self.child_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = sorted(p for p in self.child_pids if pid_alive(p))
        for pid in left:
            try:
                name = proc_exe_name(pid)
            except OSError:
                continue
            if name.startswith("deadsfu"):
                problems.append(f"child pid {pid} ({name}) still alive 5 s after the supervisor exited")
                os.kill(pid, signal.SIGKILL)
        self._log.close()
        if self in RUNNING:
            RUNNING.remove(self)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        return problems

    def log_text(self, limit: int = 60000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        if len(data) > limit:
            data = b"...(cut)...\n" + data[-limit:]
        return data.decode(errors="replace")

    # --- questions ---

    def get(self, path: str, timeout: float = 10) -> Response:
        return http_request(self.url, "GET", path, timeout=timeout)

    def healthz(self) -> dict:
        r = self.get("/healthz")
        assert r.status == 200, f"/healthz: {r.status} {r.body}"
        h = json.loads(r.body)
        self._note_children(h)
        return h

    def ring_path(self, room: str) -> Path:
        return self.runtime_dir / "rings" / f"{room}.ring"

    def ring_stat(self, room: str) -> dict:
        out = subprocess.run(
            [str(RING_TOOL), "stat", str(self.ring_path(room))], capture_output=True, text=True, timeout=10
        )
        assert out.returncode == 0, f"deadsfu-ring stat failed ({out.returncode}): {out.stderr}"
        return json.loads(out.stdout)

    def rooms(self, wait: int | None = None, timeout: float = 10) -> tuple[Response, dict | None]:
        """`GET /rooms` (long-polling with `?wait=N`); the response and its JSON body (None if not JSON)."""
        path = "/rooms" if wait is None else f"/rooms?wait={wait}"
        r = self.get(path, timeout=timeout)
        try:
            return r, json.loads(r.body)
        except ValueError:
            return r, None

    def with_token(self, path: str, token: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{path}{sep}access_token={urllib.parse.quote(token)}"
