"""The report's findings: every soup judged against the compute-matched baseline; no reading of noise."""

from __future__ import annotations

from microgpt.pipeline.report import ModelScore
from microgpt.pipeline.scoring import findings


def row(name: str, test: float, val: float, acc: float | None = None, se: float | None = None) -> ModelScore:
    return ModelScore(name, test, test / 2, val, f"/ckpt/{name}", hellaswag_acc_norm=acc, hellaswag_se=se)


def test_findings_judge_each_soup_against_the_compute_matched_baseline() -> None:
    rows = {
        "best-ingredient": row("best-ingredient", 4.10, 4.20),
        "compute-matched": row("compute-matched", 3.80, 3.90, acc=0.30, se=0.02),
        "uniform-soup": row("uniform-soup", 4.00, 4.05),
        "trajectory-compute-matched": row("trajectory-compute-matched", 3.70, 3.80, acc=0.33, se=0.02),
    }
    soups = {"soups": {"uniform-soup": {"chosen": ["a", "b"]}, "trajectory-compute-matched": {"run": "x"}}}
    notes = findings(rows, 2, soups)
    assert (
        "Equal compute: 1 of 2 soups beat the compute-matched baseline on test (trajectory-compute-matched)." in notes
    )
    assert any(
        n.startswith("The soup a user would ship (lowest val loss) is trajectory-compute-matched") for n in notes
    )
    assert any(
        n.startswith("uniform-soup does not beat the compute-matched baseline on test: 4.0000 vs 3.8000") for n in notes
    )
    # 0.03 apart with a standard error of the difference of 0.028: under two standard errors, so no result.
    hellaswag = next(n for n in notes if n.startswith("HellaSwag"))
    assert "no difference can be read" in hellaswag


def test_a_hellaswag_gap_beyond_two_standard_errors_is_reported_as_one() -> None:
    rows = {
        "compute-matched": row("compute-matched", 3.80, 3.90, acc=0.30, se=0.01),
        "greedy-soup": row("greedy-soup", 3.70, 3.85, acc=0.40, se=0.01),
    }
    notes = findings(rows, 2, {"soups": {"greedy-soup": {"chosen": ["a", "b"]}}})
    hellaswag = next(n for n in notes if n.startswith("HellaSwag"))
    assert "more than 2 standard errors" in hellaswag and "+0.100" in hellaswag
