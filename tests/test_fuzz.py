"""Property tests: whatever bytes a user puts in a TSV or YAML file, the loaders either accept it or
raise the project's UserError (one line) -- never another exception."""
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynabert.data.readers import read_glue_tsv
from dynabert.data.tasks import TASKS
from dynabert.errors import UserError
from launcher.config import load_config

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that looks like TSV: tabs, newlines, quotes, digits, labels and the odd non-ASCII or invalid byte.
TSV_ALPHABET = st.sampled_from(list("\t\n\r\"' 01.-ab") + ["label", "sentence", "é", "\x00"])
tsv_text = st.lists(TSV_ALPHABET, max_size=200).map("".join)
tsv_bytes = st.one_of(tsv_text.map(lambda s: s.encode("utf-8")), st.binary(max_size=200),
                      tsv_text.map(lambda s: ("sentence\tlabel\n" + s).encode("utf-8")))


def _one_line(error: UserError) -> None:
    assert "\n" not in str(error) and str(error)


@FUZZ
@given(content=tsv_bytes, task=st.sampled_from(sorted(TASKS)))
def test_tsv_loader_accepts_or_raises_user_error(tmp_path, content, task):
    path = tmp_path / "dev.tsv"
    path.write_bytes(content)
    split = "dev_matched" if task == "mnli" else "dev"
    try:
        examples = read_glue_tsv(str(path), task, split)
    except UserError as e:
        _one_line(e)
        return
    for ex in examples:  # what it accepts is well-formed
        assert isinstance(ex.text_a, str)
        assert isinstance(ex.label, (int, float))


yaml_keys = st.sampled_from(["data", "model", "run", "compress", "optim", "widths", "task", "seed", "x", "-", "!!"])
yaml_values = st.one_of(st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(),
                        st.text(alphabet=string.printable, max_size=20))
yaml_text = st.one_of(
    st.text(alphabet=string.printable, max_size=200),
    st.lists(st.tuples(yaml_keys, yaml_keys, yaml_values), max_size=6).map(
        lambda rows: "".join(f"{a}:\n  {b}: {v!r}\n" for a, b, v in rows)),
)


@FUZZ
@given(text=yaml_text)
def test_yaml_loader_accepts_or_raises_user_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(str(path))
    except UserError as e:
        _one_line(e)


@FUZZ
@given(override=st.text(alphabet=string.printable, max_size=40))
def test_overrides_accept_or_raise_user_error(override):
    try:
        load_config(None, [override])
    except UserError as e:
        _one_line(e)
