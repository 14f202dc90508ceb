"""Mixed precision: fp32 (default), fp16 with dynamic loss scaling, or bf16, through paddle.amp.

Paddle 2.6's automatic mixed precision casts on CUDA devices only (on CPU ``auto_cast`` leaves every op
in fp32, measured here), so fp16 and bf16 are refused on a CPU run rather than silently ignored.
NOT RUN ON A GPU BY THIS PROJECT: written against Paddle's documented AMP API (auto_cast O1, GradScaler).

The gradient all-reduce sits between backward and ``step``; with fp16 the all-reduced gradients are
still scaled, which is fine (the all-reduce is linear), and GradScaler's inf/NaN check then sees the
same gradients on every rank, so every rank skips the same steps.
"""
import contextlib

import numpy as np
import paddle

from dynabert.errors import UserError

MODES = ("fp32", "fp16", "bf16")


class Precision:
    def __init__(self, mode: str = "fp32"):
        if mode not in MODES:
            raise UserError(f"run.precision: must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "fp32" and not on_gpu():
            raise UserError(f"run.precision: {mode} needs a GPU (Paddle's AMP does not cast on CPU); "
                            "use fp32 on CPU")
        if mode == "bf16":
            check_bf16_capability(paddle.device.cuda.get_device_capability())
        self.mode = mode
        # Dynamic loss scaling keeps small fp16 gradients from flushing to zero; bf16 has fp32's range.
        self.scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15) if mode == "fp16" else None

    @property
    def handles_overflow(self) -> bool:
        """fp16's scaler skips steps with inf/NaN gradients itself (and lowers the scale)."""
        return self.scaler is not None

    def autocast(self):
        if self.mode == "fp32":
            return contextlib.nullcontext()
        dtype = "float16" if self.mode == "fp16" else "bfloat16"
        return paddle.amp.auto_cast(enable=True, dtype=dtype, level="O1")

    def backward(self, loss: paddle.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer) -> None:
        """fp16: divide the gradients by the loss scale (and let the scaler note inf/NaN), so the caller's
        finiteness verdict and the gradient clipping see true gradients."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer, finite: bool) -> None:
        """Apply the update when ``finite``. fp16: the scaler skips a step with inf/NaN itself (the same
        verdict: it checked the same all-reduced gradients) and always updates its scale."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        elif finite:
            optimizer.step()

    def state_dict(self) -> dict:
        """The loss scale and its counters (JSON-able), so a resumed fp16 run keeps its scale."""
        if self.scaler is None:
            return {}
        state = self.scaler.state_dict()
        return {k: (float(np.asarray(v).reshape(-1)[0]) if k == "scale" else v) for k, v in state.items()}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict({**state, "scale": np.asarray([state["scale"]], dtype=np.float32)})


def check_bf16_capability(capability) -> None:
    """bf16 kernels need compute capability 8.0 (Ampere) or newer; below it Paddle silently runs fp32."""
    major, minor = capability
    if major < 8:
        raise UserError(f"run.precision: bf16 needs a GPU of compute capability 8.0 or newer (this one is "
                        f"{major}.{minor}); use fp16 or fp32")


def on_gpu() -> bool:
    return paddle.is_compiled_with_cuda() and "gpu" in str(paddle.get_device())
