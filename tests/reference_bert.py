"""An independent NumPy reference of the BERT, ERNIE and RoBERTa forward, shared by the tests.

Written from the Hugging Face / PaddleNLP definitions, not from the code under test, all in float64 so
the reference's own rounding is negligible:

  embeddings = LayerNorm(word[ids] + position[pos] + token_type[tt] (+ task_type[task_id], ERNIE 3.0))
  pos:        BERT, ERNIE: 0..T-1.  RoBERTa: counted from the padding index p: a token's position is
              p + 1 + the number of non-padding ids up to and including it; a padding id's is p
              (fairseq's make_positions, Hugging Face's create_position_ids_from_input_ids); but 0..T-1 for
              a Chinese RoBERTa (BERT-style: padding id 0, [CLS] id not 0; defect 13 of docs/upstream-defects.md)
  per layer (post-LN): x = LN(x + out_proj(Attn(x))); x = LN(x + linear2(act(linear1(x))))
  attention:  softmax(Q Kᵀ / sqrt(head_dim) + (1 - mask) * -1e4) V per head (PaddleNLP's additive mask)
  act:        config.hidden_act: gelu (the exact erf form) or relu (ERNIE 1.0)
  head:       BERT, ERNIE: pooled = tanh(pooler.dense(h[CLS])); logits = classifier(pooled)
              RoBERTa: pooled = tanh(classifier.dense(h[<s>])); logits = classifier.out_proj(pooled)

Weights are given in *Paddle* names and layout (``bert.encoder.layers.0.self_attn.q_proj.weight``, the
prefix being the family's: ``ernie.``, ``roberta.``; Linear weights stored [in, out], so y = x W + b).
``numpy_bert`` is a thin wrapper taking Hugging Face names (Linear weights [out, in]) with a name table
written out here by hand, so a conversion mistake in the code under test cannot cancel out on both sides;
``hf_to_paddle_weights(..., family="roberta")`` reads a Hugging Face RoBERTa checkpoint the same way.

The word embedding is a plain row lookup, as in Hugging Face. (Paddle's ``Embedding(padding_idx=p)``,
which ERNIE and RoBERTa use, outputs zeros for id p instead of the row: real checkpoints keep that row at
zero, and padding is masked anyway; tests feed the padding id only at masked positions.)

``layers_kept`` (a list of block indices) runs only those blocks, in that order, and ``hidden_states`` then
holds the embedding output and those blocks' outputs (a depth sub-model).

A width sub-model (``heads_kept``, ``ffn_kept``) keeps the FIRST ``heads_kept`` heads of every layer
(q/k/v output columns and out_proj input rows [0:heads_kept*head_dim]) and the first ``ffn_kept`` FFN
neurons (linear1 output columns and bias, linear2 input rows); head_dim stays hidden / num_heads.
``head_mask`` [layers, heads] multiplies each head's attention probabilities (DynaBERT's importance mask).

``random_batch`` makes the small random input batches the tests feed to both the code under test and this
reference.
"""
import math

import numpy as np

_erf = np.vectorize(math.erf)  # exact erf from the standard library (no scipy dependency)


def _cfg(config, key):
    return config[key] if isinstance(config, dict) else getattr(config, key)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _cfg_get(config, key, default):
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def numpy_bert_forward(weights, config, input_ids, token_type_ids=None, attention_mask=None,
                       heads_kept=None, ffn_kept=None, head_mask=None, layers_kept=None, family="bert"):
    """Returns a dict: ``hidden_states`` (embedding output and every block's output, each [B, T, H]),
    ``sequence`` [B, T, H], ``pooled`` [B, H] (when the weights hold a pooler) and, when they hold a
    classifier, ``logits`` [B, C]. ``family``: "bert", "ernie" or "roberta" (see the module docstring)."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    act = {"gelu": gelu, "relu": lambda y: np.maximum(y, 0.0)}[_cfg_get(config, "hidden_act", "gelu")]
    hidden, heads = _cfg(config, "hidden_size"), _cfg(config, "num_attention_heads")
    layers, eps = _cfg(config, "num_hidden_layers"), _cfg(config, "layer_norm_eps")
    head_dim = hidden // heads
    hk = heads if heads_kept is None else int(heads_kept)
    inner = hk * head_dim

    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    b, t = ids.shape
    tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64).reshape(b, t)
    mask = np.ones((b, t)) if attention_mask is None else np.asarray(attention_mask, dtype=np.float64).reshape(b, t)
    additive = ((1.0 - mask) * -1e4)[:, None, None, :]  # [B, 1, 1, T]
    hm = None if head_mask is None else np.asarray(head_mask, dtype=np.float64)

    def layer_norm(x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def linear(x, name, cols=None, rows=None):
        weight, bias = w[name + ".weight"], w[name + ".bias"]
        if cols is not None:
            weight, bias = weight[:, :cols], bias[:cols]
        if rows is not None:
            weight = weight[:rows, :]
        return x @ weight + bias

    e = f"{family}.embeddings."
    pad, cls = _cfg_get(config, "pad_token_id", 0), _cfg_get(config, "cls_token_id", 101)
    if family == "roberta" and not (pad == 0 and cls != 0):
        real = (ids != pad).astype(np.int64)
        positions = np.cumsum(real, axis=1) * real + pad
    else:
        positions = np.broadcast_to(np.arange(t), (b, t))
    x = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][positions]
    if e + "token_type_embeddings.weight" in w:  # ERNIE with type_vocab_size 0 has none
        x = x + w[e + "token_type_embeddings.weight"][tt]
    if family == "ernie" and _cfg_get(config, "use_task_id", False):
        x = x + w[e + "task_type_embeddings.weight"][_cfg_get(config, "task_id", 0)]
    x = layer_norm(x, e + "layer_norm")
    states = [x]
    for i in (range(layers) if layers_kept is None else layers_kept):
        p = f"{family}.encoder.layers.{i}."

        def split(y):
            return y.reshape(b, t, hk, head_dim).transpose(0, 2, 1, 3)  # [B, heads, T, head_dim]

        q = split(linear(x, p + "self_attn.q_proj", cols=inner))
        k = split(linear(x, p + "self_attn.k_proj", cols=inner))
        v = split(linear(x, p + "self_attn.v_proj", cols=inner))
        probs = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + additive)
        if hm is not None:
            probs = probs * hm[i, :hk][None, :, None, None]
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, inner)
        x = layer_norm(linear(context, p + "self_attn.out_proj", rows=inner) + x, p + "norm1")
        inner_act = act(linear(x, p + "linear1", cols=ffn_kept))
        x = layer_norm(linear(inner_act, p + "linear2", rows=ffn_kept) + x, p + "norm2")
        states.append(x)
    out = {"hidden_states": states, "sequence": x}
    if family == "roberta":
        if "classifier.dense.weight" in w:
            out["pooled"] = np.tanh(linear(x[:, 0], "classifier.dense"))
            out["logits"] = linear(out["pooled"], "classifier.out_proj")
        return out
    if f"{family}.pooler.dense.weight" not in w:  # the weights of a backbone without its pooler
        return out
    out["pooled"] = np.tanh(linear(x[:, 0], f"{family}.pooler.dense"))
    if "classifier.weight" in w:
        out["logits"] = linear(out["pooled"], "classifier")
    return out


def numpy_bert_logits(weights, config, input_ids, token_type_ids=None, attention_mask=None,
                      heads_kept=None, ffn_kept=None, head_mask=None, family="bert"):
    """*ForSequenceClassification logits [B, C] in float64 (see the module docstring)."""
    return numpy_bert_forward(weights, config, input_ids, token_type_ids, attention_mask,
                              heads_kept=heads_kept, ffn_kept=ffn_kept, head_mask=head_mask, family=family)["logits"]


def cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[label] (paddle.nn.functional.cross_entropy's default)."""
    logits = np.asarray(logits, dtype=np.float64)
    z = logits - logits.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), np.asarray(labels)].mean())


def model_weights(model):
    """A Paddle model's parameters as float64 NumPy arrays by name ('.fn.' of super layers dropped)."""
    return {name.replace(".fn.", "."): t.numpy().astype(np.float64) for name, t in model.state_dict().items()}


def random_batch(seed=1, b=3, t=7, padded_rows=None, vocab=64, labels=True):
    """A random [b, t] batch: ``input_ids`` (int64, [CLS]=2 then ids in [5, vocab)), ``token_type_ids``
    (int64, 0 for the first t // 2 positions, 1 after), ``attention_mask`` (float32, 1 = token) and, with
    ``labels``, binary ``labels`` [b] (int64, drawn after the ids from the same RandomState(seed)).

    ``padded_rows`` maps a row to its first padded position (mask 0 from there on); both are NumPy
    indices, so negative ones count from the end: {1: -2} pads the last two positions of row 1. The
    default, {1: -2, 2: 3}, pads two rows of the default 3 x 7 batch differently (so the mask matters)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, vocab, size=(b, t)).astype(np.int64)
    ids[:, 0] = 2
    tt = np.zeros_like(ids)
    tt[:, t // 2:] = 1
    mask = np.ones((b, t), np.float32)
    for row, first_pad in ({1: -2, 2: 3} if padded_rows is None else padded_rows).items():
        mask[row, first_pad:] = 0
    out = {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask}
    if labels:
        out["labels"] = rng.randint(0, 2, size=b).astype(np.int64)
    return out

# Hugging Face BertModel / RobertaModel name -> Paddle *ForSequenceClassification name (after the family's
# prefix), and whether it is a Linear weight ([out, in] in HF, [in, out] in Paddle).
_HF_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "embeddings.layer_norm.weight",
    "embeddings.LayerNorm.bias": "embeddings.layer_norm.bias",
}
_HF_LAYER = {
    "attention.self.query": ("self_attn.q_proj", True),
    "attention.self.key": ("self_attn.k_proj", True),
    "attention.self.value": ("self_attn.v_proj", True),
    "attention.output.dense": ("self_attn.out_proj", True),
    "attention.output.LayerNorm": ("norm1", False),
    "intermediate.dense": ("linear1", True),
    "output.dense": ("linear2", True),
    "output.LayerNorm": ("norm2", False),
}


def hf_to_paddle_weights(hf_weights, config, family="bert"):
    """A Hugging Face checkpoint's backbone (bare names, no ``bert.``/``roberta.`` prefix) in Paddle names and
    layout; BERT's pooler too (RoBERTa's classifier pools: its backbone has none)."""
    out = {f"{family}.{dst}": np.asarray(hf_weights[src], dtype=np.float64) for src, dst in _HF_EMBEDDINGS.items()}
    for i in range(_cfg(config, "num_hidden_layers")):
        for src, (dst, is_linear) in _HF_LAYER.items():
            weight = np.asarray(hf_weights[f"encoder.layer.{i}.{src}.weight"], dtype=np.float64)
            out[f"{family}.encoder.layers.{i}.{dst}.weight"] = weight.T if is_linear else weight
            out[f"{family}.encoder.layers.{i}.{dst}.bias"] = np.asarray(hf_weights[f"encoder.layer.{i}.{src}.bias"],
                                                                       dtype=np.float64)
    if family == "bert":
        out["bert.pooler.dense.weight"] = np.asarray(hf_weights["pooler.dense.weight"], dtype=np.float64).T
        out["bert.pooler.dense.bias"] = np.asarray(hf_weights["pooler.dense.bias"], dtype=np.float64)
    return out


def numpy_bert(hf_weights, config, ids):
    """Sequence output [n, hidden] and pooled output [hidden] for one unpadded sentence (token type 0),
    from a Hugging Face BertModel checkpoint (HF names, [out, in] Linear weights)."""
    out = numpy_bert_forward(hf_to_paddle_weights(hf_weights, config), config, [list(ids)])
    return out["sequence"][0], out["pooled"][0]


def hf_encoder_weights(config: dict, seed: int = 0) -> dict:
    """Random weights of a Hugging Face BERT-layout encoder (embeddings, blocks, pooler), without a model
    prefix, named and shaped as the HF checkpoints store them (Linear weights ``[out, in]``)."""
    rng = np.random.RandomState(seed)
    h, inner = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (config["vocab_size"], h),
        "embeddings.position_embeddings.weight": (config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
        "pooler.dense.weight": (h, h), "pooler.dense.bias": (h,),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (h, h), (h,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (inner, h), (inner,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (h, inner), (h,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (h,), (h,)
    weights = {}
    for name, shape in shapes.items():
        value = rng.standard_normal(shape) * (0.1 if name.endswith("bias") else 0.3)
        if "LayerNorm.weight" in name:
            value += 1.0
        weights[name] = value.astype(np.float32)
    return weights
