"""Tree arrays (router/arrays.py): the cost scale and the confidence features."""

import pytest
from router_cases import tiny

from der_pipeline.router.arrays import cost_scale


def test_cost_is_normalised_by_the_priciest_experts_mean_call():
    assert cost_scale(tiny()) == pytest.approx(4.0)


def test_conf_features_carry_the_yes_no_margin():
    from der_pipeline.router.arrays import CONF_FEATURES, conf_features

    sure_no = dict(zip(CONF_FEATURES, conf_features({"yes_prob": 0.05, "first_prob": 0.9, "mean_logprob": -0.1,
                                                     "min_logprob": -0.2, "answer_tokens": 2})))
    toss = dict(zip(CONF_FEATURES, conf_features({"yes_prob": 0.5, "first_prob": 0.5, "mean_logprob": -0.7,
                                                  "min_logprob": -0.7, "answer_tokens": 2})))
    span = dict(zip(CONF_FEATURES, conf_features({"yes_prob": None, "first_prob": 0.6, "mean_logprob": -0.5,
                                                  "min_logprob": -1.0, "answer_tokens": 64})))
    assert sure_no["yes_margin"] == pytest.approx(0.9) and toss["yes_margin"] == 0.0
    assert span["yes_prob"] == 0.5 and span["yes_margin"] == 0.0 and span["length"] == 1.0  # not a yes/no answer
    assert conf_features(None) == [0.5, 0.0, 0.0, 0.0, 0.0, 0.0]  # no signals: no confidence either way
