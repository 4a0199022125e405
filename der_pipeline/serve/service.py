"""What the server serves, without HTTP: the model ids, and one chat request answered as a completion body.

Model ids (after RouteLLM's server, where ``model`` names the router): ``der`` is the policy that
``ask`` loads (models/<dataset>/seed-<first seed>), ``der:<alpha>`` a policy trained with that cost
weight (the default one, and any given with ``--policy``), ``der@<share>`` a policy fitted to spend at most
that share of the reference expert's cost (`train --cost-share`, or the budgets stage's
results/budgets/<dataset>/policy-<share>.pt), every live router of the registry by its id (``cascade``,
``best_fixed``, ``knn``, ``mlp``, ..., fitted on the train split as evaluate fits them), and an expert's
name calls that expert directly, so a client can compare the routers with each expert on the same question.

A server of several datasets (``Services``) serves each one's ids qualified by the dataset after a slash,
before any ``:alpha`` or ``@share``: ``der/sst2@<share>``, ``der/boolq:<alpha>``, ``cascade/sst2``,
``<expert>/sst2``; the dataset picks the prompt and the answer parser. The unqualified ids name the
first dataset's, so a one-dataset client needs no change.

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


def share_id(share: float) -> str:
    return f"der@{share:g}"


def policy_id(policy: Policy) -> str:
    """A budget policy is served by its share (the number its user chose), any other by its alpha."""
    return share_id(policy.cost_share) if policy.cost_share is not None else alpha_id(policy.alpha)


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
        self.policies: dict[str, Policy] = {policy_id(default): default}
        for pol in extra:
            key = policy_id(pol)
            if key in self.policies and self.policies[key].path != pol.path:
                what = (f"cost share {pol.cost_share:g}" if pol.cost_share is not None else f"alpha {pol.alpha:g}")
                raise ValueError(f"two policies share {what}: {self.policies[key].path} and {pol.path}")
            self.policies[key] = pol
        self.created = int(time.time())
        self.hashes = {key: content_hash(pol.path) for key, pol in self.policies.items()}

    def model_ids(self) -> list[str]:
        return ["der", *sorted(self.policies), *self.routers, *self.live.names]

    def describe(self, model: str) -> dict:
        """What /v1/models says of one id beyond OpenAI's fields: the dataset, and a policy's alpha and budget."""
        out = {"dataset": self.dataset}
        target = self.resolve(model)
        if isinstance(target, Policy):
            out.update(alpha=target.alpha, cost_share=target.cost_share)
        elif not isinstance(target, str):
            out["router"] = target.id
        return out

    def resolve(self, model: str) -> Policy | Router | str:
        """The policy, the router, or the expert's name, that ``model`` asks for."""
        if model == "der":
            return self.default
        if model in self.routers:
            return self.routers[model]
        if model.startswith(("der:", "der@")):
            try:
                number = float(model[4:])
                key = alpha_id(number) if model[3] == ":" else share_id(number)
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
        return policy_id(target) if model.startswith(("der:", "der@")) and isinstance(target, Policy) else model

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

    def completion(self, model: str, routed: Routed, latency_s: float, local: str | None = None) -> dict:
        """A standard chat.completion body, plus the ``der`` extension (the steps and the total cost);
        ``model`` as the client named it, ``local`` this dataset's id for it (``Services``)."""
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": routed.answer},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": usage(routed),
            "der": self.extension(local or model, routed, latency_s),
        }

    def extension(self, model: str, routed: Routed, latency_s: float) -> dict:
        target = self.resolve(model)
        if isinstance(target, str):
            policy = None
        elif isinstance(target, Policy):
            key = policy_id(target)
            policy = {"id": key, "sha256": self.hashes.get(key), "alpha": target.alpha, "cost_share": target.cost_share,
                      "seed": target.seed, "state": target.state,
                      "fixed_path": (target.fixed_path or {}).get("path_name")}
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


class Services:
    """The datasets one server serves (`serve --dataset A --dataset B`): each its RouterService, over one pool
    (LiveRouter ``share``); the first is the default (the module docstring has the ids)."""

    def __init__(self, services: list[RouterService]):
        if not services:
            raise ValueError("a server needs at least one dataset")
        self.by_dataset = {s.dataset: s for s in services}
        if len(self.by_dataset) != len(services):
            raise ValueError(f"a dataset is named twice: {[s.dataset for s in services]}")
        self.default = services[0]
        self.created = self.default.created

    @property
    def datasets(self) -> list[str]:
        return list(self.by_dataset)

    def experts(self) -> list[str]:
        return list(dict.fromkeys(n for s in self.by_dataset.values() for n in s.live.names))

    def lives(self) -> list[LiveRouter]:
        return [s.live for s in self.by_dataset.values()]

    def open_breakers(self) -> dict[str, dict]:
        return {k: v for live in self.lives() for k, v in live.open_breakers().items()}

    def model_ids(self) -> list[str]:
        ids = list(self.default.model_ids())
        if len(self.by_dataset) > 1:
            ids += [qualify(m, s.dataset) for s in self.by_dataset.values() for m in s.model_ids()]
        return ids

    def split(self, model: str) -> tuple[RouterService, str]:
        """The dataset's service that ``model`` names, and its id there (``der/sst2@0.5`` -> sst2's ``der@0.5``)."""
        if "/" not in model or self.default.canonical(model) is not None:  # an expert's name may hold a slash
            return self.default, model
        name, rest = model.rsplit("/", 1)
        cut = min((i for i in (rest.find(":"), rest.find("@")) if i >= 0), default=len(rest))
        dataset, suffix = rest[:cut], rest[cut:]
        if dataset not in self.by_dataset:
            raise UnknownModelError(model, self.model_ids())
        return self.by_dataset[dataset], name + suffix

    def resolve(self, model: str) -> tuple[RouterService, Policy | Router | str]:
        svc, local = self.split(model)
        try:
            return svc, svc.resolve(local)
        except UnknownModelError:
            raise UnknownModelError(model, self.model_ids()) from None

    def canonical(self, model: str) -> str | None:
        try:
            svc, local = self.split(model)
        except UnknownModelError:
            return None
        canon = svc.canonical(local)
        if canon is None or "/" not in model:
            return canon
        return qualify(canon, svc.dataset)

    def describe(self, model: str) -> dict:
        svc, local = self.split(model)
        return svc.describe(local)


def qualify(model: str, dataset: str) -> str:
    """``der@0.5`` of sst2 is ``der/sst2@0.5``; ``cascade`` of sst2 is ``cascade/sst2``."""
    for mark in (":", "@"):
        if model.startswith("der" + mark):
            return f"der/{dataset}{model[3:]}"
    return f"{model}/{dataset}"
