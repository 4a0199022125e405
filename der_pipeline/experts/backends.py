"""Generation backends behind one interface.

- ``llamacpp``: llama-cpp-python in-process on the CPU (the embedded default).
- ``openai``: any OpenAI-compatible server (llama-server, ``vllm serve``, Ollama).
- ``vllm``: offline batch generation with ``vllm.LLM`` (optional extra); one expert loaded at a time.

A backend takes one expert and a batch of prompts and yields one ``Completion``
per prompt, in order. Batching matters for vLLM (one batch per hop); llama.cpp
runs the prompts back to back so shared prefixes reuse the KV cache.
"""
from __future__ import annotations

import gc
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from der_pipeline.config import ExpertSpec, GenerationConfig
from der_pipeline.experts.confidence import AnswerConfidence, answer_confidence, confidence_after
from der_pipeline.experts.keys import served_model_id
from der_pipeline.experts.models import expert_model_path
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
    confidence: AnswerConfidence | None = None  # from the engine's token probabilities, where it gives them


class Backend(ABC):
    name: str = ""

    def __init__(self, cfg: GenerationConfig):
        self.cfg = cfg

    @abstractmethod
    def generate(self, expert: ExpertSpec, prompts: list[Prompt]) -> Iterator[Completion]:
        """One completion per prompt, in order."""

    def score(self, expert: ExpertSpec, prompts: list[Prompt], answers: list[str]) -> Iterator[AnswerConfidence]:
        """The expert's confidence in stored answers, by prompt evaluation only (no generation)."""
        raise BackendError(f"backend {self.name!r} cannot score stored answers; the confidence pass runs on "
                           f"'llamacpp' with the experts' GGUF files")

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

    def model(self, expert: ExpertSpec):
        if expert.name not in self._models:
            from llama_cpp import Llama

            path = expert_model_path(expert)
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
            latency = time.perf_counter() - t0
            # the prompt is still in the cache: the answer's own probabilities cost one short batch
            conf = confidence_after(llm, int(usage["prompt_tokens"]), text.strip(), p.kind, p.answer_type)
            yield Completion(text=text.strip(), prompt_tokens=int(usage["prompt_tokens"]),
                             completion_tokens=int(usage["completion_tokens"]), latency_s=latency,
                             finish_reason=str(out["choices"][0].get("finish_reason") or "stop"), confidence=conf)

    def score(self, expert: ExpertSpec, prompts: list[Prompt], answers: list[str]) -> Iterator[AnswerConfidence]:
        llm = self.model(expert)
        for p, answer in zip(prompts, answers):
            yield answer_confidence(llm, p, answer, self.cfg.seed)

    def close(self) -> None:
        for m in self._models.values():
            close = getattr(m, "close", None)
            if close:
                close()
        self._models.clear()


class OpenAIBackend(Backend):
    """Any server speaking the OpenAI HTTP API, through the official ``openai`` client: it retries with
    exponential backoff on 408/409/429/5xx and dropped connections (``generation.openai.max_retries``).
    An expert's model id is its source after 'openai:', else its name."""

    name = "openai"

    def __init__(self, cfg: GenerationConfig):
        super().__init__(cfg)
        import openai

        self._openai = openai
        o = cfg.openai
        self.client = openai.OpenAI(base_url=o.base_url, api_key=o.api_key, timeout=o.timeout_s,
                                    max_retries=o.max_retries)

    def _create(self, expert: ExpertSpec, p: Prompt) -> tuple[str, object]:
        body = {"model": served_model_id(expert), "max_tokens": p.max_tokens, "temperature": self.cfg.temperature,
                "seed": self.cfg.seed}
        if p.stop:
            body["stop"] = list(p.stop)
        oa = self._openai
        try:
            if p.kind == "chat":
                out = self.client.chat.completions.create(messages=list(p.messages), **body)
                return out.choices[0].message.content or "", out
            out = self.client.completions.create(prompt=p.text, **body)
            return out.choices[0].text or "", out
        except oa.APIConnectionError as exc:  # refused, dropped or timed out, after the retries
            raise BackendError(f"{expert.name}: cannot reach the OpenAI-compatible server at "
                               f"{self.cfg.openai.base_url} (after {self.cfg.openai.max_retries} retries): {exc}. "
                               f"Start one (e.g. python -m llama_cpp.server --model FILE) and set "
                               f"generation.openai.base_url") from exc
        except oa.APIStatusError as exc:
            raise BackendError(f"{expert.name}: the server at {self.cfg.openai.base_url} answered HTTP "
                               f"{exc.status_code}: {str(exc.message)[:300]}") from exc

    def generate(self, expert: ExpertSpec, prompts: list[Prompt]) -> Iterator[Completion]:
        for p in prompts:
            t0 = time.perf_counter()
            text, out = self._create(expert, p)
            usage = getattr(out, "usage", None)
            if usage is None or usage.prompt_tokens is None or usage.completion_tokens is None:
                raise BackendError(f"{expert.name}: the server at {self.cfg.openai.base_url} returned no token "
                                   f"usage, so the call's cost is unknown (a call must never look free); use a "
                                   f"server that reports `usage` (llama.cpp, vLLM and Ollama do)")
            yield Completion(text=text.strip(), prompt_tokens=int(usage.prompt_tokens),
                             completion_tokens=int(usage.completion_tokens),
                             latency_s=time.perf_counter() - t0,
                             finish_reason=str(out.choices[0].finish_reason or "stop"))

    def close(self) -> None:
        self.client.close()


class VLLMBackend(Backend):
    """Offline batch generation with vLLM: all prompts of one expert and hop go in one batch.

    One expert is loaded at a time (each ``vllm.LLM`` reserves ``gpu_memory_utilization`` of the
    GPU, so two cannot coexist): switching experts frees the previous one first. Set
    ``generation.chunk_queries`` high with this backend, so each model is loaded once per hop.
    """

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
        self._loaded: tuple[str, object] | None = None

    def _llm(self, expert: ExpertSpec):
        from vllm import LLM

        if self._loaded is not None and self._loaded[0] == expert.name:
            return self._loaded[1]
        self.close()
        llm = LLM(model=str(expert_model_path(expert)), seed=self.cfg.seed,
                  gpu_memory_utilization=self.cfg.vllm.gpu_memory_utilization,
                  max_model_len=self.cfg.vllm.max_model_len)
        self._loaded = (expert.name, llm)
        return llm

    def close(self) -> None:
        if self._loaded is None:
            return
        self._loaded = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, expert: ExpertSpec, prompts: list[Prompt]) -> Iterator[Completion]:
        from vllm import SamplingParams

        llm = self._llm(expert)
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
