"""The `ablate` stage: DER retrained with one setting changed at a time, on the same splits and seeds.

Three tables per dataset: the P signal (task metric, BERTScore, mix), the
reward (the proposal's per-step form, the terminal variant, and presets such
as `der-paper`), and the state (query embedding alone against [query, last
answer]). Each row reports test accuracy (mean ± std over seeds), calls, cost,
and how the policy uses STOP: the share of right first answers it stops on and
of wrong first answers it refines. Writes results/ablate/<dataset>/.
"""
from __future__ import annotations

import numpy as np

from der_pipeline.artifacts import dataset_params, results_dir
from der_pipeline.config import Params
from der_pipeline.evaluate.common import (
    DatasetSplit,
    der_policies,
    load_split,
    public,
    summarize,
    with_ppo,
    with_reward,
)
from der_pipeline.io import atomic_write_bytes, write_json


def variants(p: Params) -> dict[str, list[tuple[str, Params]]]:
    """Each ablation's rows: (label, the params DER is trained with)."""
    ab = p.evaluate.ablations
    reward_rows = []
    for r in ab.reward:
        reward_rows.append((r, with_reward(p, form=r) if r in ("per_step", "terminal") else p.with_preset(r)))
    return {
        "signal": [(s, with_reward(p, signal=s)) for s in ab.signal],
        "reward": reward_rows,
        "state": [(s if len(ab.state_forms) == 1 else f"{s}, {form}", with_ppo(with_reward(p, form=form), state=s))
                  for form in ab.state_forms for s in ab.state],
    }


def bertscore_evidence(split: DatasetSplit, thresholds: list[float]) -> dict:
    """How BERTScore F1 treats right and wrong answers (every node of the train split's tree), and how well it
    ranks answers as the task score does (Spearman's rho over the nodes: the telling number for a graded
    score such as ROUGE-L, where few answers reach 0.5; None where either is constant)."""
    from scipy.stats import spearmanr

    t = split.train
    task = np.concatenate([t.task1.ravel(), t.task2.ravel()])
    bert = np.concatenate([t.bert1.ravel(), t.bert2.ravel()])
    right, wrong = task >= 0.5, task < 0.5
    rho = spearmanr(bert, task).statistic if np.ptp(task) > 0 and np.ptp(bert) > 0 else None
    out = {"nodes": int(task.size), "right": int(right.sum()), "wrong": int(wrong.sum()),
           "spearman_with_task": None if rho is None else round(float(rho), 4),
           "bertscore_mean_right": round(float(bert[right].mean()), 4) if right.any() else None,
           "bertscore_mean_wrong": round(float(bert[wrong].mean()), 4) if wrong.any() else None}
    for th in sorted(set(thresholds)):
        out[f"wrong_at_or_above_{th:g}"] = round(float((bert[wrong] >= th).mean()), 4) if wrong.any() else None
        out[f"right_at_or_above_{th:g}"] = round(float((bert[right] >= th).mean()), 4) if right.any() else None
    return out


def ablate_dataset(p: Params, dataset: str) -> dict:
    p = dataset_params(p, dataset)
    split = load_split(p, dataset)
    tables: dict[str, list[dict]] = {}
    seen: dict[tuple, dict] = {}  # rows of different tables can share settings (e.g. "terminal"): train once
    for ablation, rows in variants(p).items():
        tables[ablation] = []
        for label, pv in rows:
            key = (pv.reward, pv.ppo)
            if key not in seen:
                policies = der_policies(pv, split)
                seen[key] = summarize([r.route(split.test) for r in policies], split.test, split.scale, p)
            m = seen[key]
            default = pv.reward == p.reward and pv.ppo == p.ppo
            tables[ablation].append({"setting": label, "is_default": default, **public(m)})
    thresholds = [p.reward.p0] + [p.with_preset(r).reward.p0 for r in p.evaluate.ablations.reward if r in p.presets]
    return {"dataset": dataset, "test_queries": split.test.n_queries, "train_queries": split.train.n_queries,
            "seeds": p.seeds, "tables": tables, "bertscore_evidence": bertscore_evidence(split, thresholds)}


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def render_ablations(out: dict, p: Params) -> str:
    titles = {"signal": "P signal (reward.signal)", "reward": "Reward (form, or a named preset: ktp-only and proposal "
                                                             "take away the escalation; sampled-episodes trains "
                                                             "PPO on cleanrl's sampled rollouts; no-fallback keeps "
                                                             "the learned policy of every seed, where every other "
                                                             "row uses the best fixed path in place of one that "
                                                             "does not beat it out of fold)",
              "state": "State (ppo.state)"}
    parts = []
    for ablation, rows in out["tables"].items():
        lines = [f"**{titles[ablation]}**", "",
                 "| Setting | Score, task metric (mean ± std over seeds) | Avg Calls | Cost (norm.) | Refines | "
                 "Escalates | Stops on a right first answer | Second call on a wrong first answer |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            label = f"{r['setting']} (params.yaml)" if r["is_default"] else r["setting"]
            lines.append(f"| {label} | {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} | {r['calls']:.2f} | "
                         f"{r['cost_norm']:.3f} | {_pct(r['refine_rate'])} | {_pct(r.get('escalate_rate'))} | "
                         f"{_pct(r['stop_if_right'])} | "
                         f"{_pct(r['refine_if_wrong'])} |")
        parts.append("\n".join(lines))
    ev = out["bertscore_evidence"]
    keys = sorted(k for k in ev if k.startswith("wrong_at_or_above_"))
    shares = "; ".join(f"at p0 = {k.rsplit('_', 1)[1]}, {_pct(ev[k])} of wrong answers and "
                       f"{_pct(ev[k.replace('wrong', 'right')])} of right ones clear the threshold" for k in keys)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    parts.append(f"What BERTScore does as P: over the {ev['nodes']} nodes of the train split's tree, BERTScore F1 "
                 f"(on the parsed answers) averages {fmt(ev['bertscore_mean_right'])} on right answers and "
                 f"{fmt(ev['bertscore_mean_wrong'])} on wrong ones; {shares}. Where wrong answers clear p0, "
                 "the bonus gamma rewards them as well as right ones. Spearman's rho between BERTScore and the "
                 f"task score over those nodes: {fmt(ev.get('spearman_with_task'))} (1: the same ranking).")
    parts.append(f"Every row is DER retrained with that one change (other settings as in params.yaml), on the "
                 f"{out['train_queries']} train queries, evaluated on the {out['test_queries']} test queries with "
                 f"the task metric, averaged over seeds {out['seeds']}.")
    return "\n\n".join(parts)


def ablate(p: Params, datasets: list[str]) -> dict[str, str]:
    tables = {}
    for ds in datasets:
        out = ablate_dataset(p, ds)
        folder = results_dir(p, "ablate", ds)
        md = render_ablations(out, p)
        write_json(out, folder / "ablations.json")
        atomic_write_bytes(folder / "ablations.md", (md + "\n").encode())
        tables[ds] = md
    return tables
