"""``--nnodes``, ``--node_rank`` and ``--master`` from Slurm's environment, so that one line of an sbatch
script, ``srun dynabert-launch --config my.yaml``, starts the job on every node of the allocation.

srun gives each task: ``SLURM_NNODES`` (nodes in the job), ``SLURM_NODEID`` (this node's index among them;
node 0 is the first of the list), ``SLURM_JOB_NODELIST`` (the job's nodes, compressed: ``node[01-04,07]``,
``a1,b2``), ``SLURM_JOB_ID``, and, for an srun step only, ``SLURM_STEP_NUM_NODES``/``SLURM_STEP_NUM_TASKS``.
Flags given on the command line win; the rest default from these. The master is the first node's IPv4
address (Paddle's launcher decides who hosts the rendezvous by comparing IPs, so a name will not do) and
port ``PORT_BASE + SLURM_JOB_ID mod PORT_SPAN``: two jobs sharing a node get different ports, and the range
stays below Linux's ephemeral ports (32768 up), which outgoing connections take.

The node list is expanded here rather than by ``scontrol show hostnames``: scontrol needs the Slurm client,
its slurm.conf and a round trip to slurmctld from every node at once, and compute nodes and containers
often have neither; the syntax is small (comma-separated names, each with ``[ranges]`` whose numbers keep
the lower bound's zero padding). Everything here is pure: resolving the host name is the caller's.
"""
import ipaddress
import re
from dataclasses import dataclass
from itertools import product
from typing import Callable, List, Mapping, Optional, Tuple

from dynabert.errors import UserError

PORT_BASE, PORT_SPAN = 20000, 10000  # the master's default port: PORT_BASE + SLURM_JOB_ID % PORT_SPAN
_PART = re.compile(r"\[([^\[\]]*)\]|([^\[\]]+)")  # a bracketed range list, or plain text


def expand_hostlist(text: str, var: str = "SLURM_JOB_NODELIST") -> List[str]:
    """Every host name of a Slurm hostlist expression, in order: ``node[01-03,07],login`` ->
    node01 node02 node03 node07 login; several brackets in one name multiply out, the first varying slowest."""
    def bad(why: str) -> UserError:
        return UserError(f"{var}={text!r}: {why}")

    names, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):  # split on the commas outside brackets
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise bad("unbalanced brackets")
        if ch == "," and depth == 0:
            item = text[start:i].strip()
            if not item:
                raise bad("an empty host name")
            names += _expand_item(item, bad)
            start = i + 1
    if depth:
        raise bad("unbalanced brackets")
    return names


def _expand_item(item: str, bad: Callable[[str], UserError]) -> List[str]:
    pieces, pos = [], 0
    for m in _PART.finditer(item):
        if m.start() != pos:
            raise bad(f"cannot read {item!r}")
        pieces.append(_expand_ranges(m.group(1), bad) if m.group(1) is not None else [m.group(2)])
        pos = m.end()
    if pos != len(item):
        raise bad(f"cannot read {item!r}")
    return ["".join(p) for p in product(*pieces)]


def _expand_ranges(ranges: str, bad: Callable[[str], UserError]) -> List[str]:
    out = []
    for part in ranges.split(","):
        lo, sep, hi = part.strip().partition("-")
        hi = hi if sep else lo
        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
            raise bad(f"[{ranges}]: expected numbers and ranges such as 01-04,07")
        out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    return out


@dataclass(frozen=True)
class SlurmJob:
    nnodes: int
    node_rank: int
    first_host: str
    port: int
    nodelist: str


def job_from_env(env: Mapping[str, str]) -> Optional[SlurmJob]:
    """The job's nodes as Slurm describes them, or None outside Slurm (any of the three variables missing)."""
    if not all(env.get(k, "").strip() for k in ("SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST")):
        return None
    nnodes, node_id = _int(env, "SLURM_NNODES", 1), _int(env, "SLURM_NODEID", 0)
    nodelist = env["SLURM_JOB_NODELIST"].strip()
    hosts = expand_hostlist(nodelist)
    if len(hosts) != nnodes:
        raise UserError(f"SLURM_JOB_NODELIST={nodelist} names {len(hosts)} node(s) but SLURM_NNODES={nnodes}")
    if node_id >= nnodes:
        raise UserError(f"SLURM_NODEID={node_id}: must be below SLURM_NNODES={nnodes}")
    job_id = env.get("SLURM_JOB_ID", "").strip()
    port = PORT_BASE + (int(job_id) % PORT_SPAN if job_id.isdigit() else 0)
    return SlurmJob(nnodes, node_id, hosts[0], port, nodelist)


def _int(env: Mapping[str, str], var: str, minimum: int) -> int:
    text = env[var].strip()
    if not text.isdigit() or int(text) < minimum:
        raise UserError(f"{var}={text!r}: expected an integer >= {minimum}")
    return int(text)


def node_flags(nnodes: Optional[int], node_rank: Optional[int], master: Optional[str], env: Mapping[str, str],
               resolve: Callable[[str], str]) -> Tuple[int, int, Optional[str], str]:
    """``(nnodes, node_rank, master, note)``: the flags given (None: not given), the rest from Slurm when
    its variables are set, else 1 node. ``resolve`` turns the first node's name into an IPv4 address;
    ``note`` says what came from Slurm ("" when nothing did)."""
    job = job_from_env(env) if None in (nnodes, node_rank, master) else None
    if job is None or (job.nnodes if nnodes is None else nnodes) == 1:  # one node: no rank, no rendezvous
        return 1 if nnodes is None else nnodes, 0 if node_rank is None else node_rank, master, ""
    taken = []
    if nnodes is None:
        _check_step(env, job)
        nnodes = job.nnodes
        taken.append(f"--nnodes {nnodes} (SLURM_NNODES)")
    if node_rank is None:
        node_rank = job.node_rank
        taken.append(f"--node_rank {node_rank} (SLURM_NODEID)")
    if master is None:
        master = f"{_master_ip(job.first_host, resolve, job.port)}:{job.port}"
        taken.append(f"--master {master} (first node of SLURM_JOB_NODELIST={job.nodelist}, port {PORT_BASE} + "
                     f"SLURM_JOB_ID mod {PORT_SPAN})")
    return nnodes, node_rank, master, "from Slurm: " + ", ".join(taken)


def _check_step(env: Mapping[str, str], job: SlurmJob) -> None:
    """SLURM_NNODES describes the whole job; it is this job's size only when one dynabert-launch runs on each
    of its nodes, as an srun step with one task per node does."""
    step_nodes, step_tasks = env.get("SLURM_STEP_NUM_NODES"), env.get("SLURM_STEP_NUM_TASKS")
    if step_nodes is None:
        raise UserError(f"SLURM_NNODES={job.nnodes} but this is not an srun step (an sbatch script runs on the first"
                        " node only): start one dynabert-launch per node with `srun --ntasks-per-node=1 dynabert-launch"
                        " ...`, or pass --nnodes 1 to use this node alone")
    if step_nodes.strip() != str(job.nnodes):
        raise UserError(f"SLURM_STEP_NUM_NODES={step_nodes} but SLURM_NNODES={job.nnodes}: this srun step runs on part"
                        " of the job, whose SLURM_NODEID counts all its nodes; run it on every node, or pass --nnodes,"
                        " --node_rank and --master")
    if step_tasks is not None and step_tasks.strip() != step_nodes.strip():
        raise UserError(f"SLURM_STEP_NUM_TASKS={step_tasks} on {step_nodes} nodes: start one dynabert-launch per node"
                        " (srun --ntasks-per-node=1); it starts the node's processes itself")


def _master_ip(host: str, resolve: Callable[[str], str], port: int) -> str:
    ip = resolve(host)
    literal = host == "localhost" or _is_ipv4(host)
    if ipaddress.IPv4Address(ip).is_loopback and not literal:
        # A node's own name often maps to 127.0.1.1 in its /etc/hosts: node 0 would then wait on an address
        # no other node can reach.
        raise UserError(f"SLURM_JOB_NODELIST: the first node {host} resolves to {ip} here, a loopback address the"
                        " other nodes cannot reach; pass --master with its IPv4 address, e.g. --master"
                        f" 10.0.0.1:{port}")
    return ip


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False
