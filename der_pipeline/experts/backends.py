"""Generation backends behind one interface.

- ``llamacpp``: llama-cpp-python in-process on the CPU (the embedded default).
- ``openai``: any OpenAI-compatible server (llama-server, ``vllm serve``, Ollama).
- ``vllm``: offline batch generation with ``vllm.LLM`` on a GPU (optional extra).

A backend takes one expert and a batch of prompts and yields one ``Completion``
per prompt, in order. Batching matters for vLLM (one batch per hop); llama.cpp
runs the prompts back to back so shared prefixes reuse the KV cache.
"""
from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from der_pipeline.config import ExpertSpec, GenerationConfig
from der_pipeline.experts.models import file_fingerprint, resolve_model_path
from der_pipeline.experts.prompts import Prompt


class BackendError(RuntimeError):
    """A backend cannot run: missing extra, missing GPU, unreachable server."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str


@functools.lru_cache(maxsize=None)
def gguf_fingerprint(source: str) -> str:
    """'sha256:<first 16 hex digits>' of an expert's model file."""
    return f"sha256:{file_fingerprint(resolve_model_path(source))[:16]}"


class Backend(ABC):
    name: str = ""

    def __init__(self, cfg: GenerationConfig):
        self.cfg = cfg

    @abstractmethod
    def fingerprint(self, expert: ExpertSpec) -> str:
        """Identifies the exact model behind an expert (file hash or served model id)."""

    @abstractmethod
    def generate(self, expert: ExpertSpec, prompts: list[Prompt]) -> Iterator[Completion]:
        """One completion per prompt, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class LlamaCppBackend(Backend):
    """In-process llama.cpp. Every expert's model is loaded once and kept (the default pool is ~2 GB)."""

    name = "llamacpp"

    def __init__(self, cfg: GenerationConfig):
        super().__init__(cfg)
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise BackendError("backend 'llamacpp' needs llama-cpp-python: pip install -e '.[llamacpp]' "
                               "(builds from source, a few minutes)") from None
        self._models: dict[str, object] = {}

    def fingerprint(self, expert: ExpertSpec) -> str:
        return gguf_fingerprint(expert.source)

    def model(self, expert: ExpertSpec):
        if expert.name not in self._models:
            from llama_cpp import Llama

            path = resolve_model_path(expert.source)
            self._models[expert.name] = Llama(model_path=str(path), n_ctx=self.cfg.n_ctx, n_threads=self.cfg.n_threads,
                                              n_batch=512, seed=self.cfg.seed, verbose=False)
        return self._models[expert.name]

    def generate(self, expert: ExpertSpec, prompts: list[Prompt]) -> Iterator[Completion]:
        llm = self.model(expert)
        for p in prompts:
            t0 = time.perf_counter()
            try:
                if p.kind == "chat":
                    out = llm.create_chat_completion(messages=list(p.messages), max_tokens=p.max_tokens,
                                                     temperature=self.cfg.temperature, seed=self.cfg.seed,
                                                     stop=list(p.stop) or None)
                    text = out["choices"][0]["message"]["content"] or ""
                else:
                    out = llm.create_completion(prompt=p.text, max_tokens=p.max_tokens,
                                                temperature=self.cfg.temperature, seed=self.cfg.seed,
                                                stop=list(p.stop) or None)
                    text = out["choices"][0]["text"] or ""
            except ValueError as exc:  # e.g. the prompt does not fit n_ctx
                raise BackendError(f"{expert.name}: llama.cpp refused a prompt: {exc}. "
                                   f"Raise generation.n_ctx or lower data.max_context_chars.") from exc
            usage = out["usage"]
            yield Completion(text=text.strip(), prompt_tokens=int(usage["prompt_tokens"]),
                             completion_tokens=int(usage["completion_tokens"]),
                             latency_s=time.perf_counter() - t0,
                             finish_reason=str(out["choices"][0].get("finish_reason") or "stop"))

    def close(self) -> None:
        for m in self._models.values():
            close = getattr(m, "close", None)
            if close:
                close()
        self._models.clear()


class OpenAIBackend(Backend):
    """Any server speaking the OpenAI HTTP API. An expert's model id is its source after 'openai:', else its name."""

    name = "openai"

    def _model_id(self, expert: ExpertSpec) -> str:
        return expert.source.removeprefix("openai:") if expert.source.startswith("openai:") else expert.name

    def _post(self, route: str, body: dict) -> dict:
        url = self.cfg.openai.base_url.rstrip("/") + route
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.cfg.openai.api_key}"})
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.openai.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise BackendError(f"{url}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise BackendError(f"cannot reach the OpenAI-compatible server at {url}: {exc}. "
                               f"Start one (e.g. python -m llama_cpp.server --model FILE) and set "
                               f"generation.openai.base_url") from exc

    def fingerprint(self, expert: ExpertSpec) -> str:
        return f"served:{self._model_id(expert)}"

    def generate(self, expert: ExpertSpec, prompts: list[Prompt]) -> Iterator[Completion]:
        for p in prompts:
            body = {"model": self._model_id(expert), "max_tokens": p.max_tokens,
                    "temperature": self.cfg.temperature, "seed": self.cfg.seed}
            if p.stop:
                body["stop"] = list(p.stop)
            t0 = time.perf_counter()
            if p.kind == "chat":
                out = self._post("/chat/completions", {**body, "messages": list(p.messages)})
                text = out["choices"][0]["message"]["content"] or ""
            else:
                out = self._post("/completions", {**body, "prompt": p.text})
                text = out["choices"][0]["text"] or ""
            usage = out.get("usage") or {}
            yield Completion(text=text.strip(), prompt_tokens=int(usage.get("prompt_tokens", 0)),
                             completion_tokens=int(usage.get("completion_tokens", 0)),
                             latency_s=time.perf_counter() - t0,
                             finish_reason=str(out["choices"][0].get("finish_reason") or "stop"))


class VLLMBackend(Backend):
    """Offline batch generation with vLLM: all prompts of one expert and hop go in one batch."""

    name = "vllm"

    def __init__(self, cfg: GenerationConfig):
        super().__init__(cfg)
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise BackendError("backend 'vllm' needs vLLM and a CUDA GPU: pip install -e '.[vllm]'") from None
        import torch

        if not torch.cuda.is_available():
            raise BackendError("backend 'vllm' needs a CUDA GPU and none is visible; use backend 'llamacpp' on a CPU")
        self._llms: dict[str, object] = {}

    def fingerprint(self, expert: ExpertSpec) -> str:
        return gguf_fingerprint(expert.source)

    def generate(self, expert: ExpertSpec, prompts: list[Prompt]) -> Iterator[Completion]:
        from vllm import LLM, SamplingParams

        if expert.name not in self._llms:
            self._llms[expert.name] = LLM(model=str(resolve_model_path(expert.source)), seed=self.cfg.seed,
                                          gpu_memory_utilization=self.cfg.vllm.gpu_memory_utilization,
                                          max_model_len=self.cfg.vllm.max_model_len)
        llm = self._llms[expert.name]
        t0 = time.perf_counter()
        params = [SamplingParams(temperature=self.cfg.temperature, max_tokens=p.max_tokens, seed=self.cfg.seed,
                                 stop=list(p.stop) or None) for p in prompts]
        chat_idx = [i for i, p in enumerate(prompts) if p.kind == "chat"]
        text_idx = [i for i, p in enumerate(prompts) if p.kind != "chat"]
        results: dict[int, object] = {}
        if chat_idx:
            outs = llm.chat([list(prompts[i].messages) for i in chat_idx], [params[i] for i in chat_idx], use_tqdm=False)
            results.update(zip(chat_idx, outs))
        if text_idx:
            outs = llm.generate([prompts[i].text for i in text_idx], [params[i] for i in text_idx], use_tqdm=False)
            results.update(zip(text_idx, outs))
        per_call = (time.perf_counter() - t0) / max(len(prompts), 1)  # batch wall time shared equally
        for i in range(len(prompts)):
            o = results[i]
            yield Completion(text=o.outputs[0].text.strip(), prompt_tokens=len(o.prompt_token_ids),
                             completion_tokens=len(o.outputs[0].token_ids), latency_s=per_call,
                             finish_reason=str(o.outputs[0].finish_reason or "stop"))


BACKENDS: dict[str, type[Backend]] = {"llamacpp": LlamaCppBackend, "openai": OpenAIBackend, "vllm": VLLMBackend}


def make_backend(cfg: GenerationConfig) -> Backend:
    if cfg.backend not in BACKENDS:
        raise BackendError(f"generation.backend {cfg.backend!r} unknown; choose one of {sorted(BACKENDS)}")
    return BACKENDS[cfg.backend](cfg)
