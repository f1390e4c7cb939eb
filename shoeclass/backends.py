"""The runtimes that execute a loaded network: PyTorch, OpenVINO or ONNX Runtime, behind one call.

Every runtime maps a (B, 3, 224, 224) float32 batch of normalised photos to the network's outputs
as float32 numpy arrays: ``logits`` (B, 14), ``gate`` (B, C) and ``suitability`` (B, 14) when
the model has them, and the photo ``embedding`` (B, D). OpenVINO and ONNX Runtime run the ONNX
export of the same network (``export.py``), made once per model and cached.

OpenVINO runs the model folder's int8 graph where its card has one (``shoeclass quantize``;
``checkpoint.int8_graph`` checks it), the rest in float; ``bf16=False`` asks for full precision and
runs the fp32 export instead.

``auto`` takes the first runtime of :data:`AUTO_ORDER` that is installed: the order
``benchmarks/runtimes.py`` measured, fastest first among those whose decisions agree with fp32
PyTorch on ≥ 99.5 % of the test photos' outputs (BENCHMARKS.md, "Runtimes"). Without the optional
packages (``pip install "shoeclass[onnx]"``), or when the export fails, ``auto`` falls back to
PyTorch. ``$SHOECLASS_RUNTIME`` sets the runtime when none is passed; without it the runtime is
:data:`DEFAULT`.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading

import numpy as np
import torch

from .runtime import autocast, cpu_has_bf16

__all__ = ["RUNTIMES", "AUTO_ORDER", "DEFAULT", "TorchRuntime", "OnnxRuntime", "OpenVinoRuntime", "load_runtime",
           "runtime_available"]

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
AUTO_ORDER = ("openvino", "onnxruntime", "torch")  # fastest first, as benchmarks/runtimes.py measured
DEFAULT = "auto"  # the runtime when none is named: the fastest installed (benchmarks/runtimes.py)
_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime", "torch": "torch"}
_INSTALL = 'pip install "shoeclass[onnx]"'


def runtime_available(name: str) -> bool:
    """True when the package ``name`` needs is installed (and, for an ONNX runtime, the exporter's)."""
    need = [_PACKAGES[name]] + ([] if name == "torch" else ["onnx", "onnxscript"])
    return all(importlib.util.find_spec(p) is not None for p in need)


class TorchRuntime:
    """The PyTorch network itself: channels_last, bf16 autocast where the CPU has native bf16.

    Args:
        net: the loaded network in eval mode (channels_last weights), on ``device``.
        bf16: True / False, or None: bf16 when :func:`~shoeclass.runtime.cpu_has_bf16` (on CUDA:
            unless False).
        device: where ``net`` is; batches are moved there.
    """

    name = "torch"

    def __init__(self, net: torch.nn.Module, bf16: bool | None = None, device: torch.device | str = "cpu") -> None:
        self.net, self.device = net, torch.device(device)
        self.bf16 = (cpu_has_bf16() if self.device.type == "cpu" else True) if bf16 is None else bf16
        self.precision = "bf16" if self.bf16 else "fp32"

    def __call__(self, x: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast(self.bf16, self.device):
            out = self.net(x.contiguous(memory_format=torch.channels_last))
        return {k: v.float().cpu().numpy() for k, v in out.items()}


class OnnxRuntime:
    """An exported network run by ONNX Runtime's CPU provider (fp32; session.run is thread-safe).

    Args:
        path: the ``.onnx`` file. threads: intra-op threads (default: torch's thread count).
    """

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        return dict(zip(self.names, self.session.run(self.names, {"photos": x})))


class OpenVinoRuntime:
    """An exported network compiled by OpenVINO for the CPU.

    Two compilations of the one graph: a latency one for small batches (one inference request per
    thread, all cores on it), and a throughput one whose streams each take a share of a larger
    batch at once (``SPLIT_FROM`` photos or more): on 2 cores, 32 photos as two requests of 16 on
    one core each ran in 0.64 s against 1.06 s as one request on both (BENCHMARKS.md, issue 20).

    Args:
        path: the ``.onnx`` file (fp32, or int8 QDQ from ``export.quantize_onnx``).
        bf16: OpenVINO's inference precision of float layers: True bf16, False f32, None bf16 where
            the CPU has it.
        threads: inference threads (default: torch's thread count).
        int8: ``path`` is an int8 graph (labels the precision; its float layers run in f32).
    """

    name = "openvino"
    SPLIT_FROM = 8  # smaller batches run as one request: splitting them measured slower

    def __init__(self, path: str | os.PathLike, bf16: bool | None = None, threads: int | None = None,
                 int8: bool = False) -> None:
        import openvino as ov

        bf16 = False if int8 else cpu_has_bf16() if bf16 is None else bf16
        self.precision = "int8" if int8 else "bf16" if bf16 else "fp32"
        core = ov.Core()
        base = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        self.model = core.compile_model(str(path), "CPU", {**base, "PERFORMANCE_HINT": "LATENCY"})
        self.streamed = core.compile_model(str(path), "CPU", {**base, "PERFORMANCE_HINT": "THROUGHPUT"})
        self.streams = int(self.streamed.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.names = [o.get_any_name() for o in self.model.outputs]
        self._queue_type = ov.AsyncInferQueue
        self._local = threading.local()  # requests are not shared between threads

    def __call__(self, x: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if len(x) >= self.SPLIT_FROM and self.streams > 1:
            return self._streamed(x)
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.model.create_infer_request()
        res = request.infer({0: x})
        return {name: np.array(res[i], dtype=np.float32) for i, name in enumerate(self.names)}

    def _streamed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The batch split into one share per stream, run at once, put back in order."""
        queue = getattr(self._local, "queue", None)
        if queue is None:
            queue = self._local.queue = self._queue_type(self.streamed, self.streams)
        parts = np.array_split(x, self.streams)
        got: list = [None] * len(parts)

        def done(request, i: int) -> None:
            got[i] = [np.array(request.get_output_tensor(j).data, dtype=np.float32) for j in range(len(self.names))]

        queue.set_callback(done)
        for i, part in enumerate(parts):
            queue.start_async({0: np.ascontiguousarray(part)}, i)
        queue.wait_all()
        return {name: np.concatenate([g[j] for g in got]) for j, name in enumerate(self.names)}


def load_runtime(runtime: str | None, net: torch.nn.Module, meta: dict, bf16: bool | None = None,
                 device: torch.device | str = "cpu", folder: str | os.PathLike | None = None):
    """The runtime that will run ``net`` (loaded from a model folder with metadata ``meta``).

    Args:
        runtime: ``auto``, ``torch``, ``openvino`` or ``onnxruntime``; None: ``$SHOECLASS_RUNTIME``
            or :data:`DEFAULT`.
        bf16: precision where the runtime offers bf16 (None: bf16 where the CPU has it); False
            also keeps OpenVINO off the int8 graph.
        device: where ``net`` runs; off the CPU only PyTorch runs it.
        folder: the model folder, where OpenVINO looks for the int8 graph the card names.

    Raises:
        ValueError: an unknown runtime, or a named one whose package is not installed (with the
            command that installs it).
    """
    runtime = runtime or os.environ.get("SHOECLASS_RUNTIME") or DEFAULT
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if torch.device(device).type != "cpu":
        if runtime not in ("auto", "torch"):
            raise ValueError(f"runtime {runtime!r} runs on the CPU only; use runtime='torch' on {device}")
        return TorchRuntime(net, bf16, device)
    if runtime != "auto" and not runtime_available(runtime):
        raise ValueError(f"runtime {runtime!r} is not installed: {_INSTALL}, or use runtime='torch'")
    order = [r for r in AUTO_ORDER if runtime_available(r)] if runtime == "auto" else [runtime]
    for name in order:
        if name == "torch":
            return TorchRuntime(net, bf16, device)
        try:
            from .export import cached_onnx

            int8 = _int8_graph(runtime, folder, meta) if name == "openvino" and folder and bf16 is not False else None
            if int8 is not None:
                return OpenVinoRuntime(int8, int8=True)
            path = cached_onnx(net, meta)
            return OpenVinoRuntime(path, bf16) if name == "openvino" else OnnxRuntime(path)
        except Exception as exc:  # an exporter or runtime failure must not stop inference under auto
            if runtime != "auto":
                raise
            logger.warning("runtime %s unavailable for this model (%s: %s); trying the next one",
                           name, type(exc).__name__, str(exc)[:200])
    return TorchRuntime(net, bf16, device)


def _int8_graph(runtime: str, folder: str | os.PathLike, meta: dict):
    """The folder's checked int8 graph; under ``auto`` one that fails its card is named in a warning
    and OpenVINO runs the float export instead (named runtimes raise)."""
    from .checkpoint import CheckpointError, int8_graph

    try:
        return int8_graph(folder, meta)
    except CheckpointError as exc:
        if runtime != "auto":
            raise
        logger.warning("%s; running the float graph", exc)
        return None
