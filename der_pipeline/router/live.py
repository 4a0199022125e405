"""A trained DER policy run live through the real experts: what `ask` and `serve` share.

The policy sees what it saw in training: the query embedding of ``query_text(question, context)``
(the embed stage's text), the last answer's embedding and confidence features, the step and the
last expert (env.build_obs), and calls the experts with the tree's prompts and KTP
(prompts.build_prompt, the context trimmed as `prepare` trims it). So a question that is in the
tree takes the tree's path at temperature 0. Greedy: the most probable allowed action at each step.

Concurrency follows the backend. A model in this process (``llamacpp``, ``vllm``) is not re-entrant, so
each such expert has a lock and a call holds only that expert's. A served expert (``openai``,
``llamaserver``) takes as many calls at once as its server does (``generation.openai.concurrency``,
``generation.llamaserver.slots``): a semaphore per expert. `serve` routes on an event loop (``arun``): a
served expert is called with the async OpenAI client (waiting costs no thread, and a cancelled request
cancels its call in flight), an in-process one on a worker thread; the sentence embedder has one lock.
Each question's state lives in its own episode (``_episode``, a generator that the sync ``route`` and the
async ``arun`` drive alike).

Degradation (``degrade=True``, as `serve` routes): when an expert call fails or times out, or the expert's
circuit breaker is open (``breaker_failures`` failures in a row: skipped for ``breaker_cooldown_s``), the
episode takes the best allowed action that avoids that expert (a DER policy: its next most probable one; a
registry router: STOP with the last answer if there is one, else the next expert of the pool) or ends with
the last answer it has, and records it in ``Routed.degraded``.
"""
from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from der_pipeline.config import ExpertSpec, Params
from der_pipeline.data.prepare import trim_sentences
from der_pipeline.experts.backends import Backend, BackendError, Completion, OpenAIBackend, make_backend, token_logprobs
from der_pipeline.experts.confidence import from_token_logprobs
from der_pipeline.experts.cost import call_cost
from der_pipeline.experts.models import ModelNotFoundError, resolve_model_path
from der_pipeline.experts.prompts import Prompt, build_prompt
from der_pipeline.router.arrays import CONF_FEATURES, conf_features
from der_pipeline.router.checkpoint import load_policy
from der_pipeline.router.env import T_MAX, build_obs
from der_pipeline.router.methods import LiveState, Router
from der_pipeline.schemas import join_path
from der_pipeline.signals.embed import encode, query_text
from der_pipeline.signals.metrics import parse_answer


class InputError(ValueError):
    """The question or context cannot be answered as given (empty, or too long)."""


class PromptTooLongError(InputError):
    """The question and context do not fit an expert's context window."""


class ExpertCallError(RuntimeError):
    """An expert failed to answer (its backend raised, or it timed out: ``reason``), or was not called because its
    circuit breaker is open (ExpertUnavailableError)."""

    def __init__(self, expert: str, message: str, reason: str = "error"):
        super().__init__(message)
        self.expert, self.reason = expert, reason


class ExpertUnavailableError(ExpertCallError):
    """Not called: the expert failed ``breaker_failures`` times in a row and is skipped for a while."""

    def __init__(self, expert: str, message: str, retry_after_s: float):
        super().__init__(expert, message, "circuit_open")
        self.retry_after_s = retry_after_s


class Breaker:
    """A simple circuit breaker for one expert: ``failures`` failed calls in a row open it for ``cooldown_s``;
    then calls go through again (one more failure opens it again at once, a success closes it)."""

    def __init__(self, failures: int, cooldown_s: float):
        self.limit, self.cooldown_s = failures, cooldown_s
        self.in_a_row = 0
        self.open_until = 0.0
        self.last_error = ""
        self._lock = threading.Lock()

    def ok(self) -> None:
        with self._lock:
            self.in_a_row, self.open_until = 0, 0.0

    def fail(self, message: str) -> None:
        with self._lock:
            self.in_a_row += 1
            self.last_error = message
            if self.limit > 0 and self.in_a_row >= self.limit:
                self.open_until = time.monotonic() + self.cooldown_s

    def open_for(self) -> float:
        """Seconds until calls go through again (0: closed)."""
        return max(0.0, self.open_until - time.monotonic())


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
    # the experts avoided, each {expert, reason, fallback}: what the router took instead (degrade=True only)
    degraded: list[dict] = field(default_factory=list)
    in_progress: str | None = None  # the call in flight ("refine by <expert>"), for a deadline's message

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
    cost_share: float | None = None  # fitted to a budget (router/budget.py): served as der@<share>

    @classmethod
    def load(cls, path: Path, experts: list[str]) -> Policy:
        agent, ckpt = load_policy(path)
        if ckpt["experts"] != experts:
            raise ValueError(f"{path}: the policy was trained for experts {ckpt['experts']}; params.yaml has {experts}")
        fixed = ckpt.get("fixed_path_check") if ckpt.get("fixed_path") is not None else None
        return cls(Path(path), agent, ckpt["ppo"]["state"], ckpt["reward"]["actions"] == "ktp_only",
                   float(ckpt["reward"]["alpha"]), ckpt.get("seed"), fixed, ckpt.get("cost_share"))

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


SERVED_BACKENDS = ("openai", "llamaserver")  # experts behind a server that takes several requests at once
STOP_FOR_FALLBACK = "the last answer"  # a degraded episode's fallback when it ends with the answer it has


def _context_window(exc: Exception) -> bool:
    return "exceed context window" in str(exc) or "Requested tokens" in str(exc)


def allowed_list(t: int, last: int, n: int, ktp_only: bool) -> list[bool]:
    """env.allowed_actions for one state, without torch: at t = 0 only a first answer; then a refinement, STOP, or
    (unless ``ktp_only``) an escalation to another expert than the last."""
    if t == 0:
        return [True] * n + [False] * (n + 1)
    allowed = [not ktp_only] * n + [True] * (n + 1)
    if not ktp_only:
        allowed[max(last, 0)] = False
    return allowed


class _ServedClient:
    """POST JSON to an OpenAI-compatible server on the event loop, with the HTTP library the `openai` package is
    built on (its pooled async client, kept alive) and the openai client's retry rule: a dropped connection or a
    timeout, and HTTP 408/409/429/5xx, are tried again ``max_retries`` times with exponential backoff (0.5 s
    doubling to 8 s, less up to 25 % jitter; a Retry-After of at most 60 s is honoured). Lighter than the
    ``openai`` client's typed request and response models, which cost more than the rest of a routed request."""

    RETRY_STATUS = (408, 409, 429)

    def __init__(self, base_url: str, api_key: str, timeout_s: float, max_retries: int, capacity: int):
        import openai

        self.httpx = sys.modules[openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0]]
        self.base_url, self.max_retries = base_url, max_retries
        self.client = self.httpx.AsyncClient(
            timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"},
            limits=self.httpx.Limits(max_connections=max(100, 4 * capacity),
                                     max_keepalive_connections=max(20, 2 * capacity)))

    async def post(self, expert: str, path: str, body: dict) -> dict:
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                r = await self.client.post(url, json=body)
            except self.httpx.TransportError as exc:  # refused, dropped or timed out
                if last:
                    raise BackendError(f"{expert}: cannot reach the OpenAI-compatible server at {self.base_url} "
                                       f"(after {self.max_retries} retries): {type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(self._backoff(attempt, None))
                continue
            if r.status_code < 400:
                try:
                    return r.json()
                except ValueError as exc:
                    raise BackendError(f"{expert}: the server at {self.base_url} answered with no JSON: "
                                       f"{r.text[:200]}") from exc
            if last or not (r.status_code in self.RETRY_STATUS or r.status_code >= 500):
                raise BackendError(f"{expert}: the server at {self.base_url} answered HTTP {r.status_code}: "
                                   f"{_error_message(r)[:300]}")
            await asyncio.sleep(self._backoff(attempt, r.headers.get("retry-after")))
        raise AssertionError("unreachable")

    @staticmethod
    def _backoff(attempt: int, retry_after: str | None) -> float:
        try:
            after = float(retry_after) if retry_after is not None else None
        except ValueError:
            after = None
        if after is not None and 0 < after <= 60:
            return after
        return min(0.5 * 2.0 ** attempt, 8.0) * (1 - 0.25 * random.random())

    async def close(self) -> None:
        await self.client.aclose()


def _error_message(response) -> str:
    try:
        err = response.json().get("error")
        return str(err.get("message", err)) if isinstance(err, dict) else str(err or response.text)
    except (ValueError, AttributeError):
        return response.text


class LiveRouter:
    """The expert pool (loaded once) and the embedder, shared by every question; see the module docstring.

    ``breaker_failures`` failures in a row open an expert's circuit breaker for ``breaker_cooldown_s`` (0: never);
    ``expert_timeout_s`` bounds one call to a served expert on the async path (None: the client's own timeout);
    ``on_call(expert, outcome, seconds)`` is told of every call made (outcome "ok", "error" or "timeout") and of
    every call not made because the expert's breaker is open (outcome "circuit_open", 0 s).

    ``share``: another dataset's LiveRouter whose pool this one uses (`serve --dataset A --dataset B`): the same
    loaded models, locks, slots, circuit breakers and clients, so that two datasets never load a model twice
    nor call an in-process model at once; only the prompts and the answer parser are this dataset's."""

    # room a chat template adds around the messages' text (role markers, BOS): a conservative bound
    TEMPLATE_TOKENS = 64

    def __init__(self, p: Params, answer_type: str, backend: Backend | None = None, preload: bool = False,
                 breaker_failures: int = 3, breaker_cooldown_s: float = 30.0, expert_timeout_s: float | None = None,
                 share: LiveRouter | None = None):
        check_models(p)
        self.p, self.answer_type = p, answer_type
        self.names = p.expert_names()
        if share is not None and backend is None and share.p.generation != p.generation:
            share = None  # another engine (generation.backend_by_dataset): nothing to share
        self.owns_backend = share is None or backend is not None
        self.backend = backend or (share.backend if share is not None else make_backend(p.generation))
        self.served = self.backend.name in SERVED_BACKENDS
        g = p.generation
        self.capacity = (g.openai.concurrency if self.backend.name == "openai" else
                         g.llamaserver.slots if self.backend.name == "llamaserver" else 1)
        shared = share if share is not None and not self.owns_backend else None
        self._locks = shared._locks if shared else {}  # an in-process model: one call at a time
        self._slots = shared._slots if shared else {}  # a served one: up to its capacity
        self.breakers = shared.breakers if shared else {}
        for n in self.names:
            self._locks.setdefault(n, threading.Lock())
            self._slots.setdefault(n, threading.BoundedSemaphore(self.capacity))
            self.breakers.setdefault(n, Breaker(breaker_failures, breaker_cooldown_s))
        self._embed_lock = share._embed_lock if share is not None else threading.Lock()
        self.expert_timeout_s = expert_timeout_s
        self.on_call = None
        # event loop -> its gates and clients
        self._loops: weakref.WeakKeyDictionary = shared._loops if shared else weakref.WeakKeyDictionary()
        if preload:
            for e in p.experts:
                self._model(e)
                if isinstance(self.backend, OpenAIBackend):
                    self.backend._client_for(e)  # llama-server children start here, before the server listens
            self.embed(["warm-up"])

    def _model(self, expert: ExpertSpec):
        """The expert's in-process llama.cpp model, or None for a backend without one."""
        model = getattr(self.backend, "model", None)
        if model is None:
            return None
        with self._locks[expert.name]:
            return model(expert)

    def close(self) -> None:
        if self.owns_backend:
            self.backend.close()

    async def aclose(self) -> None:
        """Close the async clients made on the running loop (`serve`'s shutdown)."""
        per_loop = self._loops.pop(asyncio.get_running_loop(), None)
        for client in {id(c): c for c in (per_loop or {}).get("clients", {}).values()}.values():
            await client.close()

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

    # ---- one expert call --------------------------------------------------------------------------------

    def _generate_one(self, expert: ExpertSpec, prompt: Prompt) -> Completion:
        """The backend's completion, holding the expert's lock (in-process) or one of its slots (served). An
        in-process model's cache is cleared first: llama.cpp reuses a cached prefix, and logits computed over
        another batch split can differ in the last bits and flip a near-tie, so without the reset the same
        question could get another answer depending on what was asked before."""
        with (self._slots if self.served else self._locks)[expert.name]:
            llm = self.backend.model(expert) if hasattr(self.backend, "model") else None
            if llm is not None:
                llm.reset()
            return next(iter(self.backend.generate(expert, [prompt])))

    def _step(self, expert: ExpertSpec, out: Completion, action: str, probabilities: dict[str, float]) -> Step:
        return Step(expert=expert.name, action=action, probabilities=probabilities, answer=out.text,
                    confidence=out.confidence.row() if out.confidence else None, prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens, latency_s=out.latency_s,
                    cost_gflops=call_cost(expert, out.prompt_tokens, out.completion_tokens))

    def _failed(self, expert: ExpertSpec, exc: BaseException, t0: float) -> Exception:
        """The error to raise for a failed call (and the breaker and ``on_call`` told): the input's fault
        (PromptTooLongError) or the expert's (ExpertCallError)."""
        if isinstance(exc, BackendError) and _context_window(exc):
            return PromptTooLongError(f"expert {expert.name!r}: {exc}")
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) and self.expert_timeout_s:
            err = ExpertCallError(expert.name, f"expert {expert.name!r} timed out after {self.expert_timeout_s:g} s "
                                               f"(serve --expert-timeout-s)", "timeout")
        elif isinstance(exc, BackendError):
            err = ExpertCallError(expert.name, f"expert {expert.name!r} failed: {exc}")
        else:
            err = ExpertCallError(expert.name, f"expert {expert.name!r} failed: {type(exc).__name__}: {exc}")
        self.breakers[expert.name].fail(str(err))
        self._tell(expert.name, err.reason, t0)
        return err

    def _tell(self, name: str, outcome: str, t0: float) -> None:
        if self.on_call is not None:
            self.on_call(name, outcome, time.perf_counter() - t0)

    def _succeeded(self, expert: ExpertSpec, t0: float) -> None:
        self.breakers[expert.name].ok()
        self._tell(expert.name, "ok", t0)

    def call(self, expert: ExpertSpec, prompt: Prompt, action: str, probabilities: dict[str, float]) -> Step:
        """One expert call, in this thread."""
        t0 = time.perf_counter()
        try:
            out = self._generate_one(expert, prompt)
        except Exception as exc:  # noqa: BLE001 - any engine failure is that expert's
            raise self._failed(expert, exc, t0) from exc
        self._succeeded(expert, t0)
        return self._step(expert, out, action, probabilities)

    def _per_loop(self) -> dict:
        """The running loop's gates (an asyncio.Semaphore per expert: 1 for an in-process model, the server's
        capacity for a served one) and async clients: asyncio objects belong to one loop."""
        loop = asyncio.get_running_loop()
        per_loop = self._loops.get(loop)
        if per_loop is None:
            per_loop = self._loops[loop] = {"gates": {}, "clients": {}}
        for n in self.names:  # a pool shared with another dataset's router may lack this one's specialist
            if n not in per_loop["gates"]:
                per_loop["gates"][n] = asyncio.Semaphore(self.capacity)
        return per_loop

    def _async_client(self, expert: ExpertSpec) -> _ServedClient:
        """The async HTTP client to the expert's server (the sync backend's URL, key, timeout and retries), one per
        server on the running loop."""
        clients = self._per_loop()["clients"]
        client = clients.get(expert.name)
        if client is None:
            sync = self.backend._client_for(expert)
            url = str(sync.base_url).rstrip("/")
            client = next((c for c in clients.values() if c.base_url == url), None) or _ServedClient(
                url, sync.api_key, float(self.backend.cfg.openai.timeout_s), sync.max_retries, self.capacity)
            clients[expert.name] = client
        return client

    async def _served(self, expert: ExpertSpec, p: Prompt) -> Completion:
        """One request to a served expert on the event loop: the request and its reading as OpenAIBackend._create /
        _one make them (experts/backends.py), with the same error messages."""
        b = self.backend
        client = self._async_client(expert)
        body = {"model": b._model_id(expert), "max_tokens": p.max_tokens, "temperature": b.cfg.temperature,
                "seed": b.cfg.seed}
        if p.stop:
            body["stop"] = list(p.stop)
        if p.kind == "chat":
            body["messages"] = list(p.messages)
            if b.top_logprobs:
                body.update(logprobs=True, top_logprobs=b.top_logprobs)
        else:
            body["prompt"] = p.text
            if b.top_logprobs:
                body["logprobs"] = b.top_logprobs
        t0 = time.perf_counter()
        out = await client.post(expert.name, "/chat/completions" if p.kind == "chat" else "/completions", body)
        try:
            choice = out["choices"][0]
            text = (choice["message"].get("content") if p.kind == "chat" else choice.get("text")) or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendError(f"{expert.name}: the server at {client.base_url} answered without a choice: "
                               f"{str(out)[:200]}") from exc
        usage = out.get("usage") or {}
        if usage.get("prompt_tokens") is None or usage.get("completion_tokens") is None:
            raise BackendError(f"{expert.name}: the server at {client.base_url} returned no token usage, so the "
                               f"call's cost is unknown (a call must never look free)")
        conf = None
        if b.top_logprobs:
            tokens = token_logprobs(choice.get("logprobs"))
            conf = from_token_logprobs(tokens, p.answer_type) if tokens is not None else None
        return Completion(text=text.strip(), prompt_tokens=int(usage["prompt_tokens"]),
                          completion_tokens=int(usage["completion_tokens"]), latency_s=time.perf_counter() - t0,
                          finish_reason=str(choice.get("finish_reason") or "stop"), confidence=conf)

    async def acall(self, expert: ExpertSpec, prompt: Prompt, action: str, probabilities: dict[str, float]) -> Step:
        """One expert call on the event loop: a served expert through the async client (cancelled with the
        request), an in-process one on a worker thread (a cancelled request stops waiting for it; the model
        finishes the call, and nothing further is started)."""
        async with self._per_loop()["gates"][expert.name]:
            t0 = time.perf_counter()
            try:
                if isinstance(self.backend, OpenAIBackend):
                    call = self._served(expert, prompt)
                    out = await (asyncio.wait_for(call, self.expert_timeout_s) if self.expert_timeout_s else call)
                else:
                    out = await asyncio.to_thread(self._generate_one, expert, prompt)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any engine failure is that expert's
                raise self._failed(expert, exc, t0) from exc
        self._succeeded(expert, t0)
        return self._step(expert, out, action, probabilities)

    # ---- one question -----------------------------------------------------------------------------------

    def start(self, question: str, context: str) -> Routed:
        """A question's empty Routed: the input cleaned (an empty question refused, the context trimmed)."""
        question, context, trimmed_from = clean_input(self.p, question, context)
        return Routed(question, context, trimmed_from)

    def unavailable(self, name: str) -> ExpertUnavailableError | None:
        """The error for an expert whose breaker is open (None: it may be called)."""
        b = self.breakers[name]
        left = b.open_for()
        if left <= 0:
            return None
        return ExpertUnavailableError(name, f"expert {name!r} is skipped for {left:.0f} s more: {b.in_a_row} failures "
                                            f"in a row (circuit breaker; serve --breaker-failures, "
                                            f"--breaker-cooldown-s); the last: {b.last_error}", left)

    def open_breakers(self) -> dict[str, dict]:
        return {n: {"failures_in_a_row": b.in_a_row, "open_for_s": round(b.open_for(), 1), "last_error": b.last_error}
                for n, b in self.breakers.items() if b.open_for() > 0}

    def direct(self, expert_name: str, question: str, context: str) -> Routed:
        """One expert answers (no policy): what the tree's single-expert path holds."""
        question, context, trimmed_from = clean_input(self.p, question, context)
        self.check_fits(question, context, [expert_name])
        expert = self.p.expert(expert_name)
        routed = Routed(question, context, trimmed_from)
        routed.steps.append(self.call(expert, self.prompt(expert, question, context), "answer", {}))
        return routed

    async def adirect(self, expert_name: str, routed: Routed) -> Routed:
        """``direct`` on the event loop, into ``routed`` (from ``start``); an open breaker fails at once."""
        await self._afits(routed, [expert_name])
        closed = self.unavailable(expert_name)
        if closed is not None:
            self._tell(expert_name, "circuit_open", time.perf_counter())
            raise closed
        expert = self.p.expert(expert_name)
        routed.in_progress = f"answer by {expert_name}"
        routed.steps.append(await self.acall(expert, self.prompt(expert, routed.question, routed.context),
                                             "answer", {}))
        routed.in_progress = None
        return routed

    async def _afits(self, routed: Routed, experts: list[str]) -> None:
        if self.served or getattr(self.backend, "model", None) is None:
            self.check_fits(routed.question, routed.context, experts)  # no tokeniser here: nothing to wait for
        else:
            await asyncio.to_thread(self.check_fits, routed.question, routed.context, experts)

    def action_labels(self) -> list[str]:
        return [f"answer:{e}" for e in self.names] + [f"refine:{e}" for e in self.names] + ["STOP"]

    def route(self, policy: Policy | Router, question: str, context: str, on_step=None,
              degrade: bool = False) -> Routed:
        """Run ``policy`` (a trained DER policy, greedy, or any live router of the registry) for one question;
        ``on_step(t, probabilities, step_or_None)`` after each decision. The query and the answers are embedded
        only where the policy reads them. ``degrade``: avoid a failing expert (module docstring) instead of
        raising its ExpertCallError."""
        question, context, trimmed_from = clean_input(self.p, question, context)
        self.check_fits(question, context, self.names)
        routed = Routed(question, context, trimmed_from)
        episode = self._episode(policy, routed, on_step, degrade)
        reply = None
        while True:
            try:
                op = episode.send(reply)
            except StopIteration:
                return routed
            if op[0] == "embed":
                reply = self.embed(op[1])
                continue
            try:
                reply = self.call(*op[1:])
            except ExpertCallError as exc:
                if not degrade:
                    episode.close()
                    raise
                reply = exc

    async def arun(self, policy: Policy | Router, routed: Routed, degrade: bool = True) -> Routed:
        """``route`` on the event loop, into ``routed`` (from ``start``): the embeddings on a worker thread, the
        calls with ``acall``. Cancelling it starts no further call."""
        await self._afits(routed, self.names)
        episode = self._episode(policy, routed, None, degrade)
        reply = None
        try:
            while True:
                try:
                    op = episode.send(reply)
                except StopIteration:
                    return routed
                if op[0] == "embed":
                    reply = await asyncio.to_thread(self.embed, op[1])
                    continue
                try:
                    reply = await self.acall(*op[1:])
                except ExpertCallError as exc:
                    if not degrade:
                        raise
                    reply = exc
        finally:
            episode.close()

    def _episode(self, policy: Policy | Router, routed: Routed, on_step, degrade: bool):
        """One question's decisions, as a generator: it yields ("embed", texts) for embeddings and ("call", expert,
        prompt, action, probabilities) for expert calls, and is sent back the embeddings, the Step, or (with
        ``degrade``) the call's ExpertCallError, after which it takes its next choice (module docstring)."""
        question, context = routed.question, routed.context
        n, labels = len(self.names), self.action_labels()
        der = isinstance(policy, Policy)
        reads_query = policy.reads_query if der else policy.needs_query_embedding
        reads_answer = der and policy.reads_answer
        q_emb = None
        if reads_query or reads_answer:
            q_emb = torch.as_tensor((yield ("embed", [query_text(question, context)]))[0])
        last_emb = torch.zeros_like(q_emb) if q_emb is not None else None
        conf = np.zeros(len(CONF_FEATURES), dtype=np.float32)
        last, answer = -1, ""
        failed: set[str] = set()  # experts that failed this question
        for t in range(T_MAX):
            allowed = allowed_list(t, last, n, policy.ktp_only if der else False)
            if der:
                tt, ll = torch.tensor([t]), torch.tensor([last])
                mask = torch.tensor([allowed])
                none = torch.zeros(1, 0)  # a state that reads neither embedding (confidence) gets empty ones
                obs = build_obs(policy.state, none if q_emb is None else q_emb[None],
                                none if last_emb is None else last_emb[None], torch.from_numpy(conf)[None], tt, ll, n)
                with torch.no_grad():
                    probs = torch.softmax(policy.agent.masked_logits(obs, mask), dim=1)[0].numpy()
                shown = {a: round(float(pr), 4) for a, pr, ok in zip(labels, probs, allowed) if ok}
                # the policy's choice (the argmax: the sort is stable), then its other allowed actions in order
                order = [a for a in sorted(range(2 * n + 1), key=lambda a: -probs[a]) if allowed[a]]
            else:
                state = LiveState(t, last, n, None if q_emb is None else q_emb.numpy(), conf)
                choice = policy.act(state)
                shown = {labels[choice]: 1.0}
                if not allowed[choice]:
                    if not routed.degraded:
                        raise RuntimeError(f"router {policy.id!r} chose {labels[choice]}, not allowed at step {t}")
                    order = []  # after a fallback the router's plan may not fit the path taken: stop there
                else:
                    order = [choice]
                k = choice % n if choice < 2 * n else 0
                # a registry router's fallback: STOP with the last answer, else the pool's next experts
                order += [2 * n] if t > 0 else [(k + i) % n for i in range(1, n)]
            step, action, avoided = None, None, []
            for cand in order if degrade else order[:1]:
                if cand == 2 * n:
                    action = cand
                    break
                name = self.names[cand - n if cand >= n else cand]
                if name in failed:
                    avoided.append({"expert": name, "reason": "failed earlier in this request"})
                    continue
                closed = self.unavailable(name) if degrade else None
                if closed is not None:
                    self._tell(name, "circuit_open", time.perf_counter())  # skipped: no call made
                    avoided.append({"expert": name, "reason": str(closed)})
                    continue
                refine = cand >= n
                expert = self.p.expert(name)
                routed.in_progress = f"{'refine' if refine else 'answer'} by {name}"
                reply = yield ("call", expert, self.prompt(expert, question, context, previous=answer if refine
                                                           else None), "refine" if refine else "answer", shown)
                routed.in_progress = None
                if isinstance(reply, ExpertCallError):
                    failed.add(name)
                    avoided.append({"expert": name, "reason": str(reply)})
                    continue
                step, action = reply, cand
                break
            fallback = (labels[action] if action is not None and action != 2 * n
                        else STOP_FOR_FALLBACK if routed.steps else None)
            for a in avoided:
                if a["reason"] != "failed earlier in this request" or not any(d["expert"] == a["expert"]
                                                                               for d in routed.degraded):
                    routed.degraded.append({**a, "fallback": fallback})
            if action is None:
                if not routed.steps:
                    reasons = "; ".join(a["reason"] for a in avoided)
                    if avoided and all(isinstance(self.unavailable(a["expert"]), ExpertUnavailableError)
                                       for a in avoided):
                        raise ExpertUnavailableError(avoided[0]["expert"], f"no expert could answer: {reasons}",
                                                     min(self.breakers[a["expert"]].open_for() for a in avoided))
                    raise ExpertCallError(avoided[0]["expert"] if avoided else "",
                                          f"no expert could answer: {reasons}")
                break  # the last answer stands
            if action == 2 * n:
                routed.stopped = not avoided  # STOP chosen by the policy, not forced by a failure
                if on_step:
                    on_step(t, shown, None)
                break
            routed.steps.append(step)
            if on_step:
                on_step(t, shown, step)
            answer, last = step.answer, self.names.index(step.expert)
            if reads_answer:
                last_emb = torch.as_tensor((yield ("embed", [answer]))[0])
            conf = np.asarray(conf_features(step.confidence), dtype=np.float32)

    def parse(self, answer: str) -> str:
        return parse_answer(answer, self.answer_type)
