"""Model families: everything that differs between the classifiers DynaBERT compresses, in one place.

A ``Family`` says where a PaddleNLP ``*ForSequenceClassification`` keeps its backbone, embeddings,
transformer blocks (attention, FFN) and pooler; which PaddleNLP config, classifier and tokenizer classes
it uses; how to build a model from a config (the smaller exported shape with kept heads included); how
long an input its position table takes; and how to read a Hugging Face checkpoint of it. The rest of
``model/``, ``train/``, ``deploy/`` and ``stages/`` ask the family (``family_of(model)``) and never branch
on it.

Supported: ``bert`` (PaddleNLP ``BertForSequenceClassification``, Hugging Face BERT), ``ernie`` (PaddleNLP
``ErnieForSequenceClassification``: ERNIE 1.0, 2.0, 3.0) and ``roberta`` (PaddleNLP
``RobertaForSequenceClassification``, Hugging Face RoBERTa). Every family's blocks are Paddle's
``TransformerEncoderLayer`` (post-LN, ``self_attn`` a ``MultiHeadAttention``, FFN ``linear1``/``linear2``),
which is what importance, reordering, the width supernet, depth and export work on.

What differs, and where it matters:

* ERNIE 3.0 adds a task-type embedding (``use_task_id``): PaddleNLP adds row ``task_id`` of
  ``task_type_embeddings`` to every token when no ``task_type_ids`` are passed, as this project never
  does; the exported model keeps the table and the config. Every ERNIE LayerNorm uses epsilon 1e-12,
  whatever the config's ``layer_norm_eps`` says (PaddleNLP 2.8.1's ``ErniePretrainedModel._init_weights``).
* RoBERTa's positions count from the padding index: position of a token = ``pad_token_id`` + 1 + the
  number of non-padding tokens up to it (padding itself gets ``pad_token_id``), so
  ``max_position_embeddings - pad_token_id - 1`` tokens fit. Except PaddleNLP's Chinese RoBERTa (``hfl/*``:
  BERT-style checkpoints with a WordPiece vocabulary, padding id 0, ``[CLS]`` 101), numbered 0..T-1 as BERT
  does, as PaddleNLP did before 2.8.1 (defect 13 of docs/upstream-defects.md, ``zero_based_positions``).
  RoBERTa has no pooler in its backbone: its classification head pools (``classifier.dense``, tanh,
  ``classifier.out_proj``). It takes the same three inputs as the others; its tokenizer's token types are
  all 0 (BPE) or 0 and 1 (Chinese, WordPiece).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import paddle
from paddlenlp.transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizer,
    ErnieConfig,
    ErnieForSequenceClassification,
    ErnieModel,
    ErnieTokenizer,
    RobertaBPETokenizer,
    RobertaChineseTokenizer,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
)

from dynabert.errors import UserError
from dynabert.model import compat

# Hugging Face config.json keys that mean the same thing in PaddleNLP's config classes. Everything else
# (architectures, use_cache, transformers_version, ...) is left out on purpose: use_cache=True, for one,
# would make PaddleNLP's encoder return caches.
_HF_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "initializer_range", "pad_token_id", "layer_norm_eps",
)
# Paddle's TransformerEncoderLayer looks the activation up in paddle.nn.functional; HF's "gelu" is
# the exact erf GELU, as is paddle's gelu(approximate=False) default.
_SUPPORTED_ACTS = ("gelu", "relu")
_TOKENIZER_CONFIG_KEYS = ("do_lower_case", "do_basic_tokenize", "tokenize_chinese_chars", "strip_accents",
                          "add_prefix_space")
_SPECIAL_TOKEN_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token", "eos_token")


@dataclass(frozen=True)
class Family:
    """One model family; see the module docstring. Instances: ``BERT``, ``ERNIE``, ``ROBERTA``."""

    name: str
    backbone_attr: str          # the classifier's attribute holding the bare model ("bert", "ernie", "roberta")
    config_class: type
    classifier_class: type
    base_class: type            # the bare model class (its name table converts Hugging Face checkpoints)
    tokenizer_classes: Tuple[type, ...]   # PaddleNLP tokenizers of this family, the default first
    hf_model_type: Optional[str]          # the Hugging Face model_type it converts from (None: none)
    pooler_path: str            # where the Linear that pools the first token is, from the classifier
    position_offset: bool = False         # RoBERTa: positions start after the padding index

    # ---- where things are ----------------------------------------------------------------------
    def backbone(self, model) -> paddle.nn.Layer:
        return getattr(model, self.backbone_attr)

    def embeddings(self, model) -> paddle.nn.Layer:
        return self.backbone(model).embeddings

    def encoder(self, model) -> paddle.nn.TransformerEncoder:
        return self.backbone(model).encoder

    def blocks(self, model) -> List[paddle.nn.TransformerEncoderLayer]:
        """The transformer blocks the encoder holds now (the kept ones while a depth view is set)."""
        return list(self.encoder(model).layers)

    @staticmethod
    def attention(block) -> paddle.nn.MultiHeadAttention:
        return block.self_attn

    @staticmethod
    def ffn(block) -> Tuple[paddle.nn.Linear, paddle.nn.Linear]:
        return block.linear1, block.linear2

    def pooler(self, model) -> paddle.nn.Linear:
        layer = model
        for part in self.pooler_path.split("."):
            layer = getattr(layer, part)
        return layer

    @property
    def block_prefix(self) -> str:
        """State-dict prefix of block i: ``<prefix><i>.``."""
        return f"{self.backbone_attr}.encoder.layers."

    # ---- building ------------------------------------------------------------------------------
    def config_from_dict(self, data: dict):
        return self.config_class.from_dict(dict(data))

    def build(self, config, heads: Optional[int] = None) -> paddle.nn.Layer:
        """A classifier of ``config``'s shape. ``heads`` (fewer than ``config.num_attention_heads``) gives the
        exported shape: every attention keeps ``heads`` heads of the original head size (hidden /
        num_attention_heads), a shape no PaddleNLP config expresses."""
        model = self.finish(self.classifier_class(config))
        if heads is not None and heads != config.num_attention_heads:
            head_dim = config.hidden_size // config.num_attention_heads
            hidden, inner = config.hidden_size, heads * head_dim
            for block in self.blocks(model):
                attn = self.attention(block)
                attn.q_proj = paddle.nn.Linear(hidden, inner)
                attn.k_proj = paddle.nn.Linear(hidden, inner)
                attn.v_proj = paddle.nn.Linear(hidden, inner)
                attn.out_proj = paddle.nn.Linear(inner, hidden)
                attn.num_heads = heads  # Paddle's MultiHeadAttention reshapes with it; head_dim stays
        return model

    def finish(self, model):
        """The per-instance fixes a freshly built or loaded model of this family needs (``compat``)."""
        if self.position_offset and self.zero_based_positions(model.config.to_dict()):
            compat.number_positions_from_zero(self.embeddings(model))
        return model

    def zero_based_positions(self, config: dict) -> bool:
        """Whether positions count 0..T-1 (BERT, ERNIE; PaddleNLP's Chinese RoBERTa: padding id 0 and a [CLS] id
        other than 0, PaddleNLP's rule before 2.8.1) rather than from the padding index (RoBERTa)."""
        if not self.position_offset:
            return True
        return int(config.get("pad_token_id", 0)) == 0 and int(config.get("cls_token_id", 101)) != 0

    def position_limit(self, config: dict) -> Tuple[int, str]:
        """(the longest input the position table takes, how that follows from the config)."""
        positions = int(config["max_position_embeddings"])
        if self.zero_based_positions(config):
            return positions, ""
        offset = int(config.get("pad_token_id", 1)) + 1
        return positions - offset, (f"{positions} positions less {offset}: {self.label} positions start after the "
                                    f"padding index {offset - 1}")

    # ---- tokenizers ----------------------------------------------------------------------------
    def tokenizer_class_for_dir(self, path: str) -> type:
        if self is ROBERTA:
            if os.path.isfile(os.path.join(path, "vocab.json")) and os.path.isfile(os.path.join(path, "merges.txt")):
                return RobertaBPETokenizer
            if os.path.isfile(os.path.join(path, "vocab.txt")):
                return RobertaChineseTokenizer
            raise UserError(f"model directory {path} has neither vocab.json + merges.txt (RoBERTa's byte-level BPE) "
                            "nor vocab.txt")
        if not os.path.isfile(os.path.join(path, "vocab.txt")):
            raise UserError(f"model directory {path} has no vocab.txt")
        return self.tokenizer_classes[0]

    def load_tokenizer_dir(self, path: str, tokenizer_config: dict):
        cls = self.tokenizer_class_for_dir(path)
        kwargs = {}
        if cls is RobertaBPETokenizer:
            files = {"vocab_file": os.path.join(path, "vocab.json"), "merges_file": os.path.join(path, "merges.txt")}
        else:
            files = {"vocab_file": os.path.join(path, "vocab.txt")}
            kwargs["do_lower_case"] = True  # the usual uncased BERT when nothing says otherwise
        accepted = _init_arguments(cls)
        for key in _TOKENIZER_CONFIG_KEYS:
            if tokenizer_config.get(key) is not None and key in accepted:
                kwargs[key] = tokenizer_config[key]
        for key in _SPECIAL_TOKEN_KEYS:
            value = tokenizer_config.get(key)
            if isinstance(value, dict):  # HF "AddedToken" form
                value = value.get("content")
            if isinstance(value, str) and key in accepted:
                kwargs[key] = value
        if isinstance(tokenizer_config.get("model_max_length"), int):
            kwargs["model_max_length"] = tokenizer_config["model_max_length"]
        return cls(**files, **kwargs)

    def tokenizer_from_pretrained(self, name: str):
        if self is ROBERTA and name in RobertaBPETokenizer.pretrained_init_configuration:
            return RobertaBPETokenizer.from_pretrained(name)
        if self is ROBERTA:
            return RobertaChineseTokenizer.from_pretrained(name)
        return self.tokenizer_classes[0].from_pretrained(name)

    # ---- Hugging Face checkpoints --------------------------------------------------------------
    def hf_config(self, raw: dict, path: str, num_classes: int):
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise UserError(f"{path}: only position_embedding_type 'absolute' is supported")
        if raw.get("hidden_act", "gelu") not in _SUPPORTED_ACTS:
            raise UserError(f"{path}: hidden_act '{raw.get('hidden_act')}' unsupported (use one of {_SUPPORTED_ACTS})")
        values = {k: raw[k] for k in _HF_CONFIG_KEYS if k in raw}
        if self is ROBERTA:
            values.setdefault("pad_token_id", 1)  # HF RobertaConfig's default; PaddleNLP's is 0
            values.setdefault("layer_norm_eps", 1e-12)  # HF's default for configs without it
            # Hugging Face numbers RoBERTa's positions from the padding index whatever the ids are; cls_token_id 0
            # says so to zero_based_positions (PaddleNLP reads it nowhere else).
            values["cls_token_id"] = 0
        try:
            config = self.config_class(**values)
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: {e}") from None
        config.num_labels = num_classes
        return config

    def hf_backbone_state(self, hf_state: Dict[str, np.ndarray], config, expected: Dict[str, tuple],
                          source: str) -> Dict[str, np.ndarray]:
        """HF names -> the backbone's PaddleNLP names (``expected``: name -> shape), Linear weights transposed,
        by PaddleNLP's own name table. Weights the backbone does not have (a task head, RoBERTa's pooler, an
        MLM head) are dropped; missing ones are an error naming them."""
        prefix = self.backbone_attr + "."
        state = {}
        for key, value in hf_state.items():
            if key.startswith(prefix):
                key = key[len(prefix):]
            if key.endswith(".gamma"):  # old TF-style LayerNorm names
                key = key[: -len(".gamma")] + ".weight"
            elif key.endswith(".beta"):
                key = key[: -len(".beta")] + ".bias"
            state[key] = value
        state.pop("embeddings.position_ids", None)  # a buffer, not a weight
        table_config = copy.deepcopy(config)
        table_config.architectures = [self.base_class.__name__]  # the un-prefixed, bare-encoder table
        converted, missing = {}, []
        for mapping in self.base_class._get_name_mappings(table_config):
            target = mapping.target_name.removeprefix(prefix)
            if target not in expected:
                continue
            if mapping.source_name not in state:
                missing.append(mapping.source_name)
                continue
            array = mapping.run(state, mapping.source_name)  # pops the key and applies the transpose
            converted[target] = np.ascontiguousarray(array, dtype=np.float32)
        absent = sorted(set(expected) - set(converted) - {m.removeprefix(prefix) for m in missing})
        missing += absent
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise UserError(f"{source} lacks {self.label} weights: {shown}")
        return converted

    @property
    def label(self) -> str:
        return {"bert": "BERT", "ernie": "ERNIE", "roberta": "RoBERTa"}[self.name]


def _init_arguments(cls) -> set:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


BERT = Family(name="bert", backbone_attr="bert", config_class=BertConfig,
              classifier_class=BertForSequenceClassification, base_class=BertModel,
              tokenizer_classes=(BertTokenizer,), hf_model_type="bert", pooler_path="bert.pooler.dense")
ERNIE = Family(name="ernie", backbone_attr="ernie", config_class=ErnieConfig,
               classifier_class=ErnieForSequenceClassification, base_class=ErnieModel,
               tokenizer_classes=(ErnieTokenizer,), hf_model_type=None, pooler_path="ernie.pooler.dense")
ROBERTA = Family(name="roberta", backbone_attr="roberta", config_class=RobertaConfig,
                 classifier_class=RobertaForSequenceClassification, base_class=RobertaModel,
                 tokenizer_classes=(RobertaBPETokenizer, RobertaChineseTokenizer), hf_model_type="roberta",
                 pooler_path="classifier.dense", position_offset=True)
FAMILIES: Dict[str, Family] = {f.name: f for f in (BERT, ERNIE, ROBERTA)}
SUPPORTED = ", ".join(FAMILIES)


def unsupported(what: str) -> UserError:
    return UserError(f"{what} is not supported (supported model families: {SUPPORTED})")


def get(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise unsupported(f"model family '{name}'") from None


def family_of(model) -> Family:
    """The family of a classifier instance (a supernet's converted copy keeps its class)."""
    for family in FAMILIES.values():
        if isinstance(model, family.classifier_class):
            return family
    raise unsupported(f"model class {type(model).__name__}")


def family_of_config(config: dict, where: str, *, default: Optional[str] = "bert") -> Family:
    """From a config.json's ``model_type``, else its ``architectures`` or ``init_class`` (old PaddleNLP
    layout); ``default`` when none says anything (a BERT config of an older writer), or a UserError."""
    model_type = config.get("model_type")
    if model_type is not None:
        if model_type in FAMILIES:
            return FAMILIES[model_type]
        raise unsupported(f"{where}: model_type '{model_type}'")
    names = list(config.get("architectures") or []) + [config.get("init_class") or ""]
    for name in filter(None, names):
        for family in FAMILIES.values():
            if name.lower().startswith(family.name):
                return family
        raise unsupported(f"{where}: architecture '{name}'")
    if default is None:
        raise unsupported(f"{where}: a model that names no model_type or architecture")
    return FAMILIES[default]


def family_of_name(name: str) -> Optional[Family]:
    """The family of a PaddleNLP built-in model name, or None for a name PaddleNLP does not list offline."""
    for family in FAMILIES.values():
        if name in family.classifier_class.pretrained_init_configuration:
            return family
        if any(name in cls.pretrained_init_configuration for cls in family.tokenizer_classes):
            return family
    return None


def builtin_config(name: str) -> Optional[dict]:
    family = family_of_name(name)
    return None if family is None else family.classifier_class.pretrained_init_configuration.get(name)


_TOKENIZER_FAMILIES = {
    "BertTokenizer": "bert", "BertTokenizerFast": "bert", "ErnieTokenizer": "ernie", "ErnieTokenizerFast": "ernie",
    "RobertaBPETokenizer": "roberta", "RobertaChineseTokenizer": "roberta", "RobertaTokenizer": "roberta",
    "RobertaTokenizerFast": "roberta",
}


def family_of_dir(path: str) -> Family:
    """A model (or served) directory's family: its config.json, else its tokenizer_config.json's
    ``tokenizer_class``, else its files (vocab.json + merges.txt: RoBERTa; otherwise BERT)."""
    for name in ("config.json", "model_config.json"):
        config_path = os.path.join(path, name)
        if os.path.isfile(config_path):
            config = read_json_file(config_path)
            if "init_args" in config:  # old PaddleNLP layout: {"init_args": [{...}], "init_class": ...}
                inner = config["init_args"][0] if config["init_args"] else {}
                config = {**(inner if isinstance(inner, dict) else {}), "init_class": config.get("init_class")}
            return family_of_config(config, config_path)
    tokenizer_config = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(tokenizer_config):
        cls = read_json_file(tokenizer_config).get("tokenizer_class")
        if cls in _TOKENIZER_FAMILIES:
            return FAMILIES[_TOKENIZER_FAMILIES[cls]]
    if os.path.isfile(os.path.join(path, "vocab.json")) and os.path.isfile(os.path.join(path, "merges.txt")):
        return ROBERTA
    return BERT


def read_json_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data
