"""`vtsel export --onnx / --torch_export`: the keep logits as ONNX and torch.export programs with
a dynamic batch, equal to the PyTorch selector's within 1e-4."""

from __future__ import annotations

import sys
from pathlib import Path

import onnxruntime
import pytest
import torch

from tests.conftest import Exported
from vtsel.cli import main
from vtsel.deploy import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, TORCH_EXPORT_FILE
from vtsel.inference import TokenSelector

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def deployed(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deployed") / "selector"
    main(["export", "--checkpoint", str(exported.checkpoint), "--out", str(out),
          "--onnx", "true", "--torch_export", "true"])
    return out


@pytest.fixture(scope="module")
def token_selector(deployed: Path) -> TokenSelector:
    return TokenSelector.from_pretrained(deployed)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_keep_logits_match_the_selector(
    deployed: Path, token_selector: TokenSelector, batch: int
) -> None:
    session = onnxruntime.InferenceSession(
        str(deployed / ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    (given,), (produced,) = session.get_inputs(), session.get_outputs()
    assert (given.name, produced.name) == (INPUT_NAME, OUTPUT_NAME)
    assert isinstance(given.shape[0], str) and given.shape[1:] == [16, 32]  # batch symbolic
    features = torch.randn(batch, 16, 32, generator=torch.Generator().manual_seed(batch))
    (keep_logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: features.numpy()})  # (B, L)
    expected = token_selector.scores(features)  # (B, L)
    assert keep_logits.shape == (batch, 16)
    assert (torch.from_numpy(keep_logits) - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("batch", [1, 3])
def test_torch_export_keep_logits_match_the_selector(
    deployed: Path, token_selector: TokenSelector, batch: int
) -> None:
    program = torch.export.load(deployed / TORCH_EXPORT_FILE).module()
    features = torch.randn(batch, 16, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        keep_logits = program(features)  # (B, L)
    expected = token_selector.scores(features)  # (B, L)
    assert keep_logits.shape == (batch, 16)
    assert (keep_logits - expected).abs().max().item() < TOLERANCE


def test_onnx_without_its_exporter_names_the_extra_and_writes_nothing(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    out = tmp_path / "selector"
    with pytest.raises(SystemExit, match=r"needs 'onnxscript'.*pip install 'vtsel\[demo\]'"):
        main(["export", "--checkpoint", str(exported.checkpoint), "--out", str(out),
              "--onnx", "true"])
    assert not out.exists()
