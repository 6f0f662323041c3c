"""The provider worker's child: a process of its own for the provider's snapshot calls (the
parent side, and why, is ``snapctl/provider_worker.py``).

It builds its own provider from the inventory's provider block and the factory's place, which the
parent found (no entry point scan here), warms it up, starts its threads, says it is ready (or
why it cannot be), then runs each call it is sent. Started as a new interpreter (where it cannot
be forked from snapctl's process: ``snapctl/worker_process.py``), it imports what that takes and
nothing else (no asyncio, no entry points, no agent models): its start is the wall time of runs
that need it.

    wire: 4-byte big-endian length + pickle, both ways. Parent -> child: the init mapping, then
    (call id, method name, args). Child -> parent: ("ready", None or the warm-up's error), then
    (call id, ok, result or error); and, any time once its imports are done, ("log", logger name,
    level, message, traceback or None) for each record logged there, by any logger, propagating
    or not (``_send_logs``). The init's
    "siblings" lists pipe ends (read, write) the parent passed: for each, a sibling is forked
    after the imports and speaks the same wire over them, from its own ready on; this process
    reaps them before it exits.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import pickle
import queue
import signal
import struct
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from snapctl.errors import ProviderError
from snapctl.provider_threads import ProviderThreads, not_ready

FRAME = struct.Struct("!I")
READY = "ready"
LOG = "log"
THREADS_HINT = "set policy.provider_process: never to make snapshot calls from snapctl's own threads"


def frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(data)) + data


def frames(buffer: bytearray) -> list[Any]:
    """Every whole frame at the start of ``buffer`` (removed from it), unpickled."""
    messages, at = [], 0
    while len(buffer) - at >= FRAME.size:
        (size,) = FRAME.unpack_from(buffer, at)
        if len(buffer) - at - FRAME.size < size:
            break
        messages.append(pickle.loads(buffer[at + FRAME.size:at + FRAME.size + size]))
        at += FRAME.size + size
    del buffer[:at]
    return messages


def _portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a ProviderError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))
        return exc
    except Exception:  # noqa: BLE001 - any unpicklable error is reported by its text
        return ProviderError(f"{type(exc).__name__}: {exc}")


def serve() -> int:
    # Ctrl-C reaches the whole process group, and the parent answers it by rolling back: a create
    # call cut off here could still make a snapshot nobody hears of. The child ends when the
    # parent closes its stdin (or dies), once its calls returned.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a terminal that goes away sends it to the group too
    # Until the results channel moves off descriptor 1 (below, after the imports), a print would
    # write into it: an SDK that says something as it is imported must not corrupt the frames.
    sys.stdout = sys.stderr

    buffer = bytearray()

    def messages():
        while chunk := os.read(0, 1 << 16):
            buffer.extend(chunk)
            yield from frames(buffer)

    incoming = messages()
    init = next(incoming, None)
    if init is None:
        return 0
    sys.path[:] = init["sys_path"]
    from snapctl.providers import create_provider, import_factory

    try:
        factory = import_factory(init["factory"])
    except Exception as exc:  # noqa: BLE001 - said below, by every process, as the provider's error
        factory = exc
    if init.get("siblings") and not isinstance(factory, Exception):
        _import_sdk(getattr(factory, "sdk_modules", ())
                    + (getattr(factory, "sdk_async_modules", ()) if init.get("async_calls") else ()))
    # What is imported lives as long as the process: frozen out of the collector's scans, which a
    # burst of returning calls would otherwise wait for (docs/performance-log.md, item 48), and out of
    # the pages the siblings share with this process until one of them writes.
    gc.freeze()
    # Forked after the imports, before any thread: a sibling starts in milliseconds, not ~0.2 s.
    siblings = _fork_siblings(init.get("siblings", ()))
    if siblings is None:  # this is a sibling, now on its own pipes (0 and 1)
        siblings = []
        buffer.clear()
        incoming = messages()
    channel = os.dup(1)
    os.dup2(2, 1)  # stray prints of an SDK must not corrupt the frames
    outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def write_results() -> None:
        # One write for whatever is waiting: under a burst, many results per system call.
        while (first := outgoing.get()) is not None:
            batch = [first]
            while True:
                try:
                    item = outgoing.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    outgoing.put(None)
                    break
                batch.append(item)
            data = memoryview(b"".join(batch))
            try:
                while data:
                    data = data[os.write(channel, data):]
            except OSError:  # the parent is gone: finish the calls, nobody to tell
                pass

    writer = threading.Thread(target=write_results, name="snapctl-provider-results")
    writer.start()
    _send_logs(outgoing, init.get("log_level", logging.WARNING))

    try:
        if isinstance(factory, Exception):
            raise factory
        provider = create_provider(init["provider"], cluster=init["cluster"], base_dir=Path(init["base_dir"]),
                                   factory=factory)
        provider.warm_up()
        async_calls = _LoopCalls(provider, init["threads"]) if init.get("async_calls") else None
    except Exception as exc:  # noqa: BLE001 - the parent raises it from ready(): nothing is held yet
        outgoing.put(frame((READY, _portable_error(not_ready(exc)))))
        outgoing.put(None)
        writer.join()
        _reap(siblings)
        return 0
    threads = ProviderThreads(init["threads"])
    threads.start()
    gc.freeze()  # the provider too: its SDK's clients and sessions
    outgoing.put(frame((READY, None)))
    calls = 0
    answered = threading.Semaphore(0)
    for call_id, method, args in incoming:
        if async_calls is not None and method == "snapshot":
            future = async_calls.submit(*args)
        else:
            future = threads.submit(getattr(provider, method), *args)

        def answer(done: Future, call_id: int = call_id, method: str = method) -> None:
            try:
                error = done.exception()
                reply = (call_id, True, done.result()) if error is None else (call_id, False, _portable_error(error))
                try:
                    reply_frame = frame(reply)
                except Exception as exc:  # noqa: BLE001 - a result that cannot be pickled: say so, never hang
                    reply_frame = frame((call_id, False, ProviderError(
                        f"the provider worker process cannot send back the result of {method}: {exc}",
                        hint=THREADS_HINT)))
                outgoing.put(reply_frame)
            finally:
                answered.release()

        future.add_done_callback(answer)
        calls += 1
    # The parent is done or dead. Let go of the output we share with it, so that whoever waits for
    # the end of snapctl's output (a CI job, a pipe) does not wait for the calls still under way.
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    threads.shutdown()
    for _ in range(calls):
        # Not the futures: a future is done before its callbacks run, and the answer is queued there.
        answered.acquire()
    if async_calls is not None:
        async_calls.close()
    outgoing.put(None)
    writer.join()
    _reap(siblings)
    return 0


class _SentLogs(logging.Handler):
    """What snapctl and its plugins log in this process, sent to the parent, whose handlers say it
    (the CLI's: once on stderr, and in the `-o json` document's ``warnings``) as if logged there;
    said here, it reached stderr only. Text only: a record's args or traceback may not pickle."""

    def __init__(self, outgoing: queue.SimpleQueue[bytes | None]) -> None:
        super().__init__()
        self._outgoing = outgoing

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            trace = record.exc_text or (logging.Formatter().formatException(record.exc_info)
                                        if record.exc_info else None)
            self._outgoing.put(frame((LOG, record.name, record.levelno, message, trace)))
        except Exception:  # noqa: BLE001 (a bad format string: logging's own report, not a crash)
            self.handleError(record)


def _send_logs(outgoing: queue.SimpleQueue[bytes | None], level: int) -> None:
    """From here on, what is logged in this process goes to the parent, and only there, whichever
    logger logs it: the parent handles it with its logger of that name, propagation and all.

    A handler on the root sees only what propagates there: a plugin logger with ``propagate =
    False`` (set after ``getLogger``, often at import) would still say its records here, on this
    process's stderr (logging's last resort, or the plugin's own handler: in a forked child one
    that writes to the parent's stream object, whose buffered output it would repeat, or to a file
    whose descriptor is closed here). So every logger's handlers are replaced, in this process
    only, by the one that sends: a forked child's root still has the parent's handlers too."""
    sent = _SentLogs(outgoing)

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        sent.handle(record)

    logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]
    logging.getLogger().setLevel(level)


class _LoopCalls:
    """A provider's async create calls on an event loop in a thread of this process: its SDK's CPU
    per call stays off snapctl's loop (this is another process), and no thread per call here
    either. The provider's ``warm_up_async`` runs on it first; ``close`` runs its ``aclose``."""

    def __init__(self, provider: Any, calls: int) -> None:
        import asyncio  # only for such a provider: this process's start is on the run's clock

        self._asyncio, self._provider, self._calls = asyncio, provider, calls
        self._slots: Any = None
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="snapctl-provider-loop", daemon=True).start()
        if (warm_up_async := getattr(provider, "warm_up_async", None)) is not None:
            self._asyncio.run_coroutine_threadsafe(warm_up_async(), self.loop).result()

    def submit(self, *args: Any) -> Future:
        return self._asyncio.run_coroutine_threadsafe(self._bounded(*args), self.loop)

    async def _bounded(self, *args: Any) -> Any:
        if self._slots is None:
            self._slots = self._asyncio.Semaphore(self._calls)
        async with self._slots:
            return await self._provider.snapshot_async(*args)

    def close(self) -> None:
        if (aclose := getattr(self._provider, "aclose", None)) is not None:
            try:  # a client that will not close must not keep this process from ending
                self._asyncio.run_coroutine_threadsafe(aclose(), self.loop).result(timeout=10)
            except Exception:  # noqa: BLE001, S110 - the calls were all answered already
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)


def _import_sdk(modules: tuple[str, ...]) -> None:
    """Import the provider's SDK once, for this process and the siblings it forks (the
    provider's ``sdk_modules``, and its ``sdk_async_modules`` where the calls are async). A
    module that fails to import is left to ``warm_up``, which says why in each process as it
    would without this."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - reported by warm_up, with the plugin's own words
            continue


def _fork_siblings(pipes: list[tuple[int, int]]) -> list[int] | None:
    """Fork one sibling per pair of pipe ends (read, write) the parent passed: each sibling serves
    the calls of its own pair as this process serves stdin and stdout. Returns the siblings' pids
    here, and None in a sibling."""
    pids = []
    for index, (read_fd, write_fd) in enumerate(pipes):
        pid = os.fork()
        if pid == 0:
            os.dup2(read_fd, 0)
            os.dup2(write_fd, 1)
            for fd in {fd for pair in pipes[index:] for fd in pair}:  # earlier pairs: closed before the fork
                os.close(fd)
            return None
        os.close(read_fd)
        os.close(write_fd)
        pids.append(pid)
    return pids


def _reap(pids: list[int]) -> None:
    """Wait for the forked siblings (they end with their input, as this process does), so none is
    left for init to collect."""
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


if __name__ == "__main__":
    os._exit(serve())  # no interpreter teardown: provider threads may still be blocked in a call
