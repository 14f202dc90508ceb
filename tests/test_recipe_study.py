"""benchmarks/recipe_study.py: the plan (what every run pins and changes), the per-setting statistics checked
against NumPy over the runs' own results.json files, and the --smoke run end to end (teacher, two settings,
resume)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import recipe_report
from benchmarks import recipe_study as rs
from dynabert.errors import UserError
from launcher.config import load_config
from tests.conftest import ROOT

WIDTHS = (1.0, 0.75, 0.5, 0.25)


def _args(tmp_path, *extra):
    return rs.parse_args(["--out", str(tmp_path), "--glue-dir", str(tmp_path / "glue"), *extra])


def _overrides(run) -> dict:
    return dict(text.split("=", 1) for text in run.overrides)


def test_plan_pins_protocol_and_tutorial_weights_and_shares_one_teacher_per_seed(tmp_path):
    args = _args(tmp_path, "--seeds", "1,2", "--settings",
                 "tutorial,dynabert,inplace,lr2x,epochs2,mid,task,labels_only")
    base = load_config(args.config)
    plan = rs.build_plan(args, base)
    assert [(r.setting, r.seed) for r in plan][:6] == [("teacher", 1), ("tutorial", 1), ("dynabert", 1),
                                                       ("inplace", 1), ("lr2x", 1), ("epochs2", 1)]
    runs = {(r.setting, r.seed): _overrides(r) for r in plan}
    for (setting, seed), o in runs.items():
        cfg = load_config(args.config, [f"{k}={v}" for k, v in o.items()])  # every override is valid
        assert cfg.run.seed == seed and cfg.data.select_on == "validation" and cfg.compress.select == "supernet"
        assert cfg.data.allow_download is False and cfg.data.glue_dir == str(tmp_path / "glue")
        if setting == "teacher":
            assert cfg.run.stages == ("finetune",)
            continue
        assert cfg.run.stages == ("compress", "export")
        assert cfg.model.teacher == os.path.join(str(tmp_path), "teachers", f"seed_{seed}", "teacher")
        want = {"dynabert": (1.0, 1.0, 0.0, 0.0), "inplace": (0.1, 0.1, 1.0, 0.0), "mid": (0.1, 0.3, 0.0, 0.0),
                "task": (0.1, 0.1, 0.0, 0.1), "labels_only": (0.0, 0.0, 0.0, 1.0)}.get(setting, (0.1, 0.1, 0.0, 0.0))
        c = cfg.compress
        assert (c.lambda_distill, c.lambda_logit, c.inplace_distill, c.lambda_task) == want
        lr_factor, epoch_factor = {"lr2x": (2, 1), "epochs2": (1, 2)}.get(setting, (1, 1))
        assert cfg.compress.optim.learning_rate == pytest.approx(lr_factor * base.compress.optim.learning_rate)
        assert cfg.compress.optim.epochs == epoch_factor * base.compress.optim.epochs
        assert cfg.data.train_limit == base.data.train_limit  # the same rows in every setting


def test_given_teacher_replaces_the_finetune_runs(tmp_path):
    teacher = tmp_path / "my_teacher"
    teacher.mkdir()
    plan = rs.build_plan(_args(tmp_path, "--teacher", str(teacher), "--settings", "tutorial"),
                         load_config(os.path.join(ROOT, rs.FULL_CONFIG)))
    assert [r.setting for r in plan] == ["tutorial"] * 3
    assert {_overrides(r)["model.teacher"] for r in plan} == {str(teacher)}


def test_tutorial_recipe_config_is_the_demo_budget_with_the_tutorial_weights():
    demo = load_config(os.path.join(ROOT, "configs", "demo.yaml"))
    tut = load_config(os.path.join(ROOT, "configs", "tutorial_recipe.yaml"))
    for get in (lambda c: c.model.name_or_path, lambda c: c.data.task, lambda c: c.data.max_seq_len,
                lambda c: c.data.train_limit, lambda c: c.data.validation_rows, lambda c: c.finetune,
                lambda c: c.compress.widths, lambda c: c.compress.optim.batch_size):
        assert get(tut) == get(demo)
    c = tut.compress
    assert (c.lambda_distill, c.lambda_logit, c.inplace_distill, c.lambda_task) == (0.1, 0.1, 0.0, 0.0)
    assert (tut.data.select_on, tut.compress.select) == ("validation", "supernet")


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="--settings"):
        _args(tmp_path, "--settings", "tutorial,nope")
    with pytest.raises(UserError, match="--seeds"):
        _args(tmp_path, "--seeds", "1,x")
    with pytest.raises(UserError, match="taken"):
        _args(tmp_path, "--define", "tutorial=compress.lambda_logit=1.0")
    args = _args(tmp_path, "--define", "combo=compress.lambda_logit=1.0;compress.inplace_distill=1.0",
                 "--settings", "combo", "--seeds", "1")
    combo = _overrides(rs.build_plan(args, load_config(args.config))[1])
    assert combo["compress.lambda_logit"] == "1.0" and combo["compress.inplace_distill"] == "1.0"


def test_a_run_made_with_other_settings_is_refused(tmp_path):
    args = _args(tmp_path, "--settings", "task_lr2x", "--seeds", "1")
    run = rs.build_plan(args, load_config(args.config))[1]
    assert (run.recipe["compress.lambda_task"], run.recipe["compress.optim.learning_rate"]) == (0.1, 2e-4)
    os.makedirs(run.out_dir)
    # The same --set text from a --define (whose values are strings) is the same run.
    with open(os.path.join(run.out_dir, "study.json"), "w") as f:
        as_defined = {"compress.lambda_task": "0.1", "compress.optim.learning_rate": "0.0002"}
        json.dump({"recipe": {**run.recipe, **as_defined}}, f)
    rs.check_stored(run)
    with open(os.path.join(run.out_dir, "study.json"), "w") as f:
        json.dump({"recipe": {**run.recipe, "compress.lambda_logit": 1.0}}, f)
    with pytest.raises(UserError, match="compress.lambda_logit"):
        rs.check_stored(run)


def _fake_run(run, rng, teacher: float) -> None:
    """What a finished run leaves behind: results.json, metrics.jsonl, rank 0's log."""
    os.makedirs(os.path.join(run.out_dir, "logs"))
    results = {"task": "sst-2", "world_size": 2, "teacher": {"accuracy": teacher},
               "protocol": {"select_on": "validation", "select": "supernet", "description": "honest"},
               "compress_best": {"step": 140}, "seconds": {"compress": 900.0},
               "widths": [{"width": w, "metrics": {"accuracy": float(rng.uniform(0.75, 0.86))}} for w in WIDTHS]}
    with open(os.path.join(run.out_dir, "results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(run.out_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps({"kind": "compress", "step": s}) + "\n" for s in (20, 140, 157))
    with open(os.path.join(run.out_dir, "logs", "workerlog.0"), "w") as f:
        f.write("data train: GLUE_DIR /x/SST-2/train.tsv (67349 rows)\n")
    with open(os.path.join(run.out_dir, "config.yaml"), "w") as f:
        f.write("run:\n  seed: 1\n")


def test_compute_is_counted_in_sub_network_passes(tmp_path):
    """Issue 27 compares levers at equal compute: a step of "all" is one pass per width, a sandwich step the two
    ends and k others, refine one pass a step of each refined width (its last logged step)."""
    rows = [{"kind": "refine_width_0.5", "step": 10}, {"kind": "refine_width_0.5", "step": 12},
            {"kind": "refine_width_0.5_eval", "step": 99}, {"kind": "refine_width_0.25", "step": 12},
            {"kind": "compress", "step": 100}]
    cfg = load_config(os.path.join(ROOT, "configs", "demo.yaml"), ["compress.width_sampling=sandwich"])
    assert rs.sub_network_passes(cfg, 100, rows) == 100 * 3 + 12 + 12
    cfg = load_config(os.path.join(ROOT, "configs", "demo.yaml"), ["compress.width_sampling=all"])
    assert rs.sub_network_passes(cfg, 125, rows[-1:]) == 500
    cfg = load_config(os.path.join(ROOT, "configs", "demo.yaml"), ["compress.widths=[1.0,0.5]"])
    assert rs.sub_network_passes(cfg, 10, []) == 20


def _expected(tmp_path, setting: str, seeds) -> dict:
    """Mean/std/min/max per width straight from the runs' results.json files."""
    out = {}
    for w in WIDTHS:
        metric, delta = [], []
        for seed in seeds:
            with open(tmp_path / "runs" / setting / f"seed_{seed}" / "results.json") as f:
                r = json.load(f)
            value = {row["width"]: row["metrics"]["accuracy"] for row in r["widths"]}[w]
            metric.append(value)
            delta.append(value - r["teacher"]["accuracy"])
        out[str(w)] = (np.array(metric), np.array(delta))
    return out


def test_statistics_per_setting_and_width_match_numpy_over_the_runs_files(tmp_path):
    args = _args(tmp_path, "--settings", "tutorial,lr2x", "--seeds", "1,2,3")
    base = load_config(args.config)
    plan = rs.build_plan(args, base)
    rng = np.random.RandomState(0)
    teachers = {1: 0.83, 2: 0.845, 3: 0.8211}
    for run in plan:
        if run.setting != "teacher" and (run.setting, run.seed) != ("lr2x", 3):  # one run still missing
            _fake_run(run, rng, teachers[run.seed])
    records = [rs.read_run(r, need_glue=True) for r in plan if r.setting != "teacher" and rs.is_done(r)]
    agg = recipe_report.aggregate(records, rs.describe_settings([rs.SETTINGS["tutorial"], rs.SETTINGS["lr2x"]], base))
    for setting, seeds in (("tutorial", (1, 2, 3)), ("lr2x", (1, 2))):
        entry = agg["settings"][setting]
        assert entry["seeds"] == list(seeds)
        for w, (metric, delta) in _expected(tmp_path, setting, seeds).items():
            for name, values in (("metric", metric), ("delta", delta)):
                got = entry["widths"][w][name]
                assert got["n"] == len(seeds)
                assert got["mean"] == pytest.approx(values.mean(), abs=1e-12)
                assert got["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
                assert (got["min"], got["max"]) == (pytest.approx(values.min()), pytest.approx(values.max()))
        for w, bar in recipe_report.TARGETS.items():
            assert entry["targets"][str(w)]["met"] == bool(_expected(tmp_path, setting, seeds)[str(w)][1].mean() >= bar)
    lr2x, tutorial = _expected(tmp_path, "lr2x", (1, 2)), _expected(tmp_path, "tutorial", (1, 2))
    assert agg["paired"]["lr2x"]["seeds"] == [1, 2] and "tutorial" not in agg["paired"]
    for w in lr2x:
        diff = lr2x[w][0] - tutorial[w][0]
        got = agg["paired"]["lr2x"]["widths"][w]
        assert (got["mean"], got["std"]) == (pytest.approx(diff.mean(), abs=1e-12), pytest.approx(diff.std(ddof=1)))
    t = agg["teacher"]["summary"]
    assert t["mean"] == pytest.approx(np.mean(list(teachers.values())))
    assert t["std"] == pytest.approx(np.std(list(teachers.values()), ddof=1))
    assert agg["teacher"]["same_in_every_run_of_a_seed"] is True


def _report(out, *extra) -> dict:
    assert rs.main(["--out", str(out), "--report-only", "--results-dir", str(out), *extra]) == 0
    with open(os.path.join(str(out), "recipe_study.json")) as f:
        return json.load(f)


def test_previous_json_stands_in_for_its_runs_and_only_for_the_same_study(tmp_path, capsys):
    """A study spans machines: --out is scratch, the committed JSON is what lasts."""
    first, second = tmp_path / "first", tmp_path / "second"
    rng = np.random.RandomState(2)
    first_args = _args(first, "--settings", "tutorial,lr2x", "--seeds", "1,2")
    plan = rs.build_plan(first_args, load_config(first_args.config))
    for run in plan:
        if run.setting != "teacher" and (run.setting, run.seed) != ("lr2x", 2):
            _fake_run(run, rng, {1: 0.83, 2: 0.84}[run.seed])
    earlier = _report(first, "--settings", "tutorial,lr2x", "--seeds", "1,2")
    previous = str(first / "recipe_study.json")

    args = _args(second, "--settings", "tutorial,lr2x", "--seeds", "1,2,3", "--previous", previous)
    base = load_config(args.config)
    plan = rs.build_plan(args, base)
    got = rs.load_previous(previous, args, base)
    assert sorted(got) == [("lr2x", 1), ("tutorial", 1), ("tutorial", 2)]
    to_launch = [(r.setting, r.seed) for r in plan if not rs.run_from_previous(r, plan, got)]
    assert to_launch == [("teacher", 2), ("lr2x", 2), ("teacher", 3), ("tutorial", 3), ("lr2x", 3)]
    _fake_run(next(r for r in plan if (r.setting, r.seed) == ("tutorial", 3)), rng, 0.85)
    merged = _report(second, "--settings", "tutorial,lr2x", "--seeds", "1,2,3", "--previous", previous)
    by_run = {(r["setting"], r["seed"]): r for r in merged["runs"]}
    assert sorted(by_run) == [("lr2x", 1), ("tutorial", 1), ("tutorial", 2), ("tutorial", 3)]
    for r in earlier["runs"]:
        assert by_run[(r["setting"], r["seed"])]["widths"] == r["widths"]
    assert merged["aggregate"]["settings"]["tutorial"]["seeds"] == [1, 2, 3]
    assert {(m["setting"], m["seed"]) for m in merged["missing"]} == {("lr2x", 2), ("lr2x", 3)}

    # Another budget, or a setting whose meaning changed since: refused with the file's name.
    other = _args(second, "--settings", "tutorial", "--previous", previous,
                  "--config", os.path.join(ROOT, "configs", "tutorial_recipe_teacher3.yaml"))
    with pytest.raises(UserError, match="--previous .*made with config"):
        rs.load_previous(previous, other, load_config(other.config))
    redefined = _args(second, "--settings", "tutorial", "--previous", previous,
                      "--define", "x=compress.lambda_logit=1.0")
    redefined.catalog["lr2x"] = rs.Setting("lr2x", "changed", lambda b: {"compress.optim.learning_rate": 1.0})
    with pytest.raises(UserError, match="setting lr2x changed"):
        rs.load_previous(previous, redefined, base)
    assert rs.main(["--out", str(second), "--report-only", "--previous", str(tmp_path / "none.json")]) == 2
    assert "--previous" in capsys.readouterr().err


def test_a_run_stopped_between_logging_steps_counts_its_last_step(tmp_path):
    """Patience stops at an evaluation, which need not be a logging step: the run's steps (and passes) are the
    last evaluated step, not the last logged one."""
    args = _args(tmp_path, "--settings", "tutorial", "--seeds", "1")
    run = rs.build_plan(args, load_config(args.config))[1]
    _fake_run(run, np.random.RandomState(1), 0.8)
    with open(os.path.join(run.out_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"kind": "compress_eval/w0.25", "step": 161, "accuracy": 0.8}) + "\n")
    record = rs.read_run(run, need_glue=True)
    assert record["compress_steps"] == 161 and record["passes"] == 161 * 4


def test_a_run_on_other_data_or_protocol_is_refused(tmp_path):
    args = _args(tmp_path, "--settings", "tutorial", "--seeds", "1")
    run = rs.build_plan(args, load_config(args.config))[1]
    _fake_run(run, np.random.RandomState(1), 0.8)
    with open(os.path.join(run.out_dir, "logs", "workerlog.0"), "w") as f:
        f.write("data train: built-in synthetic sentiment data (NOT GLUE)\n")
    with pytest.raises(UserError, match="not GLUE_DIR"):
        rs.read_run(run, need_glue=True)


# ----------------------------------------------------------------------------------------------------------
# --smoke: real launches (a teacher, two settings) on the tiny BERT, then the same command again (resume)
# ----------------------------------------------------------------------------------------------------------
def _smoke_cmd(out, model):
    return [sys.executable, "-m", "benchmarks.recipe_study", "--smoke", "--out", out, "--model", model]


@pytest.fixture(scope="module")
def smoke(tiny_model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("recipe_smoke"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    done = subprocess.run(_smoke_cmd(out, tiny_model_dir), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(os.path.join(out, "recipe_study.json")) as f:
        return out, json.load(f), env


@pytest.mark.dist
def test_smoke_json_structure_and_numbers_come_from_the_runs(smoke):
    out, result, _ = smoke
    assert result["smoke"] is True and result["seeds"] == [1] and result["settings"] == ["tutorial", "inplace"]
    assert result["metric"] == "accuracy" and result["missing"] == [] and len(result["runs"]) == 2
    assert isinstance(result["machine"]["git_commit"], str) and result["machine"]["cpu_model"]
    assert result["nproc_per_node"] == 1 and isinstance(result["wall_seconds"], float)
    teacher_dir = os.path.join(out, "teachers", "seed_1", "teacher")
    for setting in ("tutorial", "inplace"):
        run_dir = os.path.join(out, "runs", setting, "seed_1")
        with open(os.path.join(run_dir, "results.json")) as f:
            per_run = json.load(f)
        entry = result["aggregate"]["settings"][setting]
        assert list(entry["widths"]) == [str(w) for w in WIDTHS]
        for row in per_run["widths"]:
            cell = entry["widths"][str(float(row["width"]))]
            value = row["metrics"]["accuracy"]
            assert cell["metric"]["n"] == 1 and cell["metric"]["std"] is None  # one seed: no spread
            assert cell["metric"]["mean"] == cell["metric"]["min"] == cell["metric"]["max"] == value
            assert cell["delta"]["mean"] == pytest.approx(value - per_run["teacher"]["accuracy"])
        cfg = load_config(os.path.join(run_dir, "config.yaml"))  # what the worker really ran
        assert cfg.model.teacher == teacher_dir and cfg.run.seed == 1
        assert cfg.compress.inplace_distill == (1.0 if setting == "inplace" else 0.0)
        assert cfg.data.select_on == "validation" and cfg.compress.select == "supernet"
        assert not os.path.exists(os.path.join(run_dir, "compress"))  # models dropped, numbers kept
    assert result["aggregate"]["teacher"]["per_seed"]["1"] == per_run["teacher"]["accuracy"]


@pytest.mark.dist
def test_smoke_markdown_has_the_tables_and_machine(smoke):
    out, result, _ = smoke
    md = open(os.path.join(out, "recipe_study.md")).read()
    assert "SMOKE" in md and "| setting | seeds | Δ w1.0 |" in md and "| setting | width | n | mean | std |" in md
    assert "| tutorial |" in md and "| inplace |" in md and "git commit" in md


@pytest.mark.dist
def test_smoke_rerun_launches_nothing_and_reports_the_same(smoke, tiny_model_dir):
    out, result, env = smoke
    done = subprocess.run(_smoke_cmd(out, tiny_model_dir), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "running" not in done.stdout
    with open(os.path.join(out, "recipe_study.json")) as f:
        again = json.load(f)
    assert again["aggregate"] == result["aggregate"]
