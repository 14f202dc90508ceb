"""The worker entry point: one process of a (possibly distributed) job.

    python -m launcher.worker --config configs/demo.yaml [--set a.b=v ...]
    python -m paddle.distributed.launch --nproc_per_node 2 launcher/worker.py --config ...

Plain ``python -m launcher.worker`` runs single-process with no launcher at all.
"""
import argparse
import os
import sys
import traceback


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
    comms = None
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
        return 0
    except UserError as e:
        code, message, unexpected = e.exit_code, str(e), False
    except Exception as e:
        traceback.print_exc()
        from launcher.fleet_setup import one_line

        code, message, unexpected = 1, one_line(e), True
    # No comms.shutdown() here: its barrier would wait for peers that may still be training (an error only
    # this rank saw). Instead the other ranks learn of this one through the job's store (comms.leave: the
    # same exit code, this line) and end too, on every node, within about a second; this rank's launcher
    # also stops the others on its node when it exits. An unexpected exception (a gloo error, a store call
    # that failed) is usually the consequence of a peer's failure: that one is reported if it came first.
    if comms is not None:
        code, message = comms.fail(code, message, may_follow_a_peer=unexpected)
    print(f"error: {message}", file=sys.stderr, flush=True)
    if comms is not None:
        comms.leave()
    return code


if __name__ == "__main__":
    # Run as a script path by paddle.distributed.launch: make the project importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
