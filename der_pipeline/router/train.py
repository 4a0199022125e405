"""The `train` stage: PPO on the train split of one dataset's cached tree; checkpoint, JSONL log, curve plot."""
from __future__ import annotations

import time
from pathlib import Path

from der_pipeline.artifacts import dataset_params, model_dir
from der_pipeline.config import Params
from der_pipeline.io import write_json
from der_pipeline.router.arrays import cost_scale, split_arrays
from der_pipeline.router.budget import fit_budget
from der_pipeline.router.checkpoint import save_policy
from der_pipeline.router.dataset import build_arrays
from der_pipeline.router.env import obs_dim as env_obs_dim
from der_pipeline.router.parallel import train_many


def plot_training(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["global_step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key in zip(axes, ["mean_return", "mean_calls", "entropy"]):
        ax.plot(steps, [h[key] for h in history], label="training episodes")
        if key == "mean_return" and any("val_return" in h for h in history):
            val = [(h["global_step"], h["val_return"]) for h in history if "val_return" in h]
            ax.plot(*zip(*val), label="greedy, held-out folds (mean)")
            if "selected_iteration" in history[-1]:
                ax.axvline(history[history[-1]["selected_iteration"] - 1]["global_step"], ls=":", color="k",
                           label="kept")
            if history[-1].get("untrained_val_return") is not None:
                ax.axhline(history[-1]["untrained_val_return"], ls="--", color="grey", lw=1,
                           label="untrained policy, held-out folds")
            ax.legend(fontsize=7)
        ax.set_title(key)
        ax.set_xlabel("environment steps")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train_dataset(p: Params, dataset: str, out_dir: Path | None = None) -> dict:
    """One policy per seed in ``seeds``: <out>/seed-<s>/{policy.pt, train_log.jsonl, training_curve.png}."""
    p = dataset_params(p, dataset)
    t0 = time.perf_counter()
    arrays, splits = build_arrays(p, dataset)
    train, _ = split_arrays(arrays, splits)
    scale = cost_scale(train)
    out = out_dir or model_dir(p, dataset)
    fit = None
    if p.budget.cost_share is not None:  # the budget's multiplier is the alpha every seed trains with
        fit = fit_budget(train, p, dataset, p.budget.cost_share, p.seeds[0], scale)
        p = p.override("reward", alpha=fit.alpha)
    per_seed = []
    for seed in p.seeds:
        (out / f"seed-{seed}").mkdir(parents=True, exist_ok=True)
    budget = None if fit is None else fit.budget_gflops
    trained = train_many([dict(arrays=train, reward=p.reward, cfg=p.ppo, seed=seed, scale=scale, budget_gflops=budget,
                               log_path=out / f"seed-{seed}" / "train_log.jsonl") for seed in p.seeds],
                         p.compute.workers)
    for seed, (agent, history) in zip(p.seeds, trained):
        folder = out / f"seed-{seed}"
        obs_dim = env_obs_dim(p.ppo.state, arrays.q_emb.shape[1], arrays.conf1.shape[-1], arrays.n_experts)
        save_policy(agent, folder / "policy.pt", experts=arrays.experts, scale=scale, p=p, obs_dim=obs_dim, seed=seed,
                    out_of_fold=history[-1].get("out_of_fold") if history else None,
                    fixed_path_check=history[-1].get("fixed_path_check") if history else None,
                    cost_share=None if fit is None else fit.share)
        plot_training(history, folder / "training_curve.png", f"{dataset}: PPO seed {seed}, alpha={p.reward.alpha:g}, "
                      f"form={p.reward.form}, signal={p.reward.signal}")
        last = history[-1] if history else {}
        per_seed.append({"seed": seed, "iterations": len(history),
                         "final_mean_return": round(last.get("mean_return", float("nan")), 4),
                         "final_mean_calls": round(last.get("mean_calls", float("nan")), 3),
                         "selected_iteration": last.get("selected_iteration"),
                         "best_val_return": round(last["best_val_return"], 4) if "best_val_return" in last else None,
                         "untrained_val_return": (round(last["untrained_val_return"], 4)
                                                  if last.get("untrained_val_return") is not None else None),
                         "out_of_fold": ({k: round(v, 4) for k, v in last["out_of_fold"].items()}
                                         if last.get("out_of_fold") else None),
                         "policy": last.get("policy", "learned"),
                         "fixed_path_check": ({k: (round(v, 4) if isinstance(v, float) else v)
                                               for k, v in last["fixed_path_check"].items()}
                                              if last.get("fixed_path_check") else None)})
    summary = {"dataset": dataset, "train_queries": train.n_queries, "seeds": per_seed}
    if fit is not None:
        summary["budget"] = fit.row()
    write_json(summary, out / "train_summary.json")  # tracked by DVC: no timings, so a rerun changes nothing
    return {**summary, "out": str(out), "seconds": round(time.perf_counter() - t0, 2)}
