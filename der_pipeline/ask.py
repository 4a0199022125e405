"""`der-pipeline ask`: run a trained DER policy live through the real experts, step by step."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from der_pipeline.config import Params
from der_pipeline.experts.backends import make_backend
from der_pipeline.experts.prompts import build_prompt
from der_pipeline.generate.run import call_cost
from der_pipeline.router.env import build_obs
from der_pipeline.router.train import load_policy, policy_path
from der_pipeline.signals.embed import encode, query_text
from der_pipeline.data.sources import ANSWER_TYPE
from der_pipeline.signals.metrics import TASK_METRIC, parse_answer


def ask(p: Params, dataset: str, question: str, context: str, echo: Callable[[str], None] = print) -> dict:
    agent, ckpt = load_policy(policy_path(p, dataset))
    sees_answer = ckpt["ppo"].get("state", "query_answer") == "query_answer"
    names = ckpt["experts"]
    if names != p.expert_names():
        raise ValueError(f"the policy was trained for experts {names}; params.yaml has {p.expert_names()}")
    answer_type = ANSWER_TYPE[dataset]
    n = len(names)
    backend = make_backend(p.generation)
    q_emb = torch.as_tensor(encode([query_text(question, context)], p)[0])
    last_emb = torch.zeros_like(q_emb)
    last, answer, cost, steps = None, "", 0.0, []
    try:
        for t in range(p.reward.t_max):
            obs = build_obs(q_emb[None], last_emb[None], torch.tensor([t]),
                            torch.tensor([-1 if last is None else last]), n)
            mask = torch.ones(1, n + 1, dtype=torch.bool)
            mask[0, n] = t > 0
            with torch.no_grad():
                probs = torch.softmax(agent.masked_logits(obs, mask), dim=1)[0].numpy()
            action = int(np.argmax(probs))
            shown = ", ".join(f"{a}={pr:.2f}" for a, pr in zip([*names, "STOP"], probs))
            echo(f"step {t}: P(action) {shown}")
            if action == n:
                echo("  -> STOP")
                break
            expert = p.expert(names[action])
            prompt = build_prompt(expert.chat, question, context, answer_type,
                                  p.generation.max_tokens[answer_type], previous=answer if t > 0 else None)
            out = next(iter(backend.generate(expert, [prompt])))
            cost += call_cost(expert, out.prompt_tokens, out.completion_tokens)
            answer, last = out.text, action
            if sees_answer:
                last_emb = torch.as_tensor(encode([answer], p)[0])
            steps.append({"expert": expert.name, "answer": answer, "latency_s": round(out.latency_s, 2)})
            echo(f"  -> {expert.name} ({out.latency_s:.1f} s): {answer!r}")
            echo(f"     cost so far {cost:.1f} GFLOPs")
    finally:
        backend.close()
    final = parse_answer(answer, answer_type)
    echo(f"final answer ({TASK_METRIC[answer_type]} parser): {final!r}   [{len(steps)} calls, {cost:.1f} GFLOPs]")
    return {"steps": steps, "final": final, "raw": answer, "cost_gflops": cost}
