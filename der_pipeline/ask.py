"""`der-pipeline ask`: run a trained DER policy live through the real experts, step by step."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from der_pipeline.artifacts import load_policy, policy_path
from der_pipeline.config import Params
from der_pipeline.data.prepare import trim_sentences
from der_pipeline.data.sources import ANSWER_TYPE
from der_pipeline.experts.backends import make_backend
from der_pipeline.experts.cost import call_cost
from der_pipeline.experts.models import ModelNotFoundError, resolve_model_path
from der_pipeline.experts.prompts import build_prompt
from der_pipeline.router.arrays import CONF_FEATURES, conf_features
from der_pipeline.router.env import T_MAX, allowed_actions, build_obs
from der_pipeline.signals.embed import encode, query_text
from der_pipeline.signals.metrics import TASK_METRIC, parse_answer


def check_models(p: Params) -> None:
    """Every expert's model must be there before the first call (a served model is the server's business)."""
    if p.generation.backend == "openai":
        return
    for e in p.experts:
        try:
            resolve_model_path(e.source)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"expert {e.name!r}: {exc}") from None


def clean_input(p: Params, question: str, context: str, echo: Callable[[str], None]) -> tuple[str, str]:
    """Refuse an empty question; trim the context as `prepare` trims passages (whole sentences, max_context_chars)."""
    question = " ".join(question.split())
    if not question:
        raise ValueError("the question is empty; ask something")
    context = " ".join(context.split())
    trimmed = trim_sentences(context, p.data.max_context_chars)
    if len(trimmed) < len(context):
        echo(f"note: context trimmed from {len(context)} to {len(trimmed)} characters at a sentence boundary "
             f"(data.max_context_chars = {p.data.max_context_chars}), as `prepare` trims passages")
    return question, trimmed


def ask(p: Params, dataset: str, question: str, context: str, echo: Callable[[str], None] = print) -> dict:
    question, context = clean_input(p, question, context, echo)
    agent, ckpt = load_policy(policy_path(p, dataset))
    check_models(p)
    state = ckpt["ppo"]["state"]
    ktp_only = ckpt["reward"]["actions"] == "ktp_only"
    names = ckpt["experts"]
    if names != p.expert_names():
        raise ValueError(f"the policy was trained for experts {names}; params.yaml has {p.expert_names()}")
    answer_type = ANSWER_TYPE[dataset]
    n = len(names)
    labels = [f"answer:{e}" for e in names] + [f"refine:{e}" for e in names] + ["STOP"]
    backend = make_backend(p.generation)
    q_emb = torch.as_tensor(encode([query_text(question, context)], p)[0])
    last_emb = torch.zeros_like(q_emb)
    conf = torch.zeros(len(CONF_FEATURES))
    last, answer, cost, steps = -1, "", 0.0, []
    try:
        for t in range(T_MAX):
            tt, ll = torch.tensor([t]), torch.tensor([last])
            obs = build_obs(state, q_emb[None], last_emb[None], conf[None], tt, ll, n)
            mask = allowed_actions(tt, ll, n, ktp_only)
            with torch.no_grad():
                probs = torch.softmax(agent.masked_logits(obs, mask), dim=1)[0].numpy()
            action = int(np.argmax(probs))
            shown = ", ".join(f"{a}={pr:.2f}" for a, pr, ok in zip(labels, probs, mask[0]) if ok)
            echo(f"step {t}: P(action) {shown}")
            if action == 2 * n:
                echo("  -> STOP")
                break
            refine = action >= n
            expert = p.expert(names[action - n if refine else action])
            prompt = build_prompt(expert.chat, question, context, answer_type,
                                  p.generation.max_tokens[answer_type], previous=answer if refine else None)
            out = next(iter(backend.generate(expert, [prompt])))
            cost += call_cost(expert, out.prompt_tokens, out.completion_tokens)
            answer, last = out.text, names.index(expert.name)
            last_emb = torch.as_tensor(encode([answer], p)[0])
            row = out.confidence.row() if out.confidence else None
            conf = torch.tensor(conf_features(row))
            how = "refines" if refine else ("answers afresh" if t > 0 else "answers")
            steps.append({"expert": expert.name, "action": "refine" if refine else "answer", "answer": answer,
                          "confidence": row, "latency_s": round(out.latency_s, 2)})
            echo(f"  -> {expert.name} {how} ({out.latency_s:.1f} s): {answer!r}")
            echo(f"     confidence: {_show_confidence(row)}")
            echo(f"     cost so far {cost:.1f} GFLOPs")
    finally:
        backend.close()
    final = parse_answer(answer, answer_type)
    echo(f"final answer ({TASK_METRIC[answer_type]} parser): {final!r}   [{len(steps)} calls, {cost:.1f} GFLOPs]")
    return {"steps": steps, "final": final, "raw": answer, "cost_gflops": cost}


def _show_confidence(row: dict | None) -> str:
    if not row or row.get("answer_tokens") is None:
        return "n/a (this backend gives no token probabilities)"
    parts = [f"P(yes) {row['yes_prob']:.2f}"] if row.get("yes_prob") is not None else []
    if row.get("mean_logprob") is not None:
        parts += [f"first token p {row['first_prob']:.2f}", f"mean log-prob {row['mean_logprob']:.2f}",
                  f"min log-prob {row['min_logprob']:.2f}"]
    parts.append(f"{row['answer_tokens']} tokens")
    return ", ".join(parts)
