"""The key of a tree node: a hash of exactly what went into the call.

    key = sha256(backend, model fingerprint, rendered prompt, max_tokens, stop, temperature, seed)[:16]

The rendered prompt is the chat messages (rendered by the model's own template,
which the fingerprint covers) or the completion text, so it carries the question,
the context as trimmed and ordered by ``prepare`` (``data.seed`` picks HotpotQA's
distractors), the expert's ``chat`` flag, the prompt wording and, at hop 2, the
parent's answer (hence the parent's model and settings). Editing a prompt, a seed
or a model therefore changes the key, and the node is regenerated; a node from
another backend or model never stands in for this one.

The model fingerprint is the GGUF's SHA-256 (known from the package for the
packaged pool, so readers need no model file), with the SHA-256 of its LoRA
adapter appended where it has one (a specialist: its nodes are never its base
model's), or ``served:<id>`` behind an OpenAI-compatible server, where only the
served id is known.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from der_pipeline.config import ExpertSpec, Params
from der_pipeline.experts.models import PACKAGED, expert_model_path, file_fingerprint
from der_pipeline.experts.prompts import Prompt, build_prompt


def served_model_id(expert: ExpertSpec) -> str:
    """The model id an OpenAI-compatible server knows an expert by: its source after 'openai:', else its name."""
    return expert.source.removeprefix("openai:") if expert.source.startswith("openai:") else expert.name


@functools.cache
def gguf_fingerprint(expert: ExpertSpec) -> str:
    """'sha256:<first 16 hex digits>' of an expert's GGUF (the package's pinned hash, which loading verifies,
    when it has one; otherwise the file's own hash, memoised)."""
    lora = "" if expert.adapter is None else f"+lora:{file_fingerprint(Path(expert.adapter))[:16]}"
    if expert.source.startswith("package:"):
        spec = PACKAGED.get(expert.source.removeprefix("package:"))
        if spec is not None and spec.sha256:
            return f"sha256:{spec.sha256[:16]}{lora}"
    return f"sha256:{file_fingerprint(expert_model_path(expert))[:16]}{lora}"


def model_fingerprint(expert: ExpertSpec, backend: str) -> str:
    if backend == "openai":
        return f"served:{served_model_id(expert)}"
    return gguf_fingerprint(expert)


def render_prompt(p: Params, expert: ExpertSpec, query: dict, previous: str | None = None) -> Prompt:
    """The prompt an expert gets for a prepared query (``previous``: the answer it refines, at hop 2)."""
    kind = query["answer_type"]
    return build_prompt(expert.chat, query["question"], query["context"], kind, p.generation.max_tokens[kind],
                        previous)


def node_key(prompt: Prompt, backend: str, fingerprint: str, temperature: float, seed: int) -> str:
    blob = json.dumps({"backend": backend, "model": fingerprint, "kind": prompt.kind, "messages": list(prompt.messages),
                       "text": prompt.text, "stop": list(prompt.stop), "max_tokens": prompt.max_tokens,
                       "temperature": temperature, "seed": seed}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class NodeKeys:
    """The keys that nodes must carry under the current params (and backend) to be read as current."""

    def __init__(self, p: Params, backend: str | None = None):
        self.p = p
        self.backend = backend or p.generation.backend
        self.fingerprints = {e.name: model_fingerprint(e, self.backend) for e in p.experts}

    def prompt_and_key(self, expert: ExpertSpec, query: dict, previous: str | None = None) -> tuple[Prompt, str]:
        prompt = render_prompt(self.p, expert, query, previous)
        g = self.p.generation
        return prompt, node_key(prompt, self.backend, self.fingerprints[expert.name], g.temperature, g.seed)

    def key(self, expert: ExpertSpec, query: dict, previous: str | None = None) -> str:
        return self.prompt_and_key(expert, query, previous)[1]
