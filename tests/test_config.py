"""Config loading: defaults < YAML file < --set; unknown keys, wrong types and impossible values are
rejected with the dotted key (and file) named; every shipped YAML loads."""
import dataclasses

import pytest

from dynabert.config import Config
from dynabert.errors import UserError
from launcher.config import dump_config, load_config, shipped_configs
from tests.conftest import ROOT


@pytest.mark.parametrize("path", shipped_configs(ROOT), ids=lambda p: p.rsplit("/", 1)[-1])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert 1.0 in cfg.compress.widths


def test_there_are_shipped_configs():
    names = {p.rsplit("/", 1)[-1] for p in shipped_configs(ROOT)}
    assert {"demo.yaml", "tiny.yaml"} <= names


def test_precedence_cli_over_file_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  max_seq_len: 64\ncompress:\n  optim:\n    epochs: 2\n")
    cfg = load_config(str(path), ["data.max_seq_len=96"])
    assert cfg.data.max_seq_len == 96                  # CLI wins over the file
    assert cfg.compress.optim.epochs == 2.0            # file wins over defaults
    assert cfg.compress.optim.learning_rate == 2e-4    # compress.optim's own default survives
    assert cfg.finetune.learning_rate == 5e-5          # untouched section keeps defaults


def test_overrides_parse_yaml_scalars_and_lists():
    cfg = load_config(None, ["compress.widths=[1.0, 0.5]", "model.teacher=null", "run.progress=false"])
    assert cfg.compress.widths == (1.0, 0.5)
    assert cfg.model.teacher is None and cfg.run.progress is False


# Text YAML would read as something else: a comment, a mapping, an anchor, an alias, a tag, null, a number.
AWKWARD = ["runs/exp #2", "runs/my run", "runs/a:b", "runs/key: value", "*star", "&anchor dir", "!tag x", "null",
           "Null", "~", "1e-3", "1.0e-3", "2024", "true", "[x]", "{a: 1}", "'quoted'", "a,b", " spaced "]


@pytest.mark.parametrize("text", AWKWARD)
def test_string_keys_take_the_text_verbatim(text):
    """`--set run.out_dir="runs/exp #2"` once became runs/exp (a YAML comment), whose checkpoints the new run
    then deleted. A key whose field is a string takes exactly the text after the first '='."""
    keys = ["run.out_dir", "model.name_or_path", "data.task", "model.teacher", "data.glue_dir", "data.cache_dir"]
    if text == "null":
        keys = keys[:3]  # optional keys: null unsets them (below)
    cfg = load_config(None, [f"{k}={text}" for k in keys])
    got = {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in keys}
    assert got == {k: text for k in keys}


def test_out_dir_flag_is_verbatim_too(tmp_path):
    from launcher.cli import build_parser, resolve_out_dir

    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    args = build_parser().parse_args(["--config", str(cfg), "--out_dir", "runs/exp #2"])
    assert resolve_out_dir(args) == "runs/exp #2"


def test_null_unsets_an_optional_string_key_and_nothing_else_does():
    cfg = load_config(None, ["model.teacher=some/dir", "model.teacher=null", "data.cache_dir=null"])
    assert cfg.model.teacher is None and cfg.data.cache_dir is None
    assert load_config(None, ["model.teacher=~"]).model.teacher == "~"


@pytest.mark.parametrize("text, expected", [
    ("aug #2.tsv", ("aug #2.tsv",)),                       # one path, verbatim
    ("[a.tsv, 1e-3, null, true]", ("a.tsv", "1e-3", "null", "true")),  # a YAML list whose entries stay text
    ('["x #1.tsv", "y: z.tsv", b]', ("x #1.tsv", "y: z.tsv", "b")),     # quoted entries may hold # and :
    ("[]", ()),
    ("", ()),
])
def test_string_list_entries_are_text(text, expected):
    assert load_config(None, [f"data.train_files={text}"]).data.train_files == expected


def test_typed_keys_still_parse_as_yaml():
    cfg = load_config(None, ["compress.widths=[1.0, 0.5]", "run.seed=7", "run.progress=false", "data.train_limit=null",
                             "finetune.learning_rate=1e-3", "run.stages=[compress, export]", "model.dropout=0.1"])
    assert cfg.compress.widths == (1.0, 0.5) and cfg.run.seed == 7 and cfg.run.progress is False
    assert cfg.data.train_limit is None and cfg.finetune.learning_rate == 1e-3 and cfg.model.dropout == 0.1
    assert cfg.run.stages == ("compress", "export")


@pytest.mark.parametrize("override, needle", [
    ("data.train_files=[a, [b]]", "data.train_files[1]: expected a string"),
    ("data.train_files=[a, b", "--set: data.train_files: not a YAML list"),
    ("run.out_dir.x=1", "run.out_dir"),
    ("run.stages=[compress, train]", "run.stages: unknown stage 'train'"),
])
def test_string_key_errors_name_the_dotted_key(override, needle):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_float_written_without_a_dot_is_a_number(tmp_path):
    # PyYAML's YAML 1.1 reads 3e-3 as a string; users write learning rates like that.
    path = tmp_path / "c.yaml"
    path.write_text("finetune:\n  learning_rate: 3e-3\n")
    assert load_config(str(path), ["compress.optim.learning_rate=1e-4"]).finetune.learning_rate == 3e-3
    assert load_config(None, ["compress.optim.learning_rate=1e-4"]).compress.optim.learning_rate == 1e-4


def test_override_errors_blame_the_override_not_the_file(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("data:\n  max_seq_len: 64\n")
    with pytest.raises(UserError, match=r"^--set: data.max_seq_len: expected an integer"):
        load_config(str(path), ["data.max_seq_len=x"])


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.seed = 1


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["compress.widths=[1.0,0.5]", "data.train_limit=10"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg


@pytest.mark.parametrize("override, needle", [
    ("compress.foo=1", "compress.foo: unknown key"),
    ("compress.optim.lr=1", "compress.optim.lr: unknown key"),
    ("nosuch.key=1", "nosuch: unknown key"),
    ("data.max_seq_len=abc", "data.max_seq_len: expected an integer"),
    ("compress.optim.batch_size=1.5", "compress.optim.batch_size: expected an integer"),
    ("run.progress=1", "run.progress: expected true or false"),
    ("compress.widths=[0.5, 0.25]", "compress.widths: must include 1.0"),
    ("compress.widths=[1.0, 1.5]", "compress.widths: every width must be in (0, 1]"),
    ("compress.widths=[1.0, 0.0]", "compress.widths: every width must be in (0, 1]"),
    ("compress.widths=[1.0, 1.0]", "compress.widths: widths must be distinct"),
    ("compress.widths=0.5", "compress.widths: expected a list"),
    ("compress.optim=3", "compress.optim: expected a section"),
    ("export.widths=[0.3]", "export.widths: [0.3] not among compress.widths"),
    ("run.stages=[train]", "run.stages: unknown stage 'train'"),
    ("data.padding=left", "data.padding: must be 'dynamic' or 'max_length'"),
    ("finetune.warmup_ratio=1.0", "finetune.warmup_ratio: must be in [0, 1)"),
    ("model.dropout=1.0", "model.dropout: must be in [0, 1)"),
    ("compress.lambda_task=-1", "compress.lambda_task: must be >= 0"),
    ("oops", "--set oops: expected section.key=value"),
    ("compress.optim.allreduce_dtype=int8", "compress.optim.allreduce_dtype: must be fp32, bf16 or fp16"),
    ("finetune.allreduce_bucket_mb=0", "finetune.allreduce_bucket_mb: must be > 0"),
    ("compress.optim.patience=-1", "compress.optim.patience: must be >= 0"),
    ("finetune.patience=3", "finetune.patience: is for the compress stages"),
])
def test_bad_values_name_the_dotted_key(override, needle):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_all_loss_weights_zero_is_refused():
    """Nothing would train: every gradient would be zero."""
    zero = ["compress.lambda_distill=0", "compress.lambda_logit=0", "compress.lambda_task=0"]
    with pytest.raises(UserError, match="compress.lambda_task: lambda_distill, lambda_logit and lambda_task are all 0"):
        load_config(None, zero)
    assert load_config(None, zero[:2] + ["compress.lambda_task=1"]).compress.lambda_task == 1.0  # labels only


def test_overlap_and_inplace_distillation_are_refused_together():
    """Overlap trains the widths narrowest first; in-place distillation needs the full width first."""
    with pytest.raises(UserError, match="^--set: compress.optim.overlap_allreduce: .*compress.inplace_distill"):
        load_config(None, ["compress.optim.overlap_allreduce=true", "compress.inplace_distill=0.5"])
    cfg = load_config(None, ["compress.optim.overlap_allreduce=true", "compress.optim.allreduce_dtype=bf16"])
    assert cfg.compress.optim.overlap_allreduce is True and cfg.compress.optim.allreduce_dtype == "bf16"


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("compress:\n  widths: [0.5]\n")
    with pytest.raises(UserError, match=rf"^{path}: compress.widths: must include 1.0"):
        load_config(str(path))


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  task: sst-2\n  max_seq_len: [64\nrun:\n  seed: 1\n")
    with pytest.raises(UserError, match=rf"^{path}:\d+: invalid YAML"):
        load_config(str(path))


@pytest.mark.parametrize("text, needle", [
    ("- a\n- b\n", "the top level must be a mapping"),
    ("data: 3\n", "data: expected a section"),
])
def test_wrong_shapes(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=needle):
        load_config(str(path))


def test_missing_file_and_non_utf8(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    path = tmp_path / "latin1.yaml"
    path.write_bytes("data:\n  task: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_config(str(path))


def test_yaml_cannot_construct_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("run: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(str(path))
