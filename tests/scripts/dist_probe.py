"""A worker for the multi-process tests: runs the real compress path (importance on rank 0, broadcast,
supernet steps, distributed evaluation) on a tiny model and dumps what the tests check, per rank.

    python tests/scripts/dist_probe.py OUT_DIR --config configs/tiny.yaml --set ...
    python -m paddle.distributed.launch --nproc_per_node 2 tests/scripts/dist_probe.py OUT_DIR ...

All-reduce calls and bytes are read from the counters PaddleCollectives keeps.
"""
import hashlib
import json
import os
import sys
import zlib  # noqa: F401  (before paddle: defect 1 in docs/upstream-defects.md)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402

import dynabert  # noqa: E402,F401
from dynabert.data.batching import GlobalBatches  # noqa: E402
from dynabert.model import pretrained  # noqa: E402
from dynabert.model.outputs import HiddenStates, forward
from dynabert.model.supernet import Supernet  # noqa: E402
from dynabert.stages.common import seed_everything  # noqa: E402
from dynabert.stages.compress import importance_and_reorder  # noqa: E402
from dynabert.stages.prepare import prepare_data  # noqa: E402
from dynabert.train.evaluation import metrics_on  # noqa: E402
from dynabert.train.loop import LoopSettings, gradient_buckets, losses_to_floats, train  # noqa: E402
from dynabert.train.run_log import RunLog  # noqa: E402
from dynabert.train.step import supernet_step  # noqa: E402
from launcher.config import load_config  # noqa: E402
from launcher.fleet_setup import init_collectives, world_size_from_env  # noqa: E402


def digest(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.numpy().tobytes())
    return h.hexdigest()


def process_groups() -> list:
    """The ranks of every process group of more than one process this process belongs to or created."""
    if world_size_from_env() <= 1:
        return []
    from paddle.distributed import collective

    return sorted(list(g.ranks) for g in collective._get_group_map().values() if g.nranks > 1)


def main():
    out_dir = sys.argv[1]
    argv = sys.argv[2:]
    cfg = load_config(argv[argv.index("--config") + 1],
                      [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
    comms = init_collectives()
    log = RunLog(out_dir, enabled=False, rank=comms.rank)
    tokenizer = pretrained.load_tokenizer(cfg.model.name_or_path)
    data = prepare_data(cfg, tokenizer, log)
    seed_everything(cfg.run.seed)
    teacher = pretrained.load_model(cfg.model.name_or_path, data.num_classes, cfg.model.dropout, seed=cfg.run.seed)
    if comms.rank == 1:  # make rank 1 different before the broadcast, so the broadcast must do its job
        with paddle.no_grad():
            for p in teacher.parameters():
                p.set_value(p.numpy() + 1.0)
    importance_and_reorder(teacher, data, cfg, comms, log)
    report = {"rank": comms.rank, "world_size": comms.world_size,
              "after_broadcast": digest(teacher.parameters()), "process_groups": process_groups()}

    supernet = Supernet(teacher, cfg.compress.widths)
    paddle.seed(cfg.run.seed + 1 + comms.rank)
    student_states, teacher_states = HiddenStates(supernet.model), HiddenStates(teacher)
    reps = []

    poison = os.environ.get("PROBE_NAN_ON_RANK1_AT_CALL")  # 1-based step_fn call to poison on rank 1
    named_params = list(supernet.model.named_parameters())
    overlap = gradient_buckets(comms, named_params, cfg.compress.optim)  # as the compress stage does

    def step_fn(batch, step):
        if poison and comms.rank == 1 and len(reps) + 1 == int(poison):
            batch = {**batch, "attention_mask": batch["attention_mask"] * float("nan")}
        losses = losses_to_floats(supernet_step(supernet, student_states, teacher, teacher_states, batch,
                                                supernet.widths, cfg.compress.lambda_distill,
                                                cfg.compress.lambda_logit, data.regression,
                                                last_backward=overlap and overlap.armed))
        reps.append({k: v for k, v in losses.items() if k.endswith("/rep")})
        return losses

    batches = GlobalBatches(data.train, cfg.compress.optim.batch_size, cfg.run.seed, comms.rank,
                            comms.world_size, data.pad_token_id, data.pad_to)
    calls_before = (getattr(comms, "all_reduce_calls", 0), getattr(comms, "all_reduce_bytes", 0))
    supernet.train()
    settings = LoopSettings(tag="compress", seed=cfg.run.seed, log_every=1, show_progress=False,
                            on_nonfinite=cfg.run.on_nonfinite)
    outcome = train(step_fn, named_params=named_params, optim=cfg.compress.optim,
                    batches=batches, comms=comms, log=log, settings=settings, overlap=overlap)
    report["steps"] = outcome.steps
    report["skipped_steps"] = outcome.skipped_steps
    report["all_reduce_calls"] = getattr(comms, "all_reduce_calls", 0) - calls_before[0]
    report["all_reduce_bytes"] = getattr(comms, "all_reduce_bytes", 0) - calls_before[1]
    report["all_reduce_buckets"] = getattr(comms, "all_reduce_buckets", 0)
    report["param_bytes"] = sum(int(p.numel()) * p.element_size() for p in supernet.parameters())
    report["losses"] = outcome.losses
    report["local_reps"] = reps
    report["after_training"] = digest(supernet.parameters())

    supernet.eval()
    report["metrics"] = {}
    with student_states.paused():
        for width in supernet.widths:
            supernet.set_width(width)
            report["metrics"][f"{width:g}"] = metrics_on(data.dev, lambda b: forward(supernet, b), data, cfg, comms)
    np.savez(os.path.join(out_dir, f"params_rank{comms.rank}.npz"),
             **{k: v.numpy() for k, v in supernet.state_dict().items()})
    with open(os.path.join(out_dir, f"report_rank{comms.rank}.json"), "w") as f:
        json.dump(report, f)
    comms.shutdown()  # as launcher/worker.py does: leave the group together before the interpreter exits


if __name__ == "__main__":
    main()
