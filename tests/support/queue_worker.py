"""A stand-in controller process for queue tests: the real `JobWorkers` on a database URL, with one echo job
kind whose every run is appended to a file as `<pid> <job id>`; it runs until SIGTERM.

    python -m tests.support.queue_worker DATABASE_URL RUNS_FILE READY_FILE [THREADS]
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from controller.config import Settings
from controller.db import make_engine
from controller.jobs.registry import job_handler
from controller.jobs.worker import JobContext, JobWorkers

KIND = "testOnlyProcessEcho"  # exists only in this helper; no other handler is imported here
RUN_SECONDS = 0.02  # long enough that the other process's workers claim jobs meanwhile


def main(url: str, runs_file: Path, ready_file: Path, threads: int) -> None:
    fd = os.open(runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @job_handler(KIND)
    def echo(jctx: JobContext) -> dict[str, str]:
        time.sleep(RUN_SECONDS)
        os.write(fd, f"{os.getpid()} {jctx.job.id}\n".encode())  # one short O_APPEND write: never interleaved
        return {"pid": str(os.getpid())}

    engine = make_engine(url)
    ctx = SimpleNamespace(engine=engine, settings=Settings())
    workers = JobWorkers(ctx, threads=threads, lease_seconds=30, max_attempts=3)  # type: ignore[arg-type]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workers.start()
    ready_file.write_text(str(os.getpid()))
    while not stop.wait(0.05):
        workers.kick()  # jobs are added by another process: poll often rather than on the 1 s idle wait
    workers.stop()
    engine.dispose()
    os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 3)
