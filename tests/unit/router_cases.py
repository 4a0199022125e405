"""Small hand-made trees and settings that the router's unit tests share."""

import numpy as np
import torch
from conftest import reward_cfg, synthetic_tree

from der_pipeline.router.env import VectorTreeEnv

# With N = 2 experts the actions are: 0, 1 answer afresh (expert 0 / 1); 2, 3 refine (KTP) by expert 0 / 1;
# 4 STOP.
ANSWER0, ANSWER1, REFINE0, REFINE1, STOP = 0, 1, 2, 3, 4


def tiny():
    """2 queries, 2 experts, hand-set qualities and costs."""
    t = synthetic_tree(n_queries=2, n_experts=2, dim=3)
    t.task1 = np.array([[0.2, 0.9], [0.6, 0.1]])
    t.task2 = np.array([[[0.3, 0.8], [0.4, 1.0]], [[0.7, 0.5], [0.2, 0.0]]])
    t.cost1 = np.array([[1.0, 4.0], [1.0, 4.0]])
    t.cost2 = np.array([[[1.0, 4.0], [1.0, 4.0]], [[1.0, 4.0], [1.0, 4.0]]])
    return t


CFG = reward_cfg(signal="task", form="per_step", cost="flops", alpha=0.2, beta=0.5, gamma=0.3, p0=0.5,
                 actions="ktp_and_fresh")


def env_for(cfg, query):
    env = VectorTreeEnv(tiny(), cfg, num_envs=1, autoreset=False)
    env.reset(torch.tensor([query]))
    return env


def _params_with(**reward):
    from conftest import REPO

    from der_pipeline.config import load_params

    return load_params(REPO / "params.yaml").override("reward", **reward)
