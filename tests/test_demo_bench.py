"""`sentinel demo` and `sentinel bench` end to end on their own embedded engines (smoke, not timed)."""
from __future__ import annotations

import glob
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from sentinel.engine import EmbeddedEngine, free_port

pytestmark = pytest.mark.slow


def _env(home, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "PG"))}
    env.update(SENTINEL_HOME=str(home), SENTINEL_PORT=str(port))
    return env


def test_demo_runs_stops_cleanly_and_continues(tmp_path):
    home, port = tmp_path / "home", free_port()
    cmd = [sys.executable, "-m", "sentinel.cli", "demo", "--rate", "400", "--duration", "6", "--no-ui",
           "--fraud-share", "0.05"]
    first = subprocess.run(cmd, env=_env(home, port), capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stderr[-2000:]
    assert 'psql "$(sentinel dsn --role analyst)"' in first.stderr
    assert "engine stopped; data kept" in first.stderr
    engine = EmbeddedEngine(home, port=port)
    assert engine.running_port() is None  # the demo started the engine, so it stopped it
    second = subprocess.run(cmd, env=_env(home, port), capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stderr[-2000:]
    engine.up()
    try:
        with psycopg.connect(engine.dsn("owner")) as conn:
            sent = conn.execute("select count(*) from fraud.transactions").fetchone()[0]
            flagged = {r[0] for r in conn.execute(
                "select txn_id || ':' || rule from fraud.flagged_transactions")}
    finally:
        engine.down()
    assert sent >= 2 * 400 * 6 * 0.8  # both runs' rows are there: the second continued, nothing replaced
    delivered = {json.loads(line)["alert_id"] for line in (home / "alerts.ndjson").read_text().splitlines()
                 if json.loads(line)["op"] == "+"}
    assert flagged, "a 5% fraud share over 4,800 rows flags some"
    assert flagged <= delivered  # every flag still standing reached the alert file


class _Lines:
    """A child's merged output, read line by line on a thread, so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines, self._queue = proc, [], queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} in {timeout} s: {self.lines[-10:]}") from None
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait()}) without {text!r}: {self.lines[-10:]}")
            self.lines.append(line)

    def rest(self, timeout: float = 60) -> tuple[int, list[str]]:
        rc = self.proc.wait(timeout=timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return rc, self.lines


def _start_demo(home, port: int, *extra: str) -> _Lines:
    cmd = [sys.executable, "-m", "sentinel", "demo", "--rate", "300", "--no-ui", *extra]
    return _Lines(subprocess.Popen(cmd, env=_env(home, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True))


def test_ctrl_c_while_the_demo_comes_up_lets_dbt_finish_then_stops_the_engine_it_started(tmp_path):
    # A KeyboardInterrupt inside dbt's in-process run had become an error of dbt's own (a mashumaro
    # InvalidFieldValue: a traceback, "dbt run failed", exit 1), and the engine the demo had started
    # was left running.
    home, port = tmp_path / "home", free_port()
    demo = _start_demo(home, port)
    # this line comes after the last stop check before dbt: the signal lands inside the deploy (after
    # "applied sql/", it could land before that check, and the demo rightly stopped without deploying)
    demo.wait_for("deploying the models (dbt run")  # several seconds
    demo.proc.send_signal(signal.SIGINT)
    rc, lines = demo.rest()
    out = "\n".join(lines)
    assert rc == 130, out[-2000:]
    assert "stopping once this step ends (Ctrl-C again to stop at once)" in out
    assert "models deployed" in out  # the deploy under way ended first
    assert lines[-1] == f"error: interrupted: stopped the engine this command started (data kept in {home})"
    assert "Traceback" not in out and "failed" not in out
    assert EmbeddedEngine(home, port=port).running_port() is None


def test_a_second_ctrl_c_while_the_demo_comes_up_stops_it_and_its_engine_at_once(tmp_path):
    home, port = tmp_path / "home", free_port()
    demo = _start_demo(home, port)
    demo.wait_for("deploying the models (dbt run")
    demo.proc.send_signal(signal.SIGINT)
    demo.wait_for("stopping once this step ends")
    demo.proc.send_signal(signal.SIGINT)
    rc, lines = demo.rest()
    out = "\n".join(lines)
    assert rc == 130, out[-2000:]
    assert "models deployed" not in out  # it did not wait for the deploy
    assert lines[-1].startswith("error: interrupted again: stopped at once, and the engine this command "
                                "started with it"), out[-2000:]
    assert "Traceback" not in out and "ERROR" not in out and "leaked" not in out, out[-2000:]
    assert EmbeddedEngine(home, port=port).running_port() is None
    # the deploy cut short rolled back: the next start deploys every model and serves the stream
    again = subprocess.run([sys.executable, "-m", "sentinel", "demo", "--rate", "300", "--duration", "3",
                            "--no-ui"], env=_env(home, port), capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr[-2000:]
    engine = EmbeddedEngine(home, port=port)
    engine.up()
    try:
        with psycopg.connect(engine.dsn("owner")) as conn:
            sent = conn.execute("select count(*) from fraud.transactions").fetchone()[0]
            per_card = conn.execute("select count(*) from fraud.card_activity").fetchone()[0]
    finally:
        engine.down()
    assert sent >= 300 * 3 * 0.8 and per_card > 0


def test_ctrl_c_while_the_demo_streams_stops_it_keeps_every_row_and_stops_the_engine(tmp_path):
    home, port = tmp_path / "home", free_port()
    demo = _start_demo(home, port)
    demo.wait_for(" sent (")  # the first progress line: the stream runs
    demo.proc.send_signal(signal.SIGINT)
    rc, lines = demo.rest()
    out = "\n".join(lines)
    assert rc == 0, out[-2000:]  # Ctrl-C is how the demo is meant to end
    assert "engine stopped; data kept" in out and "Traceback" not in out
    sent = int(lines[-1].split(" sent")[0].replace(",", ""))
    engine = EmbeddedEngine(home, port=port)
    assert engine.running_port() is None
    engine.up()
    try:
        with psycopg.connect(engine.dsn("owner")) as conn:
            assert conn.execute("select count(*) from fraud.transactions").fetchone()[0] == sent > 0
    finally:
        engine.down()


def test_bench_produces_every_figure(tmp_path):
    cmd = [sys.executable, "-m", "sentinel.cli", "bench", "--json", "--loader-rows", "2000",
           "--ingest-rows", "2000", "--history-rows", "2000", "--alert-rate", "300", "--alert-seconds", "4",
           "--quality-rows", "5000"]
    result = subprocess.run(cmd, env=_env(tmp_path / "home", free_port()), capture_output=True, text=True,
                            timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for part in ("loader", "ivm", "alerts", "quality"):
        assert part in figures and "error" not in figures[part], figures.get(part)
    assert figures["quality"]["rules"] and figures["quality"]["patterns"]
    assert figures["ivm"]["batch_ms_older_than_history_single"] > 0 and figures["ivm"]["batch_ms_in_order_single"] > 0
    ivm = figures["ivm"]
    assert 0 < ivm["redeploy_online_lock_s"] <= ivm["redeploy_online_s"] and ivm["redeploy_locked_s"] > 0, ivm
    assert ivm["redeploy_online_rounds"], ivm  # at least the last changes, under the lock
    assert set(ivm["redeploy_online_switch_s"]) == {"lock wait", "catch-up", "table", "triggers"}, ivm
    # the empty run again, next to the history's timed runs, and the history's ratios to it
    assert ivm["models_rows_per_s_empty_adjacent"] > 0 and ivm["raw_copy_rows_per_s_adjacent"] > 0, ivm
    assert ivm["history_vs_empty_adjacent"] > 0 and ivm["history_steady_vs_empty_adjacent"] > 0, ivm
    # ... and once more after them: the history's ratios to the mean of the two
    assert ivm["models_rows_per_s_empty_after"] > 0 and ivm["raw_copy_rows_per_s_after"] > 0, ivm
    assert ivm["history_vs_empty_bracket"] > 0 and ivm["history_steady_vs_empty_bracket"] > 0, ivm
    # fraud.flagged_transactions recomputed in full (here at the history's end: it is under 1M rows),
    # its chain of rules and helpers, against the incremental batches
    assert ivm["flagged_recompute_rows"] >= 4000 and ivm["flagged_recompute_models"] >= 8, ivm
    assert ivm["flagged_recompute_s"] > 0 and ivm["flagged_recompute_batch_ms_mean"] > 0, ivm
    assert figures["machine"]["cpus"] >= 1
    # where the CPU went in the empty run and the history's continuing run (Linux: /proc/stat)
    # (the empty runs next to the history's too): both the loader and the server did work
    for run in ("empty", "history_steady", "empty_adjacent", "empty_after"):
        assert 0 < ivm[f"cpu_cores_busy_{run}"] <= figures["machine"]["cpus"] + 0.05, ivm
        assert ivm[f"cpu_us_per_row_loader_{run}"] > 0 and ivm[f"cpu_us_per_row_rest_{run}"] > 0, ivm


def _postmasters_under(root) -> list[str]:
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            args = open(cmdline, "rb").read().split(b"\0")
        except OSError:
            continue
        if len(args) > 2 and args[0].endswith(b"postgres") and args[1] == b"-D" and args[2].startswith(str(root).encode()):
            found.append(args[2].decode())
    return found


@pytest.mark.parametrize("after_s", [2, 12])
def test_ctrl_c_during_bench_stops_the_part_and_removes_its_engine(tmp_path, after_s):
    # The part under way (a child process) had been killed at once by the parent's Ctrl-C, leaving
    # its throw-away engine running; and bench_ivm, when the Ctrl-C reached it, took it as the end of
    # the stream it was loading and went on to its next step (the run finished, exit 0).
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = _env(tmp_path / "home", free_port()) | {"TMPDIR": str(scratch)}
    cmd = [sys.executable, "-m", "sentinel", "bench", "--only", "ivm", "--ingest-rows", "100000",
           "--history-rows", "400000"]
    bench = _Lines(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, start_new_session=True))
    deadline = time.monotonic() + 120
    while not _postmasters_under(scratch):  # the part's engine is up
        assert time.monotonic() < deadline and bench.proc.poll() is None, bench.lines
        time.sleep(0.1)
    time.sleep(after_s)  # 2 s: the raw COPY or the models' deploy; 12 s: the timed loads
    os.killpg(bench.proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground group
    rc, lines = bench.rest(timeout=150)
    assert rc == 130, lines[-10:]
    assert lines[-1] == "error: interrupted: sentinel.bench_ivm stopped and removed its engine", lines[-10:]
    assert not _postmasters_under(scratch)
    assert not list(scratch.glob("sentinel-bench-*")), list(scratch.iterdir())


def test_demo_help_names_real_dbt_vars():
    import re
    from pathlib import Path

    import yaml

    from sentinel.demo import CONNECT_HELP

    project = yaml.safe_load((Path(__file__).resolve().parent.parent / "dbt" / "dbt_project.yml").read_text())
    named = re.findall(r"--vars '\{\{(\w+):", CONNECT_HELP)
    assert named and set(named) <= set(project["vars"])


def test_bench_ivm_late_rows_are_the_same_rows_each_every_nth_moved_later():
    from sentinel.bench_ivm import delayed

    chunks = [list(range(i, i + 7)) for i in range(0, 35, 7)]
    out = list(delayed(iter(chunks), every=5, by=8))
    flat = [r for c in out for r in c]
    assert sorted(flat) == list(range(35))
    for late in range(4, 35, 5):  # the 5th, 10th, ... row: delivered after the 8 rows that followed it
        after = [r for r in range(late + 1, min(late + 9, 35)) if r % 5 != 4]
        assert all(flat.index(r) < flat.index(late) for r in after), (late, flat)
    assert [r for r in flat if r % 5 != 4] == [r for r in range(35) if r % 5 != 4]  # the others keep their order


def test_bench_perf_places_each_server_sample_by_its_stack():
    from sentinel.bench_perf import breakdown, samples

    def sample(comm: str, *frames: str) -> list[str]:
        return [f"{comm} ", *(f"\t          {i:x} {f}" for i, f in enumerate(frames)), ""]

    top = ("CopyFrom", "DoCopy", "exec_simple_query", "PostgresMain")
    trig = ("ExecModifyTable", "standard_ExecutorRun", "_SPI_execute_plan", "plpgsql_exec_trigger",
            "afterTriggerInvokeEvents", "AfterTriggerEndQuery", *top)
    script = [
        *sample("postgres", "qsort_tuple", "tuplesort_performsort", "ExecSort", "ExecWindowAgg", *trig),
        *sample("postgres", "_bt_compare", "_bt_first", "IndexOnlyNext", "ExecLimit", "ExecNestLoop", *trig),
        *sample("postgres", "_bt_compare", "check_exclusion_or_unique_constraint", "ExecCheckIndexConstraints",
                "ExecInsert", *trig),
        *sample("postgres", "ExecInterpExpr", "ExecWindowAgg", "ExecInsert", *trig),
        *sample("postgres", "_bt_doinsert", "btinsert", "ExecInsertIndexTuples", "CopyMultiInsertBufferFlush", *top),
        *sample("postgres", "CopyReadAttributesText", "NextCopyFrom", *top),
        # a trigger fired by a model's insert inside a trigger
        *sample("postgres", "ExecInsert", "ExecModifyTable", "AfterTriggerEndQuery", "ExecInsert", *trig),
        *sample("python3", "PyEval_EvalFrameDefault"),  # not the server's
        *sample("postgres", "heap_page_prune", "lazy_scan_heap", "do_autovacuum"),
    ]
    figures = breakdown(samples(script))
    assert figures["samples"] == 8
    parts = figures["parts_pct"]
    assert parts["triggers on fraud.transactions (the models over it)"] == 50.0
    assert parts["insert into fraud.transactions (heap and indexes)"] == 12.5
    assert parts["COPY: reading and parsing the rows"] == 12.5
    assert parts["triggers fired by those (models over models, the alert log)"] == 12.5
    assert parts["other (vacuum, checkpoints, ...)"] == 12.5
    assert figures["source_triggers_by_node_pct"] == {
        "sort": 12.5, "index-only read": 12.5, "on conflict: the key's check": 12.5, "window aggregate": 12.5}
