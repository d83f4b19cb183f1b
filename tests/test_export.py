"""`vtsel export` of a really fitted model, reloaded by TokenSelector without Lightning."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import Exported, write_feature_shards
from tests.fit_support import JUDGE_TWIN, fit
from vtsel.cli import main
from vtsel.flops import selector_config_of
from vtsel.inference import CONFIG_FILE, WEIGHTS_FILE, KeptTokens, TokenSelector
from vtsel.methods import LearnedSelection, build_method
from vtsel.models import SelectorConfig
from vtsel.models.selector import tokens_for_ratio
from vtsel.train.selector_module import SelectorModule

CROPS, TOKENS, WIDTH = 3, 16, 32  # tests/conf/demo.yaml: 4x4 grid of 32-wide tokens


@pytest.fixture(scope="module")
def trained(exported: Exported) -> SelectorModule:
    return SelectorModule.load_from_checkpoint(exported.checkpoint).eval()


@pytest.fixture(scope="module")
def token_selector(exported: Exported) -> TokenSelector:
    return TokenSelector.from_pretrained(exported.directory)


@pytest.fixture
def features() -> torch.Tensor:
    return torch.randn(CROPS, TOKENS, WIDTH, generator=torch.Generator().manual_seed(0))


def test_scores_equal_the_trained_selector_exactly(
    token_selector: TokenSelector, trained: SelectorModule, features: torch.Tensor
) -> None:
    with torch.no_grad():
        expected = trained.selector.scores(features)  # (B, L)
        expected_one = trained.selector.scores(features[:1])[0]  # (L,)
    assert torch.equal(token_selector.scores(features), expected)
    assert torch.equal(token_selector.scores(features[0]), expected_one)


def test_select_keep_is_the_top_k_in_spatial_order_with_its_features(
    token_selector: TokenSelector, trained: SelectorModule, features: torch.Tensor
) -> None:
    with torch.no_grad():
        keep_logits = trained.selector.scores(features)  # (B, L)
    budget = tokens_for_ratio(TOKENS, 0.25)
    expected_idx = keep_logits.topk(budget, dim=-1).indices.sort(dim=-1).values  # (B, k)
    selected = token_selector.select(features, keep=0.25)
    assert selected.indices.dtype == torch.long
    assert torch.equal(selected.indices, expected_idx)
    gathered = features.gather(1, expected_idx[..., None].expand(-1, -1, WIDTH))  # (B, k, C)
    assert torch.equal(selected.features, gathered)
    one = token_selector.select(features[0], keep=0.25)  # unbatched in, unbatched out
    assert one.indices.shape == (budget,) and one.features.shape == (budget, WIDTH)


def assert_gathered_in_spatial_order(selected: KeptTokens, features: torch.Tensor) -> None:
    """Each crop's indices ascend and its kept features are the input's at those indices."""
    for row, (idx, kept) in enumerate(zip(selected.indices, selected.features, strict=True)):
        assert torch.equal(idx, idx.sort().values)
        assert torch.equal(kept, features[row, idx])


def test_k_and_threshold_budgets(token_selector: TokenSelector, features: torch.Tensor) -> None:
    keep_logits = token_selector.scores(features)  # (B, L)
    assert token_selector.select(features, k=5).indices.shape == (CROPS, 5)
    threshold = keep_logits.median().item()
    by_threshold = token_selector.select(features, threshold=threshold)
    for row, idx in enumerate(by_threshold.indices):
        assert torch.equal(idx, (keep_logits[row] > threshold).nonzero().squeeze(-1))
    assert_gathered_in_spatial_order(by_threshold, features)
    with pytest.raises(ValueError, match="exactly one of keep, k, threshold"):
        token_selector.select(features, keep=0.25, k=4)


def test_non_finite_features_and_malformed_budgets_are_refused(
    token_selector: TokenSelector, features: torch.Tensor
) -> None:
    broken = features.clone()
    broken[1, 3, 0] = float("nan")
    broken[2, 0, 5] = float("inf")
    with pytest.raises(ValueError, match=r"crop\(s\) \[1, 2\] hold NaN or Inf"):
        token_selector.select(broken, k=4)
    with pytest.raises(ValueError, match="threshold=nan must be a finite number"):
        token_selector.select(features, threshold=float("nan"))
    for k in (True, 2.5):
        with pytest.raises(ValueError, match=f"k={k!r} must be an int"):
            token_selector.select(features, k=k)
    with pytest.raises(ValueError, match=r"no crop \(B=0\)"):
        token_selector.select(features[:0], k=4)
    with pytest.raises(TypeError, match=r"torch\.from_numpy"):
        token_selector.select(features.numpy(), k=4)


def test_a_config_edited_to_another_grid_is_refused(exported: Exported, tmp_path: Path) -> None:
    copy = tmp_path / "selector"
    shutil.copytree(exported.directory, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    (copy / CONFIG_FILE).write_text(json.dumps({**config, "grid_size": [2, 8]}))
    with pytest.raises(ValueError, match=r"grid_size \[2, 8\].*exported for \[4, 4\]"):
        TokenSelector.from_pretrained(copy)


def test_per_image_spends_one_budget_over_all_crops(
    token_selector: TokenSelector, features: torch.Tensor
) -> None:
    keep_logits = token_selector.scores(features)  # (B, L)
    budget = tokens_for_ratio(CROPS * TOKENS, 0.25)
    joint = token_selector.select(features, keep=0.25, per_image=True)
    assert sum(len(idx) for idx in joint.indices) == budget
    kept_logits = torch.cat([keep_logits[row, idx] for row, idx in enumerate(joint.indices)])
    best_logits = keep_logits.flatten().topk(budget).values  # (k,) over all crops jointly
    assert torch.equal(kept_logits.sort().values, best_logits.sort().values)
    assert_gathered_in_spatial_order(joint, features)
    by_count = token_selector.select(features, k=7, per_image=True)
    assert sum(len(idx) for idx in by_count.indices) == 7


def test_features_of_another_shape_are_refused_naming_both_shapes(
    token_selector: TokenSelector,
) -> None:
    with pytest.raises(ValueError, match=r"\(3, 16, 48\).*\(B, 16, 32\)"):
        token_selector.scores(torch.zeros(CROPS, TOKENS, 48))
    with pytest.raises(ValueError, match=r"\(3, 9, 32\).*\(B, 16, 32\)"):
        token_selector.select(torch.zeros(CROPS, 9, WIDTH), keep=0.5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("vtsel_version", "99.0.0", r"vtsel 99\.0\.0"), ("format", "other", "not 'vtsel-selector'")],
)
def test_another_major_version_or_format_is_refused_naming_the_file(
    exported: Exported, tmp_path: Path, field: str, value: str, message: str
) -> None:
    copy = shutil.copytree(exported.directory, tmp_path / "copy")
    config = json.loads((copy / CONFIG_FILE).read_text())
    (copy / CONFIG_FILE).write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=rf"{copy / CONFIG_FILE}.*{message}"):
        TokenSelector.from_pretrained(copy)


def test_loading_an_export_imports_no_lightning(exported: Exported) -> None:
    script = (
        "import sys\n"
        "def lightning(): return sorted(m for m in sys.modules if 'lightning' in m)\n"
        "import vtsel\n"
        "assert not lightning(), lightning()\n"
        "from vtsel.inference import TokenSelector\n"
        f"TokenSelector.from_pretrained({str(exported.directory)!r})\n"
        "assert vtsel.TokenSelector is TokenSelector\n"
        "assert not lightning(), lightning()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_export_holds_the_selector_weights_only_and_the_input_contract(
    exported: Exported, trained: SelectorModule, tmp_path: Path
) -> None:
    weights = load_file(exported.directory / WEIGHTS_FILE)
    selector_state = trained.selector.state_dict()
    assert weights.keys() == selector_state.keys()
    for key, tensor in selector_state.items():
        assert torch.equal(weights[key], tensor), key
    config = json.loads((exported.directory / CONFIG_FILE).read_text())
    assert config["format"] == "vtsel-selector"
    assert config["encoder"] == "test-encoder"  # from the checkpoint's datamodule hparams
    assert (config["feature_dim"], config["grid_size"], config["depth"]) == (WIDTH, [4, 4], 4)
    with pytest.raises(ValueError, match="'test-encoder', not 'other-encoder'"):
        main(
            [
                "export",
                "--checkpoint", str(exported.checkpoint),
                "--out", str(tmp_path / "other"),
                "--encoder", "other-encoder",
            ]
        )


def test_one_selector_config_builds_exports_loads_and_is_counted(
    exported: Exported, trained: SelectorModule, token_selector: TokenSelector
) -> None:
    built = trained.selector.config
    assert (built.dim, built.depth, built.coverage) == (32, 4, 3.0)  # tests/conf/demo.yaml
    assert token_selector.selector.config == built
    assert selector_config_of(exported.directory) == built
    config = json.loads((exported.directory / CONFIG_FILE).read_text())
    assert SelectorConfig.from_dict(config, CONFIG_FILE).to_dict() == {
        key: config[key] for key in built.to_dict()
    }


def test_the_trained_selector_as_a_selection_method_keeps_what_select_keeps(
    exported: Exported, token_selector: TokenSelector, features: torch.Tensor
) -> None:
    method = build_method("selector", selector=str(exported.directory))
    assert isinstance(method, LearnedSelection)
    kept = method(features, 4)  # (B, 4)
    assert torch.equal(kept, token_selector.select(features, k=4).indices)


def test_an_out_folder_of_other_files_is_refused_unless_asked(
    exported: Exported, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / CONFIG_FILE).write_text('{"model_type": "bert"}')  # someone else's config.json
    args = ["export", "--checkpoint", str(exported.checkpoint), "--out", str(out)]
    with pytest.raises(ValueError, match=r"mine is not empty and holds no vtsel export"):
        main(args)
    assert json.loads((out / CONFIG_FILE).read_text()) == {"model_type": "bert"}  # untouched
    main([*args, "--overwrite", "true"])
    assert json.loads((out / CONFIG_FILE).read_text())["format"] == "vtsel-selector"
    main(args)  # an earlier export is replaced without asking


def test_a_judge_checkpoint_is_not_exported_as_a_selector(tmp_path: Path) -> None:
    write_feature_shards(tmp_path / "shards" / "train", num_samples=8, seed=0)
    write_feature_shards(tmp_path / "shards" / "val", num_samples=4, seed=1)
    run = fit(JUDGE_TWIN, tmp_path / "shards", tmp_path / "runs", "--trainer.max_steps", "1")
    with pytest.raises(ValueError, match="is a judge checkpoint, not a selector's"):
        main(["export", "--checkpoint", str(run / "checkpoints" / "last.ckpt"),
              "--out", str(tmp_path / "selector")])
    assert not (tmp_path / "selector").exists()


@pytest.mark.parametrize("content", [b"just some text\n", b"PK\x03\x04 half a zip"])
def test_a_file_that_is_no_checkpoint_is_named_without_unsafe_advice(
    content: bytes, tmp_path: Path
) -> None:
    bogus = tmp_path / "notes.ckpt"
    bogus.write_bytes(content)
    with pytest.raises(ValueError, match=r"notes\.ckpt is not a checkpoint vtsel can read") as err:
        main(["export", "--checkpoint", str(bogus), "--out", str(tmp_path / "selector")])
    assert "weights_only" not in str(err.value)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("config: not json", r"config\.json is not valid JSON"),
        ("config: string width", r"feature_dim='32' must be positive integers"),
        ("weights: truncated", r"model\.safetensors is not a readable safetensors file"),
        ("weights: not safetensors", r"model\.safetensors is not a readable safetensors file"),
    ],
)
def test_a_damaged_export_is_named_with_what_to_do(
    exported: Exported, tmp_path: Path, broken: str, message: str
) -> None:
    copy = tmp_path / "selector"
    shutil.copytree(exported.directory, copy)
    config_file, weights_file = copy / CONFIG_FILE, copy / WEIGHTS_FILE
    if broken == "config: not json":
        config_file.write_text(config_file.read_text()[:-20])
    elif broken == "config: string width":
        config = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**config, "feature_dim": "32"}))
    elif broken == "weights: truncated":
        weights_file.write_bytes(weights_file.read_bytes()[:100])
    else:
        weights_file.write_text("a text file")
    with pytest.raises(ValueError, match=message):
        TokenSelector.from_pretrained(copy)
