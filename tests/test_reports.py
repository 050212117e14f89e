"""Per-study plots drawn from eval_metrics rows built here."""

from __future__ import annotations

from mimic_pipeline.core.reports import _lines, _order, study_plot, variant_plot

PNG = b"\x89PNG\r\n\x1a\n"


def row(checkpoint, axis_value, value, task="counting", axis="spread", variant="pool1", metric="accuracy"):
    return {"checkpoint": checkpoint, "variant": variant, "task": task, "axis": axis, "axis_value": axis_value,
            "metric": metric, "value": value, "n": 100, "ci_low": value - 0.05, "ci_high": value + 0.05}  # fmt: skip


def test_axis_values_are_ordered_as_the_study_reads():
    assert _order(["1-1-1-1", "4-0-0-0", "2-2-0-0", "3-1-0-0", "2-1-1-0"], "spread") == [
        "4-0-0-0", "3-1-0-0", "2-2-0-0", "2-1-1-0", "1-1-1-1"]  # fmt: skip
    assert _order(["10", "2", "1", "4"], "n_images") == ["1", "2", "4", "10"]


def test_lines_keep_one_study_its_default_variant_and_split_placements():
    rows = [row("base", "4-0-0-0", 0.5), row("base", "all", 0.4), row("base", "4-0-0-0", 0.9, variant="pool4"),
            row("base", "concentrated/2", 0.3, axis="distractors"), row("base", "balanced/2", 0.2, axis="distractors"),
            row("oracle", "4-0-0-0", 1.0, variant="default"), row("base", "4-0-0-0", 0.7, metric="micro_f1")]  # fmt: skip
    spread = _lines(rows, "counting", "spread")
    assert {k: {v: r["value"] for v, r in p.items()} for k, p in spread.items()} == {"base": {"4-0-0-0": 0.5},
                                                                                   "oracle": {"4-0-0-0": 1.0}}
    assert set(_lines(rows, "counting", "distractors")) == {"base (concentrated)", "base (balanced)"}


def test_plots_are_written_and_absent_studies_give_none(tmp_path):
    rows = [row(c, v, x) for c in ("base", "lora") for v, x in (("4-0-0-0", 0.6), ("1-1-1-1", 0.2))]
    assert study_plot(rows, "counting", "spread", tmp_path / "s.png").read_bytes()[:8] == PNG
    assert study_plot(rows, "listing", "n_images", tmp_path / "none.png") is None
    board = [{"checkpoint": "base", "variant": v, "mimic_average": a} for v, a in (("pool1", 30.0), ("pool4", 35.0))]
    assert variant_plot(board, tmp_path / "v.png").read_bytes()[:8] == PNG
    assert variant_plot(board[:1], tmp_path / "one.png") is None  # one variant: nothing to compare
