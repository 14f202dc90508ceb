"""Stage 5, ``select``: choose the sub-model by measured latency (dynabert/deploy).

Every exported sub-model in each runtime (Paddle Inference, ONNX Runtime) and precision (fp32, int8,
quantized here and evaluated like any model), its latency measured on this machine and its metric on the
selection split, one table with the Pareto front marked, a metric-vs-latency PNG, and the best candidate that meets
``select.*`` constraints written to ``<out_dir>/select/model/`` with a card. Candidates are scored and chosen
on the run's selection split (the rows importance and checkpoint selection used); dev is read once, for
the chosen one's reported figure. Rank 0 measures (alone, so
the other ranks do not disturb the timings); the others wait on the store. Nothing meets the
constraints: exit 2 on every rank, the closest candidates named."""
from dynabert.deploy import select_run
from dynabert.deploy.choose import Constraints
from dynabert.deploy.select import SelectOptions
from dynabert.stages.common import StageContext


def options_from(cfg) -> SelectOptions:
    s = cfg.select
    return SelectOptions(batch_size=s.batch_size, seq_len=s.seq_len, runtimes=tuple(s.runtimes),
                         precisions=tuple(s.precisions), min_runs=s.min_runs, report_all_on_dev=s.report_all_on_dev,
                         constraints=Constraints(max_latency_ms=s.max_latency_ms, min_metric=s.min_metric,
                                                 max_params=s.max_params, max_size_mb=s.max_size_mb))


def select(ctx: StageContext) -> dict:
    """The candidate table and the choice (as select_run returns them), the same on every rank."""
    result = ctx.comms.decide(lambda: select_run(ctx.cfg.run.out_dir, cfg=ctx.cfg, options=options_from(ctx.cfg),
                                                 data=ctx.data, log=ctx.log.info))
    return {k: v for k, v in result.items() if k in ("chosen", "served_dir", "out_dir", "reported")}
