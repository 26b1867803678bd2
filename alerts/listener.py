"""The alert listener: one worker per sink, each reading from its own stored position, so a sink
that is down holds back neither the others nor the database; a NOTIFY wakes them all."""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import psycopg

from alerts.sinks import DeliveryError, Sink
from alerts.sources import AlertViewMissing, Batch, SinkBusy, check_postgres, connect, make_reader
from sentinel.errors import one_line
from sentinel.schema import detect_engine

log = logging.getLogger("alerts")

CHANNEL = "sentinel_alerts"


def backoff_delay(attempt: int, *, base: float = 0.2, cap: float = 30.0,
                  rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: uniform in [c/2, c], c = min(cap, base * 2**attempt)."""
    ceiling = min(cap, base * (2 ** min(attempt, 32)))
    return (rng or random).uniform(ceiling / 2, ceiling)


class Episodes:
    """Logs a fault once when it starts and once when it ends, however often it is retried."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._open: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def fault(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._open:
                started, count = self._open[key]
                self._open[key] = (started, count + 1)
                return
            self._open[key] = (time.monotonic(), 1)
        self._log.warning("%s; retrying", message)

    def clear(self, key: str, message: str) -> None:
        with self._lock:
            episode = self._open.pop(key, None)
        if episode is not None:
            started, count = episode
            self._log.warning("%s after %.1f s (%d retries)", message, time.monotonic() - started, count)


@dataclass
class SinkStats:
    """What the console shows per sink."""

    sink: str
    kind: str
    position: object = None
    delivered: int = 0
    retries: int = 0
    head: int | None = None
    lag_seq: int | None = None
    lag_seconds: float = 0.0
    failing: str | None = None
    last_delivery_at: float | None = None


class SinkWorker(threading.Thread):
    """Reads, delivers, acknowledges — for one sink, until stopped."""

    def __init__(self, listener: Listener, sink: Sink) -> None:
        super().__init__(name=f"alerts-{sink.name}", daemon=True)
        self.listener = listener
        self.sink = sink
        self.wake = threading.Event()
        self.reader = make_reader(listener.engine, listener.dsn, sink.name, sink.kind,
                                  from_now=listener.from_now, wake=self.wake)
        self.stats = SinkStats(sink=sink.name, kind=sink.kind)
        self._oldest_pending: datetime | None = None
        self._unacked: Batch | None = None

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._loop()
        finally:
            self.sink.close()
            self.reader.close()

    def _loop(self) -> None:
        stop = self.listener.stop_event
        db_attempt = 0
        while not stop.is_set():
            try:
                if self._unacked is not None:
                    self._ack(self._unacked)
                batch = self.reader.read(limit=self.listener.batch_size, wait=self.listener.poll_interval)
                if db_attempt:  # only a fresh connection ends the episode, not an old one that lingers
                    db_attempt = 0
                    self.listener.episodes.clear("database", "database reachable again")
            except psycopg.Error as exc:
                self.reader.reset()
                self.listener.episodes.fault("database", _db_problem(exc))
                db_attempt += 1
                stop.wait(backoff_delay(db_attempt, base=0.1, cap=5.0))
                continue
            except AlertViewMissing as exc:
                self.listener.episodes.fault(f"missing:{self.sink.name}", str(exc))
                stop.wait(2.0)
                continue
            except SinkBusy as exc:  # after a reconnect another listener took the sink: stand by
                self.listener.episodes.fault(f"busy:{self.sink.name}", str(exc))
                stop.wait(1.0)
                continue
            except Exception as exc:  # e.g. a change-log row that does not decode: keep the others going
                self.reader.reset()
                self.listener.episodes.fault(f"read:{self.sink.name}", f"sink {self.sink.name} cannot read "
                                             f"the change log ({type(exc).__name__}: {one_line(exc)})")
                db_attempt += 1
                stop.wait(backoff_delay(db_attempt, base=0.5, cap=30.0))
                continue
            self.listener.episodes.clear(f"read:{self.sink.name}", f"sink {self.sink.name} reading again")
            self.listener.episodes.clear(f"busy:{self.sink.name}", f"sink {self.sink.name} taken over")
            if batch is None:
                self._note_caught_up()
                continue
            self._oldest_pending = batch.oldest_at
            if batch.head is not None:
                self.stats.head = batch.head
            if batch.alerts and not self._deliver(batch):
                return  # stopping with the batch undelivered: it is read again next time
            self._unacked = batch
            try:
                self._ack(batch)
            except psycopg.Error as exc:
                self.reader.reset()
                self.listener.episodes.fault("database", _db_problem(exc))
                stop.wait(backoff_delay(1, base=0.1, cap=5.0))

    def _ack(self, batch: Batch) -> None:
        self.reader.ack(batch)
        self._unacked = None
        self._oldest_pending = None
        self.stats.position = self.reader.position
        self.stats.delivered = self.reader.delivered
        self.stats.last_delivery_at = time.time()

    def _deliver(self, batch: Batch) -> bool:
        """Deliver the whole batch, retrying with backoff; False when asked to stop first."""
        stop = self.listener.stop_event
        alerts = batch.alerts
        done, attempt = 0, 0
        key = f"sink:{self.sink.name}"
        while done < len(alerts):
            try:
                self.sink.deliver(alerts[done:])
                done = len(alerts)
            except DeliveryError as exc:
                done += exc.done
                attempt += 1
                self.stats.retries += 1
                self.stats.failing = str(exc)
                self.listener.episodes.fault(key, f"sink {self.sink.name} failing: {exc}")
            except Exception as exc:  # a bug in a sink must not kill the others
                attempt += 1
                self.stats.retries += 1
                self.stats.failing = one_line(exc)
                self.listener.episodes.fault(
                    key, f"sink {self.sink.name} failing: {type(exc).__name__}: {one_line(exc)}")
            else:
                break
            if stop.wait(backoff_delay(attempt, base=self.listener.retry_base, cap=self.listener.retry_cap)):
                return False
        self.stats.failing = None
        self.listener.episodes.clear(key, f"sink {self.sink.name} delivering again")
        return True

    def _note_caught_up(self) -> None:
        if self._unacked is None:
            self._oldest_pending = None
            if isinstance(self.reader.position, int):
                self.stats.position = self.reader.position
                if self.stats.head is None or self.stats.head < self.reader.position:
                    self.stats.head = self.reader.position

    def snapshot(self) -> SinkStats:
        stats = SinkStats(**asdict(self.stats))
        if self.listener.head is not None and (stats.head is None or self.listener.head > stats.head):
            stats.head = self.listener.head
        if isinstance(stats.head, int) and isinstance(stats.position, int):
            stats.lag_seq = max(stats.head - stats.position, 0)
        if self._oldest_pending is not None:
            stats.lag_seconds = max((datetime.now(timezone.utc) - self._oldest_pending).total_seconds(), 0.0)
        return stats


class Notifier(threading.Thread):
    """LISTEN on the change-log channel and wake every worker; reconnects after faults."""

    def __init__(self, listener: Listener) -> None:
        super().__init__(name="alerts-notifier", daemon=True)
        self.listener = listener

    def run(self) -> None:
        stop = self.listener.stop_event
        attempt = 0
        while not stop.is_set():
            try:
                with connect(self.listener.dsn, application_name="sentinel-alerts-listen") as conn:
                    conn.execute(f"listen {CHANNEL}")
                    if attempt:
                        attempt = 0
                        self.listener.episodes.clear("database", "database reachable again")
                    self.listener.wake_all()  # anything committed while we were not listening
                    while not stop.is_set():
                        for notify in conn.notifies(timeout=0.5, stop_after=1):
                            self.listener.note_head(notify.payload)
                            self.listener.wake_all()
            except Exception as exc:  # noqa: BLE001 - workers poll without us; keep trying to listen
                message = _db_problem(exc) if isinstance(exc, psycopg.Error) else (
                    f"cannot listen for alerts ({type(exc).__name__}: {one_line(exc)})")
                self.listener.episodes.fault("database", message)
                attempt += 1
                stop.wait(backoff_delay(attempt, base=0.1, cap=5.0))


class Listener:
    """Pushes every change of the alert view to every sink, at least once, from stored positions.

    `run(stop_event)` blocks until the event is set; `start()`/`stop()` run it in the background."""

    def __init__(self, dsn: str, sinks: Sequence[Sink], *, from_now: bool = False,
                 batch_size: int = 1000, poll_interval: float = 1.0, retry_base: float = 0.2,
                 retry_cap: float = 30.0, engine: str | None = None) -> None:
        if not sinks:
            raise ValueError("at least one sink is needed")
        names = [sink.name for sink in sinks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"two sinks share the name {duplicates[0]!r}: name them NAME=SPEC")
        self.dsn = dsn
        self.sinks = list(sinks)
        self.from_now = from_now
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.episodes = Episodes()
        self.stop_event = threading.Event()
        self.engine = engine or self._detect_engine()
        self.workers = [SinkWorker(self, sink) for sink in self.sinks]
        self.head: int | None = None
        self._threads: list[threading.Thread] = []

    def _detect_engine(self) -> str:
        with connect(self.dsn) as conn:
            return detect_engine(conn)

    def open(self) -> list[str]:
        """Check the engine and register every sink (raises AlertViewMissing); returns warnings."""
        warnings: list[str] = []
        try:
            for worker in self.workers:
                worker.reader.open()
        except BaseException:
            for worker in self.workers:
                worker.reader.close()
            raise
        for worker in self.workers:
            if worker.reader.created:
                start = "now" if self.from_now else "the start of the change log"
                log.info("new sink %s: delivering from %s (position %s)", worker.sink.name, start,
                         worker.reader.position)
            else:
                log.info("sink %s resumes after position %s", worker.sink.name, worker.reader.position)
            worker.stats.position = worker.reader.position
            worker.stats.delivered = worker.reader.delivered
        if self.engine == "postgres":
            with connect(self.dsn) as conn:
                warnings = check_postgres(conn)
                self.note_head(conn.execute(
                    "select coalesce(max(seq), 0) from sentinel_alerts.change_log").fetchone()[0])
        return warnings

    def note_head(self, payload: str | int | None) -> None:
        """Remember the newest change-log seq announced (NOTIFY payload), for the lag figures."""
        try:
            seq = int(payload)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        if self.head is None or seq > self.head:
            self.head = seq

    def wake_all(self) -> None:
        for worker in self.workers:
            worker.wake.set()

    def start(self) -> None:
        """Run in background threads (after open())."""
        self.stop_event.clear()
        self._threads = list(self.workers)
        if self.engine == "postgres":
            self._threads.append(Notifier(self))
        for thread in self._threads:
            thread.start()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop and wait for the workers (an undelivered batch is redelivered next time)."""
        self.stop_event.set()
        self.wake_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.1))

    def run(self, stop_event: threading.Event | None = None, *,
            on_stats: Callable[[list[SinkStats]], None] | None = None, stats_interval: float = 10.0) -> None:
        """Open, then serve until `stop_event` is set (or forever)."""
        self.open()
        self.serve(stop_event, on_stats=on_stats, stats_interval=stats_interval)

    def serve(self, stop_event: threading.Event | None = None, *,
              on_stats: Callable[[list[SinkStats]], None] | None = None, stats_interval: float = 10.0) -> None:
        """Start (after open()), pass the stats to `on_stats` every `stats_interval` s until
        `stop_event` is set (or forever), then stop and pass them once more."""
        self.start()
        external = stop_event or threading.Event()
        try:
            while not external.wait(stats_interval):
                if on_stats is not None:
                    on_stats(self.stats())
        finally:
            self.stop()
            if on_stats is not None:
                on_stats(self.stats())

    def stats(self) -> list[SinkStats]:
        """A snapshot of every sink's figures."""
        return [worker.snapshot() for worker in self.workers]


def _db_problem(exc: psycopg.Error) -> str:
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return f"database unreachable ({one_line(exc)})"
    return f"database error ({type(exc).__name__}: {one_line(exc)})"


