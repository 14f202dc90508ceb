"""Process-group set-up: the one place that creates process groups (``fleet.init`` on GPUs, the global
gloo group alone on CPUs), and the collectives handed to dynabert/.

Gradient averaging is one fused all-reduce per optimizer step: every width's backward accumulates into
the local gradients, then all gradients are flattened into one buffer, summed across ranks and divided
by the world size. Upstream's DataParallel without no_sync all-reduces after every width's backward
(4x the traffic) and loses OFA's distillation hooks (defects 9 and 6 of docs/upstream-defects.md); we do not
wrap the model at all.
On GPU the cost of one buffer is one extra copy of the gradients (440 MB for BERT-base, fp32) and no
overlap of communication with the last backward; NCCL's bandwidth on one large message makes up for it.

Paddle 2.6's HTTP master does not tell healthy nodes that another one failed, and its NCCL timeout
(``PADDLE_PG_TIMEOUT``) only logs (docs/gpu-readiness.md). So the ranks watch each other themselves:

* ``PeerMonitor``: a rank that fails posts its one-line error in the job's TCP store, and every other rank
  ends with it within about a second, wherever it is (computing, in a collective, waiting on the store).
  A rank that dies without a word, or whose process stops answering, is given up on after
  ``DYNABERT_PEER_TIMEOUT`` seconds (default 90) without a heartbeat; so is a process group that does not
  form (a rank that failed before joining).
* ``CollectiveWatchdog``: a collective that has not returned within ``DYNABERT_COLLECTIVE_TIMEOUT`` seconds
  (default 1800, 0 = off) while every rank is alive (a hang) ends its rank with code 4.
Either way the node's ``dynabert-launch --max_restarts`` can restart the job.
"""
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import paddle
import paddle.distributed as dist

from dynabert.collectives import Collectives, SingleProcess
from dynabert.model import compat
from launcher import gradient_sync
from launcher.launch_cmd import (
    COLLECTIVE_TIMEOUT_ENV,
    EXIT_COLLECTIVE_TIMEOUT,
    EXIT_PEER_LOST,
    PEER_TIMEOUT_ENV,
    collective_timeout,
    peer_timeout,
)


def world_size_from_env() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init_collectives() -> Collectives:
    """Single process: no process group at all. Under paddle.distributed.launch: fleet on GPUs (NCCL),
    the global process group alone on CPU (gloo, defect 12), then Paddle's collectives."""
    gloo = not paddle.is_compiled_with_cuda() or os.environ.get("PADDLE_DISTRI_BACKEND") == "gloo"
    if gloo:
        paddle.set_device("cpu")  # --device cpu on a GPU build: the launcher alone cannot force it
    compat.contiguous_views_on_cpu()  # defect 15: a third off a CPU step
    if world_size_from_env() <= 1:
        return SingleProcess()
    timeout = peer_timeout(os.environ)
    # Paddle's rendezvous has no useful limit (observed with 2.6.2): rank 0 waits 900 s in TCPStore for every
    # rank to connect, and the others retry connecting to rank 0's store without end. A rank that failed
    # before joining (or whose rank 0 did) would leave its peers there.
    rank = os.environ.get("PADDLE_TRAINER_ID", "0")
    with killed_after(timeout, f"error: rank {rank}: the process group did not form within {timeout:g} s: a rank"
                      " has probably failed before joining (its node's output says why;"
                      f" {PEER_TIMEOUT_ENV} sets the limit, 0 disables)"):
        if gloo:
            # Defect 12 (docs/upstream-defects.md): every gloo process group after the first rendezvouses on
            # the first one's store keys, so a rank can read its peer's stale address and both wait 150 s,
            # then fail. fleet.init always adds a second group (its data-parallel group), which data
            # parallelism does not need: every collective here runs on the global group.
            dist.init_parallel_env()
        else:
            from paddle.distributed import fleet

            fleet.init(is_collective=True)
    host, port = job_store_endpoint(os.environ)
    # A client of its own: Paddle's global store client is one socket without a lock, which Paddle itself
    # uses from the main thread (e.g. to set up NCCL communicators); the monitor's thread must not share it.
    client = paddle.base.core.TCPStore(host, port, False, 0, 900)  # world size 0: no rendezvous of its own
    monitor = PeerMonitor(client, rank=dist.get_rank(), world_size=dist.get_world_size(), timeout_s=timeout,
                          where=f"{host}:{port}")
    monitor.start()
    return PaddleCollectives(monitor=monitor)


# Run by ``killed_after`` in a child process: wait for the parent to close our stdin (or to die), at most
# argv[1] seconds; then write argv[3] on the stderr we share and SIGKILL the parent (pid argv[2]).
_KILLER = """import os, select, signal, sys
if not select.select([0], [], [], float(sys.argv[1]))[0]:
    os.write(2, sys.argv[3].encode() + b"\\n")
    os.kill(int(sys.argv[2]), signal.SIGKILL)
"""


@contextmanager
def killed_after(timeout_s: float, message: str) -> Iterator[None]:
    """Ends this process, after writing ``message``, if the block has not finished within ``timeout_s``
    seconds (0: no limit). From a child process, with SIGKILL (exit status 137): Paddle's rendezvous
    (``create_or_get_global_tcp_store``) waits holding the interpreter's lock, so no thread of this process
    could even run, nor a Python signal handler; the exit code cannot be chosen."""
    if timeout_s <= 0:
        yield
        return
    killer = subprocess.Popen([sys.executable, "-I", "-S", "-c", _KILLER, f"{timeout_s:g}", str(os.getpid()),
                               message], stdin=subprocess.PIPE)
    try:
        yield
    finally:
        killer.stdin.close()
        killer.wait()


def job_store_endpoint(env) -> Tuple[str, int]:
    """Where the job's TCP store listens: what Paddle's ``create_or_get_global_tcp_store`` reads (its C++:
    ``PADDLE_MASTER``, else the first of ``PADDLE_TRAINER_ENDPOINTS``)."""
    endpoint = env.get("PADDLE_MASTER") or env.get("PADDLE_TRAINER_ENDPOINTS", "").split(",")[0]
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def _exit_with(code: int) -> Callable[[str], None]:
    def end(message: str) -> None:
        """Called from a background thread while the main thread is blocked inside Paddle (which releases
        the GIL there): only ending the process from here frees it. No cleanup: a collective or a
        rendezvous in flight cannot be unwound."""
        os.write(sys.stderr.fileno(), (message + "\n").encode())
        os._exit(code)
    return end


_exit_stuck = _exit_with(EXIT_COLLECTIVE_TIMEOUT)


class CollectiveWatchdog:
    """Calls ``on_timeout(message)`` from a background thread when a ``guard``-ed block has not finished
    within ``timeout_s`` seconds (by default: one line on stderr, then exit code 4). ``timeout_s`` 0: off.
    One guarded block at a time (collectives are issued by the main thread, one after another).
    ``limit_env`` and ``hint`` are for the message: the variable that sets the limit, the likely cause."""

    def __init__(self, timeout_s: float, rank: int, on_timeout: Callable[[str], None] = _exit_stuck,
                 clock: Callable[[], float] = time.monotonic, *, limit_env: str = COLLECTIVE_TIMEOUT_ENV,
                 hint: str = "a peer rank has probably died or hung"):
        self.timeout_s, self.rank = timeout_s, rank
        self._on_timeout, self._clock = on_timeout, clock
        self._limit_env, self._hint = limit_env, hint
        self._cond = threading.Condition()
        self._pending: Optional[tuple] = None  # (what, deadline) of the block in progress
        self._thread: Optional[threading.Thread] = None

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        if self.timeout_s <= 0:
            yield
            return
        with self._cond:
            self._pending = (what, self._clock() + self.timeout_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="collective-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._pending = None
                self._cond.notify()

    def overdue(self, now: float) -> Optional[str]:
        """The message to report if the block in progress has passed its deadline at time ``now``."""
        if self._pending is None or now < self._pending[1]:
            return None
        return (f"error: rank {self.rank}: {self._pending[0]} has not returned after {self.timeout_s:g} s;"
                f" {self._hint} ({self._limit_env} sets the limit, 0 disables)")

    def _watch(self) -> None:
        with self._cond:
            while True:
                message = self.overdue(self._clock())
                if message:
                    break
                self._cond.wait(None if self._pending is None else max(0.0, self._pending[1] - self._clock()))
        self._on_timeout(message)


_PEERS = "dynabert/peers/"  # key prefix in the job's store


def _write_stderr(line: str) -> None:
    os.write(sys.stderr.fileno(), (line + "\n").encode())


def one_line(error: BaseException, limit: int = 300) -> str:
    """An unexpected exception as one line (Paddle's messages run over many lines), cut to ``limit``."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class PeerFailure:
    """Why this rank ends because of another one."""

    rank: int  # the rank that failed or was lost
    exit_code: int  # what this rank exits with
    line: str  # printed as ``error: <line>``
    tell_others: bool = True  # found here: post it for the other ranks (not when read from the store)
    lost: bool = False  # ``rank`` gave no sign of life: nobody waits for it to read the news


class PeerMonitor:
    """One rank's watch over the others, through the job's TCP store (which lives in rank 0's process).

    A daemon thread, once every ``POLL_S``: bumps this rank's heartbeat counter, reads whether another rank
    posted a failure and, every ``check_every`` seconds, reads the heartbeats it watches (rank 0 watches every
    rank, the others watch rank 0: the store answers O(world size) requests a second, not O(world size^2)).
    It ends this process (one ``error:`` line, an exit code) when

    * another rank posted a failure: that rank's line and its exit code. Every rank thus exits as the
      failing one did and every node's launcher makes the same restart decision: a UserError (2) is
      restarted by none, since the input is bad on some node and a node restarted alone would wait for its
      peers for ever in Paddle's rendezvous; anything else is restarted by every node alike, so the
      relaunched nodes meet again;
    * a watched rank's heartbeat has not moved for ``silence_s`` (rank 0 posts that for the others), or the
      store stopped answering (rank 0 is gone): EXIT_PEER_LOST, which launchers restart: a rank that
      vanishes without a word was killed (OOM killer, SIGKILL, a lost machine), and its node restarts it.

    It runs beside whatever the main thread does (computing, waiting in a collective, polling the store in
    ``wait_for_peers``/``run_on_main``), so all of those end, and none is limited while the peers are alive:
    a peer building its corpus cache for an hour keeps beating. A failed peer is seen within about POLL_S,
    a silent one within ``timeout_s`` of its last heartbeat: the last value is first seen at most
    ``check_every`` after it was written and judged stale ``silence_s`` later, give or take one check.

    ``store`` needs ``add``, ``set`` and ``get`` (Paddle's TCPStore). Its calls are serialized (the main
    thread posts its own failure through ``fail``/``leave``) and, when ``timeout_s`` > 0, guarded: a call
    that has not returned within ``timeout_s`` (rank 0's machine gone without closing the connection) ends
    the process with EXIT_PEER_LOST too.
    """

    POLL_S = 1.0
    LINGER_S = 10.0  # how long a leaving rank waits for the others to have read the failure
    # A rank that ends because of another's failure leaves this much after: Paddle's launcher checks its
    # workers every second and names the first failed one in rank order, which on the failing rank's node
    # should be the failing rank (its log is the one to read), not a rank that only relays its error.
    OUTLIVE_S = 3.0

    def __init__(self, store, *, rank: int, world_size: int, timeout_s: float, where: str = "",
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 write: Callable[[str], None] = _write_stderr, exit_process: Callable[[int], None] = os._exit,
                 guard: Optional[CollectiveWatchdog] = None):
        self._store, self.rank, self.world_size, self.timeout_s = store, rank, world_size, timeout_s
        self._where = f" at {where}" if where else ""
        self._clock, self._sleep, self._write, self._exit = clock, sleep, write, exit_process
        self.check_every = max(self.POLL_S, min(5.0, timeout_s / 10))
        self.silence_s = max(timeout_s - 2 * self.check_every, timeout_s / 2)
        self._guard = guard or CollectiveWatchdog(
            timeout_s, rank, on_timeout=_exit_with(EXIT_PEER_LOST), limit_env=PEER_TIMEOUT_ENV,
            hint="rank 0, whose process holds the store, has probably died or its machine is unreachable")
        self._calls_lock = threading.Lock()
        self._end_lock = threading.Lock()
        self._state: Optional[str] = None  # "failing" or "stopped": the first path to claim it ends the process
        self._next_check = clock()
        self._heard: dict = {}  # watched rank -> (its heartbeat counter, when this rank first read that value)
        self._own_failure: Optional[PeerFailure] = None  # to post in leave()
        self._leaving = world_size  # ranks expected to read a failure before this one leaves
        self._relaying = False  # ending because of a failure another rank posted, which is leaving too
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- the thread ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.watch, args=(self._stopped.wait,), name="peer-monitor",
                                        daemon=True)
        self._thread.start()

    def watch(self, stopped: Callable[[float], bool]) -> None:
        """Poll until ``stopped(POLL_S)`` (which waits that long) says stop, or a failure ends the process."""
        while not stopped(self.POLL_S):
            failure = self.poll()
            if failure is not None:
                if self._claim("failing") is None:
                    self._end(failure)
                return

    def poll(self) -> Optional[PeerFailure]:
        """One round: heartbeat, a failure another rank posted, then (when due) the watched heartbeats."""
        try:
            with self._calls():
                self._add(f"beat/{self.rank}", 1)
                failure = self._posted_failure()
                now = self._clock()
                if failure is None and self.timeout_s > 0 and now >= self._next_check:
                    self._next_check = now + self.check_every
                    failure = self._silent_rank(now)
                return failure
        except Exception as e:  # whatever the binding raises for a closed connection (ValueError in 2.6.2)
            return self._store_lost(e)

    def _end(self, failure: PeerFailure) -> None:
        self._write(f"error: {failure.line}")  # first: whatever happens to the store next, the log says why
        if failure.tell_others:
            self._own_failure = failure
        self._leaving -= failure.lost
        self._relaying = not (failure.tell_others or failure.lost)
        self.leave()
        self._exit(failure.exit_code)

    # ---- the main thread -----------------------------------------------------------------------------
    def fail(self, exit_code: int, message: str, *, may_follow_a_peer: bool = False) -> Tuple[int, str]:
        """This rank ends with ``message``: the code and line to end with (see Collectives.fail). Posting
        waits for ``leave``, after the caller printed the line."""
        state = self._claim("failing")
        if state == "failing":
            threading.Event().wait()  # the monitor's thread is ending this process with a peer's error
        if state == "stopped":
            return exit_code, message  # after the job ended everywhere (e.g. in destroy_process_group)
        if may_follow_a_peer:
            try:
                with self._calls():
                    peer = self._posted_failure()
            except Exception as e:
                peer = self._store_lost(e)
            if peer is not None:
                self._leaving -= peer.lost
                self._relaying = not (peer.tell_others or peer.lost)
                return peer.exit_code, peer.line
        self._own_failure = PeerFailure(self.rank, exit_code, f"rank {self.rank} failed: {message}")
        return exit_code, message

    def leave(self) -> None:
        """Post this rank's failure (if it has one to post), then stay until every rank is leaving, at most
        LINGER_S: rank 0's exit takes the store away, and any rank's exit makes its node's launcher stop the
        other ranks there, rank 0 included, perhaps before a rank elsewhere has read the failure."""
        if self._state != "failing":
            return
        try:
            with self._calls():
                if self._own_failure is not None:
                    self._post(self._own_failure)
                self._add("leaving", 1)
            self._wait_for_all("leaving", self.LINGER_S, self._leaving)
        except Exception:
            return  # the store is gone: nobody is left to tell
        if self._relaying:
            self._sleep(self.OUTLIVE_S)

    def stop(self) -> None:
        """The job is done on every rank (after the final barrier): stop watching. Rank 0 waits until every
        rank has stopped (at most ``max(timeout_s, LINGER_S)``): its exit takes the store away, which a rank
        still watching would report as rank 0 lost."""
        if self._claim("stopped") == "failing":
            threading.Event().wait()  # the monitor's thread is ending this process with a peer's error
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self._calls():
                self._add("stopped", 1)
            if self.rank == 0:
                self._wait_for_all("stopped", max(self.timeout_s, self.LINGER_S), self.world_size)
        except Exception:
            pass

    # ---- the store -----------------------------------------------------------------------------------
    @contextmanager
    def _calls(self) -> Iterator[None]:
        with self._calls_lock, self._guard.guard(f"a call to the job's store{self._where}"):
            yield

    def _add(self, key: str, amount: int = 0) -> int:
        return self._store.add(_PEERS + key, amount)

    def _claim(self, state: str) -> Optional[str]:
        """Move to ``state`` unless a state was claimed already; returns that earlier state (None: claimed)."""
        with self._end_lock:
            before = self._state
            if before is None:
                self._state = state
            return before

    def _wait_for_all(self, key: str, limit_s: float, count: int) -> None:
        deadline = self._clock() + limit_s
        while self._clock() < deadline:
            with self._calls():
                if self._add(key) >= count:
                    return
            self._sleep(0.2)

    def _post(self, failure: PeerFailure) -> None:
        """The record first, then its order: a reader that sees the order finds the record."""
        record = {"rank": failure.rank, "code": failure.exit_code, "line": failure.line, "lost": failure.lost}
        self._store.set(_PEERS + f"failure/{self.rank}", json.dumps(record))
        self._add(f"order/{self.rank}", self._add("failures", 1))

    def _posted_failure(self) -> Optional[PeerFailure]:
        """The first failure another rank posted, if any. One request while there is none."""
        if self._add("failures") == 0:
            return None
        orders = [(self._add(f"order/{r}"), r) for r in range(self.world_size) if r != self.rank]
        posted = [(order, r) for order, r in orders if order > 0]
        if not posted:
            return None  # only this rank's own, or a rank between its two adds: the next poll sees it
        record = json.loads(self._store.get(_PEERS + f"failure/{min(posted)[1]}"))
        return PeerFailure(record["rank"], record["code"], record["line"], tell_others=False, lost=record["lost"])

    def _silent_rank(self, now: float) -> Optional[PeerFailure]:
        for peer in range(1, self.world_size) if self.rank == 0 else [0]:
            beats = self._add(f"beat/{peer}")
            value, since = self._heard.get(peer, (None, now))
            if beats != value:
                self._heard[peer] = (beats, now)
            elif now - since >= self.silence_s:
                return PeerFailure(peer, EXIT_PEER_LOST, (
                    f"rank {peer} has given no sign of life for {now - since:.0f} s: it has probably died or hung"
                    f" ({PEER_TIMEOUT_ENV}={self.timeout_s:g} sets the limit, 0 disables)"), lost=True)
        return None

    def _store_lost(self, error: Exception) -> PeerFailure:
        if self.rank == 0:  # the store is in this very process: not a peer's doing, but nothing can go on
            return PeerFailure(0, EXIT_PEER_LOST, f"the job's store{self._where} failed: {one_line(error)}")
        return PeerFailure(0, EXIT_PEER_LOST, f"rank 0 is gone: the job's store{self._where}, which lives in its"
                                              f" process, stopped answering ({one_line(error)})",
                           tell_others=False)


class _GuardedBuckets:
    """GradientBuckets whose collectives run under the job's watchdog, and count as one reduction per step."""

    def __init__(self, comms: "PaddleCollectives", buckets: "gradient_sync.GradientBuckets"):
        self._comms, self._buckets = comms, buckets

    @contextmanager
    def armed(self) -> Iterator[None]:
        with self._comms._collective("bucketed all_reduce of the gradients during backward"), self._buckets.armed():
            yield

    def finish(self) -> List[paddle.Tensor]:
        with self._comms._collective("bucketed all_reduce of the gradients"):
            out = self._buckets.finish()
        self._comms.all_reduce_calls += 1
        return out


class PaddleCollectives(Collectives):
    def __init__(self, watchdog: Optional[CollectiveWatchdog] = None, monitor: Optional[PeerMonitor] = None):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        # What this process sent through all-reduce, for the log and the tests.
        self.all_reduce_calls = 0
        self.all_reduce_bytes = 0
        self.all_reduce_buckets = 0  # collectives of the bucketed reductions (compress.optim.overlap_allreduce)
        self._nccl = isinstance(paddle.framework._current_expected_place(), paddle.CUDAPlace)
        self._main_jobs = 0
        self._watchdog = watchdog or CollectiveWatchdog(collective_timeout(os.environ), self.rank)
        self._monitor = monitor

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Guard ``what``, including, on a GPU, the device finishing it: NCCL calls return once queued,
        so a dead peer would otherwise block a later host sync, outside the guard."""
        with self._watchdog.guard(what):
            yield
            if self._watchdog.timeout_s > 0 and isinstance(paddle.framework._current_expected_place(),
                                                           paddle.CUDAPlace):
                done = paddle.device.Event()
                done.record()
                while not done.query():  # polling keeps this thread out of a blocking CUDA wait
                    time.sleep(0.0005)

    def all_reduce_gradients(self, params: Sequence[paddle.Tensor], dtype: str = "fp32") -> paddle.Tensor:
        """One fused reduction of every gradient (launcher/gradient_sync.py); returns the fused buffer
        (averaged), on which the loop checks finiteness with one kernel. Memory: one extra copy of the
        gradients (the buffer); the division is in place. No host sync here (sizes come from shapes)."""
        params = [p for p in params if not p.stop_gradient]
        flat, grads, sizes = gradient_sync.flatten(params)
        with self._collective("all_reduce of the gradients"):
            flat, nbytes = gradient_sync.sum_over_ranks(flat, dtype, world=self.world_size, nccl=self._nccl)
        self.all_reduce_calls += 1
        self.all_reduce_bytes += nbytes
        flat.scale_(1.0 / self.world_size)
        gradient_sync.scatter_back(params, grads, sizes, flat)
        return flat

    def gradient_buckets(self, params: Sequence[paddle.Tensor], *, bucket_bytes: int, dtype: str = "fp32"):
        return _GuardedBuckets(self, gradient_sync.buckets_for(
            params, bucket_bytes=bucket_bytes, dtype=dtype, world=self.world_size, nccl=self._nccl,
            count=self._count_bytes))

    def _count_bytes(self, nbytes: int) -> None:
        self.all_reduce_bytes += nbytes
        self.all_reduce_buckets += 1

    def broadcast_parameters(self, params: Sequence[paddle.Tensor], src: int = 0) -> None:
        with paddle.no_grad(), self._collective(f"broadcast of {len(params)} parameter(s) from rank {src}"):
            for p in params:
                dist.broadcast(p, src=src)

    def all_gather_object(self, obj: Any) -> List[Any]:
        out: List[Any] = []
        with self._collective("all_gather_object"):
            dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        with self._collective(f"broadcast_object from rank {src}"):
            dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        with self._collective("barrier"):
            dist.barrier()

    def wait_for_peers(self, name: str) -> None:
        """No limit here: the peer monitor ends this process if a peer fails or falls silent."""
        store = paddle.base.core.create_or_get_global_tcp_store()
        key = f"dynabert/wait_for_peers/{name}"
        store.add(key, 1)
        while store.add(key, 0) < self.world_size:
            time.sleep(0.2)

    def post(self, key: str, value: int) -> None:
        store = paddle.base.core.create_or_get_global_tcp_store()
        store.add(key, value - store.add(key, 0))  # the store only adds: move the counter to ``value``

    def read(self, key: str) -> int:
        return paddle.base.core.create_or_get_global_tcp_store().add(key, 0)

    def shutdown(self) -> None:
        """A barrier, then an explicit destroy: a rank whose peer had already exited was seen to abort
        (SIGABRT, no message) while the interpreter tore gloo down, after finishing its work. The peer
        monitor stops in between: every rank is done, and rank 0's exit is no longer news."""
        with self._collective("the final barrier"):
            dist.barrier()
        if self._monitor is not None:
            self._monitor.stop()
        with self._collective("destroy_process_group"):
            dist.destroy_process_group()

    def fail(self, exit_code: int, message: str, *, may_follow_a_peer: bool = False) -> Tuple[int, str]:
        if self._monitor is None:
            return exit_code, message
        return self._monitor.fail(exit_code, message, may_follow_a_peer=may_follow_a_peer)

    def leave(self) -> None:
        if self._monitor is not None:
            self._monitor.leave()

    def run_on_main(self, fn):
        """Gloo (CPU) gives up on a collective after 30 s (gloo's default, not configurable through Paddle
        2.6's ProcessGroupGloo), and rank-0-only work such as importance takes longer. So the other ranks
        do not wait in a collective: they poll a counter in the job's TCP store, the one
        init_parallel_env created (its ``add`` never blocks), until rank 0 bumps it. No time limit here:
        if rank 0 fails or falls silent the peer monitor ends this process, and if rank 0 dies the store
        goes with it, so ``add`` fails at once."""
        self._main_jobs += 1
        key = f"dynabert/run_on_main/{self._main_jobs}"
        store = paddle.base.core.create_or_get_global_tcp_store()
        if self.rank == 0:
            try:
                return fn()
            finally:
                store.add(key, 1)  # also on failure: the launcher then stops everyone with rank 0's error
        while store.add(key, 0) < 1:
            time.sleep(0.2)
        return None
