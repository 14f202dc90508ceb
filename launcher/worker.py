"""The worker entry point: one process of a (possibly distributed) job.

    python -m launcher.worker --config configs/demo.yaml [--set a.b=v ...]
    python -m paddle.distributed.launch --nproc_per_node 2 launcher/worker.py --config ...

Plain ``python -m launcher.worker`` runs single-process with no launcher at all.
"""
import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launcher.worker", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (defaults are used for anything it leaves out)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set compress.widths=[1.0,0.5]")
    p.add_argument("--resume", default=None, help="'auto' or a checkpoint directory")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run.out_dir that holds an earlier run: delete its outputs first")
    return p.parse_args(argv)


def _default_threads() -> None:
    """Run directly (no launcher, nothing set): use the machine's cores. Paddle's CPU kernels read
    OMP_NUM_THREADS and MKL_NUM_THREADS once, and ``import paddle`` sets OMP to 1 when it is unset, so
    this must run before paddle loads. Under dynabert-launch both are already set per process."""
    if "OMP_NUM_THREADS" not in os.environ:
        threads = str(max(1, os.cpu_count() or 1))
        os.environ["OMP_NUM_THREADS"] = threads
        os.environ.setdefault("MKL_NUM_THREADS", threads)


def main(argv=None) -> int:
    from dynabert.errors import UserError
    from launcher.config import dump_config, load_config

    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        _default_threads()
        from paddlenlp.utils.log import logger as paddlenlp_logger

        from dynabert.pipeline import run
        from launcher.fleet_setup import init_collectives
        from launcher.run_dir import check_fresh_start

        paddlenlp_logger.set_level("WARNING")  # its INFO lines ("Configuration saved in ...") drown ours
        comms = init_collectives()
        check_fresh_start(cfg, comms, args.resume, args.overwrite)  # before anything is written
        run(cfg, comms, config_text=dump_config(cfg), resume=args.resume)
        comms.shutdown()
    except UserError as e:
        # No comms.shutdown() here: its barrier would wait for peers that may still be training (an error
        # only this rank saw) until the collective watchdog gives up, turning exit 2 into exit 4. The
        # launcher stops the other ranks when this one exits.
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    # Run as a script path by paddle.distributed.launch: make the project importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
