"""The ``python -m paddle.distributed.launch`` command line and environment, as plain data.

``build_launch_command`` is a pure function (no I/O, no probing of the machine): everything it needs,
including the parent's environment and the CPU count, comes in as arguments, so tests check it as data.
Facts about Paddle 2.6.2's launcher (paddle/distributed/launch/) that shape it:

* It takes a *script*, not ``-m module``: a ``training_script`` ending in ``.py`` is run as
  ``python -u script``, anything else is executed as given with the rest of the line as its arguments.
  We pass the interpreter itself as the "script" and ``-m launcher.worker ...`` as its arguments, so the
  worker runs as a module (package imports work, nothing in the worker has to change).
  An extra ``-x`` *before* the script would switch the launcher to its legacy mode (unknown args).
* Environment variables beat flags: ``PADDLE_MASTER``, ``PADDLE_NNODES``, ``PADDLE_RANK``,
  ``PADDLE_TRAINER_ID`` (-> ``--rank``), ``PADDLE_LOG_DIR``... left over from an enclosing job
  silently override what we pass, and ``MASTER_ADDR``/``MASTER_PORT`` override the rendezvous in
  ``init_parallel_env``. They are removed from the child's environment (see ``_STALE_KEYS``).
* ``import paddle`` sets ``OMP_NUM_THREADS=1`` when it is unset, and the launcher copies its environment
  to the workers: without an explicit value every worker runs one thread. ``MKL_NUM_THREADS`` overrides
  OMP for Paddle's MKL kernels (measured: OMP=2 MKL=1 is as slow as one thread), so both are set.
* Device selection is by ``CUDA_VISIBLE_DEVICES`` *presence*: if it is set at all (even on a CPU build)
  the launcher assumes GPUs and assigns ``FLAGS_selected_gpus``; otherwise it probes the build. On CPU it
  sets ``PADDLE_DISTRI_BACKEND=gloo`` per worker itself.
* With ``--rank`` but no ``--master`` it warns about "auto mode", so the node rank is only passed for
  multi-node jobs. ``--max_restart`` only acts in etcd elastic mode; restarts are ours (see cli.py).
* The HTTP rendezvous (``--master ip:port``) is hosted by the node whose IP equals the master host; a
  host *name* matches no node, nobody hosts it and every node waits forever. So we require an IPv4 address.
* A node's own IP is ``gethostbyname(getfqdn())`` (context/node.py), 127.0.1.1 on a default Debian
  install: node 0 would not host the rendezvous it was told to host, and peers would dial their own
  loopback. ``--host`` (or ``POD_IP``, which overrides ``--host`` inside Paddle) replaces it; we pass one
  explicit ``--host`` (the user's flag, else ``POD_IP``, else the local address that routes to the master).
* Launch plugins (plugins/__init__.py: collective_compatible) let ``PADDLE_TRAINER_ENDPOINTS`` and
  ``DISTRIBUTED_TRAINER_ENDPOINTS`` replace ``--master`` and ``--nnodes``: both are removed. The rendezvous
  client is httpx, which honours ``HTTP_PROXY``/``ALL_PROXY`` (the launcher drops only the lower-case
  ``http_proxy``/``https_proxy``), so the master's IP is added to ``NO_PROXY``.
* Worker logs are ``<log_dir>/workerlog.<local rank>`` (controllers/collective.py), opened for append: on a
  shared filesystem every node would write the same files, so each node of a multi-node job gets its own
  ``<out_dir>/logs/node<N>/``.

Single process (1 node, 1 process) also goes through the launcher: the same logs (``workerlog.0``), the
same ``PADDLE_*`` environment and the same failure report as N processes, for ~2 s of launcher start-up.
"""
from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from dynabert.errors import UserError

DEVICES = ("auto", "cpu", "gpu")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")

# A rank whose collective has not returned within this many seconds prints one line and exits with
# EXIT_COLLECTIVE_TIMEOUT (launcher/fleet_setup.py); 0 disables. Paddle's own NCCL timeout
# (PADDLE_PG_TIMEOUT, 30 min) only logs (docs/gpu-readiness.md), so this is what ends a rank stuck on a dead peer.
COLLECTIVE_TIMEOUT_ENV = "DYNABERT_COLLECTIVE_TIMEOUT"
DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0
EXIT_COLLECTIVE_TIMEOUT = 4

# How long a rank goes on when another rank gives no sign of life (launcher/fleet_setup.py, PeerMonitor): a
# rank that fails tells the others through the job's store at once; one that dies without a word (SIGKILL,
# a lost machine) or stops answering is given up on after this many seconds, and the ranks that gave up exit
# with EXIT_PEER_LOST; a rank whose process group has not formed by then is killed (exit status 137). The
# default keeps a whole job's end under 2 minutes: 90 s, then at most about 15 s for the other ranks to read
# the news and leave. 0 disables the time limits (a failure that was posted still ends every rank). Long
# waits for a peer that is alive (a node building its corpus cache for an hour) are not limited: the peer
# sends a heartbeat every second meanwhile.
PEER_TIMEOUT_ENV = "DYNABERT_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT_S = 90.0
EXIT_PEER_LOST = 5

# Read by the launcher or by init_parallel_env in place of our flags, or set per worker by the launcher:
# a value inherited from an enclosing job (or a torch habit) would silently win.
_STALE_KEYS = (
    # paddle/distributed/launch/context/args_envs.py: env_args_mapping (env overrides the flag)
    "POD_IP", "PADDLE_MASTER", "PADDLE_DEVICES", "PADDLE_NNODES", "PADDLE_RUN_MODE", "PADDLE_LOG_LEVEL",
    "PADDLE_LOG_OVERWRITE", "PADDLE_SORT_IP", "PADDLE_NPROC_PER_NODE", "PADDLE_JOB_ID", "PADDLE_RANK",
    "PADDLE_LOG_DIR", "PADDLE_MAX_RESTART", "PADDLE_ELASTIC_LEVEL", "PADDLE_ELASTIC_TIMEOUT",
    "PADDLE_SERVER_NUM", "PADDLE_TRAINER_NUM", "PADDLE_SERVERS_ENDPOINTS", "PADDLE_TRAINERS_ENDPOINTS",
    "PADDLE_GLOO_PORT", "PADDLE_WITH_GLOO", "PADDLE_START_PORT", "PADDLE_IPS", "PADDLE_AUTO_PARALLEL_CONFIG",
    # parse_args: PADDLE_TRAINER_ID replaces --rank; init_parallel_env prefers MASTER_ADDR/PORT
    "PADDLE_TRAINER_ID", "MASTER_ADDR", "MASTER_PORT",
    # set per worker by the collective controller; stale copies only confuse a nested launch
    "PADDLE_TRAINERS_NUM", "PADDLE_CURRENT_ENDPOINT", "PADDLE_TRAINER_ENDPOINTS", "PADDLE_GLOBAL_SIZE",
    "PADDLE_LOCAL_SIZE", "PADDLE_GLOBAL_RANK", "PADDLE_LOCAL_RANK", "PADDLE_RANK_IN_NODE",
    "PADDLE_BACKUP_ENV_PATH", "POD_NAME", "COLLECTIVE_MASTER_IP",
    "FLAGS_selected_gpus", "FLAGS_selected_cpus", "PADDLE_DISTRI_BACKEND",
    # plugins/__init__.py collective_compatible: replaces --master and --nnodes (PaddleCloud's variable)
    "DISTRIBUTED_TRAINER_ENDPOINTS",
)


@dataclass(frozen=True)
class LaunchOptions:
    """What the user asked for; validated on construction. Errors name the dynabert-launch flag."""

    log_dir: str  # first: the only field without a default (kw_only dataclasses need Python 3.10)
    nproc_per_node: int = 1
    nnodes: int = 1
    master: Optional[str] = None  # "ip:port" of node 0's rendezvous; required when nnodes > 1
    node_rank: int = 0
    devices: Optional[str] = None  # GPU ids as in CUDA_VISIBLE_DEVICES, e.g. "0,1,2,3"
    device: str = "auto"  # auto: Paddle decides (GPUs if the build has CUDA and sees some, else CPU)
    job_id: str = "dynabert"
    max_restarts: int = 0  # whole-job relaunches, done by cli.py
    host: Optional[str] = None  # this node's IPv4 address as its peers reach it (Paddle's --host)

    def __post_init__(self):
        _positive_int("--nproc_per_node", self.nproc_per_node, minimum=1)
        _positive_int("--nnodes", self.nnodes, minimum=1)
        _positive_int("--node_rank", self.node_rank, minimum=0)
        _positive_int("--max_restarts", self.max_restarts, minimum=0)
        if self.device not in DEVICES:
            raise UserError(f"--device {self.device}: expected one of {', '.join(DEVICES)}")
        if not self.log_dir:
            raise UserError("--out_dir: empty path (the logs go to <out_dir>/logs)")
        if not self.job_id or any(c.isspace() or c in "/\\" for c in self.job_id):
            raise UserError(f"--job_id {self.job_id!r}: must be a non-empty name without spaces or slashes")
        if self.node_rank >= self.nnodes:
            raise UserError(f"--node_rank {self.node_rank}: must be in [0, {self.nnodes}) for --nnodes {self.nnodes}")
        if self.nnodes > 1 and not self.master:
            raise UserError(
                f"--master: required with --nnodes {self.nnodes} (ip:port of node 0, the same on every node)")
        if self.master is not None:
            _check_master(self.master)
        if self.host is not None:
            check_ipv4("--host", self.host, "this node's IPv4 address as the other nodes reach it")
        if self.devices is not None:
            ids = self.device_list
            if self.device == "cpu":
                raise UserError(f"--devices {self.devices}: GPU ids, not valid with --device cpu")
            if len(ids) != self.nproc_per_node:
                raise UserError(
                    f"--devices {self.devices}: {len(ids)} device(s) but --nproc_per_node {self.nproc_per_node}"
                    " (one process per GPU)")

    @property
    def device_list(self) -> List[str]:
        ids = [d.strip() for d in (self.devices or "").split(",")]
        if not ids or any(not d for d in ids):
            raise UserError(f"--devices {self.devices!r}: expected comma-separated GPU ids, e.g. 0,1")
        if len(set(ids)) != len(ids):
            raise UserError(f"--devices {self.devices}: a GPU is listed twice")
        return ids

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def global_rank(self, local_rank: int) -> int:
        # Paddle orders ranks node by node (rank_offset = sum of earlier nodes' replicas).
        return self.node_rank * self.nproc_per_node + local_rank


def _positive_int(flag: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{flag} {value!r}: expected an integer >= {minimum}")


def _check_master(master: str) -> None:
    host, sep, port = master.rpartition(":")
    if "://" in master:
        raise UserError(f"--master {master}: give ip:port without a scheme (etcd:// elastic mode is not supported)")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--master {master}: expected ip:port with an integer port, e.g. 10.0.0.1:8090")
    check_ipv4("--master", master, "use node 0's IPv4 address, not a host name (Paddle's launcher compares it"
               " with each node's IP to decide who hosts the rendezvous)", address=host)


def check_ipv4(what: str, value: str, hint: str, address: Optional[str] = None) -> None:
    try:
        ipaddress.IPv4Address(value if address is None else address)
    except ValueError:
        raise UserError(f"{what} {value}: {hint}") from None


def log_dir_for(out_dir: str, nnodes: int, node_rank: int) -> str:
    """``<out_dir>/logs``; one directory per node when there are several, because Paddle names worker logs
    by *local* rank and appends to them: nodes sharing ``out_dir`` would write into each other's files."""
    logs = os.path.join(out_dir, "logs")
    return os.path.join(logs, f"node{node_rank}") if nnodes > 1 else logs


def gpus_hidden(visible: Optional[str]) -> bool:
    """``CUDA_VISIBLE_DEVICES`` set to nothing (or CUDA's "-1" idiom) hides every GPU. Paddle's launcher
    still sees the variable, assumes GPUs and gives the one empty label to rank 0 as FLAGS_selected_gpus=0
    (context/device.py parse_device) -- or fails with an IndexError for 2+ processes."""
    if visible is None:
        return False
    labels = [x.strip() for x in visible.split(",")]
    return labels[0] in ("", "-1")


def effective_device(opts: LaunchOptions, base_env: Mapping[str, str]) -> str:
    """``--device auto`` with every GPU hidden means CPU; otherwise the user's choice."""
    if opts.device == "auto" and opts.devices is None and gpus_hidden(base_env.get("CUDA_VISIBLE_DEVICES")):
        return "cpu"
    return opts.device


def resolve_host(opts: LaunchOptions, base_env: Mapping[str, str],
                 route_ip: Optional[str] = None) -> Tuple[Optional[str], str]:
    """This node's IP for Paddle's ``--host`` and where it came from: ``--host``, else ``POD_IP`` (Paddle's
    own variable for it, args_envs.py), else ``route_ip`` (the caller's local address towards the master)."""
    if opts.host:
        return opts.host, "--host"
    pod_ip = base_env.get("POD_IP", "").strip()
    if pod_ip:
        check_ipv4("POD_IP", pod_ip, "expected this node's IPv4 address (it becomes Paddle's --host)")
        return pod_ip, "POD_IP"
    if route_ip and opts.nnodes > 1:
        return route_ip, "the local address that routes to the master; --host to override"
    return None, "Paddle's default: gethostbyname(getfqdn())"


def collective_timeout(env: Mapping[str, str]) -> float:
    """Seconds from ``DYNABERT_COLLECTIVE_TIMEOUT`` (default 1800; 0 = no watchdog)."""
    return _seconds(env, COLLECTIVE_TIMEOUT_ENV, DEFAULT_COLLECTIVE_TIMEOUT_S, "0 disables the watchdog")


def peer_timeout(env: Mapping[str, str]) -> float:
    """Seconds from ``DYNABERT_PEER_TIMEOUT`` (default 90; 0 = no time limit on a silent peer)."""
    return _seconds(env, PEER_TIMEOUT_ENV, DEFAULT_PEER_TIMEOUT_S, "0 disables the time limit")


def _seconds(env: Mapping[str, str], var: str, default: float, zero: str) -> float:
    text = env.get(var, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UserError(f"{var}={text!r}: expected seconds >= 0 ({zero})")
    return value


def without_job_variables(base_env: Mapping[str, str]) -> Dict[str, str]:
    """``base_env`` minus what an enclosing job (or a torch habit) left behind that Paddle would obey."""
    return {k: v for k, v in base_env.items() if k not in _STALE_KEYS}


def threads_per_process(opts: LaunchOptions, cpu_count: int, base_env: Mapping[str, str]) -> Tuple[int, str]:
    """Threads for each worker and why. An explicit OMP_NUM_THREADS from the user wins; otherwise the
    node's CPUs are shared out so N processes do not fight over the same cores."""
    user = base_env.get("OMP_NUM_THREADS", "").strip()
    if user.isdigit() and int(user) > 0:
        return int(user), "OMP_NUM_THREADS from the environment"
    n = max(1, cpu_count // opts.nproc_per_node)
    return n, f"{cpu_count} CPUs / {opts.nproc_per_node} process(es)"


def build_launch_command(
    opts: LaunchOptions,
    worker_argv: Sequence[str],
    python: str = sys.executable,
    *,
    base_env: Mapping[str, str],
    cpu_count: int,
    route_ip: Optional[str] = None,
) -> Tuple[List[str], Dict[str, str]]:
    """``(argv, env)`` for the Paddle launcher. ``worker_argv`` is what follows the interpreter in the
    worker's own command line: ``["-m", "launcher.worker", "--config", ...]`` or ``["/path/w.py", ...]``.
    ``route_ip``: this machine's address towards the master (multi-node only), found by the caller."""
    if not worker_argv:
        raise ValueError("worker_argv is empty")
    # A bad value fails here, not in every worker. Both reach the workers through the environment they
    # inherit from the launcher, unchanged: a copy of the default would only add lines to every dry run.
    collective_timeout(base_env)
    peer_timeout(base_env)
    argv = [python, "-m", "paddle.distributed.launch", "--nproc_per_node", str(opts.nproc_per_node)]
    if opts.nnodes > 1:
        argv += ["--nnodes", str(opts.nnodes), "--rank", str(opts.node_rank)]
    if opts.master:
        argv += ["--master", opts.master]
    host, _source = resolve_host(opts, base_env, route_ip)
    if host:
        argv += ["--host", host]
    if opts.devices is not None:
        argv += ["--devices", ",".join(opts.device_list)]
    # --max_restart 0: Paddle's default says 3; it only acts in etcd mode, and restarts are ours anyway.
    argv += ["--log_dir", opts.log_dir, "--job_id", opts.job_id, "--max_restart", "0"]
    argv += [python, *worker_argv]

    env = without_job_variables(base_env)
    threads, _why = threads_per_process(opts, cpu_count, base_env)
    for var in THREAD_VARS:
        env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"  # the launcher tails workerlog.N: unflushed lines would be lost on a crash
    if opts.nnodes > 1 and opts.master and any(base_env.get(k) for k in PROXY_VARS):
        # The launcher reaches the master over HTTP with httpx, which would send it through the proxy.
        master_ip = opts.master.rpartition(":")[0]
        for var in ("NO_PROXY", "no_proxy"):
            hosts = [h for h in env.get(var, "").split(",") if h.strip()]
            env[var] = ",".join(hosts + ([master_ip] if master_ip not in hosts else []))
    if effective_device(opts, base_env) == "cpu":
        # Any CUDA_VISIBLE_DEVICES (even empty) makes the launcher assume GPUs and skip gloo; with it gone,
        # gloo is set here and the worker stays on the CPU even on a GPU build (fleet_setup.init_collectives).
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env["PADDLE_DISTRI_BACKEND"] = "gloo"
    elif opts.device == "gpu" or opts.devices is not None:
        _check_visible_gpus(opts, base_env.get("CUDA_VISIBLE_DEVICES"))
    return argv, env


def _check_visible_gpus(opts: LaunchOptions, visible: Optional[str]) -> None:
    """Paddle maps --devices onto the labels in CUDA_VISIBLE_DEVICES (by position) and hands process i
    label i: catch here what would otherwise be an IndexError/ValueError inside the launcher."""
    if visible is None or visible.strip() == "all":
        return
    labels = [x.strip() for x in visible.split(",") if x.strip()]
    if gpus_hidden(visible):
        flag = f"--devices {opts.devices}" if opts.devices is not None else "--device gpu"
        raise UserError(f"{flag}: CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
    if opts.devices is not None:
        missing = [d for d in opts.device_list if d not in labels]
        if missing:
            raise UserError(f"--devices {opts.devices}: {missing[0]} is not in CUDA_VISIBLE_DEVICES={visible}")
    elif opts.nproc_per_node > len(labels):
        raise UserError(
            f"--nproc_per_node {opts.nproc_per_node}: only {len(labels)} GPU(s) in CUDA_VISIBLE_DEVICES={visible}")


def worker_log(log_dir: str, local_rank: int) -> str:
    """Paddle's collective controller names each local process's output ``<log_dir>/workerlog.<local rank>``."""
    return os.path.join(log_dir, f"workerlog.{local_rank}")


def choose_gpus(*, devices: Optional[str], nproc: Optional[int], usable: Sequence[str], flag: str) -> Tuple[str, int]:
    """``(devices, nproc_per_node)`` of a GPU job on this node, given the GPU labels that work here: the
    ``--devices`` asked for (each must be usable), else the first ``--nproc_per_node`` usable GPUs, else all
    of them, one process each (what Paddle's launcher itself does when given neither)."""
    if not usable:
        raise UserError(f"{flag}: no usable GPU on this node")
    if devices is not None:
        missing = [d.strip() for d in devices.split(",") if d.strip() not in usable]
        if missing:
            raise UserError(f"--devices {devices}: GPU {missing[0]} is not usable here (usable: {','.join(usable)})")
        return devices, len(devices.split(",")) if nproc is None else nproc
    if nproc is None:
        return ",".join(usable), len(usable)
    if nproc > len(usable):
        raise UserError(f"--nproc_per_node {nproc}: only {len(usable)} usable GPU(s) here ({','.join(usable)})")
    return ",".join(usable[:nproc]), nproc


def describe(opts: LaunchOptions, env: Mapping[str, str], cpu_count: int, base_env: Mapping[str, str], *,
             route_ip: Optional[str] = None, gpu_note: str = "") -> str:
    """One line for the user: how many processes, where, how many threads each, this node's IP, the logs."""
    _, why = threads_per_process(opts, cpu_count, base_env)
    threads = env["OMP_NUM_THREADS"]  # report what is actually set
    device = effective_device(opts, base_env)
    if device == "cpu":
        where = "cpu (gloo)" + (", CUDA_VISIBLE_DEVICES hides every GPU" if opts.device == "auto" else "")
    elif opts.devices is not None:
        where = f"gpu {opts.devices}" + (f" ({gpu_note})" if gpu_note else "")
    else:
        where = "gpu" if opts.device == "gpu" else "auto device (Paddle: GPU if its CUDA build sees one, else cpu)"
    nodes = f" x {opts.nnodes} nodes (this is node {opts.node_rank})" if opts.nnodes > 1 else ""
    host, source = resolve_host(opts, base_env, route_ip)
    node_ip = f", node IP {host} ({source})" if host else ""
    return (f"{opts.nproc_per_node} process(es){nodes} on {where}, {threads} thread(s) each"
            f" ({why}){node_ip}, logs in {opts.log_dir}")


def env_diff(base_env: Mapping[str, str], env: Mapping[str, str]) -> List[str]:
    """``+ KEY=value`` for set or changed variables, ``- KEY`` for removed ones, sorted."""
    lines = [f"+ {k}={v}" for k, v in sorted(env.items()) if base_env.get(k) != v]
    lines += [f"- {k}" for k in sorted(base_env) if k not in env]
    return lines


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity), for the caller to pass in."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
