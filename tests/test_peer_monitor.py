"""How ranks learn that another rank failed or vanished (launcher/fleet_setup.py, PeerMonitor), on a fake
store and a fake clock: no process, no sleep, no timing. The multi-node runs are in tests/test_multinode.py.
"""
import os
import socket
import subprocess
import sys

import pytest

from launcher.fleet_setup import CollectiveWatchdog, PeerMonitor
from launcher.launch_cmd import EXIT_PEER_LOST
from tests.conftest import ROOT


class FakeStore:
    """Paddle's TCPStore as the monitor uses it: integer counters, string values. ``get`` of a missing key
    raises here (the real one waits for it, up to 900 s): the monitor must never ask for one."""

    def __init__(self):
        self.values = {}
        self.gone = False  # rank 0's process has exited: every call fails, as the real client's do

    def _check(self):
        if self.gone:
            raise ValueError("(InvalidArgument) TCP receive error. Details: Connection reset by peer.")

    def add(self, key, amount):
        self._check()
        self.values[key] = self.values.get(key, 0) + amount
        return self.values[key]

    def set(self, key, value):
        self._check()
        self.values[key] = value

    def get(self, key):
        self._check()
        return self.values[key].encode()


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class Exited(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def _exit(code):
    raise Exited(code)


def monitor(store, clock, rank, world_size=3, timeout_s=90.0, lines=None):
    """``lines``: a list that gets what the monitor writes, as (fake time, line)."""
    written = lines if lines is not None else []
    return PeerMonitor(store, rank=rank, world_size=world_size, timeout_s=timeout_s, where="10.0.0.1:6170",
                       clock=clock, sleep=clock.sleep, write=lambda line: written.append((clock.now, line)),
                       exit_process=_exit, guard=CollectiveWatchdog(0, rank))


def test_a_failure_one_rank_reports_reaches_every_other_rank_with_its_exit_code():
    store, clock = FakeStore(), FakeClock()
    m0, m1, m2 = (monitor(store, clock, r) for r in range(3))
    assert m0.poll() is None and m2.poll() is None
    message = "model directory /nonexistent does not exist"
    assert m1.fail(2, message) == (2, message)
    m1.leave()  # the others have not read it yet: rank 1 waits for them at most LINGER_S (of the fake clock)
    for other in (m0, m2):
        failure = other.poll()
        assert (failure.rank, failure.exit_code, failure.line) == (
            1, 2, "rank 1 failed: model directory /nonexistent does not exist")
    assert m1.poll() is None  # its own post is no news to itself


def test_the_first_failure_posted_is_the_one_everybody_reports():
    store, clock = FakeStore(), FakeClock()
    ms = [monitor(store, clock, r, world_size=4) for r in range(4)]
    ms[2].fail(2, "data/train.tsv:7: expected 2 columns")
    ms[2].leave()
    ms[0].fail(1, "RuntimeError: gloo connection closed")  # later, and not asked to defer to a peer
    ms[0].leave()
    assert ms[3].poll().line == "rank 2 failed: data/train.tsv:7: expected 2 columns"
    assert ms[0].poll().rank == 2


def test_an_unexpected_error_defers_to_a_failure_a_peer_posted_first():
    """A gloo error on rank 0 after rank 1 failed is a consequence: rank 0 reports rank 1's line and code."""
    store, clock = FakeStore(), FakeClock()
    m0, m1 = monitor(store, clock, 0, world_size=2), monitor(store, clock, 1, world_size=2)
    m1.fail(2, "GLUE_DIR /data/glue: no such directory")
    m1.leave()
    assert m0.fail(1, "RuntimeError: [gloo] Connection closed by peer", may_follow_a_peer=True) == (
        2, "rank 1 failed: GLUE_DIR /data/glue: no such directory")
    m0.leave()
    assert store.values["dynabert/peers/failures"] == 1  # rank 0 posted nothing of its own


def test_a_user_error_is_reported_as_is_even_after_a_peer_failed():
    store, clock = FakeStore(), FakeClock()
    m0, m1 = monitor(store, clock, 0, world_size=2), monitor(store, clock, 1, world_size=2)
    m1.fail(2, "model directory /a does not exist")
    m1.leave()
    assert m0.fail(2, "model directory /b does not exist") == (2, "model directory /b does not exist")


def test_the_thread_ends_this_process_with_the_failing_ranks_line_within_a_poll():
    store, clock = FakeStore(), FakeClock()
    lines = []
    m0, m1 = monitor(store, clock, 0, world_size=2, lines=lines), monitor(store, clock, 1, world_size=2)
    failed_at = []

    def stopped(seconds):  # the thread's wait between polls: here, rank 1 fails 30 s into the wait
        clock.sleep(seconds)
        if not failed_at and clock.now >= 1030:
            m1.fail(2, "model directory /nonexistent does not exist")
            m1.leave()
            failed_at.append(clock.now)
        return False

    with pytest.raises(Exited) as ended:
        m0.watch(stopped)
    assert ended.value.code == 2
    (written_at, line), = lines
    assert line == "error: rank 1 failed: model directory /nonexistent does not exist"
    assert written_at - failed_at[0] <= PeerMonitor.POLL_S
    # It leaves after the failing rank (which had nobody left to wait for), so that Paddle's launcher on a
    # node with both names the failing rank.
    assert clock.now - written_at == PeerMonitor.OUTLIVE_S


@pytest.mark.parametrize("timeout_s", [20.0, 90.0])
@pytest.mark.parametrize("phase", [0.0, 0.3, 1.0, 2.5, 4.0, 4.9])
def test_a_silent_rank_is_given_up_on_within_the_timeout_of_its_last_heartbeat(timeout_s, phase):
    """Rank 2 dies (no word) at a time that falls anywhere in rank 0's checking schedule."""
    store, clock = FakeStore(), FakeClock()
    ms = [monitor(store, clock, r, timeout_s=timeout_s) for r in range(3)]
    death = clock.now + 300 + phase
    found, last_heartbeat = None, None
    while found is None:
        clock.sleep(0.5)
        found = ms[0].poll()
        assert ms[1].poll() is None  # the other ranks watch rank 0 only; rank 0 tells them
        if clock.now < death:
            assert ms[2].poll() is None
            last_heartbeat = clock.now
    assert found.rank == 2 and found.exit_code == EXIT_PEER_LOST and found.lost
    assert last_heartbeat + ms[0].silence_s <= clock.now <= last_heartbeat + timeout_s
    assert found.line.startswith("rank 2 has given no sign of life for ")
    assert found.line.endswith(f"it has probably died or hung (DYNABERT_PEER_TIMEOUT={timeout_s:g} sets the limit,"
                               " 0 disables)")


def test_a_slow_live_peer_is_never_given_up_on():
    """A peer building its corpus cache for an hour, whose heartbeats are sometimes late by a minute (a
    starved thread on a loaded machine): well under the silence limit, it is waited for."""
    store, clock = FakeStore(), FakeClock()
    m0, m1 = monitor(store, clock, 0, world_size=2), monitor(store, clock, 1, world_size=2)
    start = clock.now
    while clock.now < start + 3600:
        clock.sleep(1.0)
        assert m0.poll() is None
        if int(clock.now - start) % 300 < 240:  # one minute of silence every five
            assert m1.poll() is None
    assert m0.silence_s - m0.check_every > 60


def test_the_lost_rank_is_posted_for_the_others_who_then_do_not_wait_for_it():
    store, clock = FakeStore(), FakeClock()
    lines = {r: [] for r in range(3)}
    ms = [monitor(store, clock, r, timeout_s=20.0, lines=lines[r]) for r in range(3)]
    assert ms[2].poll() is None  # rank 2's one heartbeat: then it is gone

    def rank_1_lives(seconds):
        clock.sleep(seconds)
        assert ms[1].poll() is None
        return False

    with pytest.raises(Exited) as ended:
        ms[0].watch(rank_1_lives)  # ends after telling the others, and waiting (LINGER_S) for rank 1 to read it
    assert ended.value.code == EXIT_PEER_LOST and lines[0][0][1].startswith("error: rank 2 has given no sign of life")
    before = clock.now
    with pytest.raises(Exited) as ended:
        ms[1].watch(lambda seconds: clock.sleep(seconds))
    assert ended.value.code == EXIT_PEER_LOST and lines[1][0][1] == lines[0][0][1]
    assert clock.now - before == PeerMonitor.POLL_S  # one poll, then no wait: ranks 0 and 1 have both read it


def test_rank_0_gone_is_reported_by_the_others_at_once():
    store, clock = FakeStore(), FakeClock()
    m1 = monitor(store, clock, 1)
    assert m1.poll() is None
    store.gone = True
    failure = m1.poll()
    assert failure.exit_code == EXIT_PEER_LOST and failure.rank == 0 and not failure.tell_others
    assert failure.line.startswith("rank 0 is gone: the job's store at 10.0.0.1:6170, which lives in its process,"
                                   " stopped answering (ValueError: (InvalidArgument) TCP receive error.")
    assert m1.fail(1, "ValueError: TCP receive error", may_follow_a_peer=True) == (EXIT_PEER_LOST, failure.line)
    m1.leave()  # nobody to tell, and no error


def test_zero_timeout_still_reports_a_posted_failure_but_never_gives_up_on_silence():
    store, clock = FakeStore(), FakeClock()
    m0, m1 = monitor(store, clock, 0, world_size=2, timeout_s=0), monitor(store, clock, 1, world_size=2, timeout_s=0)
    for _ in range(10_000):
        clock.sleep(1.0)
        assert m0.poll() is None
    m1.fail(3, "non-finite loss at step 12")
    m1.leave()
    assert m0.poll().exit_code == 3


def test_a_job_that_ended_well_stops_watching_before_rank_0_leaves():
    store, clock = FakeStore(), FakeClock()
    m0, m1 = monitor(store, clock, 0, world_size=2), monitor(store, clock, 1, world_size=2)
    m1.stop()
    before = clock.now
    m0.stop()
    assert clock.now == before  # rank 1 had stopped: rank 0 leaves at once
    assert m1.fail(1, "RuntimeError: in destroy_process_group") == (1, "RuntimeError: in destroy_process_group")
    m1.leave()
    assert store.values.get("dynabert/peers/failures", 0) == 0  # after the end nothing is posted


def test_rank_0_waits_for_every_rank_to_stop_watching_at_most_the_timeout():
    store, clock = FakeStore(), FakeClock()
    m0 = monitor(store, clock, 0, world_size=2, timeout_s=60.0)
    before = clock.now
    m0.stop()  # rank 1 never stops (it died after the final barrier)
    assert 60.0 <= clock.now - before <= 61.0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist  # a child process
def test_a_rendezvous_that_holds_the_interpreter_lock_is_ended_from_outside():
    """Paddle 2.6.2's TCPStore rendezvous (rank 0 waiting for a rank that never connects) holds the GIL:
    only a process outside can end it."""
    code = ("import dynabert, paddle\n"
            "from launcher.fleet_setup import killed_after\n"
            "with killed_after(1.0, 'error: rank 0: the process group did not form within 1 s'):\n"
            "    paddle.base.core.create_or_get_global_tcp_store()\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT,
           "PADDLE_TRAINER_ID": "0", "PADDLE_TRAINERS_NUM": "2", "PADDLE_MASTER": f"127.0.0.1:{_free_port()}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT)
    assert done.returncode == -9, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: rank 0: the process group did not form within 1 s"], done.stderr[-3000:]
