"""A fresh start never destroys an earlier run: refused with one line naming --resume auto and --overwrite;
--overwrite clears what the run would replace (and says so); --resume auto continues; a prepared cache,
logs and the stages a run only reads are not an earlier run. The real worker entry point runs in this
process (conftest.py's ``run_worker``) on the tiny model."""
import hashlib
import os

from dynabert.config import STAGES
from launcher.config import load_config
from launcher.run_dir import STAGE_OUTPUTS, previous_outputs, replaced_paths
from tests.conftest import ROOT

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def _touch(root, *rels):
    for rel in rels:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(rel)


def _cfg(out, *overrides):
    return load_config(TINY, [f"run.out_dir={out}", *overrides])


def test_every_stage_says_what_it_writes():
    assert tuple(STAGE_OUTPUTS) == STAGES


def test_a_prepared_cache_logs_and_records_are_not_an_earlier_run(tmp_path):
    assert previous_outputs(_cfg(tmp_path / "missing")) == []
    _touch(tmp_path, "cache/sst-2/train/data.npy", "logs/workerlog.0", "metrics.jsonl", "tensorboard/events.x",
           "config.yaml", "checkpoints/compress/.step_00000006.tmp-x/model.pdparams", "teacher/.partial")
    assert previous_outputs(_cfg(tmp_path)) == []  # hidden: an interrupted atomic write, not an output


def test_what_counts_is_what_this_run_would_replace(tmp_path):
    _touch(tmp_path, "teacher/model_state.pdparams", "checkpoints/finetune/DONE.json",
           "checkpoints/compress/step_00000006/state.json", "compress/supernet.pdparams",
           "export/width_0.5/config.json", "results.json")
    assert previous_outputs(_cfg(tmp_path)) == ["checkpoints/finetune", "teacher", "checkpoints/compress", "compress",
                                                "export", "results.json"]
    # compress alone reads the teacher (kept) and makes the exports stale (counted)
    assert previous_outputs(_cfg(tmp_path, "run.stages=[compress]")) == [
        "checkpoints/compress", "compress", "export", "results.json"]
    # a teacher brought in model.teacher: finetune does not run, this run's teacher/ is not replaced
    assert "teacher" not in previous_outputs(_cfg(tmp_path, "model.teacher=/elsewhere"))
    assert previous_outputs(_cfg(tmp_path, "run.stages=[select]")) == []
    assert replaced_paths(_cfg(tmp_path, "run.stages=[export]")) == ["export", "results.json", "results.md", "select"]


def _snapshot(root):
    """Every file under ``root`` with its content's digest and mtime: nothing deleted, added or rewritten."""
    seen = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                seen[os.path.relpath(path, root)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return seen


def _glue_copy_of_the_builtin_set(root):
    """SST-2 TSV files (GLUE's format) holding the built-in rows, so that the run tokenizes into a corpus cache."""
    from dynabert.data.sources import builtin_dataset

    os.makedirs(root / "SST-2")
    for split in ("train", "dev"):
        rows = [f"{e.text_a}\t{e.label}" for e in builtin_dataset("sst-2", split)]
        (root / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return root


def test_second_fresh_run_is_refused_overwrite_starts_over_resume_continues(run_worker, tiny_model_dir, tmp_path):
    from launcher import prepare_cli

    out = tmp_path / "run"
    data = ["--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}", "--set", f"run.out_dir={out}",
            "--set", f"data.glue_dir={_glue_copy_of_the_builtin_set(tmp_path / 'glue')}"]
    args = data + ["--set", "run.stages=[finetune]", "--set", "finetune.max_steps=4", "--set", "finetune.eval_every=2",
                   "--set", "run.checkpoint_every_steps=2"]
    # dynabert-prepare writes only the cache: the job that follows is still a fresh start
    assert prepare_cli.main(data) == 0 and os.path.isdir(out / "cache")
    assert run_worker(*args) == (0, "")
    checkpoints = out / "checkpoints" / "finetune"
    assert sorted(os.listdir(checkpoints)) == ["DONE.json", "step_00000002"]
    before = _snapshot(out)

    code, err = run_worker(*args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: run.out_dir {out} holds an earlier run's "
                                                   "checkpoints/finetune, teacher, which this fresh start"), err
    assert "--resume auto" in err and "--overwrite" in err
    assert _snapshot(out) == before  # nothing deleted, nothing rewritten (not even config.yaml)

    code, err = run_worker(*args, "--resume", "auto")
    assert code == 0, err
    assert "finetune: already complete" in run_worker.out

    (out / "teacher" / "from_the_first_run").write_text("")
    code, err = run_worker(*args, "--overwrite")
    assert code == 0, err
    assert f"--overwrite: removed the earlier run's checkpoints/finetune, teacher from {out}" in run_worker.out
    assert "finetune: already complete" not in run_worker.out  # trained again
    assert not (out / "teacher" / "from_the_first_run").exists()
    assert sorted(os.listdir(checkpoints)) == ["DONE.json", "step_00000002"]
    assert os.path.isdir(out / "cache")  # the cache is kept

    os.remove(checkpoints / "DONE.json")  # as if the run had died after step 3: it resumes from step 2
    code, err = run_worker(*args, "--resume", "auto")
    assert code == 0, err
    assert f"finetune: resuming from {checkpoints / 'step_00000002'}" in run_worker.out

    code, err = run_worker(*args, "--overwrite", "--resume", "auto")
    assert code == 2 and err.startswith("error: --overwrite: not with --resume"), err
