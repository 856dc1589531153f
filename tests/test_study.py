"""The study: paired tests checked by hand, loading runs, the conclusion's hedges, the report."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from speedsign import cli
from speedsign.errors import UserError
from speedsign.metrics import binomial_two_sided_p, holm_correction, mcnemar_exact, paired_bootstrap_ci
from speedsign.runs import inspect_run
from speedsign.storage import read_json
from speedsign.study import ALPHA, Study, StudyRun, build_study, conclusion, load_study, pair_rows
from speedsign.study_report import render_html

CLASSES = ("speed_20", "speed_30", "speed_50")


# ---------------------------------------------------------------- the statistics, by hand

def pairs_with(b: int, c: int, same_right: int = 0, same_wrong: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of two models: b images only a gets right, c only b, and the rest shared."""
    a = [1] * b + [0] * c + [1] * same_right + [0] * same_wrong
    other = [0] * b + [1] * c + [1] * same_right + [0] * same_wrong
    return np.array(a, dtype=bool), np.array(other, dtype=bool)


@pytest.mark.parametrize(("b", "c", "p"), [
    (1, 9, 2 * (1 + 10) / 2**10),  # 2 * P(X <= 1), X ~ Bin(10, 1/2)
    (0, 5, 2 / 2**5),
    (3, 3, 1.0),
    (0, 0, 1.0),
    (2, 6, 2 * (1 + 8 + 28) / 2**8),
])
def test_mcnemar_exact_matches_hand_computed_p(b, c, p):
    a, other = pairs_with(b, c, same_right=40, same_wrong=7)
    result = mcnemar_exact(a, other)
    assert (result["b"], result["c"]) == (b, c)
    assert result["p"] == pytest.approx(p, rel=1e-12)


def test_binomial_tail_equals_the_exact_sum():
    for n in range(1, 40):
        for k in range(0, n // 2 + 1):
            exact = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
            assert binomial_two_sided_p(k, n) == pytest.approx(exact, rel=1e-9)


def test_paired_bootstrap_agrees_with_resampling_indices():
    a, other = pairs_with(30, 12, same_right=140, same_wrong=18)
    low, high = paired_bootstrap_ci(a, other, n_boot=20_000, seed=1)
    rng = np.random.default_rng(2)
    index = rng.integers(0, len(a), size=(20_000, len(a)))
    diffs = a[index].mean(axis=1) - other[index].mean(axis=1)
    assert low == pytest.approx(np.quantile(diffs, 0.025), abs=0.006)
    assert high == pytest.approx(np.quantile(diffs, 0.975), abs=0.006)
    assert low < (30 - 12) / 200 < high
    assert paired_bootstrap_ci(a, other, n_boot=500, seed=3) == paired_bootstrap_ci(a, other, n_boot=500, seed=3)


def test_paired_bootstrap_of_identical_models_is_zero_width():
    a, other = pairs_with(0, 0, same_right=50, same_wrong=5)
    assert paired_bootstrap_ci(a, other) == (0.0, 0.0)


@pytest.mark.parametrize(("p", "adjusted"), [
    ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),
    ([0.5], [0.5]),
    ([0.6, 0.7], [1.0, 1.0]),
    ([0.001, 0.2, 0.01, 0.04], [0.004, 0.2, 0.03, 0.08]),
    ([], []),
])
def test_holm_correction_on_known_p_values(p, adjusted):
    assert holm_correction(p) == pytest.approx(adjusted)


def test_holm_refuses_what_is_not_a_p_value():
    with pytest.raises(ValueError):
        holm_correction([0.2, 1.5])


# ---------------------------------------------------------------- the conclusion's hedges

def study_of(correct: dict[str, np.ndarray]) -> Study:
    """A study in memory: each run's per-image correctness, as confident softmax rows."""
    n = len(next(iter(correct.values())))
    labels = np.arange(n) % len(CLASSES)
    runs = []
    for run_id, right in correct.items():
        preds = np.where(right, labels, (labels + 1) % len(CLASSES))
        probs = np.full((n, len(CLASSES)), 0.05)
        probs[np.arange(n), preds] = 0.9
        runs.append(StudyRun(run_id, run_id.split("-")[0], None, probs, 1.0))  # type: ignore[arg-type]
    return Study(split="val", data_fingerprint="f" * 16, data_dir=None, classes=CLASSES,
                 files=tuple(f"{i}.png" for i in range(n)), labels=labels, runs=tuple(runs))


def test_a_difference_within_noise_names_no_winner():
    a, other = pairs_with(5, 3, same_right=180, same_wrong=12)
    study = study_of({"scratch-1": a, "finetune-1": other})
    sentences = conclusion(study, pair_rows(study, n_boot=2000), costs=[])
    assert not pair_rows(study, n_boot=200)[0]["differs"]
    text = " ".join(sentences)
    assert sentences[0].startswith("No run is clearly the most accurate")
    assert "more accurate than" not in text and "is the most accurate" not in text
    assert "within noise" in text


def test_a_clear_difference_is_named_with_its_interval_and_cost():
    a, other = pairs_with(40, 2, same_right=150, same_wrong=8)
    study = study_of({"scratch-1": a, "finetune-1": other})
    pairs = pair_rows(study, n_boot=2000)
    costs = [{"run_id": "scratch-1", "train_seconds": 430.0}, {"run_id": "finetune-1", "train_seconds": 100.0}]
    sentences = conclusion(study, pairs, costs)
    assert pairs[0]["differs"] and pairs[0]["p_holm"] < 0.001
    assert sentences[0].startswith("scratch is the most accurate")
    assert re.search(r"scratch is 19\.0 points more accurate than finetune \(95% CI \+\d+\.\d to \+\d+\.\d points, "
                     r"McNemar p < 0\.001 after Holm correction\) but trains 4\.3x longer", sentences[1])


def test_the_conclusion_never_names_a_winner_the_tests_do_not_support():
    rng = np.random.default_rng(0)
    for _ in range(40):
        correct = {f"{name}-{i}": rng.random(60) < rng.uniform(0.6, 0.95)
                   for i, name in enumerate(("finetune", "frozen", "scratch"))}
        study = study_of(correct)
        pairs = pair_rows(study, n_boot=300)
        text = " ".join(conclusion(study, pairs, costs=[]))
        for pair in pairs:
            a, b = pair["a"].split("-")[0], pair["b"].split("-")[0]
            claimed = f"{a} is" in text and f"more accurate than {b}" in text or \
                f"{b} is" in text and f"more accurate than {a}" in text
            if pair["p_holm"] >= ALPHA:
                assert not re.search(rf"({a}|{b}) is [\d.]+ points more accurate than ({a}|{b})", text)
            elif claimed:
                assert pair["differs"]
        if not any(p["differs"] for p in pairs):
            assert "is the most accurate" not in text


# ---------------------------------------------------------------- real runs

def test_study_of_the_three_approaches_from_the_command_line(runs_with_results, tmp_path, capsys):
    html = tmp_path / "study.html"
    dirs = [str(runs_with_results[a]) for a in ("finetune", "frozen", "scratch")]
    assert cli.main(["study", *dirs, "--out", str(html), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ids = [inspect_run(Path(d)).run_id for d in dirs]
    assert [(p["a"], p["b"]) for p in result["pairs"]] == list(itertools.combinations(ids, 2))
    n = read_json(Path(dirs[0]) / "eval_val.json")["n"]
    for pair in result["pairs"]:
        assert set(pair) >= {"a", "b", "n", "mcnemar", "diff", "diff_ci", "p_holm"}
        assert pair["n"] == n and set(pair["mcnemar"]) == {"b", "c", "p"}
        assert pair["diff_ci"][0] <= pair["diff"] <= pair["diff_ci"][1]
        assert pair["p_holm"] >= pair["mcnemar"]["p"]
    assert len(result["calibration"]) == 3 and result["conclusion"]
    text = html.read_text()
    assert_self_contained(text)
    assert "Conclusion" in text and ids[0] in text


def assert_self_contained(text: str) -> None:
    """No script, style, image or frame fetched from the network."""
    assert not re.search(r"<(script|img|iframe)[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    assert not re.search(r"@import\s+(url\()?[\"']?(https?:)?//", text, re.I)
    assert "<script" in text  # Plotly, inline


def test_runs_of_different_data_sets_are_refused(runs_with_results, tmp_path):
    other = tmp_path / "runs" / "scratch-20990101-0123456789"
    shutil.copytree(runs_with_results["scratch"], other, ignore=shutil.ignore_patterns(".lock", "last.pt"))
    meta = read_json(other / "config.json")
    meta["data_fingerprint"] = "another-data-set"
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="different data sets"):
        load_study([inspect_run(runs_with_results["frozen"]), inspect_run(other)])


def test_a_run_without_predictions_and_an_unfinished_run_are_refused(runs_with_results, tmp_path):
    copy = tmp_path / "scratch-20990101-aaaaaaaaaa"
    shutil.copytree(runs_with_results["scratch"], copy, ignore=shutil.ignore_patterns(".lock", "last.pt"))
    (copy / "predictions_val.npz").unlink()
    with pytest.raises(UserError, match="no stored val predictions"):
        load_study([inspect_run(runs_with_results["frozen"]), inspect_run(copy)])
    with pytest.raises(UserError, match="choose at least one run"):
        load_study([])
    with pytest.raises(UserError, match="once"):
        load_study([inspect_run(runs_with_results["frozen"])] * 2)


def test_the_html_report_escapes_names_from_disk(runs_with_results):
    study = load_study([inspect_run(runs_with_results[a]) for a in ("frozen", "scratch")])
    classes = ("<script>alert(1)</script>", *study.classes[1:])
    hostile = Study(study.split, study.data_fingerprint, study.data_dir, classes, study.files, study.labels,
                    study.runs)
    text = render_html(build_study(hostile, n_boot=200))
    assert "<script>alert(1)</script>" not in text
    assert_self_contained(text)


def test_eval_corruptions_from_the_command_line(runs_with_results, synth_dir, capsys):
    from speedsign.corruptions import CORRUPTIONS, SEVERITIES

    assert cli.main(["eval", str(runs_with_results["scratch"]), "--data", str(synth_dir), "--corruptions",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = report["rows"]
    assert rows[0]["corruption"] == "clean" and len(rows) == 1 + len(CORRUPTIONS) * len(SEVERITIES)
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["n"] == report["n"] for row in rows)


def test_study_robustness_scores_every_run_on_one_sample(runs_with_results):
    from speedsign.study import robustness_rows

    study = load_study([inspect_run(runs_with_results[a]) for a in ("frozen", "scratch")])
    robust = robustness_rows(study, images=10, seed=1)
    assert set(robust) == {run.run_id for run in study.runs}
    assert all(rows[0]["n"] == 10 for rows in robust.values())
    result = build_study(study, robustness=robust, n_boot=200)
    assert "Under the corruptions" in " ".join(result.conclusion)
    assert "Robustness to corruptions" in render_html(result)
