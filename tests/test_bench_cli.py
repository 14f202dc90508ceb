"""`dynabert-bench`: the measured step's breakdown, the report's arithmetic, refusals before anything
starts, the commands it builds for GPUs and nodes, and one real run at world sizes 1 and 2 on CPU (gloo)."""
import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
PARTS = ["teacher", "width 1.0", "width 0.75", "width 0.5", "width 0.25", "all-reduce", "optimizer", "other"]


def _positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------------------------------------
# the measured step, in-process
# ------------------------------------------------------------------------------------------------
def test_breakdown_parts_add_up_to_the_measured_step(tiny_model_dir):
    from dynabert.collectives import SingleProcess
    from dynabert.train import bench_step as B
    from launcher.config import load_config

    cfg = load_config(TINY, [f"model.name_or_path={tiny_model_dir}", "compress.width_sampling=all"])  # every width
    comms = SingleProcess()
    w = B.load_workload(cfg, 32, 6 * 32, synthetic=False)
    step = B.CompressStep(B.load_teacher(cfg, w), cfg, comms, regression=w.regression, steps=6)
    records = B.measure(step, B.global_batches(w, cfg, comms), warmup=1, steps=5)
    assert len(records) == 5
    for r in records:
        assert list(r.phases) == PARTS[:-1]  # every phase, in the order the step runs them
        assert all(v >= 0 for v in r.phases.values())
    total = sum(r.seconds for r in records)
    covered = sum(sum(r.phases.values()) for r in records)
    assert covered <= total and covered >= 0.9 * total, (covered, total)


def test_phase_timer_drains_the_device_at_both_ends_of_a_phase():
    from dynabert.train.bench_step import PhaseTimer

    events = []
    timer = PhaseTimer(sync=lambda: events.append("sync"))
    with timer("teacher"):
        events.append("work")
    with timer("teacher"):
        events.append("work")
    assert events == ["sync", "work", "sync"] * 2  # on a GPU: the device's synchronize
    seconds = timer.take()
    assert list(seconds) == ["teacher"] and seconds["teacher"] >= 0
    assert timer.take() == {}  # taken: the next step starts from nothing


def test_synthetic_rows_follow_the_requested_lengths(tiny_model_dir):
    from dynabert.train import bench_step as B
    from launcher.config import load_config

    cfg = load_config(TINY, [f"model.name_or_path={tiny_model_dir}"])
    w = B.load_workload(cfg, 32, 64, synthetic=True, lengths=(5, 9))
    lengths = {len(f.input_ids) for f in w.train}
    assert lengths == set(range(5, 10))  # 1,600 rows: every length of the range is drawn
    assert "synthetic" in w.source and w.num_classes == 2
    w = B.load_workload(cfg, 32, 64, synthetic=True)
    assert {len(f.input_ids) for f in w.train} == {cfg.data.max_seq_len}


# ------------------------------------------------------------------------------------------------
# the report's arithmetic, on records made by hand
# ------------------------------------------------------------------------------------------------
def _rank(rank, seconds, phases, samples=4, tokens=30, padded=40):
    return {"rank": rank, "threads": 1, "host": "h", "device": "cpu", "memory": {"kind": "peak_rss", "bytes": 100},
            "all_reduce_calls_per_step": 1.0, "all_reduce_bytes_per_step": 8.0,
            "steps": [{"seconds": s, "phases": p, "samples": samples, "tokens": tokens, "padded_tokens": padded}
                      for s, p in zip(seconds, phases)]}


def test_world_size_figures_by_hand():
    from launcher import bench_report as R

    phases = [{"teacher": 0.25, "all-reduce": 0.5}, {"teacher": 0.25, "all-reduce": 1.0}]
    two = R.world_size_summary({"world_size": 2, "nnodes": 1,
                                "ranks": [_rank(1, [1.5, 1.0], phases), _rank(0, [1.0, 2.0], phases)]})
    # a step lasts as long as its slowest rank; throughput = all samples / the slowest rank's total time
    assert two["step_seconds"] == [1.5, 2.0]
    assert two["samples_per_s"] == pytest.approx(16 / 3.0)
    assert two["tokens_per_s"] == pytest.approx(120 / 3.0)
    assert two["per_rank_samples_per_s"] == [pytest.approx(8 / 3.0), pytest.approx(8 / 2.5)]
    assert two["padding_fraction"] == pytest.approx(0.25)
    # rank 0: mean step 1.5 = teacher 0.25 + all-reduce 0.75 + other 0.5; rank 1: 1.25 = 0.25 + 0.75 + 0.25
    assert two["breakdown_s_per_rank"][0] == pytest.approx({"teacher": 0.25, "all-reduce": 0.75, "other": 0.5})
    assert two["breakdown_s"] == pytest.approx({"teacher": 0.25, "all-reduce": 0.75, "other": 0.375})
    one = R.world_size_summary({"world_size": 1, "nnodes": 1, "ranks": [_rank(0, [2.0, 2.0], phases)]})
    rows = [one, two]
    R.add_efficiency(rows)
    assert one["scaling_efficiency"] == 1.0
    assert two["scaling_efficiency"] == pytest.approx((16 / 3.0 / 2) / (8 / 4.0))


# ------------------------------------------------------------------------------------------------
# refusals and commands, in-process (nothing is launched)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("PADDLE_") or k == "CUDA_VISIBLE_DEVICES"]:
        monkeypatch.delenv(key)
    return monkeypatch


def _bench(argv, capsys):
    from launcher import bench

    code = bench.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_more_gpus_than_the_node_has_is_refused_before_anything_starts(clean_env, capsys, tmp_path, tiny_model_dir):
    from launcher import cli, gpu_probe

    clean_env.setattr(gpu_probe, "run_gpu_probe", lambda python, env: gpu_probe.GpuProbe(True, 2, True, "fake GPU"))
    clean_env.setattr(cli, "run_job", lambda *a, **k: pytest.fail("a job was started"))
    code, out, err = _bench(["--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}", "--out_dir",
                             str(tmp_path), "--device", "gpu", "--world-sizes", "1,2,4"], capsys)
    assert code == 2
    assert err.strip() == ("error: --world-sizes: world size 4 needs 4 GPU(s) per node, but this node has 2 usable "
                           "(0,1)")
    assert not os.path.exists(tmp_path / "bench")


def test_compare_reference_outside_a_checkout_says_it_needs_one(clean_env, capsys, tmp_path):
    # An installed package has no benchmarks/: the flag is refused in one line before anything starts.
    from launcher import bench

    clean_env.setattr(bench, "REFERENCE", str(tmp_path / "benchmarks" / "seed_reference.py"))
    code, out, err = _bench(["--config", TINY, "--out_dir", str(tmp_path), "--device", "cpu", "--dry-run",
                             "--compare-reference"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: --compare-reference needs the source checkout") and err.count("\n") == 1, err


@pytest.mark.parametrize("extra, message", [
    (["--world-sizes", "1,3"], "compress.optim.batch_size: global batch 32 does not divide among world size 3"),
    (["--world-sizes", "2,x"], "--world-sizes 2,x: expected comma-separated integers"),
    (["--world-sizes", "1,2", "--nproc_per_node", "2"], "--nproc_per_node: not with --world-sizes"),
    (["--world-sizes", "2,3", "--nnodes", "2", "--master", "10.0.0.1:8090"], "--world-sizes: 3 processes do not"),
    (["--resume", "auto"], "--resume: not a dynabert-bench flag"),
    (["--overwrite"], "--overwrite: not a dynabert-bench flag"),
    (["--steps", "0"], "--steps 0 --warmup 3: need at least 1 timed step"),
    (["--lengths", "2-9"], "--lengths 2-9: need 3 <= A <= B <= data.max_seq_len (32)"),
])
def test_bad_flags_give_one_line_errors(clean_env, capsys, tmp_path, extra, message):
    code, out, err = _bench(["--config", TINY, "--out_dir", str(tmp_path), "--device", "cpu", "--dry-run", *extra],
                            capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_gpu_and_multi_node_commands(clean_env, capsys, tmp_path):
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    code, out, err = _bench(["--config", TINY, "--out_dir", str(tmp_path), "--device", "gpu", "--world-sizes",
                             "1,2,4", "--steps", "7", "--dry-run"], capsys)
    assert code == 0, err
    commands = [line.split() for line in out.splitlines() if not line.startswith(("#", "+", "-"))]
    assert len(commands) == 3
    for cmd, devices in zip(commands, ("0", "0,1", "0,1,2,3")):
        assert cmd[1:3] == ["-m", "paddle.distributed.launch"]
        assert cmd[cmd.index("--devices") + 1] == devices
        assert cmd[cmd.index("--nproc_per_node") + 1] == str(len(devices.split(",")))
        worker = cmd[cmd.index("launcher.bench"):]
        assert worker[1] == "worker" and worker[worker.index("--steps") + 1] == "7"
    assert "PADDLE_DISTRI_BACKEND=gloo" not in out  # NCCL on GPUs

    clean_env.delenv("CUDA_VISIBLE_DEVICES")
    code, out, err = _bench(["--config", TINY, "--out_dir", str(tmp_path), "--device", "cpu", "--world-sizes", "2,4",
                             "--nnodes", "2", "--node_rank", "1", "--master", "10.0.0.1:8090", "--dry-run"], capsys)
    assert code == 0, err
    commands = [line.split() for line in out.splitlines() if not line.startswith(("#", "+", "-"))]
    for cmd, nproc in zip(commands, ("1", "2")):
        assert cmd[cmd.index("--nproc_per_node") + 1] == nproc
        assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("--rank") + 1] == "1"
        assert cmd[cmd.index("--log_dir") + 1].endswith("node1")  # nodes sharing out_dir keep their own logs
    assert "+ PADDLE_DISTRI_BACKEND=gloo" in out


# ------------------------------------------------------------------------------------------------
# a real run: world sizes 1 and 2 on CPU (gloo), tiny model, with the tutorial loop for comparison
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_run(tiny_model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench_cli"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_") and k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = ROOT
    done = subprocess.run([sys.executable, "-m", "launcher.bench", "--config", TINY, "--set",
                           f"model.name_or_path={tiny_model_dir}", "--out_dir", out, "--device", "cpu",
                           "--world-sizes", "1,2", "--steps", "3", "--warmup", "1", "--compare-reference",
                           "--peak-seconds", "0.05"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


@pytest.mark.dist
def test_run_reports_every_world_size(bench_run):
    out, stdout = bench_run
    report = os.path.join(out, "bench")
    assert "| world size |" in stdout and "Step breakdown" in stdout
    with open(os.path.join(report, "bench.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert open(os.path.join(report, "bench.md")).read().startswith("# dynabert-bench")
    res = json.load(open(os.path.join(report, "bench.json")))
    assert res["world_sizes"] == [1, 2] and res["device"] == "cpu" and res["timed_steps"] == 3
    w = res["workload"]
    assert w["widths"] == [1.0, 0.75, 0.5, 0.25] and w["global_batch"] == 32 and isinstance(w["data"], str)
    m = res["machine"]
    assert m["paddle"].startswith("2.6") and isinstance(m["cpus_available"], int)
    assert m["git_commit"] is None or isinstance(m["git_commit"], str)
    one, two = res["results"]
    for row, ws in ((one, 1), (two, 2)):
        assert row["world_size"] == ws and row["nproc_per_node"] == ws
        assert _positive(row["samples_per_s"]) and _positive(row["tokens_per_s"])
        assert len(row["per_rank_samples_per_s"]) == ws and all(map(_positive, row["per_rank_samples_per_s"]))
        assert len(row["step_seconds"]) == 3 and row["p90_step_s"] >= row["median_step_s"] > 0
        assert row["memory_kind"] == "peak_rss" and len(row["peak_memory_bytes_per_rank"]) == ws
        assert all(isinstance(b, int) and b > 2 ** 20 for b in row["peak_memory_bytes_per_rank"])
        assert list(row["breakdown_s"]) == PARTS
        assert _positive(row["reference"]["samples_per_s"]) and _positive(row["ratio_project_over_reference"])
    assert one["scaling_efficiency"] == 1.0
    assert two["scaling_efficiency"] == pytest.approx((two["samples_per_s"] / 2) / one["samples_per_s"])
    # PaddleCollectives' own counters: one fused all-reduce per step with 2 processes, none with 1
    assert one["all_reduce_calls_per_step"] == 0 and two["all_reduce_calls_per_step"] == 1
    assert two["all_reduce_bytes_per_step"] > 0
    # MFU: the same global batches (padded alike on every rank) are the same FLOPs at either world size; the
    # rate achieved and the matmul rate each rank measured give the fraction.
    assert one["flops_per_step"] == two["flops_per_step"] > 0
    for row in (one, two):
        peak = row["matmul_peak_flops_per_rank"]
        assert _positive(peak["model"]) and _positive(peak["square"]) and row["peak_dtype"] == "float32"
        assert row["mfu"]["model"] == pytest.approx(row["flops_per_s_per_rank"] / peak["model"])
    assert "MFU (model shapes)" in stdout


@pytest.mark.dist
def test_run_breakdown_adds_up_on_every_rank(bench_run):
    res = json.load(open(os.path.join(bench_run[0], "bench", "bench.json")))
    for row in res["results"]:
        for parts in row["breakdown_s_per_rank"]:
            step = sum(parts.values())  # the mean step: the named parts plus what none covers
            assert abs(parts["other"]) <= 0.1 * step, parts
