"""mailgate.mail.workers against real worker processes: answers, errors, a dying worker, closing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mailgate.errors import MailgateError
from mailgate.mail.workers import WorkerDied, WorkerPool
from tests.helpers import ROOT, wait_until


def digest(data: bytes) -> tuple[int, str, int]:
    return len(data), hashlib.sha256(data).hexdigest(), os.getpid()


def echo(data: bytes) -> bytes:
    return data[::-1]


def fail(text: str) -> None:
    raise ValueError(text)


def die() -> None:
    os._exit(3)


def niceness() -> int:
    return os.nice(0)


@pytest.mark.asyncio
async def test_workers_run_at_a_lower_priority_than_the_daemon_when_asked() -> None:
    """``[smtp] parse_nice``: parsing yields the CPU to the daemon that answers SMTP clients."""
    ours = os.nice(0)
    niced, plain = WorkerPool(1, nice=7), WorkerPool(1)
    try:
        assert await niced.run(niceness) == min(ours + 7, 19)
        assert await plain.run(niceness) == ours
    finally:
        niced.close()
        plain.close()


@pytest.mark.asyncio
async def test_calls_run_in_worker_processes_and_answer_in_order_of_their_own() -> None:
    pool = WorkerPool(2)
    try:
        blobs = [bytes([n]) * (n * 1000 + 1) for n in range(40)]
        blobs.append(os.urandom(3 * 2**20))  # bigger than what is written from the loop itself
        answers = await asyncio.gather(*(pool.run(digest, b) for b in blobs))
        assert [a[:2] for a in answers] == [(len(b), hashlib.sha256(b).hexdigest()) for b in blobs]
        pids = {a[2] for a in answers}
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
    finally:
        pool.close()


@pytest.mark.asyncio
async def test_big_and_small_calls_to_one_worker_keep_their_answers(pool: WorkerPool) -> None:
    blobs = [os.urandom(n) for n in (10, 5 * 2**20, 100, 70_000, 3, 2 * 2**20, 64 * 1024, 64 * 1024 - 1)] * 3
    answers = await asyncio.gather(*(pool.run(digest, b) for b in blobs))
    assert [a[:2] for a in answers] == [(len(b), hashlib.sha256(b).hexdigest()) for b in blobs]
    assert len({a[2] for a in answers}) == 1
    echoed = await asyncio.gather(*(pool.run(echo, b) for b in blobs))  # big answers too
    assert echoed == [b[::-1] for b in blobs]


@pytest.mark.asyncio
async def test_an_exception_is_raised_in_the_caller_and_the_worker_stays(pool: WorkerPool) -> None:
    pid = (await pool.run(digest, b"x"))[2]
    with pytest.raises(ValueError, match="bad input"):
        await pool.run(fail, "bad input")
    assert (await pool.run(digest, b"y"))[2] == pid


@pytest.mark.asyncio
async def test_a_dead_worker_fails_its_call_and_is_replaced(pool: WorkerPool) -> None:
    pid = (await pool.run(digest, b"x"))[2]
    others = [asyncio.create_task(pool.run(digest, b"queued")) for _ in range(3)]  # wait for the worker
    with pytest.raises(WorkerDied):
        await pool.run(die)
    answers = await asyncio.gather(*others)
    assert all(a[:1] == (6,) for a in answers)
    new_pids = {a[2] for a in answers} | {(await pool.run(digest, b"z"))[2]}
    assert pid not in new_pids and len(new_pids) == 1


@pytest.mark.asyncio
async def test_closed_pool_refuses_calls() -> None:
    pool = WorkerPool(1)
    await pool.run(digest, b"x")
    workers = list(pool._workers)
    pool.close()
    with pytest.raises(MailgateError):
        await pool.run(digest, b"x")
    for worker in workers:
        await asyncio.to_thread(worker.process.join, 10)
        assert worker.process.exitcode is not None


DAEMON = """
import asyncio, os, sys
from mailgate.mail.workers import WorkerPool

async def main():
    pool = WorkerPool(2)
    await asyncio.gather(*(pool.run(os.getpid) for _ in range(4)))
    print(" ".join(str(w.process.pid) for w in pool._workers), flush=True)
    await asyncio.sleep(3600)

if __name__ == "__main__":
    asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.asyncio
async def test_workers_end_when_the_daemon_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), stdout=asyncio.subprocess.PIPE,
                                                cwd=str(ROOT))
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    pids = [int(p) for p in line.split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    proc.kill()  # SIGKILL: no clean-up runs in the daemon
    await proc.wait()
    await wait_until(lambda: not any(_alive(p) for p in pids), 30, f"workers {pids} to end with the killed daemon")


def hang(seconds: float) -> None:
    time.sleep(seconds)


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    """One worker process, closed after the test (on the test's loop)."""
    workers = WorkerPool(1)
    yield workers
    workers.close()


@pytest.mark.asyncio
async def test_a_call_past_its_time_limit_stops_its_worker_and_the_calls_behind_it_move_on(pool: WorkerPool) -> None:
    from mailgate.mail.workers import WorkerTimeout

    first = await pool.run(digest, b"warm")  # the worker is up
    stuck = asyncio.ensure_future(pool.run(hang, 60, timeout=0.5))
    behind = asyncio.ensure_future(pool.run(digest, b"behind"))  # queued in the same worker
    with pytest.raises(WorkerTimeout, match="0.5 s limit"):
        await stuck
    answer = await asyncio.wait_for(behind, 30)
    assert answer[:2] == (6, hashlib.sha256(b"behind").hexdigest())
    assert answer[2] != first[2]  # answered by the worker started in place of the stopped one


def test_a_worker_whose_daemon_is_gone_ends_quietly() -> None:
    """A daemon killed with kill -9 leaves its workers a broken pipe: they end with status 0 and no
    traceback, instead of dying on the answer they can no longer send."""
    import multiprocessing
    import pickle
    import socket

    from mailgate.mail import workers

    ours, theirs = socket.socketpair()
    # spawn: the child gets this one socket only (a forked child would hold our end open too)
    process = multiprocessing.get_context("spawn").Process(target=workers._serve, args=(theirs,))
    process.start()
    theirs.close()
    call = pickle.dumps((time.sleep, (0.5,)), pickle.HIGHEST_PROTOCOL)
    ours.sendall(workers._CALL.pack(len(call), 0) + call)
    ours.close()  # gone before the answer: the worker's send breaks its pipe
    process.join(20)
    assert process.exitcode == 0
