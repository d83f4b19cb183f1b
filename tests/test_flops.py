"""`vtsel flops` against the paper's Table 1 and hand counts of the selector's cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Exported
from vtsel.arglists import comma_list
from vtsel.cli import main
from vtsel.flops import (
    PRESETS,
    budget_costs,
    llm_layer_macs,
    llm_macs,
    selector_config_of,
    selector_macs_per_crop,
)
from vtsel.llm_methods import FastV, PyramidDrop

TERA = 1e12
CONF = Path(__file__).resolve().parents[1] / "conf"

# The paper's Table 1 (Open-LLaVA-NeXT, Vicuna-7B): visual tokens kept -> "≈ TFLOPs" bracket.
PAPER_TABLE1 = {2880: 21, 1440: 10, 1152: 8, 640: 4, 320: 2, 160: 1}


def tiny_export_config(directory: Path) -> Path:
    """A config.json as `vtsel export` writes it, for a selector small enough to count by hand."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format": "vtsel-selector", "feature_dim": 8, "grid_size": [2, 3], "dim": 16,
              "depth": 2, "num_heads": 2, "tau": 2.0, "estimator": "gumbel", "encoder": None}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def read_markdown_rows(text: str) -> list[list[str]]:
    """The body rows of the Markdown table printed by ``vtsel flops --markdown true``."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.parametrize(("tokens", "bracket"), sorted(PAPER_TABLE1.items()))
def test_llm_cost_matches_the_papers_table1_brackets(tokens: int, bracket: int) -> None:
    vicuna = PRESETS["llava-next-vicuna-7b"]
    assert vicuna.full_tokens == 2880  # 4 crops + the overview, 576 tokens each
    assert round(llm_macs(vicuna, tokens) / TERA) == bracket


def test_selector_overhead_keeps_table1_brackets_and_the_21_to_10_claim() -> None:
    """§5.4: 'Considering sampler overhead, the inference cost drops from ≈21 to ≈10 TFLOPs'."""
    config = selector_config_of(CONF / "llava_next.yaml")
    costs = budget_costs(
        PRESETS["llava-next-vicuna-7b"], sorted(PAPER_TABLE1), selector_macs_per_crop(config)
    )
    for cost in costs:
        assert round(cost.total / TERA) == PAPER_TABLE1[cost.tokens]
        assert (cost.selector > 0) == (cost.tokens < 2880)  # the unpruned model selects nothing
    half = next(cost for cost in costs if cost.tokens == 1440)
    assert half.keep_ratio == 0.5
    assert 0.45 < half.ratio_to_full < 0.5  # ≈10 of ≈21, overhead included


def test_selector_cost_is_the_hand_count_of_a_tiny_selector(tmp_path: Path) -> None:
    config = selector_config_of(tiny_export_config(tmp_path / "selector"))
    n, c, d, hidden = 6, 8, 16, 64  # 2x3 grid, 8-wide features, width 16, MLP 4*16
    input_projection = n * c * d  # 768
    per_layer = (
        n * d * 3 * d  # Q, K, V projections: 4608
        + 2 * n * n * d  # QKᵀ and attention·V: 1152
        + n * d * d  # output projection: 1536
        + 2 * n * d * hidden  # MLP up and down: 12288
    )
    head = n * d * 2  # (drop, keep) logits: 192
    assert selector_macs_per_crop(config) == input_projection + 2 * per_layer + head == 40128


def test_selector_cost_of_the_llava_preset_is_the_papers_sampler_formula() -> None:
    """§5.3's per-crop sampler term (4n_c d² + 2n_c² d + 2n_c d m)·l_s at the preset's widths,
    plus the input projection and head the formula leaves out."""
    config = selector_config_of(CONF / "llava_next.yaml")
    n_c, d, m, l_s, c = 576, 512, 2048, 4, 1024
    assert (config.num_tokens, config.dim, config.depth, config.feature_dim) == (n_c, d, l_s, c)
    sampler_formula = (4 * n_c * d * d + 2 * n_c * n_c * d + 2 * n_c * d * m) * l_s
    assert selector_macs_per_crop(config) == sampler_formula + n_c * c * d + n_c * d * 2


def test_cli_prints_the_paper_budgets_with_an_exported_selector(
    exported: Exported, capsys: pytest.CaptureFixture[str]
) -> None:
    budgets = ",".join(str(tokens) for tokens in sorted(PAPER_TABLE1, reverse=True))
    main(["flops", "--tokens", budgets, "--selector", str(exported.directory),
          "--markdown", "true"])
    rows = read_markdown_rows(capsys.readouterr().out)
    assert [int(row[0]) for row in rows] == sorted(PAPER_TABLE1, reverse=True)
    config = json.loads((exported.directory / "config.json").read_text())
    per_crop = selector_macs_per_crop(selector_config_of(exported.directory))
    assert config["dim"] > 0 and per_crop > 0
    for row in rows:
        tokens, keep, llm, selector, total, of_full = row
        assert round(float(llm)) == PAPER_TABLE1[int(tokens)]
        expected_selector = 0 if int(tokens) == 2880 else 5 * per_crop
        assert float(selector) == pytest.approx(expected_selector / TERA, abs=5e-4)
        assert float(total) == pytest.approx(float(llm) + float(selector), abs=0.011)
        assert float(keep.rstrip("%")) == pytest.approx(100 * int(tokens) / 2880, abs=0.05)
        assert float(of_full.rstrip("%")) == pytest.approx(100 * float(total) / 20.83, abs=0.2)


def test_cli_keep_ratios_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    main(["flops", "--keep", "1.0,0.25", "--layers", "16", "--crops", "2",
          "--tokens_per_crop", "100"])
    out = capsys.readouterr().out
    assert "2 crops x 100 tokens" in out and "16 layers" in out
    main(["flops", "--keep", "1.0,0.25", "--layers", "16", "--crops", "2",
          "--tokens_per_crop", "100", "--markdown", "true"])
    rows = read_markdown_rows(capsys.readouterr().out)
    assert [row[0] for row in rows] == ["200", "50"]
    # 16 layers of (4·200·4096² + 2·200²·4096 + 3·200·4096·11008) MACs
    full = 16 * (4 * 200 * 4096**2 + 2 * 200**2 * 4096 + 3 * 200 * 4096 * 11008)
    assert float(rows[0][2]) == pytest.approx(full / TERA, abs=0.005)


def test_fastv_and_pdrop_count_each_layer_over_the_tokens_it_reads() -> None:
    vicuna = PRESETS["llava-next-vicuna-7b"]

    def layer(tokens: int) -> int:
        return llm_layer_macs(tokens, 4096, 11008)

    # FastV at keep 0.5: layers 0-1 read 2880, layers 2-31 read R = (16 - 2) / 30 of them
    (fastv,) = budget_costs(vicuna, [1440], llm_method=FastV())
    assert fastv.llm == 2 * layer(2880) + 30 * layer(round(2880 * 14 / 30))
    assert fastv.tokens == round((2 * 2880 + 30 * 1344) / 32)
    # PyramidDrop's own schedule, lambda = 0.5 at layers 8, 16, 24, averages 15/32 of the tokens
    (pdrop,) = budget_costs(vicuna, [1350], llm_method=PyramidDrop())
    assert pdrop.llm == 8 * (layer(2880) + layer(1440) + layer(720) + layer(360))
    # the same average as a tower budget, so only the quadratic term tells them apart
    (tower,) = budget_costs(vicuna, [1350])
    assert pdrop.llm > tower.llm > 0.95 * pdrop.llm


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokens", "3000"], r"3000 tokens outside \[1, 2880\]"),
        (["--tokens", "640", "--keep", "0.5"], "not both"),
        (["--keep", "0.5,1.5"], r"must lie in \(0, 1\]"),
        (["--tokens", "640,x"], "--tokens: cannot read 'x'"),
        (["--model", "gpt-9"], "unknown --model 'gpt-9'; presets: llava-next-vicuna-7b"),
        (["--selector", "no/such/dir"], "selector source no/such/dir not found"),
        (["--method", "fastv", "--selector", "x"], "--method fastv drops tokens inside the LLM"),
        (["--method", "sparsevlm"], "unknown --method 'sparsevlm'; valid: tower, fastv, pdrop"),
        (["--method", "fastv", "--keep", "0.05"], "fastv at keep 0.05: its first 2 of 32"),
    ],
)
def test_cli_refuses_bad_input_with_the_option_named(args: list[str], message: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        main(["flops", *args])


def test_a_config_without_the_architecture_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"feature_dim": 8, "grid_size": [2, 2]}))
    with pytest.raises(ValueError, match="lacks dim, depth, num_heads"):
        selector_config_of(config)


def test_comma_list() -> None:
    assert comma_list("1.0, 0.4,0.1", float, "--keep") == [1.0, 0.4, 0.1]
    assert comma_list("selector,random", str, "--methods") == ["selector", "random"]
    for bad in ("", "1,,2", "1,"):
        with pytest.raises(ValueError, match="--keep takes a comma-separated list"):
            comma_list(bad, float, "--keep")
