"""The selector's keep logits as deployment artefacts: a ``torch.export`` program
(``selector.pt2``) and an ONNX graph (``selector.onnx``), both features (B, L, C) float32 ->
``keep_logits`` (B, L) with a dynamic batch, so the selector runs beside an encoder in ONNX
Runtime or TensorRT, or in a torch process without vtsel.

Both are made from one ``torch.export`` of ``TokenSelector.forward`` (the core of ``scores``:
normalisation, trunk, head, coverage prior), so they compute what ``scores`` computes. The
budget (top-k, threshold) stays with the caller: it is a sort, not part of the network.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch.export import Dim, ExportedProgram

from vtsel.inference import TokenSelector
from vtsel.outputs import write_atomically

ONNX_FILE = "selector.onnx"
TORCH_EXPORT_FILE = "selector.pt2"
INPUT_NAME, OUTPUT_NAME = "features", "keep_logits"


def keep_logits_program(selector: TokenSelector) -> ExportedProgram:
    """``selector``'s forward traced by ``torch.export`` on its device, the batch size dynamic
    (L and C are the selector's)."""
    config = selector.selector.config
    device = selector.selector.head.weight.device
    # (B, L, C) with B=2: an example batch of 1 would be specialised to 1
    example = torch.zeros(2, config.num_tokens, config.feature_dim, device=device)
    return torch.export.export(
        selector.eval(), (example,), dynamic_shapes={INPUT_NAME: {0: Dim("batch", min=1)}}
    )


def write_torch_export(program: ExportedProgram, path: Path) -> None:
    """``torch.export.save`` of ``program``; ``torch.export.load(path).module()`` runs it."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    write_atomically(path, buffer.getvalue())


def check_onnx_exporter() -> None:
    """Import what torch's ONNX exporter needs, so that a missing package stops ``vtsel export
    --onnx`` before it writes anything, and the CLI names the extra providing it."""
    import onnx  # noqa: F401
    import onnxscript  # noqa: F401


def write_onnx(program: ExportedProgram, path: Path) -> None:
    """``program`` as an ONNX graph with input ``features`` and output ``keep_logits``.

    Needs ``onnx`` and ``onnxscript`` (torch's ONNX exporter): ``pip install 'vtsel[demo]'``.
    """
    onnx_program = torch.onnx.export(
        program, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=True,
        verbose=False,
    )
    write_atomically(path, onnx_program.model_proto.SerializeToString())
