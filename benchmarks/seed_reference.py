"""Our re-implementation of the DynaBERT tutorial's training loop, written from the tutorial text
(/work/shared/seed/dynabert-ofa-tutorial.rst, section "基于PaddleSlim进行模型压缩", steps 1-8), to compare the
project against. It is not the project's code and does not call it, except for the two crash fixes below.
Defect numbers refer to docs/upstream-defects.md.

Kept as the tutorial has it:
  * student: ``Convert(supernet(expand_ratio=[0.25, 0.5, 0.75, 1.0])).convert(model)``, then
    ``paddleslim.nas.ofa.utils.set_state_dict(model, origin_weights)`` from the original's parameters;
  * ``OFA(model, distill_config=DistillConfig(lambda_distill=0.1, teacher_model=teacher,
    mapping_layers=['bert.embeddings'] + ['bert.encoder.layers.{i}' for every layer]))``;
  * ``set_epoch(0)``, ``set_task('width')``;
  * per width of [1.0, 0.75, 0.5, 0.25]: ``dynabert_config`` -> ``set_net_config`` ->
    ``logits, teacher_logits = ofa_model(input_ids, token_type_ids, attention_mask=...)``. OFA runs the
    teacher INSIDE every forward: once per width, not under ``no_grad`` (defect 5);
    ``rep_loss = ofa_model.calc_distill_loss()``, ``logit_loss = soft_cross_entropy(logits,
    teacher_logits.detach())``, ``loss = rep_loss + lambda_logit * logit_loss``, ``loss.backward()``;
  * then ``optimizer.step()``, ``lr_scheduler.step()``, ``ofa_model.model.clear_gradients()``, with the
    optimizer of PaddleNLP's OFA example (AdamW, linear warm-up/decay, weight decay except bias/norm,
    no gradient clipping).

Minimal fixes, each of which would otherwise CRASH the loop on paddle 2.6.2 / paddleslim 2.6.0:
  FIX-2  (defect 2) SuperLayerNorm.forward unpacks 3 values from a 1-tensor op: every forward raises
         ValueError. -> ``dynabert.model.compat.fix_super_layer_norms(student)`` (per instance).
  FIX-10 (defect 10; upstream relies on defect 3) the head count must follow the width, and PaddleSlim
         does that only via its global ``nlp_utils`` patch of MultiHeadAttention (which also drops the
         1/sqrt(head_dim) scale). We refuse the global patch: ``dynabert.model.compat.set_attention_heads``
         after each ``set_net_config``; without it width 0.75 fails in a reshape.
  FIX-4  (defects 4 and 10) an explicit 2-D float attention mask (1 token / 0 pad) is passed instead of
         the mutable ``attention_mask=[None, None]`` default of the tutorial's ``bert_forward`` patch (which
         we do not install; stock BertModel.forward crashes on the converted model without a mask).

Data parallel: the tutorial's code path wraps the model in ``paddle.DataParallel`` without ``no_sync``:
every width's ``backward()`` all-reduces the full gradient, 4 all-reduces per optimizer step (defect 9).
But DataParallel renames the sublayers, OFA's name-keyed distillation hooks stop firing and
``calc_distill_loss()`` silently returns 0 (defect 6), which would make the reference cheaper than the
real thing and numerically different. So we do NOT wrap it: to keep the distillation alive and still model
its communication, ``comms.all_reduce_gradients`` (one fused all-reduce of all gradients, averaged) runs
after EACH width's backward. The accumulated, averaged gradients equal DataParallel's: after width k the
gradient is mean(g_1) + ... + mean(g_k) on every rank.

Runtime flags: the tutorial runs on Paddle's defaults. The project's entry points turn Paddle's stride
kernels off on CPUs (defect 15, ``compat.contiguous_views_on_cpu``), a process-wide flag; in a process that
runs both sides, every reference forward, backward and update runs under ``paddle_defaults()``.
"""
import contextlib
import os
import time
from typing import Callable, Dict, Optional, Sequence

import paddle
import paddle.nn.functional as F
from paddlenlp.transformers import LinearDecayWithWarmup
from paddleslim.nas.ofa import OFA, DistillConfig
from paddleslim.nas.ofa.convert_super import Convert, supernet
from paddleslim.nas.ofa.utils import dynabert_config
from paddleslim.nas.ofa.utils import set_state_dict as ofa_set_state_dict

from dynabert.model import compat

TUTORIAL_WIDTHS = (1.0, 0.75, 0.5, 0.25)
SYNC = lambda: None  # noqa: E731  (the GPU benchmark sets a device synchronise before each clock read)


@contextlib.contextmanager
def paddle_defaults():
    """Paddle 2.6's default stride kernels (on, unless the environment set the flag) inside; the caller's after."""
    flag = compat.STRIDE_FLAG
    before = paddle.get_flags([flag])[flag]
    paddle.set_flags({flag: os.environ.get(flag, "1").lower() not in ("0", "false")})
    try:
        yield
    finally:
        paddle.set_flags({flag: before})


def soft_cross_entropy(inp, target):
    """As in PaddleNLP's OFA example (the tutorial uses it without defining it)."""
    inp_likelihood = F.log_softmax(inp, axis=-1)
    target_prob = F.softmax(target, axis=-1)
    return -1.0 * paddle.mean(paddle.sum(inp_likelihood * target_prob, axis=-1))


class SeedReference:
    """The tutorial's supernet + OFA distillation loop. ``make_model()`` returns a fresh instance of the
    original model class; both the student and the teacher are loaded from ``teacher_state``."""

    def __init__(self, make_model: Callable[[], paddle.nn.Layer], teacher_state: Dict,
                 widths: Sequence[float] = TUTORIAL_WIDTHS, lambda_distill: float = 0.1,
                 lambda_logit: float = 0.1, comms=None, learning_rate: float = 5e-5,
                 total_steps: int = 1000, warmup_proportion: float = 0.1, weight_decay: float = 0.01):
        compat.assert_paddle_unpatched()
        self.widths = tuple(widths)
        self.lambda_logit = lambda_logit
        self.comms = comms

        # 1. the original network and its weights
        model = make_model()
        model.set_state_dict(teacher_state)
        origin_weights = {name: param for name, param in model.named_parameters()}
        self.num_heads = model.config.num_attention_heads
        num_layers = model.config.num_hidden_layers

        # 2. the supernet
        sp_config = supernet(expand_ratio=sorted(self.widths))
        model = Convert(sp_config).convert(model)
        ofa_set_state_dict(model, origin_weights)
        compat.fix_super_layer_norms(model)  # FIX-2

        # 3. the teacher
        teacher = make_model()
        teacher.set_state_dict(teacher_state)

        # 4. distillation config
        mapping_layers = ["bert.embeddings"]
        for idx in range(num_layers):
            mapping_layers.append("bert.encoder.layers.{}".format(idx))
        distill_config = DistillConfig(lambda_distill=lambda_distill, teacher_model=teacher,
                                       mapping_layers=mapping_layers)

        # 5. OFA
        self.ofa_model = OFA(model, distill_config=distill_config)
        self.student = self.ofa_model.model
        self.teacher = teacher

        # 7. training phase
        self.ofa_model.set_epoch(0)
        self.ofa_model.set_task("width")

        # optimizer of PaddleNLP's examples/model_compression/ofa/run_glue_ofa.py
        self.lr_scheduler = LinearDecayWithWarmup(learning_rate, total_steps, warmup_proportion)
        decay_params = [p.name for n, p in self.student.named_parameters()
                        if not any(nd in n for nd in ["bias", "norm"])]
        self.optimizer = paddle.optimizer.AdamW(
            learning_rate=self.lr_scheduler, epsilon=1e-8, parameters=self.student.parameters(),
            weight_decay=weight_decay, apply_decay_param_fun=lambda x: x in decay_params)

        # Measurement only: time the teacher inside OFA.forward (OFA calls teacher.forward directly, so
        # hook the BertModel inside it).
        self._teacher_seconds = 0.0
        self._teacher_start = None
        teacher.bert.register_forward_pre_hook(self._teacher_pre)
        teacher.bert.register_forward_post_hook(self._teacher_post)
        self.last_timing: Dict = {}

    def _teacher_pre(self, layer, inputs):
        SYNC()
        self._teacher_start = time.perf_counter()

    def _teacher_post(self, layer, inputs, output):
        SYNC()
        self._teacher_seconds += time.perf_counter() - self._teacher_start

    def parameters(self):
        return self.student.parameters()

    def train(self):
        self.student.train()  # the teacher stays in eval mode, as OFA left it

    def eval(self):
        self.student.eval()

    def forward_backward(self, batch: Dict[str, paddle.Tensor]) -> Dict[float, Dict[str, paddle.Tensor]]:
        """Step 8 of the tutorial up to (not including) the optimizer step. Gradients accumulate."""
        with paddle_defaults():
            return self._forward_backward(batch)

    def _forward_backward(self, batch: Dict[str, paddle.Tensor]) -> Dict[float, Dict[str, paddle.Tensor]]:
        input_ids, segment_ids = batch["input_ids"], batch["token_type_ids"]
        attention_mask = batch["attention_mask"]  # FIX-4: explicit 2-D float mask
        losses, timing = {}, {"widths": {}, "allreduce": {}}
        self._teacher_seconds = 0.0
        for width_mult in self.widths:
            SYNC()
            start = time.perf_counter()
            net_config = dynabert_config(self.ofa_model, width_mult)
            self.ofa_model.set_net_config(net_config)
            compat.set_attention_heads(self.student, width_mult, self.num_heads)  # FIX-10
            logits, teacher_logits = self.ofa_model(input_ids, segment_ids, attention_mask=attention_mask)
            rep_loss = self.ofa_model.calc_distill_loss()
            logit_loss = soft_cross_entropy(logits, teacher_logits.detach())
            loss = rep_loss + self.lambda_logit * logit_loss
            loss.backward()
            SYNC()
            timing["widths"][width_mult] = time.perf_counter() - start
            if self.comms is not None and self.comms.world_size > 1:
                # DataParallel without no_sync: one gradient all-reduce per backward (defect 9)
                start = time.perf_counter()
                self.comms.all_reduce_gradients(self.student.parameters())
                SYNC()
                timing["allreduce"][width_mult] = time.perf_counter() - start
            losses[width_mult] = {"rep": rep_loss.detach(), "logit": logit_loss.detach(), "loss": loss.detach()}
        timing["teacher"] = self._teacher_seconds
        self.last_timing = timing
        return losses

    def optimizer_step(self) -> None:
        start = time.perf_counter()
        with paddle_defaults():
            self.optimizer.step()
            self.lr_scheduler.step()
            self.ofa_model.model.clear_gradients()
            SYNC()
        self.last_timing["optimizer"] = time.perf_counter() - start

    def step(self, batch: Dict[str, paddle.Tensor]) -> Dict[float, Dict[str, paddle.Tensor]]:
        losses = self.forward_backward(batch)
        self.optimizer_step()
        return losses


def grads_by_name(layer: paddle.nn.Layer) -> Dict[str, Optional["paddle.Tensor"]]:
    return {name: (None if p.grad is None else p.grad.numpy().copy()) for name, p in layer.named_parameters()}
