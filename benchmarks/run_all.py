"""Run every benchmark and write a summary: ``python -m benchmarks.run_all`` (``make bench``).

    python -m benchmarks.run_all                      # full: real MiniLM + SST-2, ~15 min on 2 cores
    python -m benchmarks.run_all --smoke --out /tmp/b # tiny BERT, 1-2 steps each, well under a minute
    python -m benchmarks.run_all --device gpu         # paddlepaddle-gpu: see benchmarks/gpu_bench.sh
    python -m benchmarks.run_all --device gpu --gpus 8 --dry-run   # print the commands only

Every benchmark is its own process with its thread count fixed in the environment before Paddle loads:
one process uses all CPUs (OMP_NUM_THREADS = MKL_NUM_THREADS = CPUs); N data-parallel processes (launched
with ``python -m paddle.distributed.launch --nproc_per_node N``) share them, CPUs / N threads each.
Stages, in order (later ones read earlier ones' files):

  importance     importance over the dev set vs one evaluation pass; saves the reordered teacher
  step_1proc     step time project vs reference, 1 process, + step-0 equivalence
  step_Nproc     the same with N processes (N = 2 on CPU, number of GPUs on GPU): all-reduce counts/bytes
  memory_*       peak RSS of one training process, project and reference, each in a fresh process
  latency        Paddle Inference latency per width at batch 1 and 32, sequence 128 (+ PNG)
  scale_model    BERT-base multi-node projection from the measured figures (PROJECTIONS)
  summary        summary.json / summary.md / step_time.png
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

# Environment a stage must not inherit: an enclosing launcher's job variables would override ours.
_STALE_PREFIXES = ("PADDLE_", "FLAGS_selected_")
_STALE_KEYS = ("MASTER_ADDR", "MASTER_PORT", "POD_IP", "POD_NAME", "COLLECTIVE_MASTER_IP")


@dataclass
class Stage:
    name: str
    argv: List[str]
    env: Dict[str, str]
    threads: int
    processes: int = 1
    timeout: float = 1200.0
    needs: List[str] = field(default_factory=list)
    log_dir: Optional[str] = None
    outputs: List[str] = field(default_factory=list)  # removed before the stage runs: no stale results

    def as_dict(self) -> dict:
        return {"name": self.name, "argv": self.argv, "processes": self.processes, "threads": self.threads,
                "thread_env": {k: self.env.get(k) for k in common.THREAD_VARS},
                "device_env": {k: self.env[k] for k in ("CUDA_VISIBLE_DEVICES", "PADDLE_DISTRI_BACKEND")
                               if k in self.env}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.run_all", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=common.DEFAULT_OUT, help="results directory (default benchmarks/results)")
    p.add_argument("--smoke", action="store_true", help="tiny BERT, 1-2 steps per benchmark (for tests)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--gpus", type=int, default=None, help="GPUs to use with --device gpu (default: all visible)")
    p.add_argument("--nproc", type=int, default=None, help="processes of the data-parallel run (CPU default 2)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of a single process (default: all)")
    p.add_argument("--results-json", default=None, help="a pipeline results.json: accuracy per width in the "
                   "latency PNG")
    p.add_argument("--only", default=None, help="comma-separated stage names to run (others are skipped)")
    p.add_argument("--dry-run", action="store_true", help="print the stages' commands as JSON and exit")
    p.add_argument("--work-dir", default=None, help="for the reordered teacher weights (default: a temp dir)")
    p.add_argument("--python", default=sys.executable)
    return p.parse_args(argv)


def visible_gpus(env) -> int:
    vis = env.get("CUDA_VISIBLE_DEVICES")
    if vis is not None and vis.strip() not in ("", "all"):
        return len([x for x in vis.split(",") if x.strip()])
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return len([line for line in done.stdout.splitlines() if line.startswith("GPU ")])
    except (OSError, subprocess.SubprocessError):
        return 0


def clean_env(base) -> Dict[str, str]:
    env = {k: v for k, v in base.items()
           if not k.startswith(_STALE_PREFIXES) and k not in _STALE_KEYS}
    env["PYTHONPATH"] = common.ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _with_threads(env, n: int) -> Dict[str, str]:
    env = dict(env)
    for var in common.THREAD_VARS:
        env[var] = str(n)
    return env


def build_plan(args, base_env=None, cpu_count: Optional[int] = None, gpus: Optional[int] = None) -> List[Stage]:
    """The stages as data (argv + environment): pure given its arguments, so tests check the commands."""
    from launcher.launch_cmd import LaunchOptions, build_launch_command

    base_env = clean_env(os.environ if base_env is None else base_env)
    cpu_count = cpu_count or common.available_cpus()
    gpu = args.device == "gpu"
    if gpu:
        gpus = gpus if gpus is not None else (args.gpus or visible_gpus(base_env))
        if gpus < 1:
            raise SystemExit("--device gpu: no GPU visible (set --gpus N or CUDA_VISIBLE_DEVICES)")
        nproc = args.nproc or gpus
    else:
        base_env.pop("CUDA_VISIBLE_DEVICES", None)
        nproc = args.nproc or 2
    threads = args.threads or cpu_count
    per_proc = max(1, threads // nproc)
    py, out = args.python, os.path.abspath(args.out)
    work = os.path.abspath(args.work_dir) if args.work_dir else "{WORK}"
    state = os.path.join(work, "teacher_reordered.pdparams")
    common_flags = ["--device", args.device] + (["--smoke"] if args.smoke else [])
    smoke = args.smoke
    env1 = _with_threads(base_env, threads)

    def mod(name, *extra):
        return [py, "-m", f"benchmarks.{name}", "--out", out, *common_flags, *extra]

    stages = [Stage("importance", mod("importance_bench", "--save-state", state,
                                      *(["--eval-repeats", "1"] if smoke else [])), env1, threads, timeout=600,
                    outputs=["importance.json", "importance.md"])]
    if smoke:
        step_flags = ["--repeats", "2", "--dynamic-steps", "1"]
    elif gpu:  # steps take milliseconds: many more repeats for a stable median
        step_flags = ["--repeats", "20", "--dynamic-steps", "20"]
    else:      # ~18 s per A/B pair on 2 CPU cores
        step_flags = ["--repeats", "5", "--dynamic-steps", "4"]
    stages.append(Stage("step_1proc", mod("step_time", "--tag", "1proc", "--teacher-state", state, *step_flags),
                        env1, threads, needs=["importance"], timeout=1800,
                        outputs=["step_time_1proc.json", "step_time_1proc.md"]))
    if not gpu:  # both fixes it times are CPU fixes (defects 14 and 15)
        stages.append(Stage("step_ablation", mod("step_ablation", "--teacher-state", state,
                                                 "--repeats", "1" if smoke else "3"),
                            env1, threads, needs=["importance"], timeout=1200,
                            outputs=["step_ablation.json", "step_ablation.md"]))
    devices = None
    if gpu:  # Paddle's launcher takes labels from CUDA_VISIBLE_DEVICES when it is set
        vis = [x.strip() for x in base_env.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
        devices = ",".join(vis[:nproc] if len(vis) >= nproc else [str(i) for i in range(nproc)])
    opts = LaunchOptions(log_dir=os.path.join(work, "launch_logs"), nproc_per_node=nproc,
                         device="gpu" if gpu else "cpu", devices=devices, job_id="dynabert_bench")
    global_batch = 32 * nproc if gpu else 32  # GPU: 32 per GPU (weak scaling); CPU: 32 = 16 per rank
    worker = ["-m", "benchmarks.step_time", "--out", out, *common_flags, "--tag", f"{nproc}proc",
              "--teacher-state", state, "--global-batch", str(global_batch), *step_flags]
    argv, env_n = build_launch_command(opts, worker, py, base_env=base_env, cpu_count=cpu_count)
    env_n = _with_threads(env_n, per_proc)
    if nproc > 1:  # one GPU: the 1-process stage is the whole measurement (no second stage of the same name)
        stages.append(Stage(f"step_{nproc}proc", argv, env_n, per_proc, processes=nproc, needs=["importance"],
                            timeout=1800, log_dir=opts.log_dir,
                            outputs=[f"step_time_{nproc}proc.json", f"step_time_{nproc}proc.md"]))
    mem_flags = ["--steps", "1"] if smoke else ["--steps", "2"]
    for side in ("project", "reference"):
        stages.append(Stage(f"memory_{side}", mod("memory", "--side", side, "--teacher-state", state, *mem_flags),
                            env1, threads, needs=["importance"], timeout=600,
                            outputs=[f"memory_{side}.json", "memory.json", "memory.md"]))
    lat_flags = (["--seq-len", "32", "--min-seconds", "0.05", "--max-runs", "3"] if smoke
                 else ["--min-seconds", "4", "--max-runs", "40"])
    if args.results_json:
        lat_flags += ["--results-json", os.path.abspath(args.results_json)]
    stages.append(Stage("latency", mod("latency", "--teacher-state", state, "--threads", str(threads), *lat_flags),
                        env1, threads, needs=["importance"], timeout=1800,
                        outputs=["latency.json", "latency.md", "latency.png"]))
    allreduce = ["--allreduce", os.path.join(out, f"step_time_{nproc}proc.json")] if nproc > 1 else []
    stages.append(Stage("scale_model", [py, "-m", "benchmarks.scale_model", "--out", out,
                                        "--step-time", os.path.join(out, "step_time_1proc.json"), *allreduce],
                        env1, threads, needs=["step_1proc"], timeout=120,
                        outputs=["scale_model.json", "scale_model.md"]))
    return stages


class _Running:
    """One stage's process: started on construction, waited for (with the stage's timeout) by ``wait``."""

    def __init__(self, stage: Stage, work: str, log_dir: str):
        self.stage, self.work = stage, work
        os.makedirs(log_dir, exist_ok=True)
        self.log_dir = log_dir
        out = stage.argv[stage.argv.index("--out") + 1] if "--out" in stage.argv else None
        for name in stage.outputs if out else ():
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        self.log_path = os.path.join(log_dir, f"{stage.name}.log")
        print(f"\n=== {stage.name}: {stage.processes} process(es) x {stage.threads} thread(s) ===", flush=True)
        self.start = time.perf_counter()
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([a.replace("{WORK}", work) for a in stage.argv], env=stage.env, cwd=common.ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self) -> dict:
        stage = self.stage
        try:
            rc = self.proc.wait(timeout=max(1.0, stage.timeout - (time.perf_counter() - self.start)))
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait()
            rc = "timeout"
        self.log.close()
        seconds = time.perf_counter() - self.start
        if stage.log_dir:  # the launcher's per-worker logs: keep them beside ours
            wl = stage.log_dir.replace("{WORK}", self.work)
            if os.path.isdir(wl):
                for f in sorted(os.listdir(wl)):
                    if not f.startswith("workerlog."):  # env dumps stay out of the results
                        continue
                    shutil.copy(os.path.join(wl, f), os.path.join(self.log_dir, f"{stage.name}.{f}"))
        ok = rc == 0
        print(f"--- {stage.name}: {'ok' if ok else f'FAILED ({rc})'} in {seconds:.1f}s (log {self.log_path})",
              flush=True)
        if not ok:
            with open(self.log_path) as f:
                print(f.read()[-3000:], flush=True)
        return {"stage": stage.name, "ok": ok, "returncode": rc, "seconds": seconds, "log": self.log_path,
                "processes": stage.processes, "threads": stage.threads}


def run_stage(stage: Stage, work: str, log_dir: str) -> dict:
    return _Running(stage, work, log_dir).wait()


def _load(out, name):
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def summarise(out: str, nproc: int, runs: List[dict], total_seconds: float, smoke: bool, device: str) -> dict:
    from benchmarks import memory
    mem = None
    if all(os.path.exists(os.path.join(out, f"memory_{s}.json")) for s in ("project", "reference")):
        mem = memory.merge(out)
    s1, sn = _load(out, "step_time_1proc"), _load(out, f"step_time_{nproc}proc")
    imp, lat, scale = _load(out, "importance"), _load(out, "latency"), _load(out, "scale_model")
    summary = {"benchmark": "summary", "smoke": smoke, "device": device, "stages": runs,
               "total_seconds": total_seconds, "machine": common.machine_info(device)}
    # this orchestrating process sets no thread count; each stage's is in its own result and below
    summary["machine"]["threads"] = {r["stage"]: r.get("threads") for r in runs}
    lines = ["# DynaBERT benchmarks: project vs our re-implementation of the tutorial loop", ""]
    if smoke:
        lines += ["**SMOKE RUN (tiny random BERT, 1-2 steps): the numbers say nothing about performance.**", ""]
    lines += [f"Total wall time {total_seconds / 60:.1f} min. Stages: "
             + ", ".join(f"{r['stage']} {'ok' if r['ok'] else 'FAILED'} ({r['seconds']:.0f}s)" for r in runs), ""]
    if s1:
        summary["step_1proc"] = _step_summary(s1)
        lines += _step_lines("1 process", s1, target=0.75)
    ablation = _load(out, "step_ablation")
    if ablation:
        v = ablation["variants"]
        summary["step_ablation"] = {name: x["median_step_seconds"] for name, x in v.items()}
        lines += ["## What each CPU fix bought (project step, 1 process)", "",
                  "- median step: " + "; ".join(f"{name} {x['median_step_seconds']:.2f}s ({x['vs_before']:.2f}x)"
                                                for name, x in v.items())
                  + " (before = stride kernels on, padding gradients leaked; defects 14 and 15; "
                  "step_ablation.md)", ""]
    if sn:
        summary[f"step_{nproc}proc"] = _step_summary(sn)
        lines += _step_lines(f"{nproc} processes", sn, target=None)
        ar = sn["allreduce"]
        lines += [f"- All-reduces per optimizer step ({nproc} processes, read from the counters "
                  f"PaddleCollectives keeps): project {ar['project_calls_per_step']}, reference "
                  f"{ar['reference_calls_per_step']}; bytes per step: project "
                  f"{', '.join(common.fmt_bytes(b) for b in ar['project_bytes_per_step'])} "
                  f"({ar['project_bytes_over_param_bytes']} x parameter bytes), reference "
                  f"{', '.join(common.fmt_bytes(b) for b in ar['reference_bytes_per_step'])} "
                  f"({ar['reference_bytes_over_param_bytes']} x)", ""]
    if s1 and sn:
        scaling = {side: sn[side]["samples_per_s_fixed"] / s1[side]["samples_per_s_fixed"]
                   for side in ("project", "reference")}
        scaling_dyn = {side: (sn[side]["dynamic"]["samples_per_s"] / s1[side]["dynamic"]["samples_per_s"])
                       if s1[side]["dynamic"]["steps"] else None for side in ("project", "reference")}
        summary["scaling"] = {"processes": nproc, "throughput_ratio_fixed_batch": scaling,
                              "throughput_ratio_dynamic": scaling_dyn,
                              "threads": {"1proc": s1["threads_per_process"],
                                          f"{nproc}proc": sn["threads_per_process"]}}
        lines += [f"## Scaling {nproc} processes vs 1 ({device})", "",
                  f"Throughput (samples/s) ratio, {nproc} proc x {sn['threads_per_process']} thread(s) (global batch "
                  f"{sn['fixed_batch']['global_batch']}) vs 1 proc x {s1['threads_per_process']} thread(s) (batch "
                  f"{s1['fixed_batch']['global_batch']}): "
                  f"project {scaling['project']:.2f}x, reference {scaling['reference']:.2f}x (fixed batch); "
                  + (f"dynamic padding: project {scaling_dyn['project']:.2f}x, "
                     f"reference {scaling_dyn['reference']:.2f}x" if scaling_dyn["project"] else ""), ""]
    if imp:
        summary["importance"] = {k: imp[k] for k in ("eval_pass_median_seconds", "importance_seconds",
                                                     "importance_over_eval")}
        lines += ["## Importance", "", f"Importance over {imp['dev_examples']} dev examples: "
                  f"{imp['importance_seconds']:.2f}s = **{imp['importance_over_eval']:.2f} x** one evaluation pass "
                  f"({imp['eval_pass_median_seconds']:.2f}s).", ""]
    if lat:
        big = str(max(lat["batch_sizes"]))
        key = f"width_0.5_ratio_at_batch_{big}"
        rows = [{"width": r["width"], **{f"batch_{b}_ms": t["median_seconds"] * 1000 for b, t in r["latency"].items()},
                 "ratio_to_full": r["ratio_to_full"]} for r in lat["rows"]]
        summary["latency"] = {"rows": rows, key: lat.get(key), "target_met": lat.get("target_met")}
        bs = [str(b) for b in lat["batch_sizes"]]
        rows = [[f"{r['width']:g}"] + [r["latency"][b]["median_seconds"] * 1000 for b in bs]
                + [r["ratio_to_full"][b] for b in bs] for r in lat["rows"]]
        lines += ["## Inference latency per width", "", f"{lat['predictor']}; sequence {lat['seq_len']}.", "",
                  common.md_table(["width"] + [f"batch {b} ms" for b in bs] + [f"ratio (batch {b})" for b in bs], rows),
                  "", f"Width 0.5 at batch {big}: {lat.get(key):.3f} x width 1.0 (target <= 0.6: "
                  f"{'met' if lat.get('target_met') else 'MISSED'}).", ""]
    if mem:
        summary["memory"] = {side: {"peak_rss_bytes": mem[side]["peak_rss_bytes"],
                                    "training_increment_bytes": mem[side]["training_increment_bytes"]}
                             for side in ("project", "reference")}
        summary["memory"]["peak_ratio_project_over_reference"] = mem["peak_ratio_project_over_reference"]
        lines += ["## Peak memory per process", "",
                  f"Peak RSS: project {common.fmt_bytes(mem['project']['peak_rss_bytes'])}, reference "
                  f"{common.fmt_bytes(mem['reference']['peak_rss_bytes'])} (ratio "
                  f"{mem['peak_ratio_project_over_reference']:.3f}); growth during training: project "
                  f"{common.fmt_bytes(mem['project']['training_increment_bytes'])}, reference "
                  f"{common.fmt_bytes(mem['reference']['training_increment_bytes'])}.", ""]
    if scale:
        summary["scale_model"] = {"banner": scale["banner"], "rows": scale["projection"]["rows"]}
        rows = [[r["nodes"], r["gpus"], r["inter_node_Gbps"] or "NVLink only", r["allreduce_seconds"] * 1000,
                 r["project_step_seconds"] * 1000, r["reference_step_seconds"] * 1000,
                 r["ratio_project_over_reference"]] for r in scale["projection"]["rows"]]
        lines += ["## Scale model (BERT-base, 8 GPUs/node): PROJECTIONS, NOT MEASUREMENTS", "",
                  "Assumptions and formula in scale_model.md (A100 at 40% of 312 TFLOP/s, NVLink 230 GB/s, ideal "
                  "inter-node links, no overlap, fp32 gradients).", "",
                  common.md_table(["nodes", "GPUs", "inter-node Gb/s", "one all-reduce ms", "project step ms",
                                   "reference step ms", "project/reference"], rows),
                  "", "**PROJECTIONS, NOT MEASUREMENTS.**", ""]
    lines += [common.machine_markdown(summary["machine"])]
    if s1 or sn:
        plot_steps([s for s in (s1, sn) if s], os.path.join(out, "step_time.png"))
    common.write_json(os.path.join(out, "summary.json"), summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary


def _step_summary(s: dict) -> dict:
    return {"processes": s["processes"], "threads_per_process": s["threads_per_process"],
            "project_median_step_seconds": s["project"]["median_step_seconds"],
            "reference_median_step_seconds": s["reference"]["median_step_seconds"],
            "ratio_project_over_reference": s["ratio_project_over_reference"],
            "ratio_dynamic": s["ratio_dynamic"],
            "median_pair_ratio": s["median_pair_ratio"], "pair_ratios": s["pair_ratios"],
            "project_samples_per_s": s["project"]["samples_per_s_fixed"],
            "reference_samples_per_s": s["reference"]["samples_per_s_fixed"],
            "dynamic": {"project": s["project"]["dynamic"], "reference": s["reference"]["dynamic"]},
            "allreduce": s["allreduce"], "equivalence_passed": s["equivalence"]["passed"],
            "equivalence_loss_max_abs_diff": max(e["loss_max_abs_diff"] for e in s["equivalence"]["per_rank"]),
            "equivalence_grad_max_abs_diff": max(e["grad_max_abs_diff"] for e in s["equivalence"]["per_rank"]),
            "mfu": s.get("mfu"), "runtime_flags": s.get("runtime_flags")}


def _step_lines(title: str, s: dict, target: Optional[float]) -> List[str]:
    p, r = s["project"], s["reference"]
    ratio = s["ratio_project_over_reference"]
    verdict = "" if target is None else f" (target <= {target}: {'met' if ratio <= target else 'MISSED'})"
    eq = s["equivalence"]["per_rank"]
    out = [f"## Step time, {title} x {s['threads_per_process']} thread(s), batch {s['fixed_batch']['global_batch']} x "
           f"{s['fixed_batch']['seq_len']}", "",
           f"- median step: project {p['median_step_seconds']:.3f}s, reference {r['median_step_seconds']:.3f}s; "
           f"**ratio {ratio:.3f}**{verdict}; median of the A/B pair ratios {s['median_pair_ratio']:.3f} "
           f"(pairs {', '.join(f'{x:.3f}' for x in s['pair_ratios'])})",
           f"- samples/s (fixed batch): project {p['samples_per_s_fixed']:.2f}, "
           f"reference {r['samples_per_s_fixed']:.2f}"]
    if p["dynamic"]["steps"]:
        out.append(f"- dynamic padding ({p['dynamic']['steps']} batches, lengths {p['dynamic']['seq_lens']}): project "
                   f"{p['dynamic']['samples_per_s']:.2f} samples/s, {p['dynamic']['tokens_per_s']:.0f} tokens/s; "
                   "reference "
                   f"{r['dynamic']['samples_per_s']:.2f} samples/s, {r['dynamic']['tokens_per_s']:.0f} tokens/s "
                   f"(ratio {s['ratio_dynamic']:.3f})")
    if s.get("mfu"):
        m = s["mfu"]
        out.append(f"- MFU (project step, {m['step_flops'] / 1e9:.0f} GFLOP at {m['flops_per_s'] / 1e9:.1f} GFLOP/s): "
                   f"**{m['fraction']['model']:.0%}** of the matmul rate measured at the model's shapes "
                   f"({m['matmul_peak_flops']['model'] / 1e9:.1f} GFLOP/s), {m['fraction']['square']:.0%} of the "
                   f"2048^3 rate")
    out.append(f"- step-0 equivalence: loss terms max |diff| {max(e['loss_max_abs_diff'] for e in eq):.3g}, gradients "
               f"max |diff| {max(e['grad_max_abs_diff'] for e in eq):.3g} -> "
               f"{'PASSED' if s['equivalence']['passed'] else 'FAILED'} (tolerance 1e-5)")
    out.append("")
    return out


def plot_steps(results: List[dict], path: str) -> None:
    """Stacked bars: where each side's step time goes (teacher, each width, all-reduce, optimizer)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels, x = [], 0
    colours = {"teacher": "#888888", "1.0": "#1f77b4", "0.75": "#4f97d4", "0.5": "#7fb7e4", "0.25": "#afd7f4",
               "all-reduce": "#d62728", "optimizer": "#2ca02c", "other": "#dddddd"}
    drawn = set()
    for res in results:
        for side in ("project", "reference"):
            s = res[side]
            parts = [("teacher", s["median_teacher_seconds"])]
            widths = s["median_width_seconds"]
            teacher_share = s["median_teacher_seconds"] / len(widths) if side == "reference" else 0.0
            parts += [(w, v - teacher_share) for w, v in widths.items()]
            parts += [("all-reduce", s["median_allreduce_seconds"]), ("optimizer", s["median_optimizer_seconds"])]
            parts.append(("other", max(0.0, s["median_step_seconds"] - sum(v for _, v in parts))))
            bottom = 0.0
            for name, v in parts:
                ax.bar(x, v, bottom=bottom, color=colours[name], label=None if name in drawn else
                       (f"width {name}" if name[0].isdigit() else name))
                drawn.add(name)
                bottom += v
            labels.append(f"{side}\n{res['processes']}p x {res['threads_per_process']}t")
            x += 1
        x += 0.5
    ticks, pos = [], 0.0
    for _ in results:
        ticks += [pos, pos + 1]
        pos += 2.5
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels)
    ax.set_ylabel("seconds per optimizer step (median)")
    ax.set_title(f"{results[0]['model'].split(' (')[0]}; batch {results[0]['fixed_batch']['global_batch']} x "
                 f"{results[0]['fixed_batch']['seq_len']}", fontsize=9)
    top = max(max(r["project"]["median_step_seconds"], r["reference"]["median_step_seconds"]) for r in results)
    ax.set_ylim(0, top * 1.35)  # room for the legend above the bars
    ax.legend(fontsize=8, ncol=4, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = build_plan(args)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in plan}
        if unknown:
            raise SystemExit(f"--only: unknown stage(s) {sorted(unknown)}; stages: {[s.name for s in plan]}")
        plan = [s for s in plan if s.name in wanted]
    if args.dry_run:
        print(json.dumps([s.as_dict() for s in plan], indent=2))
        return 0
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    work = os.path.abspath(args.work_dir) if args.work_dir else tempfile.mkdtemp(prefix="dynabert-bench-")
    start = time.perf_counter()
    runs, failed = [], set()
    try:
        for stage in plan:  # one at a time: each stage has the CPUs to itself
            if any(n in failed for n in stage.needs):
                runs.append({"stage": stage.name, "ok": False, "returncode": "skipped", "seconds": 0.0,
                             "log": None, "reason": f"needs {stage.needs}"})
                failed.add(stage.name)
                continue
            if stage.name == "scale_model" and not os.path.exists(os.path.join(out, "step_time_1proc.json")):
                continue
            result = run_stage(stage, work, os.path.join(out, "logs"))
            runs.append(result)
            if not result["ok"]:
                failed.add(stage.name)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    nproc = next((s.processes for s in build_plan(args) if s.processes > 1), 2)
    summarise(out, nproc, runs, time.perf_counter() - start, args.smoke, args.device)
    print("\n" + open(os.path.join(out, "summary.md")).read(), flush=True)
    print(f"results in {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
