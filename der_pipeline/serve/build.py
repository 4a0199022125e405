"""What `serve` builds before it listens: the datasets' services over one expert pool, from a ``ServeConfig``.

The config is plain data (JSON) so that every worker process of `serve --workers N` builds the same server
from it: uvicorn starts the workers itself (each imports ``worker_app``), and the router keeps no state
between requests, so any worker can answer any request. Budget policies are found where the budgets stage
writes them (results/budgets/<dataset>/policy-<share>.pt) and served as ``der@<share>``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from der_pipeline.serve.app import ServeOptions, create_app
from der_pipeline.serve.service import RouterService, Services

CONFIG_ENV = "DER_SERVE_CONFIG"  # a worker process's ServeConfig, as JSON


@dataclass
class ServeConfig:
    params: str
    datasets: list[str]
    policies: list[str] = field(default_factory=list)  # PATH (the first dataset's) or DATASET=PATH
    routers: list[str] | None = None  # None: every router of the registry that routes live
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    expert_timeout_s: float | None = None
    options: dict = field(default_factory=dict)  # ServeOptions' fields

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


def policies_by_dataset(cfg: ServeConfig) -> dict[str, list[Path]]:
    """``--policy`` values by dataset: ``DATASET=PATH`` for that dataset, a bare path for the first."""
    out: dict[str, list[Path]] = {ds: [] for ds in cfg.datasets}
    for value in cfg.policies:
        ds, sep, path = value.partition("=")
        if sep and ds in out:
            out[ds].append(Path(path))
        else:
            out[cfg.datasets[0]].append(Path(value))
    return out


def load_policies(cfg: ServeConfig) -> dict[str, tuple]:
    """Each dataset's params, default policy and other policies (files only: no model loads), so that a bad
    --policy fails before any worker starts."""
    from der_pipeline.artifacts import budget_policy_path, dataset_params, policy_path
    from der_pipeline.config import load_params
    from der_pipeline.router.live import Policy

    base = load_params(Path(cfg.params))
    given = policies_by_dataset(cfg)
    out = {}
    for ds in cfg.datasets:
        p = dataset_params(base, ds)  # the pool this dataset's policy was trained on (its specialist, if any)
        names = p.expert_names()
        default = Policy.load(policy_path(p, ds), names)
        budgets = [budget_policy_path(p, ds, share) for share in p.budget.shares]
        extra = [Policy.load(path, names) for path in [*given[ds], *(b for b in budgets if b.is_file())]]
        out[ds] = (p, default, extra)
    return out


def build_services(cfg: ServeConfig, warn: Callable[[str], None] = lambda msg: None) -> Services:
    """Every dataset's policies and routers, and one LiveRouter per dataset over a shared pool (loaded here,
    before the server listens)."""
    from der_pipeline.data.sources import answer_type_of
    from der_pipeline.router.live import LiveRouter
    from der_pipeline.router.registry import fit_live_routers

    services, first = [], None
    for ds, (p, default, extra) in load_policies(cfg).items():
        try:
            routers = fit_live_routers(p, ds, cfg.routers)
        except (FileNotFoundError, ValueError) as exc:
            if cfg.routers:  # asked for by name: they must be there
                raise
            # the routers are fitted on the dataset's tree as the current engine reads it; with another
            # engine (say the experts served elsewhere) there may be none to fit on: serve der and the experts
            warn(f"warning: {ds}: serving no baseline routers ({exc}); `der` and the experts are served")
            routers = {}
        live = LiveRouter(p, answer_type_of(p, ds), preload=True, breaker_failures=cfg.breaker_failures,
                          breaker_cooldown_s=cfg.breaker_cooldown_s, expert_timeout_s=cfg.expert_timeout_s,
                          share=first)
        first = first or live
        services.append(RouterService(live, ds, default, extra, routers=routers))
    return Services(services)


def worker_app():
    """The app of one worker process of `serve --workers N` (uvicorn's factory), from ``DER_SERVE_CONFIG``."""
    import sys

    cfg = ServeConfig.from_json(os.environ[CONFIG_ENV])
    services = build_services(cfg, warn=lambda msg: print(msg, file=sys.stderr))
    return create_app(services, ServeOptions(**cfg.options), close_experts=True)
