"""The `confidence_task` state: the answer type one-hot lets one policy over several tasks send each task to its
own best expert, which the confidence-only state cannot (before its first call it knows nothing of the query)."""
import numpy as np
from conftest import ppo_cfg, reward_cfg, synthetic_tree

from der_pipeline.config import ANSWER_TYPES
from der_pipeline.router.arrays import concat_arrays, cost_scale, task_features
from der_pipeline.router.env import VectorTreeEnv, obs_dim, path_actions
from der_pipeline.router.methods import greedy_paths
from der_pipeline.router.selection import train_ppo


def _task(kind: str, good: int, seed: int):
    tree = synthetic_tree(n_queries=60, n_experts=3, seed=seed, good=good)
    tree.task2[:] = 0.0  # no refinement rescues a wrong answer: only the task's own expert is ever right
    tree.q_task = task_features([kind] * tree.n_queries)
    tree.qids = [f"{kind}-{q}" for q in tree.qids]
    return tree


def test_the_state_holds_the_answer_type():
    tree = _task("sentiment", good=0, seed=1)
    env = VectorTreeEnv(tree, reward_cfg(), num_envs=4, state="confidence_task")
    obs, _ = env.reset()
    assert obs.shape[1] == env.obs_dim == obs_dim("confidence_task", 4, tree.conf1.shape[-1], 3)
    k = tree.conf1.shape[-1]
    assert obs[:, k:k + len(ANSWER_TYPES)].argmax(dim=1).tolist() == [ANSWER_TYPES.index("sentiment")] * 4


def test_one_policy_sends_each_task_to_its_own_best_expert():
    """Sentiment queries are right only with expert 0, yes/no ones only with expert 2 (calls cost 1, 2, 3): asking
    the right expert first pays, and only the state that sees the answer type can know which one that is."""
    mix = concat_arrays([_task("sentiment", good=0, seed=1), _task("yes_no", good=2, seed=2)])
    reward = reward_cfg(alpha=0.3, form="terminal", gamma=0.0)
    routed = {}
    for state in ("confidence", "confidence_task"):
        cfg = ppo_cfg(state=state, total_timesteps=16384, selection_folds=0, fallback="none")
        agent, _ = train_ppo(mix, reward, cfg, seed=1)
        paths = greedy_paths(agent, mix, cost_scale(mix), reward, state)
        first = np.array([path_actions(3, int(i))[0] for i in paths])  # the first expert of each path
        routed[state] = (first[:60], first[60:])
    sentiment, yes_no = routed["confidence_task"]
    assert np.all(sentiment == 0) and np.all(yes_no == 2)
    blind = routed["confidence"]
    assert len(set(blind[0].tolist()) | set(blind[1].tolist())) == 1  # one first expert for every query
