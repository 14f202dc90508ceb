"""Workarounds for defects of paddlepaddle 2.6.2 + paddlenlp 2.8.1 + paddleslim 2.6.0, all in one place.

Each workaround is local to the model instances we build; nothing here replaces a method on a Paddle,
PaddleNLP or PaddleSlim class. Numbers refer to docs/upstream-defects.md. tests/test_compat.py pins
each one with a test that fails if the defect disappears upstream (so the workaround can be dropped) or
if the workaround stops working.

1. zlib symbol clash: handled by ``import zlib`` at the top of dynabert/__init__.py.
2. SuperLayerNorm.forward unpacks three values from ``paddle._C_ops.layer_norm``, which returns one tensor
   on Paddle 2.6.2 (PaddleNLP issues #8345, #7541; PaddleSlim PR #1893 closed unmerged).
   -> ``fix_super_layer_norms`` gives each instance a corrected class.
3. Importing ``paddleslim.nas.ofa.utils.nlp_utils`` replaces MultiHeadAttention.forward and
   TransformerEncoder.forward for every model in the process (and drops the 1/sqrt(head_dim) scale).
   -> we never import it; ``assert_paddle_unpatched`` checks that nobody else did before we build models.
4. The tutorial's ``bert_forward`` patch has a mutable ``attention_mask=[None, None]`` default.
   -> we never patch BertModel.forward; every call passes an explicit attention mask, and the head mask
   for importance is applied by a per-instance hook (dynabert/model/importance.py).
10. The head count must follow the width; upstream does that only through the global patch of item 3.
   -> ``set_attention_heads`` sets ``num_heads`` on each attention instance of the supernet; Paddle's own
   MultiHeadAttention.forward then reshapes with it and keeps the 1/sqrt(head_dim) scale.
11. (found here) ``layer_norm``'s gradient with respect to its *input* is wrong on Paddle 2.6.2 (CPU) when
   its weight and bias have stop_gradient=True. -> never freeze LayerNorm parameters while gradients
   flow through them (dynabert/model/importance.py freezes other weights to save time, not these).
12. (found here) Every gloo process group after the first rendezvouses on the first one's store keys.
   -> launcher/fleet_setup.py creates the global group alone on gloo (dynabert/ never creates groups).
13. (found here, read in the source) PaddleNLP 2.8.1 numbers every RoBERTa's positions from the padding index
   + 1, also PaddleNLP's Chinese RoBERTa (hfl/*: BERT-style checkpoints, WordPiece, padding id 0, [CLS] 101),
   which earlier PaddleNLP numbered from 0 as BERT does: each position is shifted by one, and a
   512-token input runs past the 512-row position table.
   -> ``number_positions_from_zero`` gives those models' embeddings instance a forward that numbers
   positions 0..T-1 (which models: ``dynabert.model.families.Family.zero_based_positions``).
14. (found here) Paddle's CPU softmax gives a masked key (-1e4, even -inf) ~3e-29, not 0, so ~1e-34 gradients
   leak into every padding position and go denormal (slow CPU arithmetic): x1.4 on the distillation backward.
   -> ``dynabert.model.outputs.PaddingGradients`` zeroes them at every block's output (per model instance).
15. (found here) Paddle 2.6's stride kernels make transpose/reshape return strided views; on a CPU every
   later op copies them through a slow generic kernel (e.g. reshape's gradient: 3.8 ms of copying for
   0.003 ms of work). -> ``contiguous_views_on_cpu`` sets Paddle's own flag FLAGS_use_stride_kernel to
   False on a CPU (the results are bitwise the same), unless the user set it.
"""
import os

import paddle
import paddle.nn.functional as F
from paddlenlp.transformers.roberta.modeling import RobertaEmbeddings
from paddleslim.nas.ofa.layers import SuperLayerNorm

# PaddleNLP itself replaces TransformerEncoder(Layer).forward when paddlenlp.transformers is imported
# (paddlenlp/transformers/model_outputs.py, to return hidden states); its BertModel depends on that, and it
# keeps the mathematics. What we must never run under is PaddleSlim's replacement (defect 3).
_NLP_UTILS = "paddleslim.nas.ofa.utils.nlp_utils"
LAYER_NORM_FROZEN_GRAD = "layer_norm input gradient is wrong when its weight and bias are frozen (defect 11)"
_WATCHED = (
    (paddle.nn.MultiHeadAttention, "forward"),
    (paddle.nn.TransformerEncoder, "forward"),
    (paddle.nn.TransformerEncoderLayer, "forward"),
)


def paddle_patches() -> list:
    """Paddle transformer methods currently replaced by PaddleSlim's nlp_utils (empty when all is well)."""
    return [f"{cls.__name__}.{name}" for cls, name in _WATCHED
            if getattr(getattr(cls, name), "__module__", "") == _NLP_UTILS]


def assert_paddle_unpatched() -> None:
    """Refuse to build models once PaddleSlim's nlp_utils replaced Paddle's attention globally (defect 3)."""
    patched = paddle_patches()
    if patched:
        raise RuntimeError(f"{', '.join(patched)} replaced globally by {_NLP_UTILS} (it drops the attention "
                           "scale); results would silently change, refusing to continue")


class _FixedSuperLayerNorm(SuperLayerNorm):
    """SuperLayerNorm whose forward works on Paddle 2.6.2 (defect 2). Same slicing rule as upstream:
    the first ``feature_dim`` entries of weight and bias are used."""

    def forward(self, input):
        feature_dim = int(input.shape[-1])
        weight = self.weight[:feature_dim] if self.weight is not None else None
        bias = self.bias[:feature_dim] if self.bias is not None else None
        self.cur_config = {"prune_dim": feature_dim}
        return F.layer_norm(input, [feature_dim], weight=weight, bias=bias, epsilon=self._epsilon)


def fix_super_layer_norms(model: paddle.nn.Layer) -> int:
    """Give every SuperLayerNorm inside ``model`` the corrected forward; returns how many were fixed.
    Only these instances change class; SuperLayerNorm itself is untouched."""
    count = 0
    for layer in model.sublayers(include_self=True):
        if type(layer) is SuperLayerNorm:
            layer.__class__ = _FixedSuperLayerNorm
            count += 1
    return count


class _ZeroBasedPositionEmbeddings(RobertaEmbeddings):
    """RoBERTa embeddings whose positions count 0..T-1, as BERT's and earlier PaddleNLP's Chinese RoBERTa's did
    (defect 13). Everything else is RobertaEmbeddings.forward; explicit position_ids still win."""

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                past_key_values_length=None):
        if position_ids is None and input_ids is not None:
            ones = paddle.ones_like(input_ids, dtype="int64")
            position_ids = paddle.cumsum(ones, axis=-1) - ones
            if past_key_values_length:
                position_ids = position_ids + past_key_values_length
            position_ids.stop_gradient = True
        # Named, not super(): Paddle's dy2static (jit.save of an export) rewrites this method and loses super's cell.
        return RobertaEmbeddings.forward(self, input_ids=input_ids, token_type_ids=token_type_ids,
                                         position_ids=position_ids, inputs_embeds=inputs_embeds,
                                         past_key_values_length=past_key_values_length)


def number_positions_from_zero(embeddings: paddle.nn.Layer) -> None:
    """Give this RobertaEmbeddings instance BERT's positions 0..T-1 (defect 13); the class is untouched."""
    if type(embeddings) is RobertaEmbeddings:
        embeddings.__class__ = _ZeroBasedPositionEmbeddings
    elif not isinstance(embeddings, _ZeroBasedPositionEmbeddings):
        raise TypeError(f"expected RobertaEmbeddings, got {type(embeddings).__name__}")


def attention_layers(model: paddle.nn.Layer) -> list:
    return [m for m in model.sublayers(include_self=True) if isinstance(m, paddle.nn.MultiHeadAttention)]


def set_attention_heads(model: paddle.nn.Layer, width: float, full_heads: int) -> int:
    """Make every attention instance in ``model`` use ``round(width * full_heads)`` heads (defect 10).
    The sliced q/k/v projections then hold exactly that many whole heads of ``head_dim`` each."""
    heads = whole_heads(width, full_heads)
    for attn in attention_layers(model):
        attn.num_heads = heads
    return heads


def whole_heads(width: float, full_heads: int) -> int:
    heads = round(width * full_heads)
    if heads < 1 or abs(heads - width * full_heads) > 1e-6:
        raise ValueError(f"width {width} x {full_heads} heads is not a whole number of heads")
    return heads


STRIDE_FLAG = "FLAGS_use_stride_kernel"


def contiguous_views_on_cpu() -> bool:
    """Defect 15: on a CPU, have transpose and reshape write contiguous outputs (Paddle 2.5's behaviour)
    instead of strided views, through Paddle's documented flag. Measured on the compress step (MiniLM,
    32 x 64 tokens, 2 threads): 5.2 s -> 3.65 s, the teacher's forward 0.50 s -> 0.27 s. Left alone on
    GPUs (not measured there) and when the user set the flag in the environment. Process-wide, like the
    thread count: the entry points call it once, after choosing the device. Returns whether it set it."""
    if STRIDE_FLAG in os.environ or "cpu" not in str(paddle.get_device()):
        return False
    paddle.set_flags({STRIDE_FLAG: False})
    return True
