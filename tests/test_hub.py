"""The Hugging Face way of sharing a selector, offline: the export is a `save_pretrained` folder
with a model card, loads from a folder or (downloaded) Hub id with the same checks, and is what
`push_to_hub` uploads."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub.hub_mixin
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open

from tests.conftest import Exported, write_feature_shards
from vtsel.cli import main
from vtsel.data.manifest import MANIFEST_FILE, Manifest, write_manifest
from vtsel.export_format import CONFIG_FILE, WEIGHTS_FILE
from vtsel.fidelity.report import RESULT_COLUMNS
from vtsel.inference import TokenSelector
from vtsel.train.selector_module import SelectorModule

SECTIONS = ["Input", "Training", "Evaluation", "How to load it"]


def write_results(path: Path) -> Path:
    """A `vtsel eval` results.csv of two methods at two of the paper's budgets and 25%."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RESULT_COLUMNS))
        writer.writeheader()
        for method in ("selector", "random"):
            for keep, tokens in ((0.056, 1), (0.25, 4), (0.5, 8)):
                metrics = {name: 0.5 + keep for name in RESULT_COLUMNS[5:]}
                writer.writerow({"method": method, "keep_ratio": keep, "keep_tokens": tokens,
                                 "samples": 8, "text_samples": 0, **metrics})
    return path


@pytest.fixture(scope="module")
def carded(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export whose checkpoint's shards have a manifest (layer -2), with an eval report."""
    root = tmp_path_factory.mktemp("carded")
    shards = write_feature_shards(root / "shards", num_samples=6)
    write_manifest(shards / MANIFEST_FILE, Manifest(
        encoder="test-encoder", layer=-2, grid=(4, 4), feature_dim=32, image_size=32,
        attention=False, feature_dtype="float16", target_size=32, config={},
        inputs={"count": 6, "sha256": ""},
    ))
    trained = torch.load(exported.checkpoint, map_location="cpu", weights_only=True)
    trained["datamodule_hyper_parameters"]["train_shards"] = str(shards)
    torch.save(trained, root / "last.ckpt")
    out = root / "selector"
    main(["export", "--checkpoint", str(root / "last.ckpt"), "--out", str(out),
          "--eval_report", str(write_results(root / "results.csv"))])
    return out


def sections(card: ModelCard) -> dict[str, str]:
    """The card's ``## `` sections by title."""
    parts = re.split(r"^## (.+)$", card.text, flags=re.MULTILINE)
    return {title: body.strip() for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_the_export_carries_a_model_card_of_its_contract_training_and_eval(carded: Path) -> None:
    card = ModelCard.load(carded / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "vtsel" and "vtsel" in data["tags"]
    assert (data["encoder"], data["encoder_layer"]) == ("test-encoder", -2)
    assert (data["grid_size"], data["feature_dim"]) == ([4, 4], 32)
    body = sections(card)
    assert list(body) == SECTIONS
    assert "- layer: -2" in body["Input"] and "4x4 = 16 tokens" in body["Input"]
    assert "samples: 6" in body["Training"] and "source images: 6" in body["Training"]
    table = body["Evaluation"]
    assert "| method | 5.6% (1) | 50% (8) |" in table  # the paper's budgets only, not 25%
    assert re.search(r"^\| selector \|", table, flags=re.MULTILINE)
    assert "from_pretrained(" in body["How to load it"]


def test_an_export_without_a_report_says_so(exported: Exported) -> None:
    body = sections(ModelCard.load(exported.directory / "README.md"))
    assert "No `vtsel eval` report" in body["Evaluation"]
    assert "- layer: not recorded" in body["Input"]  # the wired shards have no manifest


def test_save_pretrained_of_a_loaded_selector_selects_as_the_checkpoint(
    exported: Exported, tmp_path: Path
) -> None:
    saved = tmp_path / "saved"
    TokenSelector.from_pretrained(exported.directory).save_pretrained(saved)
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", CONFIG_FILE, WEIGHTS_FILE]
    assert (saved / "README.md").read_text() == (exported.directory / "README.md").read_text()
    reloaded = TokenSelector.from_pretrained(saved)
    trained = SelectorModule.load_from_checkpoint(exported.checkpoint).eval()
    features = torch.randn(3, 16, 32, generator=torch.Generator().manual_seed(1))  # (B, L, C)
    with torch.no_grad():
        expected = trained.selector.scores(features)  # (B, L)
    assert torch.equal(reloaded.scores(features), expected)
    expected_idx = expected.topk(4, dim=-1).indices.sort(dim=-1).values  # (B, k)
    assert torch.equal(reloaded.select(features, k=4).indices, expected_idx)


def test_push_to_hub_uploads_the_folder_save_pretrained_writes(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploaded: dict[str, Path] = {}

    class OfflineApi:
        """HfApi's two calls push_to_hub makes, recording the folder instead of sending it."""

        def __init__(self, token: Any = None) -> None:
            pass

        def create_repo(self, repo_id: str, **_: Any) -> Any:
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, folder_path: Path, **_: Any) -> str:
            kept = shutil.copytree(folder_path, tmp_path / "uploaded")  # the mixin deletes it
            uploaded.update({p.name: p for p in kept.iterdir()})
            return "commit"

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", OfflineApi)
    selector = TokenSelector.from_pretrained(exported.directory)
    assert selector.push_to_hub("org/selector") == "commit"
    selector.save_pretrained(tmp_path / "saved")
    saved = {p.name: p for p in (tmp_path / "saved").iterdir()}
    assert sorted(uploaded) == sorted(saved) == sorted(["README.md", CONFIG_FILE, WEIGHTS_FILE])
    for name in ("README.md", CONFIG_FILE):
        assert uploaded[name].read_bytes() == saved[name].read_bytes(), name
    # safetensors writes its metadata map in no fixed order: compare what the files hold
    with (safe_open(uploaded[WEIGHTS_FILE], "pt") as pushed,
          safe_open(saved[WEIGHTS_FILE], "pt") as kept):
        assert pushed.metadata() == kept.metadata()
        names = sorted(kept.keys())
        assert sorted(pushed.keys()) == names
        for key in names:
            assert torch.equal(pushed.get_tensor(key), kept.get_tensor(key)), key


def test_a_hub_id_is_downloaded_and_checked_as_a_folder_is(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = shutil.copytree(exported.directory, tmp_path / "repo")
    asked: list[tuple[str, str, str | None]] = []

    def download(repo_id: str, filename: str, revision: str | None = None, **_: Any) -> str:
        asked.append((repo_id, filename, revision))
        return str(repo / filename)

    monkeypatch.setattr("vtsel.inference.hf_hub_download", download)
    loaded = TokenSelector.from_pretrained("org/selector", revision="v1")
    assert asked == [("org/selector", CONFIG_FILE, "v1"), ("org/selector", WEIGHTS_FILE, "v1")]
    features = torch.randn(2, 16, 32)
    expected = TokenSelector.from_pretrained(exported.directory).scores(features)
    assert torch.equal(loaded.scores(features), expected)
    (repo / WEIGHTS_FILE).write_text("a text file")
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors"):
        TokenSelector.from_pretrained("org/selector")


def test_a_missing_folder_is_named_without_asking_the_hub(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json in .*nowhere"):
        TokenSelector.from_pretrained(tmp_path / "nowhere")
