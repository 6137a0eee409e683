"""The job queue under load, SQLite (embedded) against PostgreSQL (distributed): jobs claimed a
second by 1, 4 and 16 worker processes, and the time from an upload's job to its claim.

    uv run python -m bench.queue_bench [--jobs 2000] [--workers 1,4,16] [--database-url URL]

Each worker is a process of its own with its own connections, as on separate hosts. Saturated:
the jobs are queued first, then every worker claims and finishes jobs until none is left
(each job claimed exactly once is checked). Latency: jobs arrive at ``--rate`` a second while
the workers wait for work as the real one does (``JobQueue.wait_for_work``: PostgreSQL's
LISTEN/NOTIFY wakes them; on SQLite they poll every 0.5 s, ``Worker.poll_s``);
upload -> claim is the claim's time minus the job's creation. Without ``--database-url`` a
throwaway PostgreSQL cluster is started (tests/postgres.py: Debian's binaries), with fsync and
synchronous commits on: as durable as SQLite's synchronous=FULL.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

POLL_S = 0.5  # indexer.worker.Worker's poll_s


def _queue(url: str | None, folder: Path):
    from indexer.database import PostgresDatabase, SqliteDatabase
    from indexer.jobs import JobQueue

    return JobQueue(PostgresDatabase(url) if url else SqliteDatabase(folder / "jobs.sqlite3"))


def _drain(url, folder, name, start, out) -> None:
    """Claim and finish jobs until the queue is empty; report the ids claimed."""
    queue = _queue(url, folder)
    start.wait()
    claimed = []
    while (job := queue.claim(name, 60)) is not None:
        queue.finish(job.id, name, pages_done=1, pages_total=1)
        claimed.append(job.id)
    out.put(claimed)
    queue.close()


def _poll(url, folder, name, stop, out) -> None:
    """The worker's loop: claim, or wait for work when there is none (``wait_for_work``: a
    notice from PostgreSQL, or POLL_S); report latencies."""
    queue = _queue(url, folder)
    waits = []
    while not stop.is_set():
        job = queue.claim(name, 60)
        if job is None:
            queue.wait_for_work(POLL_S, stop)
            continue
        waits.append(time.time() - job.created_at)
        queue.finish(job.id, name, pages_done=1, pages_total=1)
    out.put(waits)
    queue.close()


def _create(queue, n: int) -> None:
    for i in range(n):
        queue.create(
            doc_id=f"{time.time_ns():x}{i:08x}", collection="c", name=f"{i}.pdf",
            path=Path("/x"), metadata={},
        )  # fmt: skip


def saturated(url: str | None, workers: int, jobs: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    queue = _queue(url, folder)
    queue.db.execute("DELETE FROM jobs")
    _create(queue, jobs)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_drain, args=(url, folder, f"w{i}", start, out)) for i in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(2.0)  # every process imported and connected
    t0 = time.perf_counter()
    start.set()
    claimed = [job for _ in procs for job in out.get()]
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join()
    assert len(claimed) == len(set(claimed)) == jobs, "a job claimed twice or lost"
    queue.close()
    return jobs / seconds


def latency(url: str | None, workers: int, jobs: int, rate: float) -> tuple[float, float]:
    folder = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    queue = _queue(url, folder)
    queue.db.execute("DELETE FROM jobs")
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_poll, args=(url, folder, f"w{i}", stop, out)) for i in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(2.0)
    for _ in range(jobs):
        _create(queue, 1)
        time.sleep(1 / rate)
    deadline = time.monotonic() + 30
    while queue.count("done") < jobs and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    waits = sorted(w for _ in procs for w in out.get())
    for p in procs:
        p.join()
    queue.close()
    assert len(waits) == jobs
    return statistics.median(waits) * 1000, waits[int(0.95 * (len(waits) - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs drained per run")
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--rate", type=float, default=20.0, help="arrivals a second (latency)")
    parser.add_argument("--arrivals", type=int, default=100, help="jobs of the latency run")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    server = None
    url = args.database_url
    if url is None:
        from tests.postgres import Server

        server = Server(durable=True)  # fsync on, as SQLite's synchronous=FULL is
        url = server.database()
    try:
        print("| database | workers | claimed/s (saturated) | upload -> claim median | p95 |")
        print("|---|---|---|---|---|")
        for name, target in (("SQLite", None), ("PostgreSQL", url)):
            for workers in [int(w) for w in args.workers.split(",")]:
                rate = saturated(target, workers, args.jobs)
                median, p95 = latency(target, workers, args.arrivals, args.rate)
                print(
                    f"| {name} | {workers} | {rate:,.0f} | {median:.0f} ms | {p95:.0f} ms |",
                    flush=True,
                )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
