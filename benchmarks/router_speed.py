"""Environment steps per second and the wall time of a full `train` of one seed on the largest available tree,
with each PPO batch (``ppo.rollout``) and each final policy, side by side in one run.

    python benchmarks/router_speed.py [--params params.yaml]
"""
from __future__ import annotations

import argparse
import time

import torch

from der_pipeline.config import load_params
from der_pipeline.router.arrays import split_arrays
from der_pipeline.router.dataset import build_arrays
from der_pipeline.router.env import VectorTreeEnv
from der_pipeline.router.selection import train_ppo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    p = load_params(args.params)
    sizes = {}
    for ds in p.data.active():
        try:
            arrays, splits = build_arrays(p, ds)
            sizes[ds] = (arrays, splits)
        except (FileNotFoundError, ValueError) as exc:
            print(f"{ds}: skipped ({exc})")
    if not sizes:
        raise SystemExit("no dataset has a scored and embedded tree yet")
    ds = max(sizes, key=lambda k: sizes[k][0].n_queries)
    train, _ = split_arrays(*sizes[ds])
    env = VectorTreeEnv(train, p.reward, num_envs=p.ppo.num_envs, seed=0)
    obs, mask = env.reset()
    gen = torch.Generator().manual_seed(0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3.0:
        legal = mask.float()
        a = torch.multinomial(legal / legal.sum(1, keepdim=True), 1, generator=gen).squeeze(1)
        obs, mask, *_ = env.step(a)
        steps += env.num_envs
    print(f"{ds}: {train.n_queries} train queries, {steps / (time.perf_counter() - t0):,.0f} env steps/s "
          f"(random legal actions, {env.num_envs} envs)")
    for rollout in ("all_actions", "sampled"):  # every action's known outcome, or cleanrl's sampled episodes
        for final in ("fold_ensemble", "refit"):  # the refit adds a fourth PPO run to the folds' three
            cfg = p.override("ppo", final_policy=final, rollout=rollout).ppo
            t0 = time.perf_counter()
            _, history = train_ppo(train, p.reward, cfg, seed=p.seeds[0])
            print(f"full PPO train, rollout {rollout}, final_policy {final} ({cfg.total_timesteps:,} steps, "
                  f"{len(history)} updates): {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
