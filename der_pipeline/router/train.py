"""The `train` stage: PPO on the train split of one dataset's cached tree; checkpoint, JSONL log, curve plot."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from der_pipeline.config import Params
from der_pipeline.io import write_json
from der_pipeline.router.arrays import build_arrays, cost_scale, split_arrays
from der_pipeline.router.ppo import Agent, train_ppo


def model_dir(p: Params, dataset: str) -> Path:
    return p.path("models") / dataset


def save_policy(agent: Agent, path: Path, *, experts: list[str], scale: float, p: Params, obs_dim: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": agent.state_dict(), "obs_dim": obs_dim, "n_actions": len(experts) + 1,
                "hidden": p.ppo.hidden, "experts": experts, "cost_scale": scale,
                "reward": dataclasses.asdict(p.reward), "ppo": dataclasses.asdict(p.ppo),
                "embedder": p.signals.embedder}, tmp)
    tmp.replace(path)


def load_policy(path: Path) -> tuple[Agent, dict]:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no trained policy; run `der-pipeline train` first")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    agent = Agent(ckpt["obs_dim"], ckpt["n_actions"], ckpt["hidden"])
    agent.load_state_dict(ckpt["state_dict"])
    agent.eval()
    return agent, ckpt


def plot_training(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["global_step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key in zip(axes, ["mean_return", "mean_calls", "entropy"]):
        ax.plot(steps, [h[key] for h in history])
        ax.set_title(key)
        ax.set_xlabel("environment steps")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train_dataset(p: Params, dataset: str, out_dir: Path | None = None) -> dict:
    t0 = time.perf_counter()
    arrays, splits = build_arrays(p, dataset)
    train, _ = split_arrays(arrays, splits)
    scale = cost_scale(train)
    out = out_dir or model_dir(p, dataset)
    out.mkdir(parents=True, exist_ok=True)
    agent, history = train_ppo(train, p.reward, p.ppo, log_path=out / "train_log.jsonl", scale=scale)
    obs_dim = 2 * arrays.q_emb.shape[1] + 2 + arrays.n_experts + 1
    save_policy(agent, out / "policy.pt", experts=arrays.experts, scale=scale, p=p, obs_dim=obs_dim)
    plot_training(history, out / "training_curve.png",
                  f"{dataset}: PPO, alpha={p.reward.alpha:g}, form={p.reward.form}, signal={p.reward.signal}")
    last = history[-1] if history else {}
    summary = {"dataset": dataset, "train_queries": train.n_queries, "iterations": len(history),
               "final_mean_return": round(last.get("mean_return", float("nan")), 4),
               "final_mean_calls": round(last.get("mean_calls", float("nan")), 3),
               "seconds": round(time.perf_counter() - t0, 2), "checkpoint": "policy.pt"}
    write_json(summary, out / "train_summary.json")
    return summary
