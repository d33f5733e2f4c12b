"""Worker processes for the CPU work of inbound mail (parsing, DKIM), driven from the event loop.

`concurrent.futures.ProcessPoolExecutor` costs the daemon two threads of its own (a feeder and a
manager) and several GIL hand-offs per call; for a 10 KB message that was more CPU in the daemon
than the event loop's whole SMTP conversation. Here each worker is connected to the event loop by
a socket pair used as an ordinary asyncio transport: a call is one length-prefixed pickle written
to the transport, the answer comes back through the protocol's ``data_received``, and no thread
is involved. Several calls may wait in one worker's socket (answers come back in order), so a
worker never sits idle waiting for the loop to hand it the next message.

A worker that dies fails the calls it had with `WorkerDied` and is replaced; the others carry on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from mailgate.errors import MailgateError

log = logging.getLogger(__name__)
T = TypeVar("T")

# A call: the length of its pickle and the number of out-of-band buffers, their lengths, the
# pickle, the buffers. An answer: the length of its pickle, the pickle.
_CALL = struct.Struct("!QI")
_LENGTH = struct.Struct("!Q")
_MAX_QUEUED = 3  # calls handed to one worker before it answers the first
# A bytes (or bytearray: the SMTP edge's buffer) argument this long (a big message) is not copied into the pickle but written to the
# socket from where it is, in blocks, as the worker reads it: the daemon holds no copy of it.
_OUT_OF_BAND = 64 * 1024
_BLOCK = 256 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")


class WorkerDied(MailgateError):
    """The worker process running a call ended before answering."""


class WorkerTimeout(MailgateError):
    """A call ran past its time limit; the worker running it was stopped and is replaced."""


class WorkerOutOfMemory(MailgateError):
    """A call needed more memory than the worker's limit; the worker is replaced."""


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def _serve(sock: socket.socket, memory_limit: int = 0, max_rss: int = 0, warm_up: bool = False, nice: int = 0) -> None:
    """A worker process's target: `_answer_calls` until the daemon closes the socket or is gone (a
    daemon killed with ``kill -9`` breaks the pipe: the worker ends quietly, with nobody to tell)."""
    try:
        _answer_calls(sock, memory_limit, max_rss, warm_up, nice)
    except (BrokenPipeError, ConnectionResetError):
        return


def _answer_calls(sock: socket.socket, memory_limit: int, max_rss: int, warm_up: bool, nice: int) -> None:
    """A worker's life: answer ``(fn, args)`` calls, in order, until the socket closes.

    ``memory_limit`` (bytes, 0 = none) caps the process's data segment (RLIMIT_DATA: its heap and
    private mappings), so a call that would need more fails with MemoryError instead of taking
    the host's memory; ``max_rss`` (bytes, 0 = never) ends the worker after a call that leaves it
    with more resident memory than that (Python keeps freed memory for reuse), or after a
    MemoryError. The pool starts another in its place. The warm-up call (``warm_up``: the first)
    is not measured: a worker must be able to start. ``nice`` is added to the process's nice value, so
    that parsing yields the CPU to the daemon (answering SMTP clients) while both have work.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when workers stop
    if nice:
        os.nice(nice)
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
    reader = sock.makefile("rb")
    unmeasured = 1 if warm_up else 0
    while True:
        header = reader.read(_CALL.size)
        if len(header) < _CALL.size:
            return
        size, count = _CALL.unpack(header)
        lengths = reader.read(_LENGTH.size * count)
        if len(lengths) < _LENGTH.size * count:
            return
        sizes = [n for (n,) in _LENGTH.iter_unpack(lengths)]
        data = reader.read(size)
        buffers = [reader.read(n) for n in sizes]
        if len(data) < size or any(len(b) < n for b, n in zip(buffers, sizes, strict=True)):
            return
        fn, args = pickle.loads(data, buffers=buffers)
        del data, buffers
        recycle = False
        try:
            answer: tuple[bool, Any] = (True, fn(*args))
        except MemoryError:
            answer = (False, WorkerOutOfMemory(f"a mail worker process needed more than its {memory_limit >> 20} MiB "
                                               "on one call; another is started"))
            recycle = True
        except Exception as exc:  # noqa: BLE001 -- handed back to the caller
            answer = (False, exc)
        del fn, args
        try:
            out = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 -- e.g. an unpicklable result
            out = pickle.dumps((False, MailgateError(f"the worker could not send its answer: {exc!r}")))
        sock.sendall(_LENGTH.pack(len(out)))
        sock.sendall(out)
        del answer, out
        if recycle or (max_rss and not unmeasured and _rss() > max_rss):
            sock.sendall(_LENGTH.pack(0))  # an empty answer: "I end myself", so the pool knows it was no crash
            sock.shutdown(socket.SHUT_WR)
            os._exit(0)
        unmeasured = max(unmeasured - 1, 0)


@dataclass
class _Call:
    future: asyncio.Future[tuple[bool, Any]]
    fn: Callable[..., Any]
    args: tuple[Any, ...]


class _Worker(asyncio.Protocol):
    """The daemon's end of one worker: its process, transport and calls waiting for answers."""

    def __init__(self, pool: WorkerPool, process: BaseProcess) -> None:
        self.pool = pool
        self.process = process
        self.transport: asyncio.Transport | None = None
        self.calls: collections.deque[_Call] = collections.deque()  # the first is running
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._needed = _LENGTH.size  # bytes that complete the header or the pickle being read
        self._size: int | None = None  # the pickle's length once its header is read
        self.recycling = False  # the worker said it ends itself after its last answer
        self.send_lock = asyncio.Lock()  # held while a call is written in several pieces
        self._writable = asyncio.Event()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drained(self) -> None:
        """Return once the transport wants more data (or is gone)."""
        await self._writable.wait()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        while self._buffered >= self._needed:
            buf = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            with memoryview(buf) as view:  # no copy of a big answer: a view of it is unpickled
                part, rest = view[: self._needed], bytes(view[self._needed :])
                self._chunks = [rest] if rest else []
                self._buffered = len(rest)
                if self._size is None:
                    (self._size,) = _LENGTH.unpack(part)
                    self._needed = self._size
                    part.release()
                    if not self._size:
                        self._size, self._needed, self.recycling = None, _LENGTH.size, True
                    continue
                self._size, self._needed = None, _LENGTH.size
                answer = pickle.loads(part)
                part.release()
            if self.calls:
                future = self.calls.popleft().future
                if not future.done():  # its caller may have given up
                    future.set_result(answer)
            self.pool._answered(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._writable.set()
        self.pool._lost(self)


class WorkerPool:
    """``processes`` worker processes (forkserver: they inherit no thread, socket or loop of the
    daemon), started on the first call."""

    def __init__(self, processes: int, warm_up: Callable[[], Any] | None = None, *, memory_limit: int = 0,
                 max_rss: int = 0, nice: int = 0) -> None:
        self.processes = processes
        self.nice = nice  # see `_serve`
        self.memory_limit = memory_limit  # see `_serve`
        self.max_rss = max_rss
        self.recycled = 0  # workers that ended themselves to give memory back
        self._warm_up = warm_up  # run in each new worker before it takes calls (imports, caches)
        self._context = multiprocessing.get_context("forkserver")
        self._workers: list[_Worker] = []
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Task[None] | None = None
        self._start_error: MailgateError | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # calls being handed to another worker
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """``fn(*args)`` in a worker process; ``fn``, the arguments and the result must pickle.

        ``timeout`` limits the call once a worker has it: past it, `WorkerTimeout` is raised and,
        if the worker is still running the call (a message that sends the parser into a very long
        loop, say), that worker is killed and replaced; the calls queued behind it move on.
        """
        loop = asyncio.get_running_loop()
        self._loop = self._loop or loop
        call = _Call(loop.create_future(), fn, args)
        await self._dispatch(call)
        try:
            ok, value = await asyncio.wait_for(asyncio.shield(call.future), timeout)
        except TimeoutError:
            self._time_out(call)
            raise WorkerTimeout(f"a mail worker process ran past the {timeout:g} s limit on one call; "
                                "it was stopped and another is started") from None
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _time_out(self, call: _Call) -> None:
        for worker in self._workers:
            if worker.calls and worker.calls[0] is call:  # running it: stuck, stop the process
                log.warning("a mail worker process ran past its time limit; stopping it", extra={"event": "mail.worker_timeout"})
                worker.process.kill()
                break
        if not call.future.done():  # still queued: its answer, when it comes, is dropped
            call.future.cancel()

    async def _dispatch(self, call: _Call) -> None:
        """Hand ``call`` to the worker with the fewest calls, once one has room."""
        assert self._loop is not None
        while True:
            if self._closed:
                raise MailgateError("the worker pool is closed")
            if len(self._workers) < self.processes and self._starting is None:
                self._starting = self._loop.create_task(self._start())
            ready = [w for w in self._workers if w.transport is not None and len(w.calls) < _MAX_QUEUED]
            if ready:
                worker = min(ready, key=lambda w: len(w.calls))
                break
            if self._start_error is not None and not self._workers:
                error, self._start_error = self._start_error, None
                raise error
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._waiting.append(waiter)
            await waiter
        assert worker.transport is not None
        args = tuple(pickle.PickleBuffer(a) if type(a) in (bytes, bytearray) and len(a) >= _OUT_OF_BAND else a
                     for a in call.args)
        buffers: list[pickle.PickleBuffer] = []
        payload = pickle.dumps((call.fn, args), pickle.HIGHEST_PROTOCOL, buffer_callback=buffers.append)
        views = [b.raw() for b in buffers]
        head = _CALL.pack(len(payload), len(views)) + b"".join(_LENGTH.pack(v.nbytes) for v in views)
        if not views and not worker.send_lock.locked():
            worker.calls.append(call)
            worker.transport.write(head + payload)  # the transport keeps what the socket cannot take yet
            return
        # Written in pieces: shielded, since a call cut off halfway would garble the ones after it.
        task = asyncio.get_running_loop().create_task(self._send_in_pieces(worker, call, head + payload, views))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def _send_in_pieces(self, worker: _Worker, call: _Call, head: bytes, views: list[memoryview]) -> None:
        async with worker.send_lock:
            if worker.transport is None:
                call.future.set_result((False, WorkerDied("a mail worker process ended before the call was sent")))
                return
            worker.calls.append(call)
            worker.transport.write(head)
            for view in views:
                for start in range(0, view.nbytes, _BLOCK):
                    await worker.drained()
                    if worker.transport is None:
                        return  # connection_lost failed the call
                    worker.transport.write(view[start : start + _BLOCK])

    async def _redispatch(self, call: _Call) -> None:
        try:
            await self._dispatch(call)
        except MailgateError as exc:
            if not call.future.done():
                call.future.set_result((False, exc))

    async def _start(self) -> None:
        try:
            while len(self._workers) < self.processes and not self._closed:
                await self._add_worker()
        except Exception as exc:  # noqa: BLE001 -- the callers waiting for a worker get it
            log.exception("could not start a mail worker process", extra={"event": "mail.worker_start_failed"})
            self._start_error = MailgateError(f"could not start a mail worker process: {exc}")
        finally:
            self._starting = None
            self._wake()

    async def _add_worker(self) -> None:
        assert self._loop is not None
        ours, theirs = socket.socketpair()
        process = self._context.Process(target=_serve, args=(theirs, self.memory_limit, self.max_rss, self._warm_up is not None, self.nice), daemon=True,
                                        name="mailgate-mail-worker")
        await asyncio.to_thread(process.start)  # the first start also starts the fork server
        theirs.close()
        worker = _Worker(self, process)
        await self._loop.connect_accepted_socket(lambda: worker, ours)
        if self._warm_up is not None and worker.transport is not None:
            # A fresh process imports what a call needs when it unpickles the first one; that
            # happens here, so that no message's time limit pays for it.
            call = _Call(self._loop.create_future(), self._warm_up, ())
            payload = pickle.dumps((call.fn, ()), pickle.HIGHEST_PROTOCOL)
            worker.calls.append(call)
            worker.transport.write(_CALL.pack(len(payload), 0) + payload)
            ok, value = await call.future
            if not ok:
                raise value
        if self._closed:
            self._stop(worker)
            return
        self._workers.append(worker)
        self._wake(_MAX_QUEUED)

    def _answered(self, worker: _Worker) -> None:
        self._wake(1)

    def _wake(self, slots: int | None = None) -> None:
        """Let callers waiting for a worker look again: ``slots`` of them, or all."""
        while self._waiting and (slots is None or slots > 0):
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if slots is not None:
                    slots -= 1

    def _lost(self, worker: _Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        worker.process.join(0)
        died = WorkerDied(f"a mail worker process ended (exit code {worker.process.exitcode})")
        if worker.recycling:
            self.recycled += 1
            log.info("a mail worker process ended itself to give back its memory; starting another",
                     extra={"event": "mail.worker_recycled"})
        elif not self._closed:
            log.warning("%s; starting another", died, extra={"event": "mail.worker_died"})
        self._replace(worker, died)

    def _replace(self, worker: _Worker, died: WorkerDied) -> None:
        """Fail the call ``worker`` was running with ``died``, hand its queued calls on, start another."""
        if worker.calls and not worker.recycling:  # the call it was running fails; those it had not started go elsewhere
            running = worker.calls.popleft().future
            if not running.done():
                running.set_result((False, died))
        while worker.calls:
            call = worker.calls.popleft()
            if self._closed or self._loop is None:
                if not call.future.done():
                    call.future.set_result((False, died))
            elif not call.future.done():
                task = self._loop.create_task(self._redispatch(call))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if not self._closed and self._loop is not None and self._starting is None:
            self._starting = self._loop.create_task(self._start())
        self._wake()

    def _stop(self, worker: _Worker) -> None:
        if worker.transport is not None:
            worker.transport.close()  # the worker reads the end of its socket and returns
        if worker.calls and worker.process.is_alive():
            worker.process.terminate()  # a busy one may be stuck in a hostile message

    def close(self) -> None:
        """Stop the workers; calls still running fail."""
        self._closed = True
        for worker in list(self._workers):
            self._stop(worker)
        self._wake()
