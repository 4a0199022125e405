"""The cost of one expert call, computed when the tree is read (never frozen into it).

A call that processes ``prompt + completion`` tokens through a model of ``P``
parameters costs about 2·P FLOPs per token (one multiply-add per weight per token;
Kaplan et al. 2020, "Scaling Laws for Neural Language Models", the forward-pass
estimate). So a call costs 2 × params_b × tokens GFLOPs. An expert's
``cost_per_call`` (params.yaml) replaces the estimate by a fixed price, for
served models whose size is unknown or whose price is set by an API.

The tree stores tokens, so changing ``params_b`` or ``cost_per_call`` changes
every cost that the later stages report, with no regeneration.
"""
from __future__ import annotations

import numpy as np

from der_pipeline.config import ExpertSpec


def call_cost(expert: ExpertSpec, prompt_tokens, completion_tokens):
    """GFLOPs of one call (or of an array of calls): 2 × parameters × tokens processed, unless fixed."""
    if expert.cost_per_call is not None:
        return np.full_like(np.asarray(prompt_tokens, dtype=np.float64), float(expert.cost_per_call)) \
            if np.ndim(prompt_tokens) else float(expert.cost_per_call)
    tokens = np.asarray(prompt_tokens, dtype=np.float64) + np.asarray(completion_tokens, dtype=np.float64)
    cost = 2.0 * expert.params_b * tokens
    return cost if np.ndim(cost) else float(cost)
