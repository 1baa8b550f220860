"""Worker processes sharing one set of listening sockets: started, restarted when they die, drained together.

The parent binds the sockets, then forks; it never runs an event loop (a loop must not cross a
fork). Each worker runs the whole server on the inherited sockets, so the kernel spreads new
connections over the workers. SIGTERM or SIGINT to the parent: it stops accepting (closes its copy
of the sockets) and passes SIGTERM on, so every worker drains its streams as one server does; a
second signal is passed on too (each worker then ends its remaining streams at once), once the
worker has taken the first: standard signals do not queue, two pending at once are one. A worker
still running `stop_timeout` seconds after the first signal (hung, or deaf to SIGTERM) is killed,
and the parent exits 1. A worker that dies otherwise is replaced, with a growing pause when
replacements keep dying young.

The watchdog (gunicorn's worker timeout): each worker's event loop beats (services/ops/heartbeat);
one silent for `worker_timeout` seconds while serving (stuck in a blocking call, an endless loop,
SIGSTOP) is killed with SIGKILL and replaced: its keep-alive callers see their connections close
instead of waiting forever. The requests a dead worker had open at its last beat go to the worker
that takes its place, which counts them as `lost` and closes them in the console.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.ops.heartbeat import Heartbeat, Lost, beat_interval, read_beat

log = logging.getLogger("iss_llm.workers")

POLL_S = 0.1
YOUNG_S = 10.0  # a worker that dies sooner than this counts towards the back-off
MAX_BACKOFF_S = 30.0
REAP_KILLED_S = 5.0  # how long the parent waits to reap the workers it killed past the stop timeout
BOOT_GRACE_S = 30.0  # a new worker's first beat may take this long (imports, geography), or the timeout if longer
_SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


@dataclass
class Hooks:
    """What the server does around the workers' lives (e.g. metrics' multiprocess directory)."""

    before_fork: Callable[[], None] = lambda: None  # once, in the parent, before the first worker
    worker_exited: Callable[[int], None] = lambda pid: None  # in the parent, with the dead worker's pid


@dataclass
class _Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    young_deaths: int = 0
    restart_at: float = 0.0
    signalled: int = 0  # SIGTERMs sent to this worker
    exits: list[int] = field(default_factory=list)
    beat_seen: tuple[int, int] | None = None  # (inode, mtime in ns) of the last beat seen
    beat_at: float = 0.0  # when (time.monotonic()) a new beat was last seen
    silenced: bool = False  # killed by the watchdog
    lost: Lost | None = None  # what the last worker of this slot left open, for the next one


class Supervisor:
    """Runs `work(index, heartbeat)` in `count` forked workers until a signal asks them all to stop.

    `work` starts with SIGTERM blocked and unblocks it once it handles it (a drain). Workers still
    running `stop_timeout` seconds after the first signal are killed (SIGKILL). `work` calls
    `heartbeat.beat()` from its event loop; with a `worker_timeout`, a worker whose beats stop for
    that long is killed (SIGKILL) and replaced."""

    def __init__(
        self,
        count: int,
        work: Callable[[int, Heartbeat], int],
        sockets: list[socket.socket],
        hooks: Hooks | None = None,
        *,
        stop_timeout: float,
        worker_timeout: float | None = None,
    ) -> None:
        self.count = count
        self.worker_timeout = worker_timeout
        self.beats = Path(tempfile.mkdtemp(prefix="iss-llm-beats-"))
        self.work = work
        self.sockets = sockets
        self.hooks = hooks or Hooks()
        self.stop_timeout = stop_timeout
        self.slots = [_Slot(index) for index in range(count)]
        self._stopping = 0  # signals received
        self._stop_deadline = 0.0  # set when the loop first sees a signal
        self._killed: list[int] = []  # pids killed past the stop timeout
        self.parent_pid = os.getpid()

    def run(self) -> int:
        """Start the workers, keep them running, drain them on a signal; the exit code."""
        # First: a signal from here on (one sent as soon as the start-up line is read) stops cleanly.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        # What the launcher left us must not stop that: SIGTERM held (the mask is inherited through
        # exec) would never reach the handler, and SIGCHLD ignored has the kernel reap the workers,
        # so waitpid never reports them and the parent would wait for them forever.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            return self._run()
        finally:
            if os.getpid() == self.parent_pid:
                shutil.rmtree(self.beats, ignore_errors=True)

    def _run(self) -> int:
        self.hooks.before_fork()
        for slot in self.slots:
            self._start(slot)
        while True:
            self._pass_signals_on()
            self._reap()
            # Stopping once _pass_signals_on has seen a signal (and set the deadline), not from the
            # moment the handler counts one: a signal that comes after it ran (during _reap) would
            # otherwise find no deadline set (0.0, long past) and have every worker killed at once.
            stopping = bool(self._stop_deadline)
            if not stopping:
                self._watch()
            if stopping:
                if not any(slot.pid for slot in self.slots):
                    break
                if time.monotonic() >= self._stop_deadline:
                    self._kill_the_rest()
                    break
            else:
                now = time.monotonic()
                for slot in self.slots:
                    if not slot.pid and now >= slot.restart_at:
                        self._start(slot)
            time.sleep(POLL_S)
        failed = self._killed or any(code != 0 for slot in self.slots for code in slot.exits[-1:])
        log.info("all workers stopped")
        return 1 if failed else 0

    def _on_signal(self, signum: int, frame: object) -> None:
        # Counted only: the loop passes it on. Run here, it could come between a fork and the
        # bookkeeping of its pid (a worker then never asked to stop, and waited for forever).
        self._stopping += 1

    def _pass_signals_on(self) -> None:
        """Each signal received: SIGTERM to every worker on record, one at a time.

        A worker gets the next one only once it has taken the last (none pending in it): sent back
        to back, two would merge into one, and the worker would never see its second signal."""
        if not self._stopping:
            return
        if not self._stop_deadline:
            self._stop_deadline = time.monotonic() + self.stop_timeout
            # No new connections from here on: the workers close their copies as they drain.
            for sock in self.sockets:
                sock.close()
        for slot in self.slots:
            # Not yet reaped, so this pid is still our worker's (dead or alive).
            if slot.pid and slot.signalled < self._stopping and not sigterm_pending(slot.pid):
                slot.signalled += 1
                try:
                    os.kill(slot.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _kill_the_rest(self) -> None:
        """Past the stop timeout: SIGKILL to every worker not yet reaped (so the pids are still ours),
        then reap them, for a few seconds at most."""
        self._killed = [slot.pid for slot in self.slots if slot.pid]
        log.error(
            "worker pid(s) %s still running %.1fs after the stop signal (past the drain timeout): killing them",
            ", ".join(map(str, self._killed)), self.stop_timeout,
        )
        for pid in self._killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        give_up = time.monotonic() + REAP_KILLED_S
        while any(slot.pid for slot in self.slots) and time.monotonic() < give_up:
            time.sleep(0.01)
            self._reap()

    def _beat_path(self, slot: _Slot) -> Path:
        return self.beats / f"worker-{slot.index}"

    def _watch(self) -> None:
        """The watchdog: a worker whose beat file has not changed for `worker_timeout` seconds (its
        first beat: BOOT_GRACE_S at least) is killed (SIGKILL); _reap then replaces it."""
        if self.worker_timeout is None:
            return
        now = time.monotonic()
        for slot in self.slots:
            if not slot.pid or slot.silenced:
                continue
            try:
                stat = self._beat_path(slot).stat()
                seen: tuple[int, int] | None = (stat.st_ino, stat.st_mtime_ns)
            except OSError:
                seen = None  # no beat yet: still starting
            if seen is not None and seen != slot.beat_seen:
                slot.beat_seen, slot.beat_at = seen, now
                continue
            allowed = self.worker_timeout if slot.beat_seen is not None else max(self.worker_timeout, BOOT_GRACE_S)
            silent = now - (slot.beat_at if slot.beat_seen is not None else slot.started)
            if silent < allowed:
                continue
            slot.silenced = True
            log.error("worker %d (pid %d) silent for %.1fs (WORKER_TIMEOUT=%gs): killing it (SIGKILL) to start "
                      "another", slot.index, slot.pid, silent, self.worker_timeout)
            try:
                os.kill(slot.pid, signal.SIGKILL)  # not yet reaped: the pid is still our worker's
            except ProcessLookupError:
                pass

    def _start(self, slot: _Slot) -> None:
        # Blocked across the fork, so the worker is born with SIGTERM held until `work` can drain on
        # it (it unblocks SIGTERM then): one arriving while the worker starts, even before fork()
        # returns in it, would otherwise run the parent's handler there or kill it (the parent
        # would exit 1). The parent takes its own mask back at once.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            # Checked with the signals held (a handler due runs inside the call above): none can
            # come between this check and the fork, so no worker starts once a signal was received.
            if self._stopping:
                return
            beat = self._beat_path(slot)
            beat.unlink(missing_ok=True)  # the worker's first beat makes it anew
            heartbeat = Heartbeat(beat, beat_interval(self.worker_timeout), inherited=slot.lost)
            pid = os.fork()
        finally:
            if os.getpid() == self.parent_pid:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                # Ctrl-C reaches the whole process group: the parent alone turns it into one SIGTERM.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                code = self.work(slot.index, heartbeat)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d failed", slot.index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        slot.pid = pid
        slot.signalled = 0
        slot.started = time.monotonic()
        slot.beat_seen, slot.silenced, slot.lost = None, False, None
        log.info("worker %d started (pid %d)", slot.index, pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            slot.pid = 0
            slot.exits.append(code)
            self.hooks.worker_exited(pid)
            lost = read_beat(self._beat_path(slot), pid)
            if lost.count:
                log.warning("worker %d (pid %d) ended with %d request(s) open: lost", slot.index, pid, lost.count)
                slot.lost = lost  # the next worker of this slot counts them and closes them in the console
            if self._stopping:
                log.info("worker %d (pid %d) stopped, exit %d", slot.index, pid, code)
                continue
            lived = time.monotonic() - slot.started
            slot.young_deaths = slot.young_deaths + 1 if lived < YOUNG_S else 0
            delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (slot.young_deaths - 1)) if slot.young_deaths else 0.0
            slot.restart_at = time.monotonic() + delay
            how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
            log.warning(
                "worker %d (pid %d) died (%s) after %.1fs; starting another%s",
                slot.index, pid, how, lived, f" in {delay:.1f}s" if delay else "",
            )


def sigterm_pending(pid: int) -> bool:
    """A SIGTERM sent to this process has not been taken yet (it is blocked, or the process has not
    run since). False where /proc cannot tell (the signals then go one per turn of the loop)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split(":", 1)[1], 16) & _SIGTERM_BIT:
            return True
    return False
