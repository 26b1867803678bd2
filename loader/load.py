"""`load()`: pace rows from a source into a Writer, report progress, flush on Ctrl-C."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

from loader.replay import Rejects
from loader.schema import INDEX
from loader.writer import Writer
from sentinel import signals

EVENT_TIME = INDEX["event_time"]
AGAIN = ("error: interrupted again: stopped without waiting for the last rows read to reach the database "
         "(some of them may not be in it)")


@dataclass
class Progress:
    """A snapshot for the live progress line."""

    read: int
    sent: int
    inserted: int
    rejected: int
    elapsed_s: float
    rate: float
    lag_s: float


@dataclass
class LoadSummary:
    """What a load did. `read` counts every record taken from the source, the rejected ones
    included (loaded + rejected + duplicates == read once the load ends); `duplicates` is None
    where the engine cannot tell."""

    read: int = 0
    loaded: int = 0
    rejected: int = 0
    duplicates: int | None = 0
    sent: int = 0
    batches: int = 0
    retries: int = 0
    resent: int = 0
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    max_lag_s: float = 0.0
    interrupted: bool = False
    dialect: str = "postgres"
    peak_rss_mb: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


class StopSignals(signals.StopSignals):
    """Ctrl-C (SIGINT) and SIGTERM as a request to stop, for `load(stop=...)`: while in effect (a
    context manager; the main thread only), their handler just records the signal, and `load()`
    stops reading at its next row or list, sends what it read and returns a summary marked
    `interrupted`. A KeyboardInterrupt raised wherever the main thread happens to be can be lost:
    code that a C extension calls back may swallow it (numpy.random's Cython module init registers
    a type under a bare `except: pass`; a Ctrl-C there, as the generator started, left the loader
    streaming with no end), and one landing inside a lock's or a queue's bookkeeping can leave it
    held. A second signal ends the process at once, exit 130, with one line saying so: what was
    still being sent may not all be in the database. (`sentinel.signals.StopSignals`, with this
    second line.)
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("again", AGAIN)
        super().__init__(**kwargs)


_NO_STOP = StopSignals()  # never entered: its signum stays None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    VmHWM from /proc where available: getrusage's ru_maxrss also carries the parent's peak
    across fork + exec, which would blame the loader for its caller's memory.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(
    rows: Iterable[tuple],
    writer: Writer,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    duration_s: float | None = None,
    rejects: Rejects | None = None,
    progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = 0.25,
    batched: bool = False,
    stop: StopSignals | None = None,
) -> LoadSummary:
    """Send `rows` through `writer` (closed at the end), at `rate` rows/s or `speedup`× their own
    event times.

    Ctrl-C stops reading, flushes what was read, and returns a summary marked `interrupted`;
    nothing read is lost. Ctrl-C is a KeyboardInterrupt, or, with `stop` (a `StopSignals` in
    effect), the signal it recorded, checked after each row or list. Rows are what `Writer.write` takes (tuples, or
    COPY text lines; `speedup` needs tuples, for their event times). With `batched`, `rows`
    yields lists of rows, as `loader.generator.generate_batches` does.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    if speedup is not None and speedup <= 0:
        raise ValueError("speedup must be > 0")
    summary = LoadSummary(dialect=writer.dialect)
    start = time.monotonic()
    deadline = start + duration_s if duration_s is not None else None
    next_report = start + progress_every_s
    first_event: float | None = None
    lag = 0.0
    read = 0
    sleep = time.sleep
    monotonic = time.monotonic
    write = writer.write
    stop = stop or _NO_STOP
    try:
        if stop.signum is not None:
            rows = ()  # stopped while the command was starting: nothing to read
        if rate is None and speedup is None:
            read = _unpaced(rows, writer, deadline, progress, progress_every_s, rejects, start, batched, stop)
            rows = ()
        elif batched:
            rows = (row for batch in rows for row in batch)  # paced: one row at a time
        for row in rows:  # paced
            now = monotonic()
            if deadline is not None and now >= deadline:
                break
            if rate is not None:
                target = start + read / rate
            else:
                event = row[EVENT_TIME].timestamp()
                if first_event is None:
                    first_event = event
                target = start + max(0.0, event - first_event) / speedup
            if target > now:
                if deadline is not None and target > deadline:
                    break
                # in steps, so that a stop request (which does not end a sleep) is seen soon
                while (wait := target - now) > 0 and stop.signum is None:
                    sleep(min(wait, 0.05))
                    now = monotonic()
            else:
                lag = now - target
                summary.max_lag_s = max(summary.max_lag_s, lag)
            write(row)
            read += 1
            if stop.signum is not None:
                break
            if progress is not None and now >= next_report:
                next_report = now + progress_every_s
                progress(_snapshot(read, writer, rejects, start, now, lag))
    except _Interrupted as exc:
        read = exc.read
        summary.interrupted = True
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.interrupted = summary.interrupted or stop.signum is not None
        summary.read = read
        try:
            writer.close()
        except KeyboardInterrupt:
            summary.interrupted = True
            writer.close()
    end = monotonic()
    stats = writer.stats
    # Ctrl-C between the writer taking rows and the loop counting them: they were read (and sent).
    # `read` is every record taken from the source: those the source itself rejected (bad rows of
    # a replayed file) never reach the writer, so loaded + rejected + duplicates == read.
    unparsed = rejects.count if rejects is not None else 0
    summary.read = max(read, stats.sent) + unparsed
    summary.loaded = stats.inserted
    summary.rejected = stats.rejected + unparsed
    summary.duplicates = stats.duplicates
    summary.sent = stats.sent
    summary.batches = stats.batches
    summary.retries = stats.retries
    summary.resent = stats.resent
    summary.elapsed_s = round(end - start, 3)
    summary.rows_per_s = round(summary.read / (end - start), 1) if end > start else 0.0
    summary.max_lag_s = round(summary.max_lag_s, 3)
    summary.peak_rss_mb = round(peak_rss_mb(), 1)
    if progress is not None:
        progress(_snapshot(read, writer, rejects, start, end, lag))
    return summary


class _Interrupted(Exception):
    def __init__(self, read: int) -> None:
        self.read = read


def _unpaced(rows, writer: Writer, deadline, progress, every: float, rejects, start: float,
             batched: bool, stop: StopSignals) -> int:
    """As fast as possible: rows go to the writer in lists, one lock round-trip each: the
    source's own lists when `batched`, else slices of 256."""
    read = 0
    monotonic = time.monotonic
    next_report = start + every
    try:
        for batch in rows if batched else _slices(rows, 256):
            writer.write_many(batch)
            read += len(batch)
            if stop.signum is not None:
                break
            now = monotonic()
            if deadline is not None and now >= deadline:
                break
            if progress is not None and now >= next_report:
                next_report = now + every
                progress(_snapshot(read, writer, rejects, start, now, 0.0))
    except KeyboardInterrupt:
        raise _Interrupted(read) from None
    return read


def _slices(rows: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` rows. On Ctrl-C while reading, the rows already read come first (so the
    caller writes them), then the interrupt."""
    chunk: list = []
    try:
        for row in rows:
            chunk.append(row)
            if len(chunk) >= size:
                yield chunk
                chunk = []
    except KeyboardInterrupt:
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk


def _snapshot(read: int, writer: Writer, rejects: Rejects | None, start: float, now: float, lag: float) -> Progress:
    elapsed = max(1e-9, now - start)
    unparsed = rejects.count if rejects is not None else 0  # read from the source, never sent
    return Progress(
        read=read + unparsed,
        sent=writer.stats.sent,
        inserted=writer.stats.inserted,
        rejected=writer.stats.rejected + unparsed,
        elapsed_s=elapsed,
        rate=(read + unparsed) / elapsed,
        lag_s=lag,
    )
