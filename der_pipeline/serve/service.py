"""What the server serves, without HTTP: the model ids, and one chat request answered as a completion body.

Model ids (after RouteLLM's server, where ``model`` names the router): ``der`` is the policy that
``ask`` loads (models/<dataset>/seed-<first seed>), ``der:<alpha>`` a policy trained with that cost
weight (the default one, and any given with ``--policy``), every live router of the registry by its id
(``cascade``, ``best_fixed``, ``knn``, ``mlp``, ..., fitted on the train split as evaluate fits them), and
an expert's name calls that expert directly, so a client can compare the routers with each expert on the
same question.

A policy is named in responses by its model id and a short hash of its file's content, never by its path: no
response carries a path of the server's. Error messages that reach a client go through ``scrub``.
"""
from __future__ import annotations

import hashlib
import math
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from der_pipeline.router.live import LiveRouter, Policy, Routed
from der_pipeline.router.methods import Router


class UnknownModelError(LookupError):
    def __init__(self, model: str, known: list[str]):
        shown = model if len(model) <= 100 else model[:100] + "..."
        super().__init__(f"model {shown!r} does not exist; this server has {known} (GET /v1/models)")


@dataclass
class Question:
    question: str
    context: str


def alpha_id(alpha: float) -> str:
    return f"der:{alpha:g}"


def _path_pattern() -> re.Pattern:
    """Absolute file paths, not URLs' paths: under a usual top-level folder (or this process's working folder,
    home, temporary folder, Python prefix), or on a Windows drive."""
    roots = {"home", "tmp", "work", "root", "usr", "var", "opt", "etc", "mnt", "srv", "data", "Users", "private",
             "nix", "run", "media", "scratch", "proc", "dev", "lib", "bin", "sbin", "Volumes"}
    for where in (Path.cwd(), Path.home(), Path(tempfile.gettempdir()), Path(sys.prefix)):
        if where.is_absolute() and len(where.parts) > 1:
            roots.add(where.parts[1])
    names = "|".join(sorted(re.escape(r) for r in roots))
    return re.compile(rf"(?<![\w:/.~-])(?:/(?:{names})(?=/|\b)[^\s'\"(),;:]*|[A-Za-z]:\\[^\s'\"(),;]+)")


_PATH = _path_pattern()


def scrub(message: str) -> str:
    """``message`` without absolute file paths (a backend's message can name a log file or a model file)."""
    return _PATH.sub("<path>", message)


def content_hash(path: Path | str) -> str | None:
    """The first 12 hex digits of the file's sha256 (None when there is no such file)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return None


class RouterService:
    def __init__(self, live: LiveRouter, dataset: str, default: Policy, extra: list[Policy] = (),
                 routers: dict[str, Router] | None = None):
        self.live, self.dataset, self.default = live, dataset, default
        self.routers = dict(routers or {})
        self.policies: dict[str, Policy] = {alpha_id(default.alpha): default}
        for pol in extra:
            key = alpha_id(pol.alpha)
            if key in self.policies and self.policies[key].path != pol.path:
                raise ValueError(f"two policies share alpha {pol.alpha:g}: {self.policies[key].path} and {pol.path}")
            self.policies[key] = pol
        self.created = int(time.time())
        self.hashes = {key: content_hash(pol.path) for key, pol in self.policies.items()}

    def model_ids(self) -> list[str]:
        return ["der", *sorted(self.policies), *self.routers, *self.live.names]

    def resolve(self, model: str) -> Policy | Router | str:
        """The policy, the router, or the expert's name, that ``model`` asks for."""
        if model == "der":
            return self.default
        if model in self.routers:
            return self.routers[model]
        if model.startswith("der:"):
            try:
                key = alpha_id(float(model[4:]))
            except ValueError:
                key = None
            if key in self.policies:
                return self.policies[key]
        elif model in self.live.names:
            return model
        raise UnknownModelError(model, self.model_ids())

    def canonical(self, model: str) -> str | None:
        """The served id that ``model`` names (``der:0.250`` is ``der:0.25``), None for no model of this server."""
        try:
            target = self.resolve(model)
        except UnknownModelError:
            return None
        return alpha_id(target.alpha) if model.startswith("der:") and isinstance(target, Policy) else model

    def answer(self, model: str, q: Question) -> Routed:
        target = self.resolve(model)
        if isinstance(target, str):
            return self.live.direct(target, q.question, q.context)
        return self.live.route(target, q.question, q.context)

    async def aanswer(self, target: Policy | Router | str, routed: Routed) -> Routed:
        """``target`` (from ``resolve``) answers ``routed``'s question (from ``live.start``) on the event loop,
        avoiding a failing expert where another action can answer (LiveRouter ``degrade``)."""
        if isinstance(target, str):
            return await self.live.adirect(target, routed)
        return await self.live.arun(target, routed, degrade=True)

    def completion(self, model: str, routed: Routed, latency_s: float) -> dict:
        """A standard chat.completion body, plus the ``der`` extension (the steps and the total cost)."""
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": routed.answer},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": usage(routed),
            "der": self.extension(model, routed, latency_s),
        }

    def extension(self, model: str, routed: Routed, latency_s: float) -> dict:
        target = self.resolve(model)
        if isinstance(target, str):
            policy = None
        elif isinstance(target, Policy):
            key = alpha_id(target.alpha)
            policy = {"id": key, "sha256": self.hashes.get(key), "alpha": target.alpha, "seed": target.seed,
                      "state": target.state, "fixed_path": (target.fixed_path or {}).get("path_name")}
        else:  # a fitted router of the registry: what it settled on, on the train split
            policy = {"router": target.id, "chosen": _finite(getattr(target, "chosen", None))}
        return {
            "dataset": self.dataset, "answer_type": self.live.answer_type,
            "policy": policy,
            "path": routed.path, "stopped": routed.stopped, "parsed_answer": self.live.parse(routed.answer),
            "context_trimmed_from": routed.context_trimmed_from,
            "degraded": degraded(routed),
            "cost_gflops": round(routed.cost_gflops, 3), "latency_s": round(latency_s, 3),
            "steps": [{"expert": s.expert, "action": s.action, "probabilities": s.probabilities, "answer": s.answer,
                       "confidence": s.confidence, "prompt_tokens": s.prompt_tokens,
                       "completion_tokens": s.completion_tokens, "latency_s": round(s.latency_s, 3),
                       "cost_gflops": round(s.cost_gflops, 3)} for s in routed.steps],
        }


def degraded(routed: Routed) -> dict | None:
    """The first expert avoided ({expert, reason, fallback}), with any others under ``also``; None if none was."""
    if not routed.degraded:
        return None
    first, *more = ({**d, "reason": scrub(d["reason"])} for d in routed.degraded)
    return {**first, "also": more} if more else first


def _finite(value):
    """JSON has no infinity: a threshold of inf (escalate every query) is shown as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def usage(routed: Routed) -> dict:
    return {"prompt_tokens": routed.prompt_tokens, "completion_tokens": routed.completion_tokens,
            "total_tokens": routed.prompt_tokens + routed.completion_tokens}
