"""How much arithmetic a step is, counted from the model's shape: the numerator of model FLOPs utilisation.

One multiply-add is 2 FLOPs. Per token, one transformer block of hidden size ``H`` at width ``w`` (``k`` =
round(w x heads) whole heads of ``d`` dimensions, ``a`` = k x d, ``f`` = FFN neurons kept) does

    matmuls    2·H·3a (query, key, value) + 2·a·H (attention output) + 2·H·f + 2·f·H (FFN)
    attention  2·L·a (scores Q·Kᵀ) + 2·L·a (weights · V), for a sequence of L positions

and the pooler and classifier 2·H·H + 2·H·C per sequence. Embedding look-ups, layer norms, softmax, GELU,
dropout and the optimizer are not counted: they are memory-bound and small in FLOPs (this is the convention
of MFU as PaLM's appendix B defines it, minus its embedding matmul, which BERT classification does not have).
A backward pass costs twice its forward. docs/benchmarking.md has the formula and a worked example.
"""
from typing import Dict, Iterable

from dynabert.model.depth import kept_layers


def forward_flops(shape: Dict[str, int], *, width: float, batch: int, seq_len: int, num_classes: int,
                  depth: float = 1.0) -> int:
    """FLOPs of one forward pass over ``batch`` sequences padded to ``seq_len`` (padding is computed on)."""
    hidden, head_dim = shape["hidden"], shape["head_dim"]
    inner = round(width * shape["heads"]) * head_dim
    ffn = int(width * shape["ffn"])  # PaddleSlim's OFA keeps int(expand_ratio x neurons)
    per_token = 2 * hidden * 3 * inner + 2 * inner * hidden + 4 * hidden * ffn + 4 * seq_len * inner
    layers = len(kept_layers(shape["layers"], depth))
    return batch * seq_len * layers * per_token + batch * (2 * hidden * hidden + 2 * hidden * num_classes)


def compress_step_flops(shape: Dict[str, int], *, widths: Iterable[float], batch: int, seq_len: int,
                        num_classes: int, teacher_runs: bool = True) -> int:
    """One compress step: the teacher's forward (once, full width; not when no distillation term needs it)
    and every width's forward and backward."""
    def fwd(width: float) -> int:
        return forward_flops(shape, width=width, batch=batch, seq_len=seq_len, num_classes=num_classes)

    return (fwd(1.0) if teacher_runs else 0) + sum(3 * fwd(w) for w in widths)
