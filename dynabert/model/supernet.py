"""The width-adaptive supernet: PaddleSlim OFA over a converted copy of the (reordered) teacher.

Width w keeps the first round(w * heads) attention heads and the first int(w * ffn) FFN neurons of
every transformer block; importance reordering (dynabert/model/importance.py) puts the important ones first.
We use OFA only for what it is good at (the super layers and per-layer expand ratios). Its forward with
a DistillConfig would run the teacher once per width and outside no_grad (defect 5, docs/upstream-defects.md), so
the teacher runs separately, once per batch, in dynabert/train/step.py.
"""
from typing import Dict, Iterable, List

import paddle
from paddleslim.nas.ofa import OFA
from paddleslim.nas.ofa.convert_super import Convert, supernet

from dynabert.errors import UserError
from dynabert.model import compat
from dynabert.model.families import family_of

# Layers whose output width follows the supernet width; all others keep the full size. This is the
# rule of paddleslim's dynabert_config, written by layer name instead of by position in the layer list
# (tests/test_supernet.py checks the two agree).
_WIDTH_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "linear1")


def model_shape(model) -> Dict[str, int]:
    cfg = model.config
    return {"layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
            "hidden": cfg.hidden_size, "ffn": cfg.intermediate_size,
            "head_dim": cfg.hidden_size // cfg.num_attention_heads}


def check_widths(model, widths: Iterable[float], key: str = "compress.widths") -> None:
    """Every width must keep whole heads and whole neurons, or the sliced shapes would not line up.

    OFA slices ``int(width * size)`` columns, so ``width * heads`` being within round-off of a whole
    number is not enough: 0.3333333333 x 12 heads rounds to 4 heads, but int(0.3333333333 x 384) = 127
    columns, not 128. Both must hold exactly."""
    shape = model_shape(model)
    head_dim = shape["hidden"] // shape["heads"]
    for w in widths:
        heads = w * shape["heads"]
        whole = round(heads)
        if whole < 1 or abs(heads - whole) > 1e-9 or int(w * shape["hidden"]) != whole * head_dim:
            raise UserError(f"{key}: width {w} x {shape['heads']} attention heads is not a whole number of "
                            f"heads; use multiples of 1/{shape['heads']}")
        if int(w * shape["ffn"]) < 1:
            raise UserError(f"{key}: width {w} leaves no FFN neurons (intermediate size {shape['ffn']})")


def width_config(ofa: OFA, width: float) -> Dict[str, dict]:
    """OFA net config for one width (same content as paddleslim's dynabert_config, which also mutates
    the supernet's candidate lists in place; this builds fresh dicts)."""
    config = {}
    for name, candidates in ofa._ofa_layers.items():
        if "expand_ratio" not in candidates:
            config[name] = {}
        elif name.endswith(_WIDTH_LAYERS):
            config[name] = {"expand_ratio": width}
        else:
            config[name] = {"expand_ratio": 1.0}
    return config


class Supernet:
    """A converted copy of ``model`` that computes any of ``widths``. Call ``set_width`` first."""

    def __init__(self, model: paddle.nn.Layer, widths: Iterable[float]):
        compat.assert_paddle_unpatched()
        self.widths = tuple(sorted(set(widths), reverse=True))
        check_widths(model, self.widths)
        self.shape = model_shape(model)
        # A fresh instance of the same class, converted, then loaded from the original's weights:
        # Convert builds new super layers whose parameters do not hold the original values.
        student = family_of(model).build(model.config)
        student = Convert(supernet(expand_ratio=sorted(self.widths))).convert(student)
        _load_into_supernet(student, model.state_dict())
        compat.fix_super_layer_norms(student)
        self.model = student
        self.ofa = OFA(student)
        self._configs = {w: width_config(self.ofa, w) for w in self.widths}
        self.width = None
        self.set_width(1.0)

    def set_width(self, width: float) -> None:
        if width not in self._configs:
            raise ValueError(f"width {width} is not one of the supernet's widths {self.widths}")
        self.ofa.set_net_config(self._configs[width])
        compat.set_attention_heads(self.model, width, self.shape["heads"])
        self.width = width

    def __call__(self, input_ids, token_type_ids, attention_mask):
        # Always pass the mask: PaddleNLP builds a default one from pooler.dense.weight, which the
        # supernet has wrapped as pooler.dense.fn.weight (defect 10, docs/upstream-defects.md).
        return self.ofa(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)

    def parameters(self) -> List[paddle.Tensor]:
        return self.model.parameters()

    def train(self):
        self.model.train()

    def eval(self):
        self.model.eval()

    def state_dict(self):
        return self.model.state_dict()

    def set_state_dict(self, state):
        self.model.set_state_dict(state)


def _load_into_supernet(student: paddle.nn.Layer, original: Dict[str, paddle.Tensor]) -> None:
    """Copy weights by name; a super layer's parameter ``a.b.fn.weight`` is the original ``a.b.weight``.
    Strict: paddleslim's own set_state_dict only logs names it cannot find."""
    for name, param in student.state_dict().items():
        source = name.replace(".fn.", ".")
        if source not in original:
            raise KeyError(f"supernet parameter {name} has no counterpart {source} in the original model")
        if list(original[source].shape) != list(param.shape):
            raise ValueError(f"shape mismatch for {name}: {param.shape} vs {original[source].shape}")
        param.set_value(original[source])
