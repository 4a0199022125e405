"""The policy checkpoint (models/<ds>/seed-<s>/policy.pt): its format, written and read here alone.

A checkpoint holds data only: tensors and plain values (ints, floats, strings, lists, dicts), loaded with
``torch.load(weights_only=True)``, whose unpickler refuses every other global, so a crafted ``policy.pt``
cannot run code. Every field is checked on read against ``FIELDS``, as the Parquet tables are against
their schemas, and a file that fails names itself and the command that remakes it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from der_pipeline.config import Params


class CheckpointError(ValueError):
    """A file is not a readable der-pipeline policy checkpoint."""


_NUM = (int, float)
# field -> (allowed types, may be None)
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "state_dict": ((dict,), False),  # the learned network's (or the fold ensemble's) tensors
    "members": ((int,), False),  # 0: one policy; K: a fold ensemble of K policies
    "obs_dim": ((int,), False),
    "n_actions": ((int,), False),
    "hidden": ((int,), False),
    "fixed_path": ((int,), True),  # the best fixed path's flat index, kept in the learned policy's place
    "fixed_path_check": ((dict,), True),  # the out-of-fold check that decided it (router/ppo.py)
    "seed": ((int,), False),
    "experts": ((list,), False),  # the pool, in action order
    "cost_scale": (_NUM, False),
    "reward": ((dict,), False),  # params.yaml's reward section it was trained with
    "ppo": ((dict,), False),  # ... and its ppo section
    "embedder": ((str,), False),
    "out_of_fold": ((dict,), True),  # the train split's cross-validated operating point of the policy kept
}
# Fields a checkpoint may lack (those written before the field existed), with their meaning when absent.
OPTIONAL: dict[str, tuple[tuple[type, ...], object]] = {
    "cost_share": ((float,), None),  # fitted to a budget (router/budget.py): the share of the reference's cost
}


def _retrain_hint(path: Path) -> str:
    dataset = Path(path).parent.parent.name or "<dataset>"
    return (f"retrain it with `der-pipeline train -d {dataset} --to-models` (or `dvc repro train`), or restore "
            f"the committed copy with `git checkout -- {path}`")


def save_policy(agent, path: Path, *, experts: list[str], scale: float, p: Params, obs_dim: int, seed: int,
                out_of_fold: dict | None = None, fixed_path_check: dict | None = None,
                cost_share: float | None = None) -> None:
    """The policy and what it was trained with; ``out_of_fold``: the train split's cross-validated
    operating point of the policy kept (None without cross-validation). A ``FixedPathPolicy`` is saved as
    the learned policy it stands in for plus ``fixed_path`` (the path's flat index; None: the learned
    policy is the one kept), so its weights stay inspectable; ``fixed_path_check``: why (router/ppo.py)."""
    import torch

    from der_pipeline.router.selection import FixedPathPolicy, FoldEnsemble

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fixed = agent.path if isinstance(agent, FixedPathPolicy) else None
    learned = agent.learned if isinstance(agent, FixedPathPolicy) else agent
    members = len(learned.members) if isinstance(learned, FoldEnsemble) else 0  # 0: one policy
    ckpt = {"state_dict": learned.state_dict(), "members": members, "obs_dim": obs_dim, "fixed_path": fixed,
            "fixed_path_check": fixed_path_check, "n_actions": learned.n_actions, "seed": seed,
            "hidden": learned.hidden, "experts": experts, "cost_scale": scale,
            "reward": dataclasses.asdict(p.reward), "ppo": dataclasses.asdict(p.ppo),
            "embedder": p.signals.embedder, "out_of_fold": out_of_fold}
    if cost_share is not None:
        ckpt["cost_share"] = float(cost_share)
    check_fields(ckpt, path)
    torch.save(ckpt, tmp)
    tmp.replace(path)


def check_fields(ckpt: Any, path: Path) -> dict:
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a policy checkpoint (it holds a {type(ckpt).__name__}); "
                              f"{_retrain_hint(path)}")
    for name, (types, nullable) in FIELDS.items():
        if name not in ckpt:
            raise CheckpointError(f"{path}: not a policy checkpoint (no '{name}' field); {_retrain_hint(path)}")
        value = ckpt[name]
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise CheckpointError(f"{path}: field '{name}' holds a {type(value).__name__}, expected "
                                  f"{' or '.join(t.__name__ for t in types)}; {_retrain_hint(path)}")
    for name, (types, absent) in OPTIONAL.items():
        value = ckpt.setdefault(name, absent)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            raise CheckpointError(f"{path}: field '{name}' holds a {type(value).__name__}; {_retrain_hint(path)}")
    unknown = sorted(set(ckpt) - set(FIELDS) - set(OPTIONAL))
    if unknown:
        raise CheckpointError(f"{path}: unknown field '{unknown[0]}' (not a der-pipeline policy checkpoint, or "
                              f"one from a newer version); {_retrain_hint(path)}")
    return ckpt


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's fields, data only (no code runs while it loads), checked against ``FIELDS``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained policy; run `der-pipeline train` (or `dvc repro`) first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler says, the file is not a checkpoint
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable policy checkpoint ({why[:200]}); "
                              f"{_retrain_hint(path)}") from None
    return check_fields(ckpt, path)


def load_policy(path: Path):
    """(agent, checkpoint dict) of a trained policy: one policy, or a fold ensemble of ``members``; where
    ``fixed_path`` is set, the best fixed path that was kept in its place (``FixedPathPolicy``)."""
    from der_pipeline.router.ppo import Agent
    from der_pipeline.router.selection import FixedPathPolicy, FoldEnsemble

    ckpt = load_checkpoint(path)
    members = ckpt["members"]
    agent = Agent(ckpt["obs_dim"], ckpt["n_actions"], ckpt["hidden"])
    if members:
        agent = FoldEnsemble([Agent(ckpt["obs_dim"], ckpt["n_actions"], ckpt["hidden"]) for _ in range(members)])
    try:
        agent.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit the network it describes "
                              f"({str(exc).splitlines()[0][:200]}); {_retrain_hint(path)}") from None
    agent.eval()
    if ckpt["fixed_path"] is not None:
        agent = FixedPathPolicy(ckpt["fixed_path"], len(ckpt["experts"]), agent)
    return agent, ckpt
