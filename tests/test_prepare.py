"""The prepare stage: GLUE_DIR splits go through the corpus cache, batches from the cache equal the
in-memory path's, the honest protocol's carve is the same on both paths, and runs that do not train
never read the training corpus."""
import os

import numpy as np
import pytest

from dynabert.data.batching import GlobalBatches, eval_batches
from dynabert.data.features import encode
from dynabert.data.readers import read_glue_tsv
from dynabert.data.task_data import Rows
from dynabert.model.pretrained import load_tokenizer
from dynabert.stages.prepare import prepare_data
from dynabert.train.run_log import RunLog
from launcher.config import load_config
from tests.conftest import ROOT

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def _cfg(glue_dir, out, *extra):
    return load_config(TINY, [f"data.glue_dir={glue_dir}", f"run.out_dir={out}", "data.train_limit=3000",
                              "data.dev_limit=300", "data.validation_rows=200", *extra])


def test_cached_batches_equal_the_in_memory_path(glue_dir, tokenizer, tmp_path):
    cfg = _cfg(glue_dir, tmp_path, "data.select_on=dev")
    data = prepare_data(cfg, tokenizer, RunLog("", enabled=False))
    assert os.path.isdir(tmp_path / "cache" / "sst-2.train") and len(data.train) == 3000
    # The in-memory path (PaddleNLP's tokenizer on the same rows); tests/test_fast_tokenizer.py compares
    # every row of the file, this compares what the sampler makes of them.
    train = encode(read_glue_tsv(os.path.join(glue_dir, "SST-2", "train.tsv"), "sst-2", "train", 3000), tokenizer,
                   cfg.data.max_seq_len)
    for world_size in (1, 2):
        for rank in range(world_size):
            cached = GlobalBatches(data.train, 32, seed=5, rank=rank, world_size=world_size, pad_token_id=0,
                                   group_by_length=True)
            memory = GlobalBatches(train, 32, seed=5, rank=rank, world_size=world_size, pad_token_id=0,
                                   group_by_length=True)
            for step, (a, b) in enumerate(zip(cached.epoch(0), memory.epoch(0))):
                for key in a:
                    np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} step {step}")
    dev = list(eval_batches(data.dev, 64, 0, 1, 0))
    dev_memory = encode(read_glue_tsv(os.path.join(glue_dir, "SST-2", "dev.tsv"), "sst-2", "dev", 300), tokenizer,
                        cfg.data.max_seq_len)
    for idx, batch in dev:
        np.testing.assert_array_equal(batch["labels"], [dev_memory[i].label for i in idx])


def test_a_run_that_does_not_train_never_reads_the_training_corpus(glue_dir, tokenizer, tmp_path):
    cfg = _cfg(glue_dir, tmp_path, "run.stages=[export]")
    data = prepare_data(cfg, tokenizer, RunLog("", enabled=False))
    assert len(data.train) == 0 and len(data.dev) == 300
    assert sorted(os.listdir(tmp_path / "cache")) == ["sst-2.dev", "sst-2.dev.lock"]


def test_train_files_rows_reach_distillation_only_and_are_never_held_out(glue_dir, tokenizer, tmp_path):
    """An augmented corpus (data.train_files) is for distillation: the compress stages train on it after the
    task's rows; the teacher's fine-tuning does not see it (unless opted in), and no validation row is
    drawn from it."""
    from dynabert.stages.supernet_training import training_batches

    extra = tmp_path / "augmented.tsv"
    extra.write_text("sentence\tlabel\nan augmented and wonderful row\t1\na dull augmented row\t0\n")
    cfg = _cfg(glue_dir, tmp_path / "run", f"data.train_files=[{tmp_path}/*.tsv]", "compress.optim.batch_size=2")
    data = prepare_data(cfg, tokenizer, RunLog("", enabled=False))
    assert len(data.train) == 3000 and len(data.augmented) == 2 and len(data.distill) == 3002
    held = np.sort(np.random.RandomState(42).permutation(67349)[:200])  # the task's rows alone decide the carve
    np.testing.assert_array_equal(data.selection.indices, held)
    assert [data.distill[3000].label, data.distill[3001].label] == [1, 0]
    augmented_ids = {tuple(data.augmented[i].input_ids) for i in range(2)}
    assert not augmented_ids & {tuple(data.selection[i].input_ids) for i in range(len(data.selection))}
    assert not augmented_ids & {tuple(data.train[i].input_ids) for i in range(len(data.train))}

    class Ctx:  # what training_batches reads of a stage's context
        comms = type("C", (), {"rank": 0, "world_size": 1})()

    Ctx.cfg, Ctx.data = cfg, data
    seen = {tuple(row) for batch in training_batches(Ctx).epoch(0) for row, mask in
            zip(batch["input_ids"], batch["attention_mask"]) for row in [row[mask > 0]]}
    assert augmented_ids <= seen  # compress trains on them

    opted = prepare_data(_cfg(glue_dir, tmp_path / "run2", f"data.train_files=[{tmp_path}/*.tsv]",
                              "data.train_files_in_finetune=true"), tokenizer, RunLog("", enabled=False))
    assert len(opted.train) == 3002 and len(opted.augmented) == 0 and len(opted.distill) == 3002
    extra.write_text("sentence\tlabel\na row with a bad label\t7\n")
    from dynabert.errors import UserError
    with pytest.raises(UserError, match=rf"{extra}:2: "):
        prepare_data(cfg, tokenizer, RunLog("", enabled=False))


def test_the_honest_carve_is_drawn_from_every_row_with_the_seed(glue_dir, tokenizer, tmp_path):
    data = prepare_data(_cfg(glue_dir, tmp_path), tokenizer, RunLog("", enabled=False))
    assert isinstance(data.train, Rows) and len(data.train) == 3000 and len(data.selection) == 200
    held = np.sort(np.random.RandomState(42).permutation(67349)[:200])
    np.testing.assert_array_equal(data.selection.indices, held)
    kept = np.setdiff1d(np.arange(67349), held)[:3000]
    np.testing.assert_array_equal(data.train.indices, kept)
    np.testing.assert_array_equal(data.train.lengths, [len(data.train[i].input_ids) for i in range(3000)])


def test_dynabert_prepare_builds_the_cache_and_reports(glue_dir, tmp_path, capsys, tiny_model_dir):
    from launcher import prepare_cli

    code = prepare_cli.main(["--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}",
                             "--set", f"data.glue_dir={glue_dir}", "--set", f"data.cache_dir={tmp_path}/c",
                             "--set", "data.train_limit=500", "--set", "data.validation_rows=50"])
    out = capsys.readouterr().out
    assert code == 0 and "train 500 rows, validation 50, dev 200" in out
    assert sorted(p for p in os.listdir(tmp_path / "c") if not p.endswith(".lock")) == ["sst-2.dev", "sst-2.train"]
    assert prepare_cli.main(["--config", TINY, "--set", "data.validation_rows=0"]) == 2
    assert "error: --set: data.validation_rows: must be >= 1" in capsys.readouterr().err


def test_variants_of_held_out_rows_are_dropped_when_the_corpus_names_its_source_rows(glue_dir, tokenizer, tmp_path):
    held = np.sort(np.random.RandomState(42).permutation(67349)[:200])
    kept_source = int(np.setdiff1d(np.arange(10), held)[0])
    augmented = tmp_path / "aug" / "augmented.tsv"
    augmented.parent.mkdir()
    augmented.write_text("sentence\tlabel\tsource_row\n"
                         f"a variant of a held out row\t1\t{held[0]}\n"
                         f"a variant of a trained row\t0\t{kept_source}\n"
                         f"another held out variant\t1\t{held[1]}\n")
    lines = []
    cfg = _cfg(glue_dir, tmp_path / "run", f"data.train_files=[{augmented}]")
    data = prepare_data(cfg, tokenizer, RunLog("", enabled=False))
    assert len(data.augmented) == 1 and data.augmented[0].label == 0
    again = prepare_data(cfg, tokenizer, type("Log", (), {"info": staticmethod(lines.append)})())
    assert len(again.augmented) == 1  # the column is read once per file version, then reused
    assert any("2 augmented rows made from held-out validation rows dropped" in line for line in lines)
    assert os.path.isfile(tmp_path / "run" / "cache" / "sst-2.augmented.source_rows.npz")

    plain = tmp_path / "aug" / "plain.tsv"
    plain.write_text("sentence\tlabel\nno source column here\t1\n")
    from dynabert.errors import UserError
    with pytest.raises(UserError, match=r"plain.tsv: no source_row column, but other data.train_files have one"):
        prepare_data(_cfg(glue_dir, tmp_path / "run", f"data.train_files=[{tmp_path}/aug/*.tsv]"), tokenizer,
                     RunLog("", enabled=False))
    lines.clear()
    without = prepare_data(_cfg(glue_dir, tmp_path / "run3", f"data.train_files=[{plain}]"), tokenizer,
                           type("Log", (), {"info": staticmethod(lines.append)})())
    assert len(without.augmented) == 1
    assert any("no source_row column, so variants of the held-out validation rows cannot be told apart" in line
               for line in lines)
