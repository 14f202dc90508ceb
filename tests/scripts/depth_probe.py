"""A worker for the depth-stage multi-process tests: the real pipeline (as launcher.worker runs it), then
this rank's gradient all-reduce count, which only the process itself can see.

    python tests/scripts/depth_probe.py --config configs/tiny.yaml --set ... [--resume auto]
    python -m paddle.distributed.launch --nproc_per_node 2 tests/scripts/depth_probe.py --config ...

Writes ``<run.out_dir>/probe_rank<R>.json``: {"rank", "world_size", "all_reduce_calls", "all_reduce_bytes"}.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import dynabert  # noqa: E402,F401  (zlib before paddle)
from dynabert.pipeline import run  # noqa: E402
from launcher.config import dump_config, load_config  # noqa: E402
from launcher.fleet_setup import init_collectives  # noqa: E402
from launcher.worker import parse_args  # noqa: E402


def main():
    args = parse_args(sys.argv[1:])
    cfg = load_config(args.config, args.set)
    comms = init_collectives()
    run(cfg, comms, config_text=dump_config(cfg), resume=args.resume)
    report = {"rank": comms.rank, "world_size": comms.world_size,
              "all_reduce_calls": getattr(comms, "all_reduce_calls", 0),
              "all_reduce_bytes": getattr(comms, "all_reduce_bytes", 0)}
    with open(os.path.join(cfg.run.out_dir, f"probe_rank{comms.rank}.json"), "w") as f:
        json.dump(report, f)
    comms.shutdown()


if __name__ == "__main__":
    main()
