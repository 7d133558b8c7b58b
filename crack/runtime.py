"""Forward passes that train nothing, through the fastest exact runtime at hand.

Building the feature store, evaluating and predicting only run the network forward. On a CPU,
ONNX Runtime runs MobileNetV2 about 2.5x as fast as PyTorch float32, each in its fastest pass
size (``benchmarks/pass_size.py``), with the same results (the probabilities agree within 1e-4,
checked by tests/test_runtime.py), so there it is the default. Whatever trains (the head,
unfrozen blocks) stays in PyTorch, as does everything on a GPU.

``runtime`` (the ``inference.runtime`` option):

- ``auto``: ONNX Runtime on a CPU when it is installed and the module exports, else PyTorch;
- ``onnxruntime``: ONNX Runtime, or a clear error when it cannot be used;
- ``torch``: PyTorch.

``precision``: ``32`` (exact, the default) or ``bf16``: PyTorch bfloat16 autocast, for GPUs and
CPUs with bfloat16 instructions (AVX512-BF16, AMX). bfloat16 keeps 8 bits of mantissa: pooled
features move by about 0.2 and the probabilities by up to a few hundredths, so it is an option
with its accuracy measured (README, Performance), never the default.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from crack.errors import UserError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "torch")
# Images per forward pass on a CPU, by runtime: a batch runs a few images at a time, whose
# activations stay in the cores' caches where those of 64 spill out of them. On 2 Xeon cores,
# batches of 64 (`python -m benchmarks.pass_size`): ONNX Runtime 410 images/s in passes of 4,
# 300 in one pass; PyTorch float32 167 in passes of 16, 156 in one; bfloat16 217 and 185.
# On a GPU the whole batch is one pass.
CPU_PASS_SIZE = {"onnxruntime": 4, "torch": 16}
PRECISIONS = ("32", "bf16")
_INPUT = "input"  # the input's name in the exported graph


def check_options(runtime: str, precision: str | int) -> tuple[str, str]:
    """The options as strings, or a `UserError` naming the allowed values."""
    precision = str(precision)
    if runtime not in RUNTIMES:
        raise UserError(f"inference.runtime={runtime!r} is not one of: {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise UserError(f"inference.precision={precision!r} is not one of: 32, bf16")
    if runtime == "onnxruntime" and precision != "32":
        raise UserError(
            "inference.runtime=onnxruntime runs float32 only: use inference.precision=32, or "
            "inference.runtime=torch with inference.precision=bf16."
        )
    return runtime, precision


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (else autocast emulates it, slowly)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.cpu._is_avx512_bf16_supported()


def planned_runtime(runtime: str, precision: str | int, device: torch.device | str) -> str:
    """What runs a forward pass: ``onnxruntime`` or ``torch`` (the options checked first).

    ``auto`` plans ONNX Runtime where it can (float32 on a CPU, onnxruntime installed); a model
    it then cannot export still falls back to PyTorch (`ForwardRunner`).
    """
    runtime, precision = check_options(runtime, precision)
    cpu = torch.device(device).type == "cpu"
    if runtime == "onnxruntime" and not cpu:
        raise UserError(f"inference.runtime=onnxruntime runs on the CPU, not on {device}.")
    if runtime == "onnxruntime" and not onnxruntime_available():
        raise UserError(
            "inference.runtime=onnxruntime: the onnxruntime package is not installed "
            "(pip install -r requirements.txt), or use inference.runtime=auto."
        )
    if runtime == "onnxruntime" or (
        runtime == "auto" and cpu and precision == "32" and onnxruntime_available()
    ):
        return "onnxruntime"
    return "torch"


def runtime_version(runtime: str, precision: str | int, device: torch.device | str) -> str:
    """The release and precision of the `planned_runtime`: runtimes round differently in the
    last bits, so what stores results of a forward pass keys on it."""
    if planned_runtime(runtime, precision, device) == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__} float32"
    return f"torch {torch.__version__} {precision}"


class ForwardRunner:
    """``module(x)`` for inference, through the `planned_runtime`; returns a tuple of tensors.

    ``module`` (in eval mode, as ONNX Runtime always runs it; the runner leaves its modes as
    they are) takes one float32 batch (N, ...) and returns a tensor or a tuple of tensors, each
    with the batch as its first dimension. ``example`` is a batch of the input's shape (any
    batch size) for the ONNX export; the exported graph takes any batch size. ``name`` says
    what runs, for the log. With ONNX Runtime the module is exported once, here: later changes
    of its weights are not seen (build a new runner). A batch runs ``pass_size`` images at a
    time (None: the runtime's `CPU_PASS_SIZE` on a CPU, the whole batch on a GPU).
    """

    def __init__(
        self,
        module: nn.Module,
        example: torch.Tensor,
        runtime: str = "auto",
        precision: str | int = "32",
        device: torch.device | str = "cpu",
        threads: int | None = None,
        pass_size: int | None = None,
    ) -> None:
        planned = planned_runtime(runtime, precision, device)
        self.module = module
        self.device = torch.device(device)
        self.precision = str(precision)
        self.session = None
        if planned == "onnxruntime":
            self.session = self._session(example, threads, required=runtime == "onnxruntime")
        if pass_size is None and self.device.type == "cpu":
            pass_size = CPU_PASS_SIZE["torch" if self.session is None else "onnxruntime"]
        self.pass_size = pass_size
        if self.session is not None:
            self.name = "ONNX Runtime float32 (CPU)"
        else:
            kind = "bfloat16 autocast" if self.precision == "bf16" else "float32"
            self.name = f"PyTorch {kind} ({self.device.type})"
            if self.precision == "bf16" and not bf16_native(self.device):
                log.warning(
                    "inference.precision=bf16 on a %s without bfloat16 instructions: emulated, "
                    "likely slower than float32.", self.device.type,
                )  # fmt: skip

    def _session(self, example: torch.Tensor, threads: int | None, required: bool):
        import onnxruntime

        try:
            model = _onnx_bytes(self.module, example.to("cpu", torch.float32))
            options = onnxruntime.SessionOptions()
            # As many threads as PyTorch uses: the DataLoader's workers keep the other cores.
            options.intra_op_num_threads = threads or torch.get_num_threads()
            return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # an operator the exporter or the runtime does not support
            reason = " ".join(str(error).split())[:200]
            if required:
                raise UserError(
                    f"inference.runtime=onnxruntime cannot run this model: {reason}"
                ) from error
            log.warning("ONNX Runtime cannot run this model (%s): PyTorch runs it.", reason)
            return None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return in_passes(self._forward, x, self.pass_size)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.session is not None:
            inputs = {_INPUT: x.float().contiguous().numpy()}
            return tuple(torch.from_numpy(y) for y in self.session.run(None, inputs))
        autocast = torch.autocast(self.device.type, torch.bfloat16, self.precision == "bf16")
        with torch.inference_mode(), autocast:
            outputs = self.module(x.to(self.device, non_blocking=True))
        return tuple(y.float() for y in _as_tuple(outputs))


def in_passes(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    x: torch.Tensor,
    pass_size: int | None,
) -> tuple[torch.Tensor, ...]:
    """``forward(x)``, run ``pass_size`` images at a time (None: at once), outputs concatenated."""
    if pass_size is None or len(x) <= pass_size:
        return forward(x)
    parts = [forward(part) for part in x.split(pass_size)]
    return tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True))


def _onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """``module`` as an in-memory ONNX model with a dynamic batch size."""
    with torch.inference_mode():
        count = len(_as_tuple(module(example[:1])))
    outputs = [f"output{i}" for i in range(count)]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _modes_kept(module):
        # The TorchScript-based exporter needs no extra package (the torch.export-based one
        # needs onnxscript) and handles these plain CNNs fully; it warns that it is not the default.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example[:2],),
            buffer,
            input_names=[_INPUT],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [_INPUT, *outputs]},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


@contextmanager
def _modes_kept(module: nn.Module) -> Iterator[None]:
    """Each submodule's train/eval mode as it was. The exporter puts the whole module back in
    the top module's mode; Lightning keeps modes per submodule (frozen blocks in eval mode while
    the head trains)."""
    modes = {submodule: submodule.training for submodule in module.modules()}
    try:
        yield
    finally:
        for submodule, training in modes.items():
            submodule.training = training


def _as_tuple(outputs: torch.Tensor | tuple) -> tuple:
    return outputs if isinstance(outputs, tuple) else (outputs,)
