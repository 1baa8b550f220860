"""Child processes for the benchmark and the soak: started on loopback, always cleaned up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from services.ops.logs import logged_exceptions

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
_URL = re.compile(rb"http://127\.0\.0\.1:(\d+)")
_PR_SET_PDEATHSIG = 1
# What no server log may hold: a traceback, and asyncio's or aiohttp's words for an error no code
# handled (a task or future exception never retrieved, a task destroyed pending, an unclosed session).
_LOST_IN_LOG = ("Traceback", "never retrieved", "destroyed but it is pending", "Unclosed")


def lost_in_log(text: str) -> dict[str, int]:
    """How often each sign of an unhandled error appears in a process's output: the markers above
    (Python's own, printed outside logging) and the server's one-line logged exceptions."""
    found = {marker: text.count(marker) for marker in _LOST_IN_LOG if marker in text}
    exceptions = logged_exceptions(text)
    if exceptions:
        found["logged exception"] = exceptions
    return found


def raise_nofile(wanted: int = 16384) -> int:
    """Raise this process's open-file limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child, before exec (Linux): `sig` when the *thread* that started it ends (PR_SET_PDEATHSIG),
    which its whole process dying, even by SIGKILL, includes.

    Not the process: a child started from another thread (an executor's, `asyncio.to_thread`) gets
    `sig` as soon as that thread exits, however long the process lives on. Start children from a
    thread that lives as long as they should: the main thread, or the event loop's."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))


@dataclass
class Child:
    """One started process, its log file and the loopback port it announced."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Children:
    """Starts processes and stops every one of them on exit, whatever ended the block."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="iss-llm-bench-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        ready_timeout: float = 20.0,
        cwd: Path = ROOT,
        port: int | None = None,
    ) -> Child:
        """Start `argv` and wait until it listens: on `port`, or on the http://127.0.0.1:PORT it prints."""
        child = self.spawn(name, argv, env, cwd, port)
        self.wait_ready(child, ready_timeout)
        return child

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        port: int | None = None,
    ) -> Child:
        """Start `argv` without waiting for it to listen (`wait_ready` does that).

        From a thread that lives as long as the child should (the main thread, or the event loop's in
        async code, never `asyncio.to_thread`): the child gets SIGTERM when the thread that started
        it ends (`die_with_parent`). `wait_ready` blocks, and may run in any thread."""
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, so a Ctrl-C in the terminal reaches only us and we stop it
                # in order; not its own session: with sched_autogroup (Debian's default) each
                # session is one CPU share, so a server's forked workers would share one core's
                # worth between them whatever their number, and the bench would measure that.
                process_group=0,
                preexec_fn=die_with_parent,
            )
        child = Child(name, popen, log_path, port or 0)
        self.children.append(child)
        return child

    def wait_ready(self, child: Child, timeout: float = 20.0) -> None:
        """Until `child` listens: on the port it was started with, or on the one it prints."""
        if child.port:
            self._wait_listening(child, timeout)
        else:
            child.port = self._wait_port(child, timeout)

    @staticmethod
    def _wait_listening(child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", child.port), timeout=1.0):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{child.name} did not listen on {child.port} in {timeout}s:\n{child.log_tail()}")

    @staticmethod
    def _wait_port(child: Child, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
            match = _URL.search(child.log_path.read_bytes())
            if match:
                return int(match.group(1))
            time.sleep(0.05)
        raise RuntimeError(f"{child.name} did not announce its port in {timeout}s:\n{child.log_tail()}")

    def stop(self, child: Child, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` to it and its process group (a server's workers);
        returns the exit code."""
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                child.popen.send_signal(signal.SIGTERM)
            try:
                child.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                # Not reaped yet, so the group (led by its pid) is still this child's.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.popen.wait(5)
        return child.popen.returncode

    def terminate_now(self) -> None:
        """SIGTERM to every child still running, without waiting (safe in a signal handler)."""
        for child in self.children:
            if child.popen.returncode is None:
                with contextlib.suppress(ProcessLookupError, OSError):
                    child.popen.send_signal(signal.SIGTERM)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                self.stop(child, timeout=5.0)


def fake_upstream_argv(tokens: int = 20, gap: float = 0.0, first_token_delay: float = 0.0) -> list[str]:
    """The fake OpenAI upstream (tests/fakes/openai_upstream.py) on a free loopback port."""
    return [
        PYTHON, "-m", "tests.fakes.openai_upstream", "--port", "0", "--tokens", str(tokens),
        "--gap", str(gap), "--first-token-delay", str(first_token_delay),
    ]


def relay_argv(upstream_url: str) -> list[str]:
    return [PYTHON, "-m", "bench.relay", "--port", "0", "--upstream", upstream_url]


def tornado_relay_argv(upstream_url: str) -> list[str]:
    return [PYTHON, "-m", "bench.tornado_relay", "--port", "0", "--upstream", upstream_url]


def relay_main(
    serve: Callable[[int, str], Coroutine[Any, Any, None]], description: str, default_port: int
) -> None:
    """The command line of a relay child (bench.relay, bench.tornado_relay): `--port` and `--upstream`, as
    relay_argv and tornado_relay_argv pass them; `serve` runs until interrupted."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9100")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.upstream))
    except KeyboardInterrupt:
        pass


def free_port() -> int:
    """A loopback port nothing listens on right now (for a child that does not print its port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_argv(port: int) -> list[str]:
    return [PYTHON, "server.py", "--host", "127.0.0.1", "--port", str(port)]


def server_env(upstream_url: str, cache_dir: Path, **extra: str) -> dict[str, str]:
    """The server against the fake upstream, ISS sources offline (TLE fetch refused on loopback)."""
    env = {
        "LLM_BACKEND": "openai",
        "OPENAI_BASE_URL": f"{upstream_url}/v1",
        "OPENAI_API_KEY": "sk-bench-not-a-real-key",
        "ISS_SOURCES": "tle",
        "TLE_URL": "http://127.0.0.1:9/gp.php",
        "ISS_CACHE_DIR": str(cache_dir),
        "SERVER_API_KEY": "",
        "FALLBACK_REPLY": "",
    }
    env.update(extra)
    return env


def vm_hwm_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in bytes, 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_seconds(process: psutil.Process) -> float:
    """User plus system CPU time of a process so far."""
    times = process.cpu_times()
    return times.user + times.system


@contextlib.contextmanager
def stop_on_signals(kids: Children) -> Iterator[None]:
    """On SIGINT (Ctrl-C) or SIGTERM: signal every child to stop at once, then interrupt the run.

    Our own handler rather than asyncio's: asyncio turns Ctrl-C into a task cancellation, which
    code in the middle of a wait can swallow; a KeyboardInterrupt cannot be.
    """

    def interrupt(signum: int, frame: object) -> None:
        kids.terminate_now()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
