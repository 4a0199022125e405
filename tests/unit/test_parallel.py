"""PPO seeds trained in worker processes give exactly what training them here gives (router/parallel.py)."""
import torch
from conftest import ppo_cfg, reward_cfg, synthetic_tree

from der_pipeline.router.parallel import train_many


def test_workers_change_nothing_but_where_the_work_runs():
    tree = synthetic_tree(n_queries=30, n_experts=3, seed=2)
    cfg = ppo_cfg(total_timesteps=4096, eval_every=1)
    jobs = [dict(arrays=tree, reward=reward_cfg(alpha=0.1), cfg=cfg, seed=s) for s in (1, 2, 3)]
    here = train_many(jobs, workers=1)
    there = train_many(jobs, workers=2)
    assert len(here) == len(there) == 3
    for (a, ha), (b, hb) in zip(here, there):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert ha == hb  # every logged number, to the last bit
    s1, s2 = here[0][0].state_dict(), here[1][0].state_dict()
    assert not all(torch.equal(s1[k], s2[k]) for k in s1)  # the seeds do differ: the check has teeth
