"""One test per workaround in dynabert/model/compat.py (defect numbers of docs/upstream-defects.md).

Each test can fail two ways: if the upstream defect disappears (the workaround is no longer needed and
can be dropped) or if the workaround stops working. Process-global effects (import order, PaddleSlim's
global patch) are observed in fresh subprocesses so this test process is never patched itself.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddleslim.nas.ofa.layers import SuperLayerNorm

from dynabert.model import compat
from dynabert.model.pretrained import tiny_bert
from dynabert.model.supernet import Supernet
from tests.reference_bert import model_weights, numpy_bert_logits, random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NLP_UTILS = "paddleslim.nas.ofa.utils.nlp_utils"
WIDTHS = (1.0, 0.75, 0.5, 0.25)


def start_python(code, cwd):
    """Start ``code`` in a fresh interpreter (this venv's), the project importable, one thread."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=str(cwd), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run_python(code, cwd):
    return finish(start_python(code, cwd))


def batch():
    """input_ids, token_type_ids, attention_mask of the default random batch (two rows padded)."""
    b = random_batch(labels=False)
    return b["input_ids"], b["token_type_ids"], b["attention_mask"]


def paddle_logits(model_or_supernet, ids, tt, mask):
    with paddle.no_grad():
        return model_or_supernet(paddle.to_tensor(ids), token_type_ids=paddle.to_tensor(tt),
                                 attention_mask=paddle.to_tensor(mask)).numpy()


# --------------------------------------------------------------------------------------------------
# defect 1: zlib symbol clash
# --------------------------------------------------------------------------------------------------

# Round-trips data through zlib (what gzip'd files, sklearn's build check and PaddleNLP's import do).
_ZLIB_USE = """
    import gzip, zlib
    data = bytes(range(256)) * 400
    with gzip.open("data.gz", "wb") as f:
        f.write(data)
    with gzip.open("data.gz", "rb") as f:
        assert f.read() == data
    assert zlib.decompress(zlib.compress(data)) == data
    import sklearn, sklearn.metrics, scipy.stats
    print("ZLIB-OK")
"""


@pytest.mark.dist
def test_zlib_clash_reproduces_without_dynabert_and_not_with_it(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "fixed").mkdir()
    broken = start_python("import paddle\n" + textwrap.dedent(_ZLIB_USE), tmp_path / "broken")
    fixed = start_python("import dynabert\nimport paddle\n" + textwrap.dedent(_ZLIB_USE), tmp_path / "fixed")
    rc_broken, out_broken, err_broken = finish(broken)
    rc_fixed, out_fixed, err_fixed = finish(fixed)
    # Paddle first: a segfault in inflateReset2 (rc -11 / 139) or "zlib.error: ... inconsistent stream
    # state". If this starts to pass, the clash is gone upstream and dynabert/__init__'s import can go.
    assert rc_broken != 0 and "ZLIB-OK" not in out_broken, (rc_broken, out_broken, err_broken[-2000:])
    assert rc_broken < 0 or "zlib" in err_broken or "SIGSEGV" in err_broken, err_broken[-2000:]
    # dynabert first (it imports zlib before anything imports paddle): everything works.
    assert rc_fixed == 0 and "ZLIB-OK" in out_fixed, (rc_fixed, err_fixed[-2000:])


# --------------------------------------------------------------------------------------------------
# defect 2: SuperLayerNorm.forward
# --------------------------------------------------------------------------------------------------


def _random_layer_norm(cls_instance, seed=0):
    rng = np.random.RandomState(seed)
    cls_instance.weight.set_value((1.0 + 0.3 * rng.standard_normal(16)).astype(np.float32))
    cls_instance.bias.set_value((0.2 * rng.standard_normal(16)).astype(np.float32))
    return cls_instance


def test_upstream_super_layer_norm_is_still_broken():
    ln = _random_layer_norm(SuperLayerNorm(16))
    x = paddle.randn([2, 5, 16])
    # _C_ops.layer_norm returns one tensor on Paddle 2.6.2; unpacking it into three fails. If this
    # stops raising, upstream is fixed and compat.fix_super_layer_norms can be dropped.
    with pytest.raises(ValueError, match="unpack"):
        ln(x)


def test_fix_super_layer_norms_matches_functional_layer_norm():
    original_forward = SuperLayerNorm.forward
    holder = paddle.nn.Sequential(paddle.nn.Linear(16, 16), _random_layer_norm(SuperLayerNorm(16, epsilon=1e-5)))
    assert compat.fix_super_layer_norms(holder) == 1
    ln = holder[1]
    assert isinstance(ln, SuperLayerNorm) and type(ln) is not SuperLayerNorm
    w, b = ln.weight.numpy(), ln.bias.numpy()

    x = paddle.randn([2, 5, 16])
    expected = F.layer_norm(x, [16], weight=ln.weight, bias=ln.bias, epsilon=1e-5).numpy()
    np.testing.assert_allclose(ln(x).numpy(), expected, rtol=0, atol=1e-6)
    # and that is the layer norm with these weights, by hand (so the comparison is not vacuous)
    xn = x.numpy().astype(np.float64)
    by_hand = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(ln(x).numpy(), by_hand, rtol=0, atol=1e-5)

    # a sliced input of 12 features uses the first 12 weights and biases
    x12 = paddle.randn([3, 12])
    expected12 = F.layer_norm(x12, [12], weight=paddle.to_tensor(w[:12]), bias=paddle.to_tensor(b[:12]),
                              epsilon=1e-5).numpy()
    np.testing.assert_allclose(ln(x12).numpy(), expected12, rtol=0, atol=1e-6)

    # the class itself is untouched: a fresh instance is still broken
    assert SuperLayerNorm.forward is original_forward
    with pytest.raises(ValueError, match="unpack"):
        _random_layer_norm(SuperLayerNorm(16))(paddle.randn([2, 5, 16]))


def test_supernet_layer_norms_are_fixed_and_keep_epsilon():
    model = tiny_bert()
    sn = Supernet(model, WIDTHS)
    norms = [m for m in sn.model.sublayers() if isinstance(m, SuperLayerNorm)]
    assert len(norms) == 1 + 2 * model.config.num_hidden_layers
    assert all(type(m) is not SuperLayerNorm for m in norms)
    assert {m._epsilon for m in norms} == {model.config.layer_norm_eps}


# --------------------------------------------------------------------------------------------------
# defect 3: PaddleSlim's nlp_utils patches Paddle globally; we never import it
# --------------------------------------------------------------------------------------------------

# Builds a plain tiny PaddleNLP BERT and a plain paddle.nn.MultiHeadAttention from saved weights and
# writes their outputs. Needs only paddlenlp (and zlib first: `import paddlenlp` itself trips defect 1).
_PLAIN_OUTPUTS = """
    import json, numpy as np
    import paddle
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification

    def plain_outputs(tag):
        with open("config.json") as f:
            cfg = json.load(f)
        config = BertConfig(**cfg["config"])
        config.num_labels = cfg["num_labels"]
        model = BertForSequenceClassification(config)
        weights = np.load("weights.npz")
        model.set_state_dict({k: weights[k] for k in weights.files})
        model.eval()
        inputs = np.load("inputs.npz")
        try:
            with paddle.no_grad():
                logits = model(paddle.to_tensor(inputs["ids"]), token_type_ids=paddle.to_tensor(inputs["tt"]),
                               attention_mask=paddle.to_tensor(inputs["mask"]))
            np.save(tag + "_logits.npy", logits.numpy())
            print("BERT", tag, "ok")
        except Exception as e:  # PaddleSlim's patched encoder cannot run PaddleNLP's BertModel at all
            print("BERT", tag, type(e).__name__)
        # one attention layer (the first block's weights), no mask; the patched forward wants a list
        mha = paddle.nn.MultiHeadAttention(16, 4)
        mha.set_state_dict({k: weights["bert.encoder.layers.0.self_attn." + k] for k in mha.state_dict()})
        mha.eval()
        x = paddle.to_tensor(inputs["x"])
        plain = paddle.nn.MultiHeadAttention.forward.__module__ == "paddle.nn.layer.transformer"
        mask = None if plain else [None, None]
        with paddle.no_grad():
            np.save(tag + "_mha.npy", mha(x, x, x, mask).numpy())
"""

# "before": a fresh process that imports only paddlenlp; then it imports nlp_utils and shows the patch.
_BEFORE_THEN_NLP_UTILS = """
    plain_outputs("before")
    import sys
    assert not [m for m in sys.modules if m.split(".")[0] in ("dynabert", "launcher")]
    import paddleslim.nas.ofa.utils.nlp_utils
    from dynabert.model import compat
    print("PATCHES", json.dumps(compat.paddle_patches()))
    try:
        compat.assert_paddle_unpatched()
        print("RAISED none")
    except RuntimeError as e:
        print("RAISED", json.dumps(str(e)))
    plain_outputs("patched")
"""

# "after": every project module imported, a supernet built and run at every width (with hooks).
_EVERYTHING = """
    import pkgutil, importlib, sys
    import dynabert, launcher
    for pkg in (dynabert, launcher):
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name != "__main__":  # launcher/__main__.py runs the CLI
                importlib.import_module(pkg.__name__ + "." + info.name)
    from dynabert.model import compat
    from dynabert.model.pretrained import tiny_bert
    from dynabert.model.supernet import Supernet
    from dynabert.model.outputs import HiddenStates
    sn = Supernet(tiny_bert(), (1.0, 0.75, 0.5, 0.25))
    HiddenStates(sn.model)
    ids = paddle.to_tensor([[2, 5, 6, 7]])
    for w in sn.widths:
        sn.set_width(w)
        sn(ids, paddle.zeros_like(ids), paddle.ones([1, 4]))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dynabert", "launcher"))
    print("LOADED", json.dumps(loaded))
    print("NLP_UTILS", "paddleslim.nas.ofa.utils.nlp_utils" in sys.modules)
    print("PATCHES", json.dumps(compat.paddle_patches()))
    plain_outputs("after")
"""


def _line(out, key):
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith(key + " ")][-1]


@pytest.mark.dist
def test_project_never_patches_paddle_and_keeps_plain_bert_logits(tmp_path):
    model = tiny_bert(seed=3)
    np.savez(tmp_path / "weights.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "initializer_range")
    (tmp_path / "config.json").write_text(json.dumps(
        {"config": {k: getattr(model.config, k) for k in keys}, "num_labels": model.config.num_labels}))
    ids, tt, mask = batch()
    x = np.random.RandomState(5).standard_normal((2, 5, 16)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", ids=ids, tt=tt, mask=mask, x=x)

    procs = {
        "before": start_python("import zlib, json\n" + textwrap.dedent(_PLAIN_OUTPUTS)
                               + textwrap.dedent(_BEFORE_THEN_NLP_UTILS), tmp_path),
        "after": start_python("import json, dynabert\n" + textwrap.dedent(_PLAIN_OUTPUTS)
                              + textwrap.dedent(_EVERYTHING), tmp_path),
    }
    results = {name: finish(p) for name, p in procs.items()}
    for name, (rc, out, err) in results.items():
        assert rc == 0, (name, out, err[-3000:])
    before_out, after_out = results["before"][1], results["after"][1]

    # "before" only imported paddlenlp: the plain model in a clean process, and it computes the model
    # built here (same weights, same PaddleNLP code)
    assert "BERT before ok" in before_out
    before = np.load(tmp_path / "before_logits.npy")
    np.testing.assert_allclose(before, paddle_logits(model, ids, tt, mask), rtol=0, atol=1e-6)

    # after importing every project module and building/running a supernet: nothing patched,
    # nlp_utils never imported, the plain model and a plain attention layer compute the same numbers
    loaded = json.loads(_line(after_out, "LOADED"))
    expected = {"dynabert.model.supernet", "dynabert.pipeline", "dynabert.model.export", "launcher.cli",
                "launcher.worker"}
    assert expected <= set(loaded)
    assert _line(after_out, "NLP_UTILS") == "False"
    assert json.loads(_line(after_out, "PATCHES")) == []
    assert "BERT after ok" in after_out
    np.testing.assert_array_equal(np.load(tmp_path / "after_logits.npy"), before)
    np.testing.assert_array_equal(np.load(tmp_path / "after_mha.npy"), np.load(tmp_path / "before_mha.npy"))

    # importing nlp_utils does patch, is detected, and changes what a plain model computes: the defect
    # is still there (if not, the guard can go) and the before/after comparison above can see it
    patches = json.loads(_line(before_out, "PATCHES"))
    assert "MultiHeadAttention.forward" in patches and "TransformerEncoder.forward" in patches
    raised = _line(before_out, "RAISED")
    assert raised != "none" and "MultiHeadAttention.forward" in json.loads(raised)
    # the patched attention drops the 1/sqrt(head_dim) scale ...
    patched_mha, before_mha = np.load(tmp_path / "patched_mha.npy"), np.load(tmp_path / "before_mha.npy")
    assert np.abs(patched_mha - before_mha).max() > 1e-2
    # ... and PaddleNLP's BertModel either breaks under the patched encoder or computes something else
    if "BERT patched ok" in before_out:
        assert np.abs(np.load(tmp_path / "patched_logits.npy") - before).max() > 1e-3
    else:
        assert "BERT patched " in before_out


def test_assert_paddle_unpatched_passes_here():
    # this test process imported dynabert.model.supernet and paddleslim.nas.ofa but never nlp_utils
    assert NLP_UTILS not in sys.modules
    assert compat.paddle_patches() == []
    compat.assert_paddle_unpatched()


# --------------------------------------------------------------------------------------------------
# defect 10: the head count follows the width, per instance, with the 1/sqrt(head_dim) scale
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher():
    return tiny_bert(seed=0)


def test_supernet_full_width_is_the_original_model(teacher):
    ids, tt, mask = batch()
    sn = Supernet(teacher, WIDTHS)
    sn.eval()
    sn.set_width(1.0)
    expected = paddle_logits(teacher, ids, tt, mask)
    assert np.abs(expected).max() > 0.1  # not a trivially small comparison
    np.testing.assert_allclose(paddle_logits(sn, ids, tt, mask), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("width", WIDTHS)
def test_supernet_width_matches_numpy_sub_model(teacher, width):
    ids, tt, mask = batch()
    sn = Supernet(teacher, WIDTHS)
    sn.eval()
    sn.set_width(width)
    heads, ffn = round(width * 4), int(width * 64)
    assert [a.num_heads for a in compat.attention_layers(sn.model)] == [heads, heads]
    weights = model_weights(teacher)
    expected = numpy_bert_logits(weights, teacher.config, ids, tt, mask, heads_kept=heads, ffn_kept=ffn)
    np.testing.assert_allclose(paddle_logits(sn, ids, tt, mask), expected, rtol=0, atol=1e-5)
    if width < 1.0:
        # the sub-model is really a different function (a reference at full width would not match)
        full = numpy_bert_logits(weights, teacher.config, ids, tt, mask)
        assert np.abs(full - expected).max() > 1e-2


def test_width_without_set_attention_heads_fails(teacher):
    ids, tt, mask = batch()
    sn = Supernet(teacher, WIDTHS)
    sn.eval()
    sn.set_width(0.5)
    for attn in compat.attention_layers(sn.model):
        attn.num_heads = 4  # what Paddle's MultiHeadAttention would use without the workaround
    with pytest.raises(ValueError, match="(?i)reshape"):
        paddle_logits(sn, ids, tt, mask)


def test_set_attention_heads_is_per_instance(teacher):
    sn = Supernet(teacher, WIDTHS)
    sn.set_width(0.25)
    # the teacher (another instance of the same classes) keeps its 4 heads
    assert [a.num_heads for a in compat.attention_layers(teacher)] == [4, 4]
    assert [a.num_heads for a in compat.attention_layers(sn.model)] == [1, 1]
    assert paddle.nn.MultiHeadAttention.forward.__module__ == "paddle.nn.layer.transformer"


def test_whole_heads_rejects_fractional_heads():
    assert compat.whole_heads(0.75, 4) == 3
    with pytest.raises(ValueError, match="whole number of heads"):
        compat.whole_heads(0.3, 4)
    with pytest.raises(ValueError, match="whole number of heads"):
        compat.whole_heads(0.1, 4)  # rounds to 0 heads


def test_layer_norm_input_gradient_with_frozen_parameters_is_still_wrong():
    """Defect 11 (found by this project): on Paddle 2.6.2, freezing LayerNorm's weight and bias changes
    the gradient with respect to its input. importance.py keeps them trainable because of it; this test
    fails once Paddle fixes it (then the exception in importance.py can go)."""
    rng = np.random.RandomState(0)
    x = paddle.to_tensor(rng.randn(2, 3, 16).astype("float32"), stop_gradient=False)
    w = paddle.to_tensor(rng.randn(16).astype("float32") + 1)
    b = paddle.to_tensor(rng.randn(16).astype("float32"))
    g = rng.randn(2, 3, 16)

    def input_grad(frozen):
        w.stop_gradient = b.stop_gradient = frozen
        (F.layer_norm(x, [16], weight=w, bias=b, epsilon=1e-5) * paddle.to_tensor(g.astype("float32"))).sum().backward()
        out = x.grad.numpy().copy()
        x.clear_gradient()
        return out

    # Independent: d/dx of sum(g * (w * (x - mu) / sigma + b)) in float64.
    xn, wn = x.numpy().astype(np.float64), w.numpy().astype(np.float64)
    mu, var = xn.mean(-1, keepdims=True), xn.var(-1, keepdims=True)
    inv = 1 / np.sqrt(var + 1e-5)
    gy = g * wn
    expected = inv * (gy - gy.mean(-1, keepdims=True) - (xn - mu) * inv ** 2 * (gy * (xn - mu)).mean(-1, keepdims=True))
    np.testing.assert_allclose(input_grad(False), expected, atol=1e-4)  # trainable: correct
    assert np.abs(input_grad(True) - expected).max() > 1e-2, compat.LAYER_NORM_FROZEN_GRAD  # frozen: wrong


# --------------------------------------------------------------------------------------------------
# defect 12: gloo process groups share their rendezvous keys
# --------------------------------------------------------------------------------------------------

_GLOO_KEYS = """
    import json, sys, threading
    import dynabert, paddle
    from launcher.fleet_setup import init_collectives
    from paddle.distributed import collective

    comms = init_collectives()
    store = paddle.base.core.create_or_get_global_tcp_store()

    def present(key):  # the store's get waits for a missing key: bound that wait (only a failure waits)
        got = []
        reader = threading.Thread(target=lambda: got.append(store.get(key)), daemon=True)
        reader.start()
        reader.join(60)
        return bool(got)

    report = {"groups": sorted(list(g.ranks) for g in collective._get_group_map().values() if g.nranks > 1),
              "unprefixed": [present(k) for k in ("0", "1")], "prefixed": [present(k) for k in ("0/0", "0/1")]}
    comms.shutdown()
    json.dump(report, open(f"{sys.argv[1]}/rank{comms.rank}.json", "w"))
"""


@pytest.mark.dist
def test_gloo_process_group_rendezvous_is_not_namespaced_by_group(tmp_path):
    """Defect 12: Paddle 2.6.2's ProcessGroupGloo connects its pairs through the job's store under the
    keys "0", "1", ... whatever the group (its GlooCommContext uses "<gid>/0", ...), so a second group
    can read the first one's addresses. init_collectives therefore creates the global group alone on
    gloo. This fails when the keys get a group prefix upstream (then fleet.init can come back on CPUs)."""
    script = tmp_path / "gloo_keys.py"
    script.write_text(textwrap.dedent(_GLOO_KEYS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1", PADDLE_DISTRI_BACKEND="gloo")
    done = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                           "--log_dir", str(tmp_path / "logs"), str(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-2000:], (tmp_path / "logs" / "workerlog.0").read_text()[-2000:])
    for rank in (0, 1):
        report = json.load(open(tmp_path / f"rank{rank}.json"))
        assert report["groups"] == [[0, 1]]  # the workaround: one gloo group
        assert report["prefixed"] == [True, True]  # the communication context's keys, per group
        assert report["unprefixed"] == [True, True]  # the defect: the process group's own, shared


# --------------------------------------------------------------------------------------------------
# defect 13: PaddleNLP 2.8.1 numbers a Chinese RoBERTa's positions from 1
# --------------------------------------------------------------------------------------------------


def _tiny_roberta_config(**kwargs):
    from paddlenlp.transformers import RobertaConfig

    # PaddleNLP's RobertaConfig defaults: padding id 0, [CLS] 101, as its Chinese RoBERTa (hfl/*) configs
    config = RobertaConfig(vocab_size=120, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=32, max_position_embeddings=8, type_vocab_size=2, **kwargs)
    config.num_labels = 2
    return config


def _positions_used(model, ids):
    """The position ids the model's position embedding is looked up with, for one [CLS] ... [SEP] row."""
    from dynabert.model.families import family_of

    seen = []
    table = family_of(model).embeddings(model).position_embeddings
    hook = table.register_forward_pre_hook(lambda layer, inputs: seen.append(inputs[0].numpy().tolist()))
    try:
        model.eval()
        with paddle.no_grad():
            t = paddle.to_tensor([ids])
            model(t, token_type_ids=paddle.zeros_like(t), attention_mask=paddle.ones(t.shape))
    finally:
        hook.remove()
    return seen[0][0]


def test_upstream_chinese_roberta_positions_still_start_at_one():
    """PaddleNLP 2.8.1 numbers every RoBERTa's positions from the padding index + 1; for its Chinese RoBERTa
    (padding id 0) that is 1..T, where earlier PaddleNLP (and the BERT-style checkpoints) used 0..T-1, and a
    full-length input indexes past the table. If this starts to fail, upstream is fixed and
    compat.number_positions_from_zero can go."""
    from paddlenlp.transformers import RobertaForSequenceClassification

    model = RobertaForSequenceClassification(_tiny_roberta_config())
    assert _positions_used(model, [101, 7, 9, 102]) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="expected >= 0 and < 8, but got 8"):  # 8 tokens, 8 rows: no row 8
        _positions_used(model, [101] + [7] * 6 + [102])


def test_number_positions_from_zero_is_per_instance_and_only_for_chinese_roberta():
    from paddlenlp.transformers import RobertaForSequenceClassification

    from dynabert.model import families

    fixed = families.ROBERTA.build(_tiny_roberta_config())
    assert _positions_used(fixed, [101, 7, 9, 102]) == [0, 1, 2, 3]
    assert _positions_used(fixed, [101] + [7] * 6 + [102]) == list(range(8))  # the whole table is usable
    # the class is untouched: a fresh PaddleNLP instance still numbers from 1
    assert _positions_used(RobertaForSequenceClassification(_tiny_roberta_config()), [101, 7, 102]) == [1, 2, 3]
    # a fairseq-style RoBERTa (padding id 1, <s> 0: Hugging Face's) keeps its positions from the padding index
    roberta = families.ROBERTA.build(_tiny_roberta_config(pad_token_id=1, cls_token_id=0))
    assert type(roberta.roberta.embeddings).__name__ == "RobertaEmbeddings"
    assert _positions_used(roberta, [0, 7, 9, 2, 1]) == [2, 3, 4, 5, 1]
    # loading, the supernet and export keep the fix (the supernet's copy is built through the family)
    sn = Supernet(fixed, (1.0, 0.5))
    assert _positions_used(sn.model, [101, 7, 102]) == [0, 1, 2]
    assert families.ROBERTA.zero_based_positions(fixed.config.to_dict())
    assert not families.ROBERTA.zero_based_positions(roberta.config.to_dict())
