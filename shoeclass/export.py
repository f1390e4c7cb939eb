"""ONNX export of a model folder: trunk and heads in one graph, so ONNX Runtime or OpenVINO can run it.

The graph maps a (B, 3, 224, 224) batch of normalised photos to the same per-photo outputs as
the PyTorch network (``logits`` (B, 14), ``gate`` (B, C) and ``suitability`` (B, 14) when the
model has them, the photo ``embedding`` (B, D), and from an ensemble its ``features`` and, with a
material tail, the ``material`` logits). For an ensemble it holds the shared frozen stem once,
every member's tail and heads, and the mirror view, averaged inside the graph exactly as
:class:`~shoeclass.ensemble.EnsembleNet` does. The batch size stays free.

Export uses ``torch.onnx.export(dynamo=True)`` (the TorchScript exporter mistranslates the
EfficientNet-Lite blocks here: its outputs differed by the whole logit range). An export of a model
folder is cached under the user cache directory, keyed by the sha256 of the model's tensors, and
is never part of the model folder itself.

The int8 graph is the one export that does travel in the model folder (``model.int8.onnx``): static
post-training quantization needs photos like those the model will see to fix its activation ranges,
and a user's machine has none, so whoever trains the model makes it once (``shoeclass quantize``,
:mod:`shoeclass.training.quantize`) and seals its sha256 in the card's ``int8`` section with the
sha256 of the model it was made from. ``checkpoint.int8_graph`` checks both before OpenVINO runs it.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["EXPORT_VERSION", "export_onnx", "output_names", "cache_dir", "cached_onnx", "quantize_onnx"]

logger = logging.getLogger(__name__)

EXPORT_VERSION = 3  # bump when the graph changes for the same weights (2: the embedding, 3: ensemble features)
ONNX_FILE = "model.onnx"


class _Outputs(torch.nn.Module):
    """The network with a tuple of outputs in a fixed order (ONNX graphs have named outputs, not dicts)."""

    def __init__(self, net: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.net, self.names = net, names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        return tuple(out[k] for k in self.names)


def output_names(net: torch.nn.Module) -> list[str]:
    """The outputs ``net`` returns, in the order the exported graph holds them."""
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, 224, 224))
    return [k for k in ("logits", "gate", "suitability", "embedding", "features", "material") if k in out]


def export_onnx(net: torch.nn.Module, out: str | Path) -> Path:
    """Write ``net`` (a ShoeNet or EnsembleNet in eval mode) as one ONNX graph with a free batch size.

    Args:
        net: the loaded network (``checkpoint.load_checkpoint``).
        out: the ``.onnx`` file to write; weights over 2 GB go to ``<out>.data`` beside it.

    Returns:
        ``out``.

    Example:
        >>> net, meta = load_checkpoint("weights/default")
        >>> export_onnx(net, "model.onnx")
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = output_names(net)
    batch = torch.export.Dim("batch", min=1, max=4096)
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]  # one line per graph pass
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.WARNING)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_Outputs(net, names), (torch.zeros(2, 3, 224, 224),),
                                        input_names=["photos"], output_names=names,
                                        dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    program.save(str(out), external_data=False if _param_bytes(net) < 1.8e9 else True)
    return out


def _param_bytes(net: torch.nn.Module) -> int:
    return sum(t.numel() * 4 for t in net.state_dict().values())


def cache_dir() -> Path:
    """Where exports are cached: ``$SHOECLASS_CACHE``, else ``$XDG_CACHE_HOME/shoeclass``, else
    ``~/.cache/shoeclass``."""
    if os.environ.get("SHOECLASS_CACHE"):
        return Path(os.environ["SHOECLASS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shoeclass"


def cached_onnx(net: torch.nn.Module, meta: dict) -> Path:
    """The ONNX export of a loaded model folder, written on first use to the cache directory,
    keyed by the sha256 of its tensors and of its ImageNet trunk (a folder per model; written to a
    temporary folder first, so a crash never leaves half a file)."""
    key = f"{meta['sha256'][:32]}-{(meta.get('trunk') or {}).get('sha256', 'none')[:16]}-v{EXPORT_VERSION}"
    folder = cache_dir() / "onnx" / key
    if (folder / ONNX_FILE).is_file():
        return folder / ONNX_FILE
    folder.parent.mkdir(parents=True, exist_ok=True)
    logger.info("exporting the model to ONNX once, into %s", folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        export_onnx(net, tmp / ONNX_FILE)
        try:
            tmp.rename(folder)
        except OSError:  # another process exported it meanwhile
            if not (folder / ONNX_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / ONNX_FILE


def quantize_onnx(src: str | Path, photos: np.ndarray, out: str | Path, batch: int = 16) -> Path:
    """Static int8 post-training quantization of an exported graph (QDQ, per-channel int8 weights,
    uint8 activations with min-max ranges from ``photos``). What the heads' linear layers feed stays
    float (:func:`_after_linear`: the hidden ReLU, the logit difference, the averaging of members
    and mirror views): 8 bits over a logit's whole range round a logit near 0 to 0 (decisions
    changed against fp32 on the test photos: 219 of 48,734 all in int8, 210 so; BENCHMARKS.md).

    Args:
        src: the fp32 ``.onnx`` (:func:`export_onnx`).
        photos: (N, 3, 224, 224) float32 normalised photos fixing the activation ranges.
        out: the int8 ``.onnx`` to write (a temporary pre-processed graph goes beside it).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    pre = out.with_name(out.name + ".pre.onnx")

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.ascontiguousarray(photos[i:i + batch], dtype=np.float32)
                                for i in range(0, len(photos), batch))

        def get_next(self) -> dict | None:
            x = next(self.batches, None)
            return None if x is None else {"photos": x}

    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=_after_linear(pre))
    finally:
        pre.unlink(missing_ok=True)
    return out


def _after_linear(path: Path) -> list[str]:
    """Every node downstream of the graph's linear (Gemm) layers, those layers left out (their
    int8 weights are a quarter of the float ones: the model folder stays under 50 MB)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    readers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    todo = [n for n in nodes if n.op_type == "Gemm"]
    after: set[str] = set()
    while todo:
        for out in todo.pop().output:
            for node in readers.get(out, []):
                if node.op_type != "Gemm" and node.name not in after:
                    after.add(node.name)
                    todo.append(node)
    return sorted(after)
