"""``dynabert-launch``: start the worker on N processes (and nodes) through Paddle's launcher.

The command line and environment come from the pure ``build_launch_command``; this module only runs it,
forwards its output, turns a failed job into one line naming the failing rank and its log, restarts the
whole job when asked, and makes Ctrl-C stop every process it started.

What Paddle 2.6.2's launcher does when a rank fails (read in launch/controllers/controller.py, job/pod.py,
and observed on CPU with gloo): it polls every ~1 s, logs ``Container rank N status failed ... code C
log <log_dir>/workerlog.N`` (followed by a dump of the *whole environment*, which we do not forward),
prints the tail of that log, SIGTERMs the other ranks, and exits with the first non-zero exit code *in
rank order* -- usually rank 0's -15 from being killed (exit status 241), not the failing rank's code.
So the failing rank is taken from that log line, never from the launcher's exit status.

Its HTTP master does nothing when a node fails (controllers/master.py: set_status/restart_peer are no-ops),
so the other nodes' launchers keep waiting on their own workers. Those workers learn of the failure
themselves (fleet_setup.PeerMonitor: the failing rank's line and exit code through the job's store, or a
silent peer given up on after DYNABERT_PEER_TIMEOUT with exit code 5) and end; their node's
``--max_restarts`` then relaunches them like any other failure, except after a UserError (2) anywhere.
The last ``error:`` line of the failing rank's log is added to our line, so every node's output says why
the job ended, in the words of the rank that failed first; see docs/gpu-readiness.md.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, TextIO

from dynabert.errors import TrainingDiverged, UserError
from launcher import run_dir, slurm
from launcher.gpu_probe import gpu_labels_for, wants_gpus
from launcher.launch_cmd import (
    EXIT_COLLECTIVE_TIMEOUT,
    EXIT_PEER_LOST,
    LaunchOptions,
    available_cpus,
    build_launch_command,
    choose_gpus,
    describe,
    env_diff,
    log_dir_for,
    worker_log,
)

DEFAULT_WORKER = "launcher.worker"
STOP_GRACE_S = 10  # after SIGTERM, how long the launcher gets to stop its workers before SIGKILL

# controller.py: logger.error(f"Container failed !!!\n{container}"); Container.__str__ is
# "Container rank {rank} status {status} cmd {cmd} code {code} log {errfile} \nenv {env}".
_FAILED_RE = re.compile(r"^Container rank (\d+) status failed cmd .* code (-?\d+) log (.*?)\s*$")

# Worker exit codes that a restart cannot get past, and why: the next attempt reads the same input, or resumes
# from the same checkpoint with the same data order and diverges at the same step.
NOT_RESTARTED = {
    UserError.exit_code: "bad input; not restarted: the next attempt would read the same input",
    TrainingDiverged.exit_code: "training diverged; not restarted: it would resume from the same checkpoint and"
                                " diverge again",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dynabert-launch",
        description="Run the DynaBERT worker data-parallel via python -m paddle.distributed.launch.")
    p.add_argument("--config", required=True, help="YAML config for the worker")
    p.add_argument("--set", action="append", default=[], metavar="A.B=V", help="config override (repeatable)")
    p.add_argument("--out_dir", help="run output directory (becomes --set run.out_dir=...; logs go to OUT_DIR/logs)")
    p.add_argument("--resume", help="auto, or a checkpoint path (passed to the worker)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run directory that holds an earlier run: its outputs are deleted first"
                   " (without it, such a start is refused). First attempt only: restarts resume")
    p.add_argument("--nproc_per_node", type=int,
                   help="processes on this node (default: number of --devices; --device gpu: every usable GPU; else 1)")
    # None: not given; resolve_nodes fills these from Slurm's variables (srun) or with 1 node.
    p.add_argument("--nnodes", type=int, help="number of nodes (default: SLURM_NNODES under srun, else 1)")
    p.add_argument("--master", help="ip:port of node 0's rendezvous; required when --nnodes > 1 (default under"
                   f" srun: the first node of SLURM_JOB_NODELIST, port {slurm.PORT_BASE} + SLURM_JOB_ID mod"
                   f" {slurm.PORT_SPAN})")
    p.add_argument("--node_rank", type=int, help="this node's rank, 0 on the master node (default: SLURM_NODEID"
                   " under srun, else 0)")
    p.add_argument("--host", help="this node's IPv4 address as the other nodes reach it (default: POD_IP if set,"
                   " else with --nnodes > 1 the local address that routes to --master)")
    p.add_argument("--devices", help="GPU ids for this node, e.g. 0,1,2,3 (one process each)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="gpu: check that the GPUs work, then one process per usable GPU unless --devices or"
                   " --nproc_per_node says otherwise; cpu: gloo; auto (default): one process (or --nproc_per_node)"
                   " on the first GPU if Paddle sees one, else on the CPU; CPU when CUDA_VISIBLE_DEVICES is empty")
    p.add_argument("--max_restarts", type=int, default=0,
                   help="relaunch the whole job up to this many times after a failure, with --resume auto (never"
                   " after exit code 2, bad input, or 3, training diverged)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the command and environment changes")
    # Not for users: a module name or a .py path to run instead of the real worker (tests use a fake one).
    p.add_argument("--worker", default=DEFAULT_WORKER, help=argparse.SUPPRESS)
    return p


def resolve_out_dir(args: argparse.Namespace) -> str:
    """The run's output directory (it holds ``logs/``), from the same config the workers will load:
    defaults < YAML < --set < --out_dir. Loading it here also rejects a bad config before any process
    starts."""
    from launcher.config import load_config

    return load_config(args.config, worker_overrides(args)).run.out_dir


def worker_overrides(args: argparse.Namespace) -> List[str]:
    """The worker's ``--set`` values; ``--out_dir`` goes last so it wins over any ``--set run.out_dir``."""
    return list(args.set) + ([f"run.out_dir={args.out_dir}"] if args.out_dir else [])


def worker_command(args: argparse.Namespace, resume: Optional[str], overwrite: bool = False) -> List[str]:
    """What follows the interpreter in each worker's command line."""
    head = [args.worker] if args.worker.endswith(".py") else ["-m", args.worker]
    cmd = head + ["--config", args.config]
    for text in worker_overrides(args):
        cmd += ["--set", text]
    if resume:
        cmd += ["--resume", resume]
    if overwrite:
        cmd += ["--overwrite"]
    return cmd


def options_from_args(args: argparse.Namespace, gpu_labels: Optional[Sequence[str]] = None,
                      out_dir: Optional[str] = None) -> LaunchOptions:
    """``gpu_labels``: the GPUs usable on this node when the job wants GPUs (``gpu_labels_for``);
    ``out_dir``: the run directory if already resolved (``resolve_out_dir``)."""
    nproc, devices = args.nproc_per_node, args.devices
    if wants_gpus(args) and gpu_labels is not None:
        flag = "--device gpu" if args.devices is None else f"--devices {args.devices}"
        devices, nproc = choose_gpus(devices=devices, nproc=nproc, usable=list(gpu_labels), flag=flag)
    elif nproc is None:
        nproc = len(devices.split(",")) if devices else 1
    return LaunchOptions(
        log_dir=log_dir_for(out_dir or resolve_out_dir(args), args.nnodes, args.node_rank), nproc_per_node=nproc,
        nnodes=args.nnodes, master=args.master, node_rank=args.node_rank, devices=devices, device=args.device,
        max_restarts=args.max_restarts, host=args.host)


def resolve_nodes(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """Fill in --nnodes, --node_rank and --master where not given: from Slurm's variables under srun, else
    one node. Returns what came from Slurm, for the log ("" if nothing did)."""
    args.nnodes, args.node_rank, args.master, note = slurm.node_flags(args.nnodes, args.node_rank, args.master, env,
                                                                      resolve=ipv4_of)
    return note


def ipv4_of(host: str) -> str:
    """The IPv4 address ``host`` resolves to here (Paddle's launcher needs the master as an address)."""
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except (socket.gaierror, IndexError) as e:
        raise UserError(f"SLURM_JOB_NODELIST: cannot resolve the first node {host} to an IPv4 address"
                        f" ({getattr(e, 'strerror', None) or e}); pass --master IP:PORT") from None


def source_ip_towards(host: str) -> Optional[str]:
    """The local IPv4 address this machine uses to reach ``host`` (connecting a UDP socket sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return None


@dataclass
class JobResult:
    returncode: int  # the Paddle launcher's own exit status
    failed_rank: Optional[int] = None  # local rank (index on this node) Paddle reported as failed
    failed_code: Optional[int] = None
    failed_log: Optional[str] = None
    failed_message: Optional[str] = None  # the last ``error:`` line of that rank's log, without "error: "

    def rank_text(self, opts: LaunchOptions) -> str:
        g = opts.global_rank(self.failed_rank)
        return f"rank {g}" if opts.nnodes == 1 else f"rank {g} (node {opts.node_rank}, local rank {self.failed_rank})"

    def log_path(self, opts: LaunchOptions) -> str:
        return self.failed_log or worker_log(opts.log_dir, self.failed_rank)

    def exit_status(self) -> int:
        """The failing rank's own status (a worker UserError stays 2); signals as 128+N like a shell."""
        code = self.failed_code
        if code is None:
            return 1
        if code < 0:
            return min(128 - code, 255)
        return code if 0 < code < 256 else 1

    def explain(self, opts: LaunchOptions, why: str = "") -> str:
        """One line about the failure; ``why``: what the exit code means and why the job was not restarted;
        the failing rank's own one-line error follows when its log has one."""
        if self.failed_rank is not None:
            said = f": {self.failed_message}" if self.failed_message else ""
            return self._rank_failure(opts, why) + said
        if opts.nnodes > 1:
            return (f"the job stopped (Paddle launcher exit code {self.returncode}) with no failed rank on this"
                    f" node; a rank on another node may have failed (logs: {opts.log_dir})")
        return f"the Paddle launcher exited with code {self.returncode} before any rank failed (logs: {opts.log_dir})"

    def _rank_failure(self, opts: LaunchOptions, why: str = "") -> str:
        log = self.log_path(opts)
        why = f"{why}; " if why else ""
        if self.failed_code == EXIT_COLLECTIVE_TIMEOUT:
            return (f"{self.rank_text(opts)} stopped waiting in a collective (exit code {self.failed_code}): a rank"
                    f" {'on another node ' if opts.nnodes > 1 else ''}has probably died (see {log})")
        if self.failed_code == EXIT_PEER_LOST:
            return f"{self.rank_text(opts)} lost a peer rank (exit code {self.failed_code}; see {log})"
        return f"{self.rank_text(opts)} failed with exit code {self.failed_code} ({why}see {log})"


def last_error_line(path: str, tail_bytes: int = 65536) -> Optional[str]:
    """The text of the last ``error: ...`` line in a worker log (the worker prints its one-line error last),
    or None if there is none or the log cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - tail_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    errors = [line[len("error: "):].strip() for line in text.splitlines() if line.startswith("error: ")]
    return errors[-1] if errors else None


def pump_output(stream, out: TextIO, err: TextIO) -> Optional[tuple]:
    """Forward the launcher's merged output (its ``LAUNCH ...`` log lines to ``err``, the rank-0 log it
    tails to ``out``); return ``(local_rank, code, log)`` of the first rank Paddle reports as failed."""
    failure = None
    skip_env_dump = False
    for line in stream:
        if skip_env_dump and line.startswith("env {"):
            skip_env_dump = False  # the whole environment, secrets included: never on the terminal
            continue
        skip_env_dump = False
        m = _FAILED_RE.match(line)
        if m:
            skip_env_dump = True
            if failure is None:
                failure = (int(m.group(1)), int(m.group(2)), m.group(3))
        dest = err if (m or line.startswith("LAUNCH ")) else out
        dest.write(line)
        dest.flush()
    return failure


def run_job(argv: Sequence[str], env: dict, out: TextIO, err: TextIO) -> JobResult:
    # A session of its own: the launcher (and, through it, the workers) is stopped by us, not by the
    # terminal, so Ctrl-C always goes through stop_job's SIGTERM-then-SIGKILL sequence.
    proc = subprocess.Popen(list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    try:
        failure = pump_output(proc.stdout, out, err)
        returncode = proc.wait()
    except BaseException:
        stop_job(proc)
        raise
    finally:
        proc.stdout.close()
    if failure is None:
        return JobResult(returncode)
    return JobResult(returncode, *failure, failed_message=last_error_line(failure[2]))


def stop_job(proc: subprocess.Popen) -> None:
    """SIGTERM the launcher, which stops its workers; after STOP_GRACE_S (or a second Ctrl-C), SIGKILL
    the launcher and every process group under it. Workers run in sessions of their own (Paddle starts
    them with setsid), so killing the launcher's group alone would orphan them."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    groups = {proc.pid}
    for p in tree:
        try:
            groups.add(os.getpgid(p.pid))
        except OSError:
            pass
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    if pgid == os.getpgrp():  # never our own group (and the terminal's)
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return int(e.code or 0)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a scheduler's kill stops the job too
    try:
        return _launch(args, sys.stdout, sys.stderr)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted: stopped the launcher and all ranks", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _launch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not os.path.isfile(args.config):
        raise UserError(f"--config {args.config}: file not found")
    if args.overwrite and args.resume:
        raise UserError(run_dir.CONFLICT)  # the worker would refuse it too, after the launcher's start-up
    base_env, cpus = dict(os.environ), available_cpus()
    slurm_note = resolve_nodes(args, base_env)
    out_dir = resolve_out_dir(args)  # a bad config is reported before the GPU check
    opts = options_from_args(args, gpu_labels_for(args, base_env, sys.executable), out_dir)
    gpu_note = "every usable GPU: no --devices or --nproc_per_node given" if (
        wants_gpus(args) and args.devices is None and args.nproc_per_node is None) else ""
    route_ip = source_ip_towards(opts.master.rpartition(":")[0]) if opts.nnodes > 1 and opts.master else None
    resume, overwrite = args.resume, args.overwrite
    for attempt in range(opts.max_restarts + 1):
        argv, env = build_launch_command(opts, worker_command(args, resume, overwrite), base_env=base_env,
                                         cpu_count=cpus, route_ip=route_ip)
        line = describe(opts, env, cpus, base_env, route_ip=route_ip, gpu_note=gpu_note)
        if args.dry_run:
            print(f"# {line}", file=out)
            if slurm_note:
                print(f"# {slurm_note}", file=out)
            print("# environment changes for the launcher and its workers:", file=out)
            for change in env_diff(base_env, env):
                print(change, file=out)
            print(shlex.join(argv), file=out)
            return 0
        if attempt == 0:
            print(f"dynabert-launch: {line}", file=err, flush=True)
            if slurm_note:
                print(f"dynabert-launch: {slurm_note}", file=err, flush=True)
        result = run_job(argv, env, out, err)
        if result.returncode == 0:
            return 0
        status = result.exit_status()
        why = NOT_RESTARTED.get(status, "") if attempt < opts.max_restarts else ""
        if attempt == opts.max_restarts or why:
            print(f"error: {result.explain(opts, why)}", file=err, flush=True)
            return status
        what = (f"{result.rank_text(opts)} failed (see {result.log_path(opts)})"
                if result.failed_rank is not None and result.failed_code != EXIT_COLLECTIVE_TIMEOUT
                else result.explain(opts))
        print(f"restart {attempt + 1}/{opts.max_restarts} after {what}", file=err, flush=True)
        # The failed attempt's newest checkpoint; never --overwrite again, which would delete it.
        resume, overwrite = "auto", False
    raise AssertionError("unreachable")


if __name__ == "__main__":
    sys.exit(main())
