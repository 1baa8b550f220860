"""The process: main() reads the settings, listens, runs one process or supervised workers, and drains.

The application itself is built in app.py (the composition root).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets

from app import make_app, make_server
from config import ConfigError, Settings, load_settings
from services.ops import logs
from services.ops import metrics as metrics_multiprocess
from services.ops.connections import raise_open_file_limit
from services.ops.heartbeat import Heartbeat
from services.ops.redaction import install_log_sanitizer
from services.ops.supervisor import Hooks, Supervisor

log = logging.getLogger("iss_llm")


async def serve(
    settings: Settings, sockets: list[socket.socket] | None = None, parent: int | None = None,
    heartbeat: Heartbeat | None = None,
) -> int:
    """Listen until SIGTERM or SIGINT, then stop accepting and let in-flight streams finish.

    A worker (`parent` set) serves the sockets its parent bound, leaves the start-up messages to
    the parent, listens for SIGTERM alone, and drains as well when its parent goes away. Its event
    loop beats to the parent's watchdog (`heartbeat`) from the start to the end.
    """
    app = make_app(settings)
    services = app.services
    server = make_server(app, settings)
    if sockets is None:
        try:
            sockets = bind_sockets(settings.port, settings.host)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror or exc)
            await services.close()
            return 1
    # Before anything is started or announced: a SIGTERM from here on drains and stops cleanly (a
    # supervisor may send one as soon as it reads the start-up line, or while the start waits on Redis).
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: ending the remaining streams now")
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM,) if parent is not None else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a worker starts with it held
    pulse = None
    if heartbeat is not None:
        def beat() -> None:
            heartbeat.beat(services.inflight.open_requests(), services.inflight.count)

        beat()
        pulse = PeriodicCallback(beat, heartbeat.interval * 1000)  # driven by this loop: stuck, it stops
        pulse.start()
    await services.start()
    if heartbeat is not None and heartbeat.inherited is not None:
        services.close_lost(heartbeat.inherited)
    # Start-up objects (modules, geography, the app) never die: move them out of the collector's
    # sight so full collections scan only what requests create. Raising the thresholds as well
    # bought throughput in bench/ but let cyclic garbage pile up (the soak's RSS grew 13%).
    gc.collect()
    gc.freeze()
    if stop.is_set():
        # Signalled while starting: never open for requests or announce a server about to stop.
        log.info("a signal came while starting: stopping without serving")
    else:
        server.add_sockets(sockets)
        if parent is None:
            announce(settings, sockets[0].getsockname()[1], services.console_token, backend_line(settings))
        else:
            log.info("worker %d serving (backend: %s)", os.getpid(), services.backend.name)
    cap = services.connections.max
    open_files, open_files_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.info("connections: at most %d open in this process (MAX_CONNECTIONS=%d%s; open-file limit %d, hard %d)",
             cap, settings.max_connections,
             ", lowered to fit the open-file limit" if cap < settings.max_connections else "", open_files,
             open_files_hard)

    orphan_watch = None
    if parent is not None:
        def check_parent() -> None:
            if os.getppid() != parent and not stop.is_set():
                log.warning("the parent process is gone: draining")
                stop.set()

        orphan_watch = PeriodicCallback(check_parent, 1000)
        orphan_watch.start()
    await stop.wait()
    if orphan_watch is not None:
        orphan_watch.stop()

    inflight = services.inflight
    log.info("shutting down: no new connections, %d stream(s) in flight", inflight.count)
    inflight.draining = True
    server.stop()
    await services.drain()
    idle = asyncio.ensure_future(inflight.wait_idle(settings.drain_timeout))
    hurried = asyncio.ensure_future(hurry.wait())
    await asyncio.wait({idle, hurried}, return_when=asyncio.FIRST_COMPLETED)
    hurried.cancel()
    if not (idle.done() and idle.result()):
        idle.cancel()
        log.warning("drain ended with %d stream(s) still open: ending them with an error event", inflight.count)
        inflight.end_all()
        await inflight.wait_idle(2.0)
    await server.close_all_connections()
    await services.close()
    if pulse is not None and heartbeat is not None:
        pulse.stop()
        heartbeat.beat(services.inflight.open_requests(), services.inflight.count)  # none open, or what was lost
    log.info("stopped")
    return 0


def env_file_line(settings: Settings, cwd: Path, here: Path) -> str:
    """Which .env the settings came from, or where none was found: for the start-up messages."""
    if settings.env_file is not None:
        return f"settings: read {settings.env_file} (then the environment, which wins)"
    places = [str(cwd / ".env")] + ([str(here / ".env")] if here != cwd.resolve() else [])
    return f"settings: no .env file read (looked for {' and '.join(places)}); the environment only"


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop EVENT_LOOP asks for: uvloop's (`auto`: when it is installed), else asyncio's (None)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("EVENT_LOOP=uvloop, but uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def run_loop(settings: Settings, main: Coroutine[Any, Any, int]) -> int:
    """Run `main` to its end on the event loop EVENT_LOOP chose (asyncio.Runner, as asyncio.run does)."""
    factory = loop_factory(settings.event_loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def backend_line(settings: Settings) -> str:
    """Which backend answers and why, for the start-up line: "openai at host:port, because ..."."""
    from services.upstream.openai_upstream import upstream_host

    use_openai, why = settings.backend_choice
    if not use_openai:
        return f"builtin offline responder, because {why}"
    return f"openai at {upstream_host(settings.openai_base_url or 'https://api.openai.com/v1')}, because {why}"


def announce(settings: Settings, port: int, console_token: str, backend: str, workers: int = 1) -> None:
    """The start-up messages: where the server listens, a loud warning when it is open, the console URL."""
    host_for_url = "127.0.0.1" if settings.host in {"0.0.0.0", "::", ""} else settings.host
    base = f"http://{host_for_url}:{port}"
    loop = "uvloop" if loop_factory(settings.event_loop) is not None else "asyncio"
    log.info("listening on %s (backend: %s%s; event loop: %s)", base, backend,
             f", {workers} workers" if workers > 1 else "", loop)
    if settings.listens_beyond_loopback and not settings.server_api_key:
        log.warning(
            "!!! listening on %s beyond loopback WITHOUT SERVER_API_KEY: anyone who can reach this "
            "port can use your upstream LLM. Set SERVER_API_KEY. !!!",
            settings.host,
        )
    if settings.console_enabled:
        # Printed, never logged: the token opens a page that shows every conversation.
        print(f"Console: {base}/console?token={console_token}", flush=True)


# ---- several workers (issue 11) ----------------------------------------------------------------


def before_workers(settings: Settings) -> None:
    """Once, in the parent, before the first worker forks: process-wide setup every worker inherits
    (prometheus_client's multiprocess mode sets and empties PROMETHEUS_MULTIPROC_DIR here). No event
    loop may run here: one must not cross a fork."""
    if settings.metrics_enabled:
        path = metrics_multiprocess.prepare_multiprocess()
        log.info("metrics: %s workers write to %s; any worker's /metrics answers for all", settings.worker_count,
                 path)


def worker_exited(settings: Settings, pid: int) -> None:
    """In the parent, after a worker ended (prometheus_client: multiprocess.mark_process_dead(pid))."""
    if settings.metrics_enabled:
        metrics_multiprocess.worker_exited(pid)


# What a worker may take past DRAIN_TIMEOUT once asked to stop: giving up the ISS lease, ending the
# streams still open (2 s), closing its Redis links (each command bounded by 1 s), or finishing a
# start that waits on Redis. Past DRAIN_TIMEOUT plus this, the parent kills the workers still
# running (hung, or deaf to SIGTERM) and exits 1.
STOP_MARGIN_S = 10.0


def run_workers(settings: Settings, count: int) -> int:
    """Bind once, fork `count` workers on the shared sockets, restart the ones that die, drain on SIGTERM."""
    # Every worker must accept the same console URL and cookie (an HMAC of this token).
    settings = settings.with_overrides(console_token=settings.console_token or secrets.token_urlsafe(24))
    try:
        sockets = bind_sockets(settings.port, settings.host)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    parent = os.getpid()

    def before_fork() -> None:  # the supervisor's signal handlers are in place
        announce(settings, sockets[0].getsockname()[1], settings.console_token or "", backend_line(settings), count)
        if not settings.redis_url:
            # Logged once, here in the parent: the workers share nothing without Redis.
            log.warning(
                "%d workers without REDIS_URL: each worker's console shows only the requests that worker served, "
                "and each worker polls the ISS sources itself (%d times the polls on Open Notify, wheretheiss.at "
                "and CelesTrak). Set REDIS_URL for one console and one poller.", count, count,
            )
        before_workers(settings)

    def work(index: int, heartbeat: Heartbeat) -> int:
        code = run_loop(settings, serve(settings, sockets, parent=parent, heartbeat=heartbeat))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return code

    supervisor = Supervisor(
        count, work, sockets,
        Hooks(before_fork=before_fork, worker_exited=lambda pid: worker_exited(settings, pid)),
        stop_timeout=settings.drain_timeout + STOP_MARGIN_S,
        worker_timeout=settings.worker_timeout,
    )
    chosen_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    try:
        return supervisor.run()
    finally:
        made_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if os.getpid() == parent and made_dir and not chosen_dir:
            metrics_multiprocess.cleanup_multiprocess(made_dir)  # a temporary one of ours


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    try:
        settings = load_settings(argv, beside=here)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        loop_factory(settings.event_loop)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    workers = settings.worker_count
    logs.configure(settings.log_format, settings.log_level,
                   secrets=(settings.openai_api_key, settings.server_api_key, settings.console_token),
                   with_pid=workers > 1)
    install_log_sanitizer()  # one line per record, whatever an upstream or a caller put in it
    log.info("%s", env_file_line(settings, Path.cwd(), here))
    # Before any worker forks: the soft open-file limit (often 1,024) is what callers would meet.
    raise_open_file_limit()
    if workers > 1:
        code = run_workers(settings, workers)
    else:
        if settings.metrics_enabled and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # The client reads this variable at import: one process uses the directory too, so it is
            # emptied here as it is for workers (an earlier run's counts would add to this one's).
            metrics_multiprocess.prepare_multiprocess()
        code = run_loop(settings, serve(settings))
    # asyncio restores the default handlers as its loop closes: a late signal must not turn a clean
    # shutdown into death by signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(main())
