"""The inference engine: request frames in, reply frame and event out.

One engine serves one process (the single-process service, or each scale-out
worker). It owns the :class:`~switchyard.services.inference.models.ModelRegistry`, a
:class:`trio.CapacityLimiter` sized to the cores that bounds concurrent
``session.run`` calls, and one :class:`Batcher` per (model, sample shape).

Dynamic batching: a batcher takes the first waiting request, waits for a free core,
then stacks whatever else is already waiting (plus what arrives within
``max_delay_ms``) up to ``max_batch_size`` rows, runs it once and splits the result
back to each caller. A batch runs in a worker thread, unless the model's measured
run time for that many rows is under ``inline_run_us``: then it runs in the
batcher's own task, because a thread hop (two OS wake-ups) costs far more than a
run of a few microseconds, most of all on a loaded host. That bounds how long an
inline run may hold the event loop; a model that turns slow goes back to threads.
Run time is the calling thread's CPU time when onnxruntime runs on that thread
alone (``intra_op_threads = 1``), so a run that was merely preempted on a busy host
does not push a tiny model out to threads (where each task then pays the hop on
the very host that can least afford it). While both cores are busy requests pile up,
so batches grow exactly when load does; with ``max_delay_ms = 0`` an idle service
adds no delay at all. ``max_batch_size = 1`` turns batching off.

:meth:`InferenceEngine.serve` never raises for anything a peer sends: every failure
becomes an ``error`` reply in the request's own format (JSON or msgpack).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import trio
import zmq

from switchyard.services.inference.binary import encode_binary_reply, parse_binary_request
from switchyard.services.inference.models import (
    LoadedModel,
    ModelConfig,
    ModelError,
    ModelRegistry,
    SessionConfig,
    digits_model,
)
from switchyard.services.inference.protocol import (
    DEFAULT_MAX_INPUT_BYTES,
    TaskError,
    TaskEvent,
    TaskReply,
    TaskRequest,
    encode_reply,
    parse_request,
    sniff_task_id,
    task_event,
)
from switchyard.services.inference.tensors import TensorError, decode_rows

__all__ = ["Batcher", "EngineConfig", "InferenceEngine", "Served"]


@attrs.frozen
class EngineConfig:
    """Model and execution settings shared by the service and its workers."""

    #: Directory holding the ONNX files ("" = the models bundled with switchyard).
    models_dir: str = ""
    #: A task's ``model_path`` starting with this maps onto ``models_dir``.
    path_prefix: str = "/models/"
    models: list[ModelConfig] = attrs.Factory(lambda: [digits_model()])
    session: SessionConfig = attrs.Factory(SessionConfig)
    #: Rows per ``session.run``; 1 turns batching off.
    max_batch_size: int = 64
    #: How long a batch waits for more requests once a core is free (0 = never wait).
    max_delay_ms: float = 0.0
    #: Concurrent ``session.run`` calls (0 = one per CPU core).
    threads: int = 0
    #: A batch whose expected run time (measured per row, per model and shape) is under
    #: this many microseconds runs in the event loop instead of a worker thread
    #: (0 = always a thread). It is also the longest an inline run should stall the loop.
    inline_run_us: float = 200.0
    #: Decoded input bytes per task.
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    #: Tasks admitted at once; beyond this a task gets a "busy" error reply at once.
    max_in_flight: int = 4096
    #: After the models are loaded, collect garbage once and ``gc.freeze()`` what is left
    #: (modules, sessions, config: all long-lived), so later full collections skip it.
    #: Without this a full collection stalls the event loop ~10 ms, which alone broke
    #: the p99 goal at 10,000 tasks/s (docs/inference.md). Process-wide; off = False.
    gc_freeze_after_start: bool = True


@attrs.frozen
class Served:
    """What :meth:`InferenceEngine.serve` produced for one request."""

    reply: bytes
    event: TaskEvent | None
    ok: bool


class _PassCounter(trio.abc.Instrument):
    """Counts the run loop's passes (one I/O check each): a single attribute bump per pass.

    Tells a batcher whether two requests arrived in the same pass (a burst, to batch)
    or in different ones (lockstep, to run at once) without a task woken per run.
    """

    def __init__(self) -> None:
        self.passes = 0

    def before_io_wait(self, timeout: float) -> None:
        self.passes += 1


@attrs.define(eq=False)
class _Item:
    rows: np.ndarray
    done: trio.Event = attrs.Factory(trio.Event)
    results: list[dict[str, Any]] | None = None
    error: str | None = None


class Batcher:
    """Stacks requests for one model and sample shape; see the module docstring."""

    def __init__(
        self,
        model: LoadedModel,
        limiter: trio.CapacityLimiter,
        *,
        max_batch_size: int,
        max_delay: float,
        nursery: trio.Nursery,
        inline_below: float = 0.0,
        cpu_clock: bool = False,
        passes: _PassCounter | None = None,
    ) -> None:
        self.model = model
        self._limiter = limiter
        self._max_rows = max_batch_size if model.batchable else 1
        self._max_delay = max_delay
        self._nursery = nursery
        # Unbounded is safe: the engine admits at most max_in_flight tasks.
        self._send, self._recv = trio.open_memory_channel[_Item](math.inf)
        self.batches = 0
        self.rows = 0
        self.inline_batches = 0
        self._inline_below = inline_below
        # Seconds per row of recent runs (an EWMA); None until a run was measured.
        self._per_row: float | None = None
        # True: time runs by thread CPU time (onnxruntime runs on the calling thread only).
        self._clock = time.thread_time if cpu_clock else time.perf_counter
        # The run loop pass in which a run last happened in a caller's task (see submit);
        # without a pass counter (no engine), every caller may run at once.
        self._passes = passes
        self._ran_in = -1
        self.immediate = 0
        #: Requests in the channel, not yet taken by :meth:`run` (cheaper than its statistics()).
        self._queued = 0

    async def submit(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """Results for ``rows`` (one dict per row); raises :class:`ModelError` if the run failed.

        When the batcher is idle, a core is free, the model runs inline for this many
        rows and no other request ran this way since the last scheduler pass, the run
        happens right here without any task switch (a lockstep client's case). A
        burst served within one pass thus runs its first request at once and batches
        the rest.
        """
        immediate = self.run_now(rows)
        if immediate is not None:
            results, error = immediate
            if error is not None:
                raise ModelError(error)
            assert results is not None
            return results
        item = _Item(rows)
        self._send.send_nowait(item)
        self._queued += 1
        await item.done.wait()
        if item.error is not None:
            raise ModelError(item.error)
        assert item.results is not None
        return item.results

    def run_now(self, rows: np.ndarray) -> tuple[list[dict[str, Any]] | None, str | None] | None:
        """``(results, error)`` of running ``rows`` right here, or None if they must queue.

        Runs only when the batcher is idle, a core is free, the model runs inline for
        this many rows and no other request ran this way since the last scheduler pass
        (so a burst read in one pass is still batched). Never waits, never raises.
        """
        if self._inline_below <= 0:
            return None
        passes = self._passes
        this_pass = passes.passes if passes is not None else -2
        if self._ran_in == this_pass or self._queued or not self._runs_inline(len(rows)):
            return None
        # A free core, read rather than acquired: nothing can take it while this run
        # holds the event loop, so it is as good as borrowed for the run's length.
        if self._limiter.available_tokens < 1:
            return None
        outcomes, took = _timed_compute(self.model, [rows], self._clock)
        self._ran_in = this_pass
        self.immediate += 1
        self._record(took, len(rows))
        self.batches += 1
        self.rows += len(rows)
        return outcomes[0]

    def _record(self, took: float, rows: int) -> None:
        per_row = took / max(1, rows)
        if self._per_row is not None and self._inline_below > 0:
            # One stalled run (a page fault, a busy host) must not send a tiny model to
            # threads for the next several tasks: a sample counts as at most twice the
            # inline bound, which still moves a model that is really slow past it.
            per_row = min(per_row, 2 * self._inline_below / max(1, rows))
        self._per_row = per_row if self._per_row is None else 0.8 * self._per_row + 0.2 * per_row

    async def run(self) -> None:
        """Collect and launch batches forever (runs in the engine's nursery)."""
        carry: _Item | None = None
        while True:
            if carry is None:
                first = await self._recv.receive()
                self._queued -= 1
            else:
                first, carry = carry, None
            token = object()
            try:  # a free core is taken without a scheduler trip
                self._limiter.acquire_on_behalf_of_nowait(token)
            except trio.WouldBlock:
                await self._limiter.acquire_on_behalf_of(token)
            try:
                batch, carry = await self._collect(first)
            except BaseException:
                self._limiter.release_on_behalf_of(token)
                raise
            if self._runs_inline(sum(len(item.rows) for item in batch)):
                try:
                    outcomes, took = _timed_compute(self.model, [item.rows for item in batch], self._clock)
                finally:
                    self._limiter.release_on_behalf_of(token)
                self.inline_batches += 1
                self._deliver(batch, outcomes, took)
            else:
                self._nursery.start_soon(self._execute, batch, token)

    def _runs_inline(self, rows: int) -> bool:
        return self._per_row is not None and self._per_row * rows < self._inline_below

    async def _collect(self, first: _Item) -> tuple[list[_Item], _Item | None]:
        batch = [first]
        rows = len(first.rows)
        deadline = trio.current_time() + self._max_delay
        while rows < self._max_rows:
            try:
                item = self._recv.receive_nowait()
                self._queued -= 1
            except trio.WouldBlock:
                if self._max_delay <= 0 or trio.current_time() >= deadline:
                    break
                late: _Item | None = None
                with trio.move_on_at(deadline):
                    late = await self._recv.receive()
                if late is None:
                    break
                self._queued -= 1
                item = late
            if rows + len(item.rows) > self._max_rows:
                return batch, item  # starts the next batch
            batch.append(item)
            rows += len(item.rows)
        return batch, None

    async def _execute(self, batch: list[_Item], token: object) -> None:
        try:
            outcomes, took = await trio.to_thread.run_sync(
                _timed_compute, self.model, [item.rows for item in batch], self._clock
            )
        except BaseException:
            for item in batch:  # cancelled (shutdown): nobody may wait forever
                item.error = "the inference service is shutting down"
                item.done.set()
            raise
        finally:
            self._limiter.release_on_behalf_of(token)
        self._deliver(batch, outcomes, took)

    def _deliver(self, batch: list[_Item], outcomes: list[Any], took: float) -> None:
        self._record(took, sum(len(item.rows) for item in batch))
        self.batches += 1
        for item, (results, error) in zip(batch, outcomes, strict=False):
            self.rows += len(item.rows)
            item.results, item.error = results, error
            item.done.set()


def _timed_compute(
    model: LoadedModel, arrays: list[np.ndarray], clock: Callable[[], float] = time.perf_counter
) -> tuple[list[Any], float]:
    """``model.compute(arrays)`` and the seconds it took by ``clock`` (safe in any thread: no state)."""
    started = clock()
    outcomes = model.compute(arrays)
    return outcomes, clock() - started


def _frame_view(frame: Any) -> Any:
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def _ms_since(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


@attrs.define(slots=True)
class _Job:
    """One parsed request on its way through :meth:`InferenceEngine.begin`."""

    start: float
    binary: bool
    task_id: str = ""
    task_type: str = ""
    #: ``model_path`` (JSON) or ``model`` (binary), as the request named it.
    model: str = ""
    params: dict[str, str] = attrs.Factory(dict)
    data: bytes | memoryview = b""
    #: Binary form: the tensor's dtype and full shape (rows first).
    dtype: str = ""
    shape: tuple[int, ...] = ()
    #: JSON form: the request itself (code-served task types get it).
    request: TaskRequest | None = None

    @classmethod
    def of(cls, request: TaskRequest, start: float) -> _Job:
        """The job for a parsed JSON-form request."""
        return cls(
            start,
            False,
            task_id=request.task_id,
            task_type=request.task_type,
            model=request.model_path,
            params=dict(request.params),
            data=request.input_data,
            request=request,
        )


class InferenceEngine:
    """Models, batchers and the task lifecycle for one process. Start with ``nursery.start(engine.run)``."""

    def __init__(self, config: EngineConfig, *, logger: logging.Logger | None = None) -> None:
        self.config = config
        self.log = logger or logging.getLogger("switchyard.inference")
        self.registry = ModelRegistry(
            config.models, models_dir=config.models_dir, path_prefix=config.path_prefix, session=config.session
        )
        threads = config.threads if config.threads > 0 else (os.cpu_count() or 1)
        self.limiter = trio.CapacityLimiter(threads)
        self._batchers: dict[tuple[str, tuple[int, ...]], Batcher] = {}
        self._nursery: trio.Nursery | None = None
        self._passes = _PassCounter()
        self.in_flight = 0
        self.stats = {"tasks": 0, "succeeded": 0, "failed": 0, "busy": 0}
        #: Task types served by code instead of a registry model (e.g. voice activity
        #: detection, switchyard.services.inference.vad): ``async (request) -> result``;
        #: a ``ValueError`` becomes an error reply with its text.
        self.handlers: dict[str, Callable[[TaskRequest], Awaitable[Mapping[str, Any]]]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Preload models, report ready, then host the batchers until cancelled."""
        await self.registry.preload()
        if self.config.gc_freeze_after_start:
            gc.collect()
            gc.freeze()
        trio.lowlevel.add_instrument(self._passes)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            try:
                trio.lowlevel.remove_instrument(self._passes)
            except KeyError:
                pass  # trio drops an instrument that raised; this one never does

    def batcher_stats(self) -> dict[str, dict[str, int]]:
        return {
            f"{name}{list(shape)}": {
                "batches": b.batches,
                "rows": b.rows,
                "inline_batches": b.inline_batches + b.immediate,
            }
            for (name, shape), b in self._batchers.items()
        }

    # -- one request ---------------------------------------------------------------------
    async def serve(self, frames: Sequence[Any]) -> Served:
        """Serve one request given as its body frames (1 frame: JSON, 2: binary)."""
        served = self.begin(frames)
        return served if isinstance(served, Served) else await served

    def begin(self, frames: Sequence[Any]) -> Served | Coroutine[Any, Any, Served]:
        """Serve one request at once if nothing in it has to wait, else return the
        coroutine that finishes it (await it in the same task, right away).

        A lockstep client's task is served to its end here, with no coroutine and no
        task switch: parsing, routing to a loaded model, and a run the batcher lets
        happen at once (see :meth:`Batcher.run_now`). A model still to load, a
        ``model_path`` still to resolve, a code-served task type (e.g. VAD) or a run
        that has to queue behind others continues in the coroutine, from what was
        already parsed. Like :meth:`serve`, never raises for anything a peer sends.
        """
        start = time.perf_counter()
        binary = len(frames) == 2
        self.stats["tasks"] += 1
        if self.in_flight >= self.config.max_in_flight:
            self.stats["busy"] += 1
            task_id = "" if binary or not frames else sniff_task_id(_frame_view(frames[0]))
            message = f"busy: {self.in_flight} tasks in flight (max_in_flight {self.config.max_in_flight})"
            return self._served(_Job(start, binary), TaskReply.failure(task_id, message, _ms_since(start)))
        if len(frames) not in (1, 2):
            message = f"a request has 1 frame (JSON) or 2 (binary), not {len(frames)}"
            return self._served(_Job(start, False), TaskReply.failure("", message))
        try:
            job = self._parse_binary(frames, start) if binary else self._parse_json(frames[0], start)
        except TaskError as exc:
            job = _Job(start, binary, task_id=exc.task_id, task_type=exc.task_type)
            return self._served(job, TaskReply.failure(exc.task_id, str(exc), _ms_since(start)))
        if job.task_type in self.handlers and not binary:
            return self._serve_later(job)
        try:
            model = self.registry.route_now(job.task_type, job.model)
            if model is None:
                return self._serve_later(job)
            rows, batcher = self._prepare(job, model)
            outcome = batcher.run_now(rows)
        except (ModelError, TensorError) as exc:
            return self._served(job, TaskReply.failure(job.task_id, str(exc), _ms_since(start)))
        if outcome is None:
            return self._serve_later(job, rows, batcher)
        results, error = outcome
        return self._served(job, self._reply(job, results, error))

    async def _serve_later(self, job: _Job, rows: np.ndarray | None = None, batcher: Batcher | None = None) -> Served:
        """The rest of :meth:`begin` for a task that has to wait (counted in ``in_flight``)."""
        self.in_flight += 1
        try:
            reply = await self._run_job(job, rows, batcher)
        finally:
            self.in_flight -= 1
        return self._served(job, reply)

    async def _run_job(self, job: _Job, rows: np.ndarray | None, batcher: Batcher | None) -> TaskReply:
        start = job.start
        handler = self.handlers.get(job.task_type) if job.request is not None else None
        if handler is not None:
            assert job.request is not None
            try:
                result = await handler(job.request)
            except ValueError as exc:
                return TaskReply.failure(job.task_id, str(exc), _ms_since(start))
            return TaskReply.success(job.task_id, result, _ms_since(start))
        try:
            if rows is None or batcher is None:
                model = await self.registry.route(job.task_type, job.model)
                rows, batcher = self._prepare(job, model)
            results = await batcher.submit(rows)
        except (ModelError, TensorError) as exc:
            return TaskReply.failure(job.task_id, str(exc), _ms_since(start))
        return self._reply(job, results, None)

    def _parse_json(self, frame: Any, start: float) -> _Job:
        return _Job.of(parse_request(_frame_view(frame), max_input_bytes=self.config.max_input_bytes), start)

    def _parse_binary(self, frames: Sequence[Any], start: float) -> _Job:
        request = parse_binary_request([_frame_view(f) for f in frames], max_input_bytes=self.config.max_input_bytes)
        return _Job(
            start,
            True,
            task_id=request.task_id,
            task_type=request.task_type,
            model=request.model,
            params=dict(request.params),
            data=request.data,
            dtype=request.dtype,
            shape=request.shape,
        )

    def _prepare(self, job: _Job, model: LoadedModel) -> tuple[np.ndarray, Batcher]:
        """The task's input rows and its batcher; raises ``ModelError``/``TensorError``."""
        if job.binary:
            job.task_type = job.task_type or (model.config.task_types or [model.name])[0]
        spec = model.spec.with_params(job.params)
        if job.binary:
            spec = attrs.evolve(spec, dtype=job.dtype, shape=job.shape[1:])
        model.check_sample_shape(spec.shape)
        rows = decode_rows(job.data, spec, rows=job.shape[0] if job.binary else 1)
        return rows, self._batcher(model, spec.shape)

    def _reply(self, job: _Job, results: list[dict[str, Any]] | None, error: str | None) -> TaskReply:
        if error is not None:
            return TaskReply.failure(job.task_id, error, _ms_since(job.start))
        assert results is not None
        result: Mapping[str, Any] = {"results": results} if job.binary else results[0]
        return TaskReply.success(job.task_id, result, _ms_since(job.start))

    def _served(self, job: _Job, reply: TaskReply) -> Served:
        self.stats["succeeded" if reply.ok else "failed"] += 1
        event = task_event(job.task_type, reply, job.params) if job.task_type else None
        return Served((encode_binary_reply if job.binary else encode_reply)(reply), event, reply.ok)

    async def run_request(self, request: TaskRequest, start: float | None = None) -> TaskReply:
        """Run a parsed JSON-form task; failures come back as an ``error`` reply."""
        job = _Job.of(request, time.perf_counter() if start is None else start)
        return await self._run_job(job, None, None)

    def _batcher(self, model: LoadedModel, shape: tuple[int, ...]) -> Batcher:
        key = (model.name, shape)
        batcher = self._batchers.get(key)
        if batcher is None:
            if self._nursery is None:
                raise ModelError("the inference engine is not running")
            batcher = Batcher(
                model,
                self.limiter,
                max_batch_size=max(1, self.config.max_batch_size),
                max_delay=max(0.0, self.config.max_delay_ms) / 1000.0,
                nursery=self._nursery,
                inline_below=max(0.0, self.config.inline_run_us) / 1e6,
                cpu_clock=self.config.session.intra_op_threads == 1,
                passes=self._passes,
            )
            self._batchers[key] = batcher
            self._nursery.start_soon(batcher.run)
        return batcher
