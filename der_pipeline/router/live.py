"""A trained DER policy run live through the real experts: what `ask` and `serve` share.

The policy sees what it saw in training: the query embedding of ``query_text(question, context)``
(the embed stage's text), the last answer's embedding and confidence features, the step and the
last expert (env.build_obs), and calls the experts with the tree's prompts and KTP
(prompts.build_prompt, the context trimmed as `prepare` trims it). So a question that is in the
tree takes the tree's path at temperature 0. Greedy: the most probable allowed action at each step.

Thread safety: a llama.cpp model is not re-entrant, so each expert has a lock and a call holds
only that expert's; the sentence embedder has one too. Concurrent questions run their steps
interleaved, and each question's state lives in its own ``route`` call.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from der_pipeline.router.checkpoint import load_policy
from der_pipeline.config import ExpertSpec, Params
from der_pipeline.data.prepare import trim_sentences
from der_pipeline.experts.backends import Backend, BackendError, make_backend
from der_pipeline.experts.cost import call_cost
from der_pipeline.experts.models import ModelNotFoundError, resolve_model_path
from der_pipeline.experts.prompts import Prompt, build_prompt
from der_pipeline.router.arrays import CONF_FEATURES, conf_features
from der_pipeline.router.env import T_MAX, allowed_actions, build_obs
from der_pipeline.router.methods import LiveState, Router
from der_pipeline.schemas import join_path
from der_pipeline.signals.embed import encode, query_text
from der_pipeline.signals.metrics import parse_answer


class InputError(ValueError):
    """The question or context cannot be answered as given (empty, or too long)."""


class PromptTooLongError(InputError):
    """The question and context do not fit an expert's context window."""


class ExpertCallError(RuntimeError):
    """An expert failed to answer (its backend raised)."""

    def __init__(self, expert: str, message: str):
        super().__init__(message)
        self.expert = expert


@dataclass
class Step:
    expert: str
    action: str  # "answer" (first or afresh) or "refine" (the KTP)
    probabilities: dict[str, float]  # the policy's over its allowed actions; empty for a direct call
    answer: str
    confidence: dict | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost_gflops: float


@dataclass
class Routed:
    question: str
    context: str
    context_trimmed_from: int | None  # the context's length before trimming, if it was trimmed
    steps: list[Step] = field(default_factory=list)
    stopped: bool = False  # the policy chose STOP (else it ran out of calls, or it was a direct call)

    @property
    def answer(self) -> str:
        return self.steps[-1].answer if self.steps else ""

    @property
    def path(self) -> str:
        """The tree's name for the path taken (TreeArrays.path_names)."""
        names = [s.expert for s in self.steps]
        if len(self.steps) == 2 and self.steps[1].action == "answer":
            return f"{names[0]}>fresh:{names[1]}"
        return join_path(names)

    @property
    def cost_gflops(self) -> float:
        return sum(s.cost_gflops for s in self.steps)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps)


@dataclass
class Policy:
    """A trained checkpoint and what it was trained under."""

    path: Path
    agent: object
    state: str
    ktp_only: bool
    alpha: float
    seed: int | None
    fixed_path: dict | None = None  # set where the best fixed path stands in for the learned policy (ppo.fallback)

    @classmethod
    def load(cls, path: Path, experts: list[str]) -> "Policy":
        agent, ckpt = load_policy(path)
        if ckpt["experts"] != experts:
            raise ValueError(f"{path}: the policy was trained for experts {ckpt['experts']}; params.yaml has {experts}")
        fixed = ckpt.get("fixed_path_check") if ckpt.get("fixed_path") is not None else None
        return cls(Path(path), agent, ckpt["ppo"]["state"], ckpt["reward"]["actions"] == "ktp_only",
                   float(ckpt["reward"]["alpha"]), ckpt.get("seed"), fixed)

    @property
    def reads_query(self) -> bool:
        return "query" in self.state

    @property
    def reads_answer(self) -> bool:
        return "answer" in self.state

    def describe(self) -> str:
        """One line on what routes: the learned policy, or the fixed path kept in its place and why."""
        if self.fixed_path is None:
            return f"policy: {self.path} (learned, state {self.state})"
        c = self.fixed_path
        return (f"policy: {self.path}: the best fixed path, {c['path_name']}, for every query (the learned "
                f"policy's out-of-fold edge over it, {c['gain']:+.4f}, was within one standard error, "
                f"{c['se']:.4f}; ppo.fallback)")


def check_models(p: Params) -> None:
    """Every expert's model must be there before the first call (a served model is the server's business)."""
    if p.generation.backend == "openai":
        return
    for e in p.experts:
        try:
            resolve_model_path(e.source)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"expert {e.name!r}: {exc}") from None


def clean_input(p: Params, question: str, context: str) -> tuple[str, str, int | None]:
    """(question, context, original context length if trimmed). Refuses an empty question; trims the
    context as `prepare` trims passages (whole sentences, data.max_context_chars)."""
    question = " ".join(question.split())
    if not question:
        raise InputError("the question is empty; ask something")
    context = " ".join(context.split())
    trimmed = trim_sentences(context, p.data.max_context_chars)
    return question, trimmed, (len(context) if len(trimmed) < len(context) else None)


class LiveRouter:
    """The expert pool (loaded once) and the embedder, shared by every question; see the module docstring."""

    # room a chat template adds around the messages' text (role markers, BOS): a conservative bound
    TEMPLATE_TOKENS = 64

    def __init__(self, p: Params, answer_type: str, backend: Backend | None = None, preload: bool = False):
        check_models(p)
        self.p, self.answer_type = p, answer_type
        self.names = p.expert_names()
        self.backend = backend or make_backend(p.generation)
        self._locks = {n: threading.Lock() for n in self.names}
        self._embed_lock = threading.Lock()
        if preload:
            for e in p.experts:
                self._model(e)
            self.embed(["warm-up"])

    def _model(self, expert: ExpertSpec):
        """The expert's in-process llama.cpp model, or None for a backend without one."""
        model = getattr(self.backend, "model", None)
        if model is None:
            return None
        with self._locks[expert.name]:
            return model(expert)

    def close(self) -> None:
        self.backend.close()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._embed_lock:
            return encode(texts, self.p)

    def prompt(self, expert: ExpertSpec, question: str, context: str, previous: str | None = None) -> Prompt:
        return build_prompt(expert.chat, question, context, self.answer_type,
                            self.p.generation.max_tokens[self.answer_type], previous=previous)

    def check_fits(self, question: str, context: str, experts: list[str]) -> None:
        """Raise PromptTooLongError when the question and context cannot fit an expert's window with room
        for its answer (and, for the policy, a refinement quoting an answer of max_tokens tokens)."""
        n_ctx = self.p.generation.n_ctx
        room = self.p.generation.max_tokens[self.answer_type]
        for name in experts:
            expert = self.p.expert(name)
            llm = self._model(expert)
            if llm is None:  # a served model: its server says so (and the call fails with its message)
                continue
            pr = self.prompt(expert, question, context)
            text = pr.text if pr.kind != "chat" else "\n".join(m["content"] for m in pr.messages)
            with self._locks[name]:
                n = len(llm.tokenize(text.encode(), add_bos=True, special=False))
            need = n + self.TEMPLATE_TOKENS + room * (2 if len(experts) > 1 else 1)
            if need > n_ctx:
                raise PromptTooLongError(
                    f"the question and context take about {n} tokens for expert {name!r}; with the answer's "
                    f"{room} tokens{' and a refinement' if len(experts) > 1 else ''} that is {need} tokens, over its "
                    f"context window of {n_ctx} (generation.n_ctx); shorten the question or the context")

    def call(self, expert: ExpertSpec, prompt: Prompt, action: str, probabilities: dict[str, float]) -> Step:
        """One expert call. An in-process model's cache is cleared first: llama.cpp reuses a cached prefix, and
        logits computed over another batch split can differ in the last bits and flip a near-tie, so without
        the reset the same question could get another answer depending on what was asked before."""
        try:
            with self._locks[expert.name]:
                llm = self.backend.model(expert) if hasattr(self.backend, "model") else None
                if llm is not None:
                    llm.reset()
                out = next(iter(self.backend.generate(expert, [prompt])))
        except BackendError as exc:
            if "exceed context window" in str(exc) or "Requested tokens" in str(exc):
                raise PromptTooLongError(f"expert {expert.name!r}: {exc}") from exc
            raise ExpertCallError(expert.name, f"expert {expert.name!r} failed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - any engine failure is that expert's
            raise ExpertCallError(expert.name, f"expert {expert.name!r} failed: {type(exc).__name__}: {exc}") from exc
        return Step(expert=expert.name, action=action, probabilities=probabilities, answer=out.text,
                    confidence=out.confidence.row() if out.confidence else None, prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens, latency_s=out.latency_s,
                    cost_gflops=call_cost(expert, out.prompt_tokens, out.completion_tokens))

    def direct(self, expert_name: str, question: str, context: str) -> Routed:
        """One expert answers (no policy): what the tree's single-expert path holds."""
        question, context, trimmed_from = clean_input(self.p, question, context)
        self.check_fits(question, context, [expert_name])
        expert = self.p.expert(expert_name)
        routed = Routed(question, context, trimmed_from)
        routed.steps.append(self.call(expert, self.prompt(expert, question, context), "answer", {}))
        return routed

    def action_labels(self) -> list[str]:
        return [f"answer:{e}" for e in self.names] + [f"refine:{e}" for e in self.names] + ["STOP"]

    def route(self, policy: "Policy | Router", question: str, context: str, on_step=None) -> Routed:
        """Run ``policy`` (a trained DER policy, greedy, or any live router of the registry) for one question;
        ``on_step(t, probabilities, step_or_None)`` after each decision. The query and the answers are embedded
        only where the policy reads them."""
        question, context, trimmed_from = clean_input(self.p, question, context)
        self.check_fits(question, context, self.names)
        n, labels = len(self.names), self.action_labels()
        routed = Routed(question, context, trimmed_from)
        der = isinstance(policy, Policy)
        reads_query = policy.reads_query if der else policy.needs_query_embedding
        reads_answer = der and policy.reads_answer
        q_emb = torch.as_tensor(self.embed([query_text(question, context)])[0]) if reads_query or reads_answer else None
        last_emb = torch.zeros_like(q_emb) if q_emb is not None else None
        conf = torch.zeros(len(CONF_FEATURES))
        last, answer = -1, ""
        for t in range(T_MAX):
            tt, ll = torch.tensor([t]), torch.tensor([last])
            mask = allowed_actions(tt, ll, n, policy.ktp_only if der else False)
            if der:
                none = torch.zeros(1, 0)  # a state that reads neither embedding (confidence) gets empty ones
                obs = build_obs(policy.state, none if q_emb is None else q_emb[None],
                                none if last_emb is None else last_emb[None], conf[None], tt, ll, n)
                with torch.no_grad():
                    probs = torch.softmax(policy.agent.masked_logits(obs, mask), dim=1)[0].numpy()
                action = int(np.argmax(probs))
                shown = {a: round(float(pr), 4) for a, pr, ok in zip(labels, probs, mask[0]) if ok}
            else:
                state = LiveState(t, last, n, None if q_emb is None else q_emb.numpy(), conf.numpy())
                action = policy.act(state)
                if not bool(mask[0, action]):
                    raise RuntimeError(f"router {policy.id!r} chose {labels[action]}, not allowed at step {t}")
                shown = {labels[action]: 1.0}
            if action == 2 * n:
                routed.stopped = True
                if on_step:
                    on_step(t, shown, None)
                break
            refine = action >= n
            expert = self.p.expert(self.names[action - n if refine else action])
            step = self.call(expert, self.prompt(expert, question, context, previous=answer if refine else None),
                             "refine" if refine else "answer", shown)
            routed.steps.append(step)
            if on_step:
                on_step(t, shown, step)
            answer, last = step.answer, self.names.index(expert.name)
            if reads_answer:
                last_emb = torch.as_tensor(self.embed([answer])[0])
            conf = torch.tensor(conf_features(step.confidence))
        return routed

    def parse(self, answer: str) -> str:
        return parse_answer(answer, self.answer_type)
