"""ONNX export of a model folder: trunk and heads in one graph, so ONNX Runtime or OpenVINO can run it.

The graph maps a (B, 3, 224, 224) batch of normalised photos to the same per-photo outputs as
the PyTorch network (``logits`` (B, 14), ``gate`` (B, C) and ``suitability`` (B, 14) when the
model has them, and the photo ``embedding`` (B, D)). For an ensemble it holds the shared frozen stem once, every member's tail and
heads, and the mirror view, averaged inside the graph exactly as :class:`~shoeclass.ensemble.EnsembleNet`
does. The batch size stays free.

Export uses ``torch.onnx.export(dynamo=True)`` (the TorchScript exporter mistranslates the
EfficientNet-Lite blocks here: its outputs differed by the whole logit range). An export of a model
folder is cached under the user cache directory, keyed by the sha256 of the model's tensors, and
is never part of the model folder itself.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["EXPORT_VERSION", "export_onnx", "output_names", "cache_dir", "cached_onnx"]

logger = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bump when the graph changes for the same weights (2: the embedding)
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
    return [k for k in ("logits", "gate", "suitability", "embedding") if k in out]


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
