"""`vtsel eval` end to end on real shards: a real judge fit, the real exported selector, the files
read back (CSV, Markdown, PNG, TensorBoard), resume after a kill, and the refusals."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import Exported, write_feature_shards
from tests.fit_support import JUDGE_TWIN, SCORED, fit
from vtsel.cli import main
from vtsel.contract import FeatureContractError
from vtsel.data.format import (
    SHARD_PATTERN,
    SampleMeta,
    encode_sample,
    write_sizes,
)
from vtsel.fidelity import PAPER_KEEP_RATIOS, evaluate
from vtsel.fidelity.judge import Judge
from vtsel.fidelity.metrics import METRIC_BY_NAME
from vtsel.fidelity.runner import JudgeGateError
from vtsel.fidelity.shards import HeldOutShards
from vtsel.methods import HiPruneStyle, VisionZipStyle
from vtsel.models.blocks import normalize_tokens

NUM_HELD_OUT = 10
BUDGETS = sorted({*PAPER_KEEP_RATIOS, 0.25})


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real judge fit of the demo twin (its full two epochs, not the one-step wiring: the
    gate's verdict is what these tests check) on shards of the test encoder (4x4 grid, C=32)."""
    root = tmp_path_factory.mktemp("judge")
    write_feature_shards(root / "shards" / "train", num_samples=16, seed=0)
    write_feature_shards(root / "shards" / "val", num_samples=4, seed=1)
    return fit(JUDGE_TWIN, root / "shards", root / "runs") / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_feature_shards(
        tmp_path_factory.mktemp("held_out"), NUM_HELD_OUT, samples_per_shard=4, seed=5
    )


def run_eval(held_out: Path, judge: Path, out: Path, exported: Exported, **kwargs) -> object:
    """The evaluation's plumbing: a judge fitted for seconds on random features fails its
    gate (``test_a_judge_that_fails_its_gate_gives_no_table``), so it is let through here."""
    kwargs = {"keep": [0.25], "device": "cpu", "allow_failed_judge": True, **kwargs}
    return evaluate(str(held_out), judge, out, selector=exported.directory, **kwargs)


@pytest.fixture(scope="module")
def report_dir(
    held_out: Path, judge: Path, exported: Exported, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("eval") / "out"
    run_eval(held_out, judge, out, exported)
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_results_have_a_row_per_method_and_budget_and_samples_one_per_crop(
    report_dir: Path,
) -> None:
    results = read_csv(report_dir / "results.csv")
    assert [(r["method"], float(r["keep_ratio"])) for r in results] == [
        (method, ratio) for method in SCORED for ratio in BUDGETS
    ]
    assert all(int(r["samples"]) == NUM_HELD_OUT for r in results)
    samples = read_csv(report_dir / "samples.csv")
    assert len(samples) == len(SCORED) * len(BUDGETS) * NUM_HELD_OUT
    assert len({r["key"] for r in samples}) == NUM_HELD_OUT
    # each aggregate is the mean of its crops
    for result in results:
        crops = [
            float(s["feat_mse"]) for s in samples
            if s["method"] == result["method"] and s["keep_ratio"] == result["keep_ratio"]
        ]
        assert float(result["feat_mse"]) == pytest.approx(sum(crops) / len(crops))
    # a budget keeps the same number of tokens for every method: 25% of 16 tokens is 4
    assert {int(r["keep_tokens"]) for r in results if float(r["keep_ratio"]) == 0.25} == {4}
    # more tokens kept, better features (any method, judged independently)
    mse_of = {(r["method"], float(r["keep_ratio"])): float(r["feat_mse"]) for r in results}
    for method in SCORED:
        assert mse_of[(method, 0.5)] < mse_of[(method, 0.056)], method


def test_markdown_tables_bold_the_best_of_each_column(report_dir: Path) -> None:
    report = (report_dir / "report.md").read_text()
    results = read_csv(report_dir / "results.csv")
    assert "visionzip: skipped" in report and "hiprune: skipped" in report
    tables = re.findall(r"### (.+?), (higher|lower) is better\n\n(.+?)(?:\n\n|\Z)", report, re.S)
    titles = [title for title, _, _ in tables]
    metrics = ("dropped_mse", "feat_mse", "feat_cos", "image_psnr", "image_ssim")  # no text
    assert titles == [METRIC_BY_NAME[m].title for m in metrics]
    for title, direction, body in tables:
        metric = next(m for m in METRIC_BY_NAME.values() if m.title == title)
        header, _, *rows = body.strip().splitlines()
        assert len(header.split("|")) - 3 == len(BUDGETS)
        assert [row.split("|")[1].strip() for row in rows] == SCORED
        for column, ratio in enumerate(BUDGETS):
            values = {
                r["method"]: float(r[metric.name]) for r in results
                if float(r["keep_ratio"]) == ratio
            }
            best = (max if direction == "higher" else min)(values.values())
            bold = [row.split("|")[1].strip() for row in rows
                    if row.split("|")[column + 2].strip().startswith("**")]
            assert bold and all(metric.format(values[m]) == metric.format(best) for m in bold)
            assert metric.format(best) in [metric.format(values[m]) for m in bold]


def test_plot_and_tensorboard_hold_every_method_and_budget(report_dir: Path) -> None:
    with Image.open(report_dir / "metrics.png") as plot:
        assert plot.width > 400 and plot.height > 200
        assert len(np.unique(np.asarray(plot.convert("L")))) > 10  # drawn, not blank
    (event_file,) = (report_dir / "tensorboard").glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    results = read_csv(report_dir / "results.csv")
    for method in SCORED:
        scalars = events.Scalars(f"eval/feat_mse/{method}")
        assert [e.step for e in scalars] == [round(1000 * r) for r in BUDGETS]
        expected = [float(r["feat_mse"]) for r in results if r["method"] == method]
        assert [e.value for e in scalars] == pytest.approx(expected, rel=1e-5)
    assert "eval/metrics" in events.Tags()["images"]


def test_a_rerun_gives_the_same_numbers_and_a_killed_run_resumes(
    held_out: Path, judge: Path, exported: Exported, report_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    shutil.copytree(report_dir, out)
    samples = (out / "samples.csv").read_text().splitlines(keepends=True)
    # killed mid-write: three crops' rows of the first method, then half a line
    (out / "samples.csv").write_text("".join(samples[: 1 + 3 * len(BUDGETS)]) + samples[-1][:20])
    (out / "results.csv").unlink()
    run_eval(held_out, judge, out, exported, batch_size=8)  # another batching: same subsets
    resumed, first = read_csv(out / "results.csv"), read_csv(report_dir / "results.csv")
    assert [r["samples"] for r in resumed] == [r["samples"] for r in first]
    for metric in ("feat_mse", "feat_cos", "image_psnr", "image_ssim"):
        # equal up to float rounding (other batches sum in another order)
        assert [float(r[metric]) for r in resumed] == pytest.approx(
            [float(r[metric]) for r in first], rel=1e-5
        )
    rows = read_csv(out / "samples.csv")
    assert len(rows) == len(SCORED) * len(BUDGETS) * NUM_HELD_OUT


def test_without_image_metrics_the_token_scores_are_the_same_and_image_tables_go(
    held_out: Path, judge: Path, exported: Exported, report_dir: Path, tmp_path: Path
) -> None:
    run_eval(held_out, judge, tmp_path / "features", exported, image_metrics=False)
    features_only, full = read_csv(tmp_path / "features" / "results.csv"), read_csv(
        report_dir / "results.csv"
    )
    for metric in ("dropped_mse", "feat_mse", "feat_cos", "text_recall"):
        assert [r[metric] for r in features_only] == [r[metric] for r in full]
    assert all(r["image_psnr"] == r["image_ssim"] == "" for r in features_only)  # none
    report = (tmp_path / "features" / "report.md").read_text()
    assert "Dropped-token MSE" in report and "PSNR" not in report and "SSIM" not in report


def test_an_out_folder_of_another_evaluation_is_refused(
    held_out: Path, judge: Path, exported: Exported, report_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "other"
    shutil.copytree(report_dir, out)
    with pytest.raises(ValueError, match=r"other settings.*seed"):
        run_eval(held_out, judge, out, exported, seed=1)


def write_attention_shards(directory: Path, num_samples: int, received: bool = True) -> Path:
    """Shards like the test fixture's, each sample with an ``attn.npy`` (L,) and, unless
    ``received`` is False (shards extracted before HiPrune's maps), a ``recv_attn.npy``
    (2, L)."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(3)
    with wds.ShardWriter(str(directory / SHARD_PATTERN), maxcount=100, verbose=0) as writer:
        for index in range(num_samples):
            meta = SampleMeta("test-encoder", -2, (4, 4), 32, 0, (0, 0, 32, 32), f"att{index}")
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            writer.write(encode_sample(
                rng.standard_normal((16, 32)).astype(np.float32), Image.fromarray(pixels), meta,
                attention=rng.random(16).astype(np.float32),
                received_attention=rng.random((2, 16)).astype(np.float32) if received else None,
            ))
    write_sizes(directory, {"shard-000000.tar": num_samples})
    return directory


def test_attention_methods_are_scored_when_the_shards_carry_attention(
    judge: Path, tmp_path: Path
) -> None:
    shards = write_attention_shards(tmp_path / "attention", 5)
    report = evaluate(str(shards), judge, tmp_path / "out", methods=["visionzip", "hiprune"],
                      keep=[0.5], paper_budgets=False, device="cpu", allow_failed_judge=True)
    assert report.methods == ["visionzip", "hiprune"] and report.notes == []
    assert report.value("visionzip", 0.5, "feat_mse") > 0
    assert [row["samples"] for row in report.summary] == [5, 5]


def test_eval_ranks_hiprune_by_both_received_maps_and_judges_visionzip_merged(
    judge: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HiPrune is given the stored (B, 2, L) maps, VisionZip the CLS map; the judge reads
    VisionZip's kept tokens with its contextual ones merged, every other token as stored."""
    shards = write_attention_shards(tmp_path / "attention", 5)
    stored = HeldOutShards(str(shards), Judge.from_checkpoint(judge).contract, 32)
    batch = next(stored.batches(8))
    given: dict[str, torch.Tensor] = {}
    judged: list[tuple[torch.Tensor, torch.Tensor]] = []
    for method_class in (HiPruneStyle, VisionZipStyle):
        def spy(self, features, keep, attention=None, real=method_class.select):
            given[self.name] = attention
            return real(self, features, keep, attention)
        monkeypatch.setattr(method_class, "select", spy)
    real_reconstruct = Judge.reconstruct
    monkeypatch.setattr(Judge, "reconstruct", lambda self, normed, keep: (
        judged.append((normed, keep)) or real_reconstruct(self, normed, keep)
    ))
    evaluate(str(shards), judge, tmp_path / "out", methods=["visionzip", "hiprune"],
             keep=[0.5], paper_budgets=False, device="cpu", allow_failed_judge=True)
    torch.testing.assert_close(given["hiprune"], batch.received_attention)
    torch.testing.assert_close(given["visionzip"], batch.attention)
    (zip_input, zip_keep), (hiprune_input, _) = judged
    normed = normalize_tokens(batch.feats)  # (5, 16, 32)
    torch.testing.assert_close(hiprune_input, normed)
    # 8 kept of 16: round(54/64 * 8) = 7 dominant, 1 contextual token per crop, merged
    changed = (zip_input != normed).any(dim=-1)  # (5, 16)
    assert changed.sum(dim=-1).tolist() == [1] * 5 and bool(zip_keep[changed].all())
    method = VisionZipStyle()
    kept_idx = method(batch.feats, 8, batch.attention)
    expected = normalize_tokens(method.kept_on_grid(batch.feats, kept_idx, batch.attention))
    torch.testing.assert_close(zip_input, expected)


def test_hiprune_on_shards_without_received_attention_ranks_by_the_cls_map_and_says_so(
    judge: Path, tmp_path: Path
) -> None:
    shards = write_attention_shards(tmp_path / "cls_only", 5, received=False)
    report = evaluate(str(shards), judge, tmp_path / "out", methods=["hiprune"], keep=[0.5],
                      paper_budgets=False, device="cpu", allow_failed_judge=True)
    assert report.methods == ["hiprune"]
    assert len(report.notes) == 1 and "recv_attn.npy" in report.notes[0]


def test_the_cli_writes_the_report_and_prints_where(
    held_out: Path, judge: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main([
        "eval", "--shards", str(held_out), "--judge", str(judge), "--out", str(tmp_path / "cli"),
        "--methods", "random,norm", "--keep", "0.3, 0.6", "--paper_budgets", "false",
        "--device", "cpu", "--tensorboard", "false", "--allow_failed_judge", "true",
    ])
    results = read_csv(tmp_path / "cli" / "results.csv")
    assert [(r["method"], r["keep_ratio"]) for r in results] == [
        ("random", "0.3"), ("random", "0.6"), ("norm", "0.3"), ("norm", "0.6")
    ]
    printed = capsys.readouterr().out
    assert "### Dropped-token MSE" in printed and str(tmp_path / "cli" / "results.csv") in printed
    assert "judge sanity gate FAILED" in printed
    assert not (tmp_path / "cli" / "tensorboard").exists()


def test_a_judge_that_fails_its_gate_gives_no_table(
    held_out: Path, judge: Path, report_dir: Path, tmp_path: Path
) -> None:
    """Fitted for two epochs on uncorrelated random tokens, the judge cannot beat interpolation:
    the evaluation stops with the gate's figures, and writes nothing to quote."""
    out = tmp_path / "gated"
    with pytest.raises(JudgeGateError, match=r"fails its sanity gate(.|\n)*ratio (.|\n)*advantage"):
        evaluate(str(held_out), judge, out, methods=["random"], device="cpu")
    assert not (out / "results.csv").exists()
    report = (report_dir / "report.md").read_text()  # let through: said in bold, up front
    assert "**The judge FAILED its sanity gate" in report.split("###")[0]


def test_unknown_methods_and_a_selector_without_export_are_refused(
    held_out: Path, judge: Path, tmp_path: Path
) -> None:
    inside = r"\(fastv prune inside the language model: vtsel vlm-eval"
    with pytest.raises(ValueError, match=r"unknown selection method 'fastv'; valid: divprune.*"
                                         + inside):
        evaluate(str(held_out), judge, tmp_path / "a", methods=["random", "fastv"])
    with pytest.raises(ValueError, match="'selector' needs the exported selector"):
        evaluate(str(held_out), judge, tmp_path / "b", methods=["selector"])


def test_shards_of_another_grid_than_the_judge_are_refused(judge: Path, tmp_path: Path) -> None:
    shards = write_feature_shards(tmp_path / "wide", 3, grid=(2, 8))
    with pytest.raises(FeatureContractError, match=r"2x8 grid.*judge was trained on.*4x4 grid"):
        evaluate(str(shards), judge, tmp_path / "out", methods=["random"], device="cpu")


def test_shards_of_another_encoder_are_refused(judge: Path, tmp_path: Path) -> None:
    shards = write_feature_shards(tmp_path / "other", 3, encoder="other-encoder")
    with pytest.raises(FeatureContractError, match=r"'other-encoder'.*judge.*'test-encoder'"):
        evaluate(str(shards), judge, tmp_path / "out", methods=["random"], device="cpu")


def test_a_selector_exported_for_another_encoder_is_refused(
    held_out: Path, judge: Path, exported: Exported, tmp_path: Path
) -> None:
    selector = tmp_path / "selector"
    shutil.copytree(exported.directory, selector)
    config = json.loads((selector / "config.json").read_text())
    (selector / "config.json").write_text(json.dumps({**config, "encoder": "other-encoder"}))
    expected = rf"selector in {re.escape(str(selector))} was trained on.*'other-encoder'"
    with pytest.raises(ValueError, match=expected):
        evaluate(str(held_out), judge, tmp_path / "out", selector=selector, device="cpu")


def test_empty_held_out_shards_are_refused(judge: Path, tmp_path: Path) -> None:
    no_tars = tmp_path / "no_tars"
    no_tars.mkdir()
    write_sizes(no_tars, {})
    with pytest.raises(FileNotFoundError, match="no held-out shards to evaluate"):
        evaluate(str(no_tars), judge, tmp_path / "a", methods=["random"])
    empty = tmp_path / "empty"
    empty.mkdir()
    wds.TarWriter(str(empty / "shard-000000.tar")).close()
    write_sizes(empty, {"shard-000000.tar": 0})
    with pytest.raises(ValueError, match="hold no samples"):
        evaluate(str(empty), judge, tmp_path / "b", methods=["random"])
