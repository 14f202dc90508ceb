"""The distillation recipe study (issue 15, docs/recipe.md): settings x seeds on real SST-2 at the demo's budget.

    python -m benchmarks.recipe_study --out runs/recipe_study          # default settings, seeds 1,2,3 (hours)
    python -m benchmarks.recipe_study --out DIR --report-only          # the tables from the runs finished so far
    python -m benchmarks.recipe_study --out /tmp/rs --smoke            # tiny BERT, 1 seed, 2 settings: code path only

Each run is ``python -m launcher --config configs/tutorial_recipe.yaml --nproc_per_node 2 --device cpu --set ...``
(the demo's budget with every recipe knob written out) running compress and export, with the honest protocol
pinned (``data.select_on=validation``, ``compress.select=supernet``), the tutorial's weights pinned, and one
setting's overrides on top. The teacher is fine-tuned once per seed and shared by that seed's settings: the
validation split is drawn with ``run.seed``, so a teacher fine-tuned under another seed has trained on ~7% of
this seed's validation rows. ``--teacher DIR`` gives one teacher for every seed (with that overlap).

Seeds run outer, settings inner, so an interrupted study still compares every setting on its finished seeds. A
run with a results.json is skipped (rerun the same command to resume; an interrupted run resumes from its own
checkpoint); the tables are rewritten after every run. Finished runs keep logs, config and results, not their
models (``--keep-models``: ~1 GB per run).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks import recipe_report as report  # noqa: E402
from benchmarks.recipe_settings import PROTOCOL, SETTINGS, Setting, parse_define  # noqa: E402
from benchmarks.run_all import clean_env  # noqa: E402
from dynabert.data.tasks import get_task  # noqa: E402  (no paddle import)
from dynabert.errors import UserError  # noqa: E402
from launcher.config import load_config  # noqa: E402

NAME = "recipe_study"
FULL_CONFIG = os.path.join("configs", "tutorial_recipe.yaml")
SMOKE_CONFIG = os.path.join("configs", "tiny.yaml")
DEFAULT_SETTINGS = ("tutorial,dynabert_w,dynabert,mid,inplace,inplace_low,lr2x,epochs2,eval50,dynabert_optim,task,"
                    "labels_only,task_lr2x")
SMOKE_SETTINGS = "tutorial,inplace"
# --smoke: fewer rows and epochs (20 steps per epoch), so start-up is most of its time; numbers are not the point.
SMOKE_EXTRA = {"finetune.epochs": 2, "data.train_limit": 640, "data.dev_limit": 100}
PATH_KEYS = ("run.out_dir", "model.teacher", "model.name_or_path", "data.glue_dir", "data.cache_dir")


class RunFailed(Exception):
    pass


@dataclass
class Run:
    setting: str  # "teacher" for a seed's finetune run
    seed: int
    out_dir: str
    recipe: Dict[str, object]  # every override that is not a path: what makes a stored run reusable
    overrides: List[str]

    @property
    def label(self) -> str:
        return f"{self.setting} seed {self.seed}"


def yaml_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(yaml_value(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def as_overrides(values: Dict[str, object]) -> Dict[str, str]:
    """Values as the ``--set`` text a run is given: two runs are the same when the launcher saw the same text
    (a --define's "0.1" and a setting's 0.1 alike)."""
    return {k: yaml_value(v) for k, v in values.items()}


def build_plan(args, base) -> List[Run]:
    """Every run, in order (per seed: its teacher, then each setting). Pure given its arguments."""
    out = os.path.abspath(args.out)
    shared = {"run.progress": False, "data.cache_dir": os.path.join(out, "cache"), **PROTOCOL}
    if args.model:
        shared["model.name_or_path"] = os.path.abspath(args.model)
    if args.smoke:
        shared.update(SMOKE_EXTRA)
    else:
        shared.update({"data.glue_dir": args.glue_dir, "data.allow_download": False})
    plan = []
    for seed in args.seeds:
        teacher = args.teacher and os.path.abspath(args.teacher)
        if not teacher:
            t_dir = os.path.join(out, "teachers", f"seed_{seed}")
            plan.append(_run("teacher", seed, t_dir, {**shared, "run.stages": ["finetune"]}))
            teacher = os.path.join(t_dir, "teacher")
        for name in args.settings:
            changes = args.catalog[name].pinned(base)
            stages = ["compress", "refine", "export"] if changes.get("refine.steps") else ["compress", "export"]
            plan.append(_run(name, seed, os.path.join(out, "runs", name, f"seed_{seed}"),
                             {**shared, "run.stages": stages, "export.inference_model": False,
                              "model.teacher": teacher, **changes}))
    return plan


def _run(setting: str, seed: int, out_dir: str, values: Dict[str, object]) -> Run:
    values = {**values, "run.seed": seed, "run.out_dir": out_dir}
    recipe = {k: v for k, v in values.items() if k not in PATH_KEYS}
    return Run(setting, seed, out_dir, recipe, [f"{k}={yaml_value(v)}" for k, v in values.items()])


def command(run: Run, args) -> List[str]:
    cmd = [args.python, "-m", "launcher", "--config", args.config, "--nproc_per_node", str(args.nproc),
           "--device", "cpu", "--resume", "auto"]
    for text in run.overrides:
        cmd += ["--set", text]
    return cmd


def is_done(run: Run) -> bool:
    if run.setting == "teacher":
        return os.path.isfile(os.path.join(run.out_dir, "checkpoints", "finetune", "DONE.json")) and \
            os.path.isdir(os.path.join(run.out_dir, "teacher"))
    return os.path.isfile(os.path.join(run.out_dir, "results.json"))


def check_stored(run: Run) -> None:
    """A run directory made with other overrides must not be resumed or reported as this setting."""
    path = os.path.join(run.out_dir, "study.json")
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)["recipe"]
        stored, here = as_overrides(stored), as_overrides(run.recipe)
        if stored != here:
            diff = sorted(k for k in set(stored) | set(here) if stored.get(k) != here.get(k))
            raise UserError(f"{path}: made with other settings ({', '.join(diff)}); delete {run.out_dir} or "
                            "use another --out")


def launch(run: Run, args, env: Dict[str, str]) -> float:
    """Runs one job to completion in its own process group (ended as a whole on timeout or Ctrl-C)."""
    os.makedirs(run.out_dir, exist_ok=True)
    common.write_json(os.path.join(run.out_dir, "study.json"),
                      {"setting": run.setting, "seed": run.seed, "recipe": run.recipe, "command": command(run, args)})
    log_path = os.path.join(run.out_dir, "study_launch.log")
    start = time.perf_counter()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(command(run, args), cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=args.timeout)
        except BaseException:  # timeout or Ctrl-C: the launcher and its workers go too
            _end_group(proc)
            raise
    if code != 0:
        raise RunFailed(f"{run.label}: the launcher exited with {code}; see {log_path} and {run.out_dir}/logs/")
    return time.perf_counter() - start


def _end_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def read_run(run: Run, need_glue: bool) -> dict:
    """One finished run's numbers, from its own results.json, metrics.jsonl and rank 0's log."""
    with open(os.path.join(run.out_dir, "results.json")) as f:
        results = json.load(f)
    metric = get_task(results["task"]).main_metric
    protocol = results["protocol"]
    if (protocol["select_on"], protocol["select"]) != ("validation", "supernet"):
        raise UserError(f"{run.out_dir}/results.json: protocol {protocol['description']!r}, not the honest one")
    data_line = _grep(os.path.join(run.out_dir, "logs", "workerlog.0"), "data train:")
    if need_glue and "GLUE_DIR" not in (data_line or ""):
        raise UserError(f"{run.out_dir}: trained on {data_line!r}, not GLUE_DIR's SST-2")
    rows = _jsonl(os.path.join(run.out_dir, "metrics.jsonl"))
    # Training rows are logged every run.log_every steps; the last step always has an evaluation (patience may
    # stop between two logging steps).
    steps = [row["step"] for row in rows if row["kind"] == "compress" or row["kind"].startswith("compress_eval/")]
    return {"setting": run.setting, "seed": run.seed, "out_dir": run.out_dir, "metric": metric,
            "teacher": results["teacher"][metric],
            "widths": {str(float(r["width"])): r["metrics"][metric] for r in results["widths"]},
            "compress_steps": max(steps) if steps else None, "best_step": results["compress_best"]["step"],
            "passes": sub_network_passes(load_config(os.path.join(run.out_dir, "config.yaml")),
                                         max(steps) if steps else 0, rows),
            "samples_per_s": results.get("throughput", {}).get("compress", {}).get("samples_per_s"),
            "seconds": results.get("seconds"), "world_size": results["world_size"], "data": data_line}


def sub_network_passes(cfg, compress_steps: int, rows: List[dict]) -> int:
    """The compute a run spent, as issue 27 counts it: sub-network forward+backward passes (a step of "all"
    trains every width; "sandwich" the two ends and ``sandwich_random`` others; refine one width a step)."""
    widths = len(cfg.compress.widths)
    per_step = widths if cfg.compress.width_sampling == "all" else min(widths, 2 + cfg.compress.sandwich_random)
    refine = {}
    for row in rows:
        if row["kind"].startswith("refine_width_") and not row["kind"].endswith("_eval"):
            refine[row["kind"]] = max(refine.get(row["kind"], 0), row["step"])
    return compress_steps * per_step + sum(refine.values())


def _grep(path: str, prefix: str) -> Optional[str]:
    if os.path.isfile(path):
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.strip()
    return None


def _jsonl(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def drop_models(run_dir: str) -> None:
    """A finished run's models and checkpoints (~1 GB for MiniLM); its numbers and logs stay."""
    for name in ("compress", "export"):
        shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    root = os.path.join(run_dir, "checkpoints")
    for stage in os.listdir(root) if os.path.isdir(root) else []:
        for entry in os.listdir(os.path.join(root, stage)):
            if entry.startswith("step_"):
                shutil.rmtree(os.path.join(root, stage, entry), ignore_errors=True)


def describe_settings(settings: List[Setting], base) -> Dict[str, dict]:
    """What the report says of each setting: its description and every value it pins."""
    return {s.name: {"what": s.what, "changes": s.pinned(base)} for s in settings}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.recipe_study", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="working directory: teachers/, runs/<setting>/seed_<S>/, cache/")
    p.add_argument("--seeds", default=None, help="comma-separated run.seed values (default 1,2,3; --smoke: 1)")
    p.add_argument("--settings", default=None, help=f"comma-separated, of {', '.join(SETTINGS)} and --define'd "
                   f"(default {DEFAULT_SETTINGS}; --smoke: {SMOKE_SETTINGS})")
    p.add_argument("--define", action="append", default=[], metavar="NAME=KEY=V[;KEY=V]",
                   help="an extra setting, e.g. combo=compress.lambda_logit=1.0;compress.inplace_distill=1.0")
    p.add_argument("--smoke", action="store_true", help=f"tiny random BERT on {SMOKE_CONFIG} (code path only)")
    p.add_argument("--config", default=None, help=f"base config (default {FULL_CONFIG}; --smoke: {SMOKE_CONFIG})")
    p.add_argument("--teacher", default=None, help="one fine-tuned teacher for every seed (default: one per seed)")
    p.add_argument("--model", default=None, help="model.name_or_path (--smoke default: a tiny BERT built in --out)")
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"), help="GLUE data (default $GLUE_DIR)")
    p.add_argument("--nproc", type=int, default=None, help="worker processes per run (default 2, 1 thread each on 2 "
                   "CPUs; --smoke: 1, whose start-up is ~10 s shorter)")
    p.add_argument("--results-dir", default=None, help="where recipe_study.json/.md go (default benchmarks/results; "
                   "--smoke: --out)")
    p.add_argument("--report-only", action="store_true", help="launch nothing: tables from the finished runs")
    p.add_argument("--previous", default=None, metavar="JSON", help="an earlier recipe_study.json (same config and "
                   "settings): its runs count as finished here, so a study can span machines whose --out is gone")
    p.add_argument("--keep-models", action="store_true", help="keep each finished run's models (~1 GB per run)")
    p.add_argument("--dry-run", action="store_true", help="print the runs' commands as JSON and exit")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per run before it is ended")
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args(argv)
    args.config = os.path.abspath(args.config) if args.config else \
        os.path.join(common.ROOT, SMOKE_CONFIG if args.smoke else FULL_CONFIG)
    args.nproc = args.nproc or (1 if args.smoke else 2)
    args.results_dir = args.results_dir or (args.out if args.smoke else common.DEFAULT_OUT)
    args.catalog = dict(SETTINGS)
    for text in args.define:
        s = parse_define(text)
        if s.name in args.catalog or s.name == "teacher":
            raise UserError(f"--define {text}: the name {s.name!r} is taken")
        args.catalog[s.name] = s
    args.settings = [s.strip() for s in (args.settings or (SMOKE_SETTINGS if args.smoke else DEFAULT_SETTINGS)
                                         ).split(",") if s.strip()]
    unknown = [s for s in args.settings if s not in args.catalog]
    if unknown or len(set(args.settings)) != len(args.settings):
        raise UserError(f"--settings: unknown or repeated {unknown or args.settings}; known: {', '.join(args.catalog)}")
    try:
        args.seeds = [int(s) for s in (args.seeds or ("1" if args.smoke else "1,2,3")).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {args.seeds}: expected comma-separated integers") from None
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds: expected distinct integers, got {args.seeds}")
    return args


def check_inputs(args, base) -> None:
    if args.teacher and not os.path.isdir(args.teacher):
        raise UserError(f"--teacher {args.teacher}: not a directory")
    if args.smoke or args.report_only:
        return
    task = get_task(base.data.task)
    folder = os.path.join(args.glue_dir or "", task.dir_name)
    if not args.glue_dir or not all(os.path.isfile(os.path.join(folder, f)) for f in task.files.values()):
        raise UserError(f"--glue-dir {args.glue_dir}: no {task.dir_name}/ with {', '.join(task.files.values())} "
                        "(the study runs on the real data only; set GLUE_DIR)")


def build_tiny_model(out: str) -> str:
    """--smoke without --model: the tests' tiny random BERT (tests/conftest.py tiny_model_dir)."""
    path = os.path.join(os.path.abspath(out), "tiny_model")
    if not os.path.isdir(path):
        from paddlenlp.transformers import BertTokenizer

        from dynabert.data.sources import builtin_dataset
        from dynabert.model.pretrained import save_model, tiny_bert
        words = sorted({w for split in ("train", "dev") for e in builtin_dataset("sst-2", split)
                        for w in e.text_a.lower().split()})
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
        os.makedirs(out, exist_ok=True)
        vocab_file = os.path.join(out, "tiny_vocab.txt")
        with open(vocab_file, "w") as f:
            f.write("\n".join(vocab) + "\n")
        save_model(tiny_bert(num_classes=2, seed=0, vocab_size=len(vocab)),
                   BertTokenizer(vocab_file=vocab_file, do_lower_case=True), path)
    return path


def study(args) -> dict:
    base = load_config(args.config, [f"{k}={yaml_value(v)}" for k, v in SMOKE_EXTRA.items()] if args.smoke else [])
    check_inputs(args, base)
    if args.smoke and not args.model and not (args.dry_run or args.report_only):
        args.model = build_tiny_model(args.out)
    plan = build_plan(args, base)
    for run in plan:
        load_config(args.config, run.overrides)  # a bad override fails here, not hours into the study
        check_stored(run)
    if args.dry_run:
        print(json.dumps([{"setting": r.setting, "seed": r.seed, "command": command(r, args)} for r in plan], indent=1))
        return {}
    # Workers get CPUs / processes threads each (the launcher keeps an explicit count); recorded in the results.
    env = clean_env(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update({var: str(max(1, common.available_cpus() // args.nproc)) for var in common.THREAD_VARS})
    previous = load_previous(args.previous, args, base) if args.previous else {}
    start, records = time.perf_counter(), []
    for i, run in enumerate(plan, 1):
        if run_from_previous(run, plan, previous):
            if run.setting != "teacher":
                records.append(previous[(run.setting, run.seed)])
            continue
        if not args.report_only and not is_done(run):
            print(f"[{i}/{len(plan)}] {run.label}: running ({run.out_dir})", flush=True)
            print(f"[{i}/{len(plan)}] {run.label}: done in {launch(run, args, env):.0f} s", flush=True)
        if run.setting != "teacher" and is_done(run):
            records.append(read_run(run, need_glue=not args.smoke))
            if not args.keep_models:
                drop_models(run.out_dir)
            if not args.report_only:  # after every run: hours of work are never invisible
                write(args, base, records, plan, env, time.perf_counter() - start)
    return write(args, base, records, plan, env, time.perf_counter() - start)


def load_previous(path: str, args, base) -> Dict[Tuple[str, int], dict]:
    """--previous: the runs of an earlier study's JSON, keyed by (setting, seed). --out is scratch (models, logs)
    and may be gone on the next machine; the committed JSON is what lasts. Its runs stand in only if they were
    made with the same config, budget and, per setting, the same changes; anything else is a one-line error."""
    try:
        with open(path) as f:
            old = json.load(f)
        made = (old["smoke"], old["config"], old["base"])
        runs, changes = old["runs"], {n: s["changes"] for n, s in old["aggregate"]["settings"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--previous {path}: not a recipe_study.json ({e})") from None
    here = (args.smoke, os.path.relpath(args.config, common.ROOT), json.loads(json.dumps(base_summary(args, base))))
    if made != here:
        raise UserError(f"--previous {path}: made with config {made[1]} {made[2]}, not {here[1]} {here[2]}")
    written_at = (old.get("machine") or {}).get("git_commit") or "unknown"
    out = {}
    for r in runs:
        name = r["setting"]
        if name not in args.catalog:
            continue
        now = args.catalog[name].pinned(base)
        if as_overrides(changes.get(name) or {}) != as_overrides(now):
            raise UserError(f"--previous {path}: setting {name} changed {changes.get(name)}, here {now}")
        # a run carried over twice keeps the first file and commit it came from
        out[(name, r["seed"])] = {**r, "from": r.get("from") or f"{path}, written at commit {written_at}"}
    return out


def run_from_previous(run: Run, plan: List[Run], previous: Dict[Tuple[str, int], dict]) -> bool:
    """A run of --out wins; otherwise --previous's. A seed's teacher is needed while any of its runs is not
    covered by --previous."""
    if is_done(run):
        return False
    if run.setting != "teacher":
        return (run.setting, run.seed) in previous
    return all((r.setting, r.seed) in previous or is_done(r) for r in plan if r.seed == run.seed and r is not run)


def base_summary(args, base) -> dict:
    optim = base.compress.optim
    return {"model": os.path.basename(args.model) if args.model else base.model.name_or_path,
            "task": base.data.task, "train_rows": base.data.train_limit, "max_seq_len": base.data.max_seq_len,
            "batch_size": optim.batch_size, "epochs": optim.epochs, "learning_rate": optim.learning_rate}


def write(args, base, records: List[dict], plan: List[Run], env: Dict[str, str], seconds: float) -> dict:
    done = {(r["setting"], r["seed"]) for r in records}
    machine = {**common.machine_info("cpu"), "threads": {v: env.get(v) for v in common.THREAD_VARS}}
    result = {
        "name": NAME, "smoke": args.smoke, "config": os.path.relpath(args.config, common.ROOT),
        "seeds": args.seeds, "settings": args.settings, "metric": get_task(base.data.task).main_metric,
        "protocol": "importance and checkpoint selection on a held-out validation split of training rows "
                    "(data.select_on=validation), every width cut from one supernet (compress.select=supernet); "
                    "dev read once per reported model",
        "base": base_summary(args, base),
        "teacher_source": (f"--teacher {args.teacher}, for every seed" if args.teacher else
                           "fine-tuned once per seed (same seed, same validation split), shared by its settings"),
        "nproc_per_node": args.nproc, "threads_per_process": int(env["OMP_NUM_THREADS"]),
        "std": "sample standard deviation over seeds (n-1); null with one seed",
        "aggregate": report.aggregate(records, describe_settings([args.catalog[n] for n in args.settings], base)),
        "runs": records,
        "missing": [{"setting": r.setting, "seed": r.seed} for r in plan
                    if r.setting != "teacher" and (r.setting, r.seed) not in done],
        "wall_seconds": seconds, "machine": machine,
    }
    os.makedirs(args.results_dir, exist_ok=True)
    common.write_result(args.results_dir, NAME, result, report.markdown(result))
    return result


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        result = study(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:  # a run failed: the finished ones are kept, rerun to resume
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result:
        print(f"wrote {os.path.join(args.results_dir, NAME)}.json and .md ({len(result['runs'])} runs, "
              f"{len(result['missing'])} missing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
