"""Model selection around PPO: which iteration to keep, which policy to keep, and when not to trust it.

K-fold cross-validation on the train split (``ppo.selection_folds``) chooses the iteration. The policy
kept (``ppo.final_policy``) is either the K folds' policies at that iteration, their action probabilities
averaged (``fold_ensemble``: every member is a policy whose held-out routing was measured), or the same PPO
run again on the whole train split, stopped at that iteration (``refit``). With ``ppo.fallback:
best_fixed_path`` a policy that does not beat the best fixed path out of fold is replaced by that path.
The test split is never read here.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from der_pipeline.config import PPOConfig, RewardConfig
from der_pipeline.router.arrays import TreeArrays, cost_scale
from der_pipeline.router.env import path_actions
from der_pipeline.router.methods import best_fixed_index, greedy_paths
from der_pipeline.router.ppo import MASKED, Agent, PPORun, run_ppo


class FoldEnsemble(nn.Module):
    """The K folds' policies as one: the action distribution is the mean of theirs (so its greedy action
    is the one they give the most probability together). ``masked_logits`` returns the log of that mean,
    so a softmax of it gives the mean probabilities back. Why not a refit on the whole train split: PPO's
    path depends on its data, and a refit stopped at the folds' iteration is a different policy, never
    validated, and the two route differently out of sample (benchmarks/final_policy.py compares them; the
    research log has its figures)."""

    def __init__(self, members: list[Agent]):
        super().__init__()
        if not members:
            raise ValueError("a fold ensemble needs at least one policy")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.obs_dim, self.n_actions, self.hidden = first.obs_dim, first.n_actions, first.hidden

    def masked_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([torch.log_softmax(m.masked_logits(x, mask), dim=1) for m in self.members])
        mean = torch.logsumexp(logp, dim=0) - np.log(len(self.members))
        return torch.where(mask, mean, torch.full((), MASKED))

    @torch.no_grad()
    def greedy(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.masked_logits(x, mask).argmax(dim=1)


class FixedPathPolicy(nn.Module):
    """A constant policy: every query goes down one path of the tree (the best fixed path, kept in place of
    a learned policy that does not beat it out of fold: ``fixed_path_check``). At t = 0 it asks the path's
    first expert; at t = 1, the only step where STOP is allowed (which is how it reads the step from the
    mask), it stops, refines or escalates as the path says. ``learned``: the policy it stands in for,
    saved beside it in the checkpoint."""

    def __init__(self, path: int, n_experts: int, learned: nn.Module):
        super().__init__()
        self.path, self.n = path, n_experts
        self.first, self.second = path_actions(n_experts, path)
        self.learned = learned
        self.obs_dim, self.n_actions, self.hidden = learned.obs_dim, learned.n_actions, learned.hidden

    def masked_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        action = torch.where(mask[:, 2 * self.n], self.second, self.first)
        chosen = nn.functional.one_hot(action, self.n_actions).bool() & mask
        return torch.where(chosen, torch.zeros(()), torch.full((), MASKED))

    @torch.no_grad()
    def greedy(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.masked_logits(x, mask).argmax(dim=1)


def selection_folds(arrays: TreeArrays, k: int) -> list[tuple[TreeArrays, TreeArrays]]:
    """The train queries in ``k`` folds by a hash of the query id, as (fit, held-out) pairs: fold i holds
    the queries whose zlib.crc32(qid) / 2**32 falls in [i/k, (i+1)/k). Fixed across seeds and runs (the
    same bands as benchmarks/cascade_cv.py); the test split is never touched. Empty when ``k`` < 2 or a
    fold would be empty (too few queries to cross-validate)."""
    if k < 2:
        return []
    key = np.array([zlib.crc32(q.encode()) / 2**32 for q in arrays.qids])
    band = np.minimum((key * k).astype(np.int64), k - 1)
    folds = []
    for i in range(k):
        val, fit = np.flatnonzero(band == i), np.flatnonzero(band != i)
        if len(val) == 0 or len(fit) == 0:
            return []
        folds.append((arrays.subset(fit), arrays.subset(val)))
    return folds


@dataclass
class CrossValidation:
    """The K-fold choice of the PPO iteration to keep: the policy of fold i is trained on the other folds
    and its greedy return on fold i is checked every ``eval_every`` iterations; the iteration kept is the
    latest whose mean over the folds is within ``selection_tolerance`` of the best (``keep_iteration``).
    One 94-query fold was too few: its noise, not the policy, decided which iteration was kept
    (benchmarks/cascade_cv.py)."""
    folds: list[tuple[TreeArrays, TreeArrays]]
    curve: dict[int, list[float]]  # iteration -> each fold's held-out greedy return
    untrained: list[float]  # each fold's held-out greedy return before any update
    best_iteration: int
    agents: list[Agent]  # each fold's policy at best_iteration: out-of-fold routing of the train split
    runs: list[PPORun]  # each fold's run (its training log)

    def mean_return(self, iteration: int) -> float:
        return float(np.mean(self.curve[iteration]))

    def out_of_fold(self, reward: RewardConfig, scale: float, state: str) -> dict:
        """What the kept folds' policies do on the queries they did not train on: the mean task score and
        the mean cost (GFLOPs) of the greedy paths over every held-out fold, and the share of two-call
        paths. Each train query is held out once, so this is the train split's own out-of-sample estimate
        of DER's operating point (the curves stage chooses the goal's price from it; the test split is
        never read). ``constant_folds``: the share of the folds whose policy sends every held-out query down
        the same path. Why: a mean over folds of constant policies (one fold's always the specialist,
        another's always the strongest expert) can look like a router's operating point without any
        policy reading its state (benchmarks/goal_alpha.py found it on SST-2; the research log has the figures)."""
        score, cost, two, constant = [], [], [], []
        for (_, val), agent in zip(self.folds, self.agents):
            idx = greedy_paths(agent, val, scale, reward, state)
            rows = np.arange(val.n_queries)
            score.append(val.path_matrix("task")[rows, idx])
            cost.append(val.path_matrix("cost")[rows, idx])
            two.append(idx >= val.n_experts)
            constant.append(len(np.unique(idx)) == 1)
        return {"score": float(np.concatenate(score).mean()), "cost_gflops": float(np.concatenate(cost).mean()),
                "two_calls": float(np.concatenate(two).mean()), "constant_folds": float(np.mean(constant))}


def fixed_path_check(cv: CrossValidation, arrays: TreeArrays, reward: RewardConfig, scale: float,
                     state: str) -> dict:
    """Does the learned policy beat a constant one on queries it did not train on? On every held-out fold,
    each query's utility (task score - alpha x cost / scale, what every method is judged by) under the
    fold's kept policy, against the best fixed path fitted on the other folds (``BestFixedPath``'s rule).
    ``gain``: the mean of the per-query differences over the train split; ``se``: their standard error.
    ``beats_fixed_path`` when gain > se: the one-standard-error rule (Breiman et al. 1984; Hastie,
    Tibshirani and Friedman, ESL 7.10) with the constant path as the simpler model, so a policy whose
    out-of-fold edge is within its own noise is not preferred to a rule with nothing to learn (the research
    log has the edges this rule weighed). ``path``: the best fixed
    path on the whole of ``arrays`` (the fallback); ``fixed_out_of_fold``: the fold-fitted fixed paths'
    operating point, in ``CrossValidation.out_of_fold``'s keys."""
    diff, sdiff, score, cost, two = [], [], [], [], []
    for (fit, val), agent in zip(cv.folds, cv.agents):
        rows = np.arange(val.n_queries)
        task, gflops = val.path_matrix("task"), val.path_matrix("cost")
        mine = greedy_paths(agent, val, scale, reward, state)
        const = best_fixed_index(fit, reward.alpha, reward.actions == "ktp_only")
        diff.append((task[rows, mine] - reward.alpha * gflops[rows, mine] / scale)
                    - (task[:, const] - reward.alpha * gflops[:, const] / scale))
        sdiff.append(task[rows, mine] - task[:, const])
        score.append(task[:, const])
        cost.append(gflops[:, const])
        two.append(np.full(val.n_queries, const >= val.n_experts))
    diff, sdiff = np.concatenate(diff), np.concatenate(sdiff)
    gain = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    score_se = float(sdiff.std(ddof=1) / np.sqrt(len(sdiff))) if len(sdiff) > 1 else 0.0
    path = best_fixed_index(arrays, reward.alpha, reward.actions == "ktp_only")
    return {"gain": gain, "se": se, "beats_fixed_path": gain > se, "path": path,
            "score_gain": float(sdiff.mean()), "score_se": score_se,
            "path_name": arrays.path_names()[path],
            "fixed_out_of_fold": {"score": float(np.concatenate(score).mean()),
                                  "cost_gflops": float(np.concatenate(cost).mean()),
                                  "two_calls": float(np.concatenate(two).mean()), "constant_folds": 1.0}}


def keep_iteration(mean_returns: dict[int, float], untrained: float, tolerance: float) -> int:
    """The iteration to keep from the cross-validated curve: the latest whose mean return is within
    ``tolerance`` x (best - untrained) of the best. Why the latest: once the folds' policies agree (a
    plateau, often the same greedy routing to 1e-4), the earliest point of the plateau is where the
    whole-split refit, which sees other queries in its minibatches, has had the fewest updates to get
    there; the latest point has had the most. The band is a fraction of the gain PPO made over the
    untrained policy, so it is scale-free across datasets (whose returns differ by an order of magnitude);
    with no gain, or tolerance 0, it keeps the latest of the exact best."""
    best = max(mean_returns.values())
    floor = best - tolerance * max(best - untrained, 0.0)
    return max(it for it, value in mean_returns.items() if value >= floor)


def cross_validate(arrays: TreeArrays, reward: RewardConfig, cfg: PPOConfig, seed: int = 1,
                   scale: float | None = None) -> CrossValidation | None:
    """K-fold cross-validation of PPO on ``arrays`` (K = ``cfg.selection_folds``); None where K < 2 or the
    queries are too few for K folds."""
    scale = scale if scale is not None else cost_scale(arrays)
    folds = selection_folds(arrays, cfg.selection_folds)
    if not folds:
        return None
    runs = [run_ppo(fit, reward, cfg, seed, scale, val=val) for fit, val in folds]
    curve = {it: [run.val_returns[it] for run in runs] for it in sorted(runs[0].val_returns)}
    best = keep_iteration({it: float(np.mean(v)) for it, v in curve.items()},
                          float(np.mean([run.untrained_val_return for run in runs])), cfg.selection_tolerance)
    return CrossValidation(folds, curve, [run.untrained_val_return for run in runs], best,
                           [run.agent_at(best) for run in runs], runs)


def keeps_learned(check: dict, learned: dict, budget_gflops: float | None) -> bool:
    """Whether the fallback keeps the learned policy over the best fixed path. Fitted to an alpha: when it beats
    the path's utility out of fold by more than one standard error (``fixed_path_check``). Fitted to a budget
    (``budget_gflops``, a mean cost per query): the one within the budget; both within it, the one that scores
    higher out of fold by more than one standard error of the score difference, and where neither does (a flat
    train split), the one that spends more of the budget, since spending it is what the user asked for."""
    if budget_gflops is None:
        return bool(check["beats_fixed_path"])
    fixed = check["fixed_out_of_fold"]
    fits_l, fits_f = learned["cost_gflops"] <= budget_gflops, fixed["cost_gflops"] <= budget_gflops
    if fits_l != fits_f:
        return fits_l
    if not fits_l:  # neither fits: the cheaper
        return learned["cost_gflops"] < fixed["cost_gflops"]
    if abs(check["score_gain"]) > check["score_se"]:
        return check["score_gain"] > 0
    return learned["cost_gflops"] > fixed["cost_gflops"]


def train_ppo(arrays: TreeArrays, reward: RewardConfig, cfg: PPOConfig, seed: int = 1, log_path: Path | None = None,
              scale: float | None = None, budget_gflops: float | None = None,
              ) -> tuple[Agent | FoldEnsemble | FixedPathPolicy, list[dict]]:
    """PPO on ``arrays`` (the train split). With ``cfg.selection_folds`` = K >= 2, K-fold cross-validation
    (``cross_validate``) chooses how many iterations to keep, and the policy kept is ``cfg.final_policy``:
    the folds' policies at that iteration (``fold_ensemble``; the log's rows are the folds' training
    statistics, averaged) or a run on the whole train split with the same seed, stopped there (``refit``).
    Either way a policy that memorises its training queries is not kept. With ``cfg.fallback:
    best_fixed_path`` a policy that does not beat the best fixed path out of fold (``fixed_path_check``)
    is replaced by that path (``FixedPathPolicy``). Each checked row of the log
    carries the cross-validated return (``val_return``, the mean over folds, and ``val_return_folds``);
    the log's last line marks the kept iteration, with the folds' out-of-fold operating point
    (``CrossValidation.out_of_fold``). K = 0 keeps the last iteration of one run."""
    scale = scale if scale is not None else cost_scale(arrays)
    cv = cross_validate(arrays, reward, cfg, seed, scale)
    if cv is not None and cfg.final_policy == "fold_ensemble":
        history = _mean_rows([run.rows for run in cv.runs])
        agent = FoldEnsemble(cv.agents)
    else:
        run = run_ppo(arrays, reward, cfg, seed, scale, keep=cv.best_iteration if cv else None)
        history, agent = run.rows, (run.agent_at(cv.best_iteration) if cv else run.agent)
    if cv is not None:
        for row in history:
            if row["iteration"] in cv.curve:
                row["val_return"] = cv.mean_return(row["iteration"])
                row["val_return_folds"] = [round(v, 4) for v in cv.curve[row["iteration"]]]
        kept = {"selected_iteration": cv.best_iteration, "best_val_return": cv.mean_return(cv.best_iteration),
                "untrained_val_return": float(np.mean(cv.untrained)), "final_policy": cfg.final_policy,
                "out_of_fold": cv.out_of_fold(reward, scale, cfg.state)}
        check = fixed_path_check(cv, arrays, reward, scale, cfg.state)
        kept["fixed_path_check"] = {k: check[k] for k in ("gain", "se", "beats_fixed_path", "path_name")}
        kept["policy"] = "learned"
        if budget_gflops is not None:
            kept["fixed_path_check"].update(budget_gflops=budget_gflops, score_gain=check["score_gain"],
                                            score_se=check["score_se"])
        if cfg.fallback == "best_fixed_path" and not keeps_learned(check, kept["out_of_fold"], budget_gflops):
            agent = FixedPathPolicy(check["path"], arrays.n_experts, agent)
            kept.update(policy="best_fixed_path", out_of_fold=check["fixed_out_of_fold"])
        history[-1].update(kept)
    if log_path:
        lines = [json.dumps(row) for row in history]
        if cv is not None:  # the log's last line marks the kept iteration
            lines.append(json.dumps({"kept": kept}))
        Path(log_path).write_text("\n".join(lines) + "\n")
    return agent, history


def _mean_rows(runs: list[list[dict]]) -> list[dict]:
    """Per iteration, the mean of each statistic over several runs' logs (the folds' runs)."""
    return [{k: (row[k] if k in ("iteration", "global_step") else float(np.mean([r[i][k] for r in runs])))
             for k in row} for i, row in enumerate(runs[0])]


