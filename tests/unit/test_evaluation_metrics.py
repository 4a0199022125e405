"""What evaluate reports per method (evaluate/common.py, ablate.py, stats.py) on hand-made trees."""

import numpy as np
import pytest
from router_cases import tiny

from der_pipeline.router.methods import (
    FixedPath,
)


def test_auroc_on_known_cases():
    from der_pipeline.evaluate.stats import auroc

    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # sklearn's example
    assert auroc([0.3, 0.4], [1, 1]) is None


def test_secondary_metrics_follow_the_final_answer_and_are_reported_only_where_present(repo_params):
    """ROUGE-1 (or EM) of a path is its final answer's: the refiner's after KTP, the fresh expert's after an
    escalation; ``summarize`` reports it only when every test answer has it (NaN: the answer type has none)."""
    from der_pipeline.evaluate.common import summarize
    from der_pipeline.schemas import SECONDARY_METRICS

    t = tiny()
    k = SECONDARY_METRICS.index("rouge1")
    t.sec1[..., k] = [[0.1, 0.5], [0.2, 0.3]]
    t.sec2[..., k] = [[[0.11, 0.12], [0.13, 0.14]], [[0.21, 0.22], [0.23, 0.24]]]
    names = t.experts
    assert (FixedPath("r", names, ["e0", "e1"]).route(t) * t.path_matrix("rouge1")).sum(1).tolist() == [0.12, 0.22]
    assert (FixedPath("f", names, ["e0", "e1"], fresh=True).route(t) * t.path_matrix("rouge1")).sum(1).tolist() \
        == [0.5, 0.3]
    out = summarize([FixedPath("s", names, ["e1"]).route(t)], t, 1.0, repo_params)
    assert out["rouge1"] == pytest.approx(0.4)
    assert "exact_match" not in out and "rouge2" not in out


def test_bertscore_evidence_on_a_hand_made_tree():
    """Shares of right / wrong nodes over each p0, and Spearman's rho of BERTScore with the task score."""
    from der_pipeline.evaluate.ablate import bertscore_evidence
    from der_pipeline.evaluate.common import DatasetSplit

    t = tiny()  # task1 [[0.2, 0.9], [0.6, 0.1]], task2 as in tiny()
    t.bert1 = t.task1.copy()  # BERTScore ranks the nodes exactly as the task score does
    t.bert2 = t.task2.copy()
    ev = bertscore_evidence(DatasetSplit("toy", t, t, 1.0), [0.5])
    assert ev["nodes"] == 12 and ev["right"] == 6 and ev["wrong"] == 6
    assert ev["spearman_with_task"] == pytest.approx(1.0)
    assert ev["right_at_or_above_0.5"] == 1.0 and ev["wrong_at_or_above_0.5"] == 0.0
    t.bert1, t.bert2 = 1 - t.task1, 1 - t.task2  # the reverse ranking
    assert bertscore_evidence(DatasetSplit("toy", t, t, 1.0), [0.5])["spearman_with_task"] == pytest.approx(-1.0)
    t.bert1, t.bert2 = np.full_like(t.task1, 0.8), np.full_like(t.task2, 0.8)  # constant: no ranking at all
    assert bertscore_evidence(DatasetSplit("toy", t, t, 1.0), [0.5])["spearman_with_task"] is None
