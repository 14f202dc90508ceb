"""Depth: DynaBERT's second stage runs only some of the transformer blocks, chosen by a fixed rule.

The rule and the distillation pairing follow the original code (huawei-noah/Pretrained-Language-Model,
commit 0598f02d, folder DynaBERT):

* transformers/modeling_bert.py L423-428 (``BertEncoder.forward``): ``depth = round(depth_mult * L)``
  (Python 3 ``round``: halves go to the even number, so 0.75 x 6 = 4.5 keeps 4 blocks), and the kept
  blocks are ``math.floor(i / depth_mult)`` for ``i in range(depth)``. For L = 6: 0.75 -> [0, 1, 2, 4],
  0.5 -> [0, 2, 4], 0.25 -> [0, 4]; for L = 12: 0.75 -> [0, 1, 2, 4, 5, 6, 8, 9, 10], 0.5 -> [0, 2, ..., 10],
  0.25 -> [0, 4, 8].
* modeling_bert.py L430-444: the student's hidden states are the input of each kept block plus the last
  output, i.e. the embeddings and the output of every kept block (what ``KeptHiddenStates`` records).
* run_glue.py L134-141 and L180-183: they are matched against the full-depth teacher's hidden states
  ``kept + [L]`` (index 0 = embeddings, j = output of teacher block j-1): the input of kept block i
  against the teacher's input of block i, and the last output against the teacher's last output
  (``teacher_hidden_indices``).

The view is per model instance: ``DepthSupernet.set_depth`` swaps the encoder's ``layers`` for a LayerList
of the kept blocks (the same layer objects) and puts the full list back at depth 1.0; nothing is patched.
"""
import contextlib
import math
from typing import Callable, ContextManager, Dict, Iterable, List, Optional, Sequence

import paddle

from dynabert.errors import UserError
from dynabert.losses import distill_loss
from dynabert.supernet import Supernet
from dynabert.train_step import HiddenStates, forward


def kept_layers(num_layers: int, depth: float) -> List[int]:
    """The blocks depth ``depth`` runs, in order (modeling_bert.py L423-428, rounding included)."""
    count = round(depth * num_layers)
    return [math.floor(i / depth) for i in range(count)]


def teacher_hidden_indices(num_layers: int, depth: float) -> List[int]:
    """Which of the full-depth teacher's hidden states (0 = embeddings, j = output of block j-1) each of
    the student's (embeddings, then each kept block's output) is matched with (run_glue.py L134-141)."""
    return kept_layers(num_layers, depth) + [num_layers]


def check_depths(num_layers: int, depths: Iterable[float], key: str = "compress.depths") -> None:
    """Every depth must keep at least one block, and no two depths may keep the same blocks."""
    seen: Dict[tuple, float] = {}
    for d in sorted(depths, reverse=True):
        kept = tuple(kept_layers(num_layers, d))
        if not kept:
            raise UserError(f"{key}: depth {d} x {num_layers} layers keeps no layer (round({d * num_layers:g}) = 0)")
        if kept in seen:
            raise UserError(f"{key}: depths {seen[kept]} and {d} keep the same {len(kept)} of {num_layers} layers")
        seen[kept] = d


def depth_dir_name(width: float, depth: float) -> str:
    """``width_W`` at full depth (as the width stage names it), ``width_W_depth_D`` below."""
    return f"width_{width:g}" if depth == 1.0 else f"width_{width:g}_depth_{depth:g}"


class DepthSupernet:
    """A width supernet that also runs at any of ``depths``: ``set_width`` and ``set_depth`` first.

    Everything that must see every block (parameters, state_dict, train/eval) runs at full depth."""

    def __init__(self, supernet: Supernet, depths: Iterable[float]):
        self.supernet = supernet
        self.model, self.shape, self.widths = supernet.model, supernet.shape, supernet.widths
        self.depths = tuple(sorted(set(depths), reverse=True))
        check_depths(self.shape["layers"], self.depths)
        self._encoder = supernet.model.bert.encoder
        self._all_layers = self._encoder.layers
        self._views = {d: paddle.nn.LayerList([self._all_layers[i] for i in kept_layers(self.shape["layers"], d)])
                       for d in self.depths if d != 1.0}
        self.depth = 1.0

    @property
    def width(self) -> float:
        return self.supernet.width

    def kept(self, depth: Optional[float] = None) -> List[int]:
        return kept_layers(self.shape["layers"], self.depth if depth is None else depth)

    def set_depth(self, depth: float) -> None:
        if depth != 1.0 and depth not in self._views:
            raise ValueError(f"depth {depth} is not one of the supernet's depths {self.depths}")
        layers = self._all_layers if depth == 1.0 else self._views[depth]
        self._encoder.layers = layers  # replaces the registered sublayer; the full list is kept here
        self._encoder.num_layers = len(layers)
        self.depth = depth

    @contextlib.contextmanager
    def at_depth(self, depth: float):
        """Run at ``depth`` inside, at the previous depth afterwards."""
        before = self.depth
        self.set_depth(depth)
        try:
            yield self
        finally:
            self.set_depth(before)

    def set_width(self, width: float) -> None:
        with self.at_depth(1.0):  # the head count is set on every attention layer, dropped ones included
            self.supernet.set_width(width)

    def __call__(self, input_ids, token_type_ids, attention_mask):
        return self.supernet(input_ids, token_type_ids, attention_mask)

    def parameters(self) -> List[paddle.Tensor]:
        with self.at_depth(1.0):
            return self.supernet.parameters()

    def named_parameters(self):
        with self.at_depth(1.0):
            return list(self.model.named_parameters())

    def train(self):
        with self.at_depth(1.0):
            self.supernet.train()

    def eval(self):
        with self.at_depth(1.0):
            self.supernet.eval()

    def state_dict(self):
        with self.at_depth(1.0):
            return self.supernet.state_dict()

    def set_state_dict(self, state):
        with self.at_depth(1.0):
            self.supernet.set_state_dict(state)


class KeptHiddenStates(HiddenStates):
    """HiddenStates that also records which layer produced each output. ``take`` checks they are the
    embeddings followed by the blocks the encoder holds now (the kept ones at depth < 1) and sets
    ``ran`` to those blocks' indices in the full model."""

    def __init__(self, model: paddle.nn.Layer):
        self._sources: List[paddle.nn.Layer] = []
        self._bert = model.bert
        self._index = {id(layer): i for i, layer in enumerate(model.bert.encoder.layers)}
        self.ran: List[int] = []
        super().__init__(model)  # must see the full depth: it hooks every block

    def _record(self, layer, inputs, output):
        if self._paused:
            return
        self._sources.append(layer)
        super()._record(layer, inputs, output)

    def take(self) -> List[paddle.Tensor]:
        expected = [self._bert.embeddings] + list(self._bert.encoder.layers)
        out, sources = self._outputs, self._sources
        self._outputs, self._sources = [], []
        if len(sources) != len(expected) or any(a is not b for a, b in zip(sources, expected)):
            raise RuntimeError(f"expected the hidden states of the embeddings and {len(expected) - 1} blocks, "
                               f"captured {len(sources)}")
        self.ran = [self._index[id(layer)] for layer in sources[1:]]
        return out


def _backward(loss: paddle.Tensor) -> None:
    loss.backward()


_NULL_CONTEXT = contextlib.nullcontext()


def loss_key(width: float, depth: float) -> str:
    """The loss dict key of one sub-network; the loop logs it as ``w{key}/{term}``, e.g. ``w0.5_d0.75/rep``."""
    return f"{width}_d{depth}"


def depth_step(student: DepthSupernet, student_states: KeptHiddenStates, teacher: Supernet,
               teacher_states: HiddenStates, batch: Dict[str, paddle.Tensor], *, widths: Sequence[float],
               depths: Sequence[float], lambda_distill: float, lambda_logit: float, regression: bool,
               lambda_task: float = 0.0, backward: Callable = _backward,
               phase: Optional[Callable[[str], ContextManager]] = None) -> Dict[str, Dict[str, paddle.Tensor]]:
    """Forward and backward of every (width, depth); gradients accumulate, the caller reduces and steps once.

    The teacher (the width supernet, frozen, full depth) runs once per width under no_grad, at that width.
    The original loops depth then width (run_glue.py L130-145) and runs its teacher per width too
    (L121-127), but never sets the teacher's width_mult, so its teacher is always the full-width model;
    we follow the intent (``hidden_max_all[width_idx]``: the teacher at the student's width). Width is the
    outer loop here so only one teacher output is alive at a time; the accumulated sum is the same.
    With both distillation weights 0 the teacher does not run (only the labels train)."""
    phase = phase or (lambda name: _NULL_CONTEXT)
    distilling = bool(lambda_distill or lambda_logit)
    teacher_logits = teacher_hidden = None
    layers = student.shape["layers"]
    losses = {}
    try:
        for width in widths:
            if distilling:
                with phase(f"teacher {width}"), paddle.no_grad():
                    teacher.set_width(width)
                    teacher_logits = forward(teacher, batch)
                    teacher_hidden = teacher_states.take()
            student.set_width(width)
            for depth in depths:
                with phase(f"width {width} depth {depth}"):
                    student.set_depth(depth)
                    logits = forward(student, batch)
                    paired = teacher_hidden and [teacher_hidden[j] for j in teacher_hidden_indices(layers, depth)]
                    terms = distill_loss(student_states.take(), paired, logits, teacher_logits,
                                         attention_mask=batch["attention_mask"], token_share=batch.get("token_share"),
                                         lambda_distill=lambda_distill, lambda_logit=lambda_logit,
                                         regression=regression, labels=batch["labels"], lambda_task=lambda_task)
                    backward(terms["loss"])
                    losses[loss_key(width, depth)] = {k: v.detach() for k, v in terms.items()}
    finally:
        student.set_depth(1.0)
    return losses
