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
from typing import Dict, Iterable, List, Optional

import paddle

from dynabert.errors import UserError
from dynabert.model.families import family_of
from dynabert.model.supernet import Supernet


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
        self._encoder = family_of(supernet.model).encoder(supernet.model)
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
