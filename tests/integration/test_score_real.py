"""BERTScore as the score stage computes it, with the real packaged embedder."""
import numpy as np

from der_pipeline.signals.score import BERTSCORE_DECIMALS, bertscore_f1


def test_bertscore_of_an_exact_match_is_exactly_one_and_rounded(repo_params):
    refs = ["yes", "no", "yes", "Paris", "The cat sat on the mat."]
    cands = ["yes", "no", "no", "London", "The cat sat on the mat."]
    f1 = bertscore_f1(cands, refs, repo_params)
    # exact matches: exactly 1.0 on every CPU (unrounded they differ in the last bits between machines)
    assert [f1[i] for i in (0, 1, 4)] == [1.0, 1.0, 1.0]
    assert f1[2] < 1.0 and f1[3] < 1.0
    assert all(round(x, BERTSCORE_DECIMALS) == x for x in f1)
    assert np.all(np.isfinite(f1)) and min(f1) > 0
