"""Where every artifact of the pipeline lives, and how each is read back.

One module owns the paths and the loaders, so a stage that reads another's output
imports this, never the module that wrote it:

    data/prepared/<ds>.parquet          prepare   -> load_prepared
    data/specialists/<ds>/<expert>.lora.gguf  finetune -> dataset_params (the pool a dataset's tree is made with)
    data/tree/<ds>/shard-*.parquet      generate  -> load_tree (current nodes of complete queries only)
    data/embeddings/<ds>/               embed     -> load_embeddings
    data/scores/<ds>/scores.parquet     score     -> load_scores
    data/confidence/<ds>/shard-*.parquet  confidence -> load_confidence (current nodes only)
    models/<ds>/seed-<s>/policy.pt      train     -> load_policy
    results/<stage>/<ds>/               evaluate, curves, ablate, cross_task
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from der_pipeline.config import Params
from der_pipeline.tree_store import TreeStore
from der_pipeline.io import read_table
from der_pipeline.schemas import CONFIDENCE, EMBEDDINGS, PREPARED, SCORES, join_path

log = logging.getLogger(__name__)


# paths --------------------------------------------------------------------
def prepared_path(p: Params, dataset: str) -> Path:
    return p.path("data") / "prepared" / f"{dataset}.parquet"


def specialist_dir(p: Params, dataset: str) -> Path:
    return p.path("data") / "specialists" / dataset


def adapter_path(p: Params, dataset: str) -> Path:
    """The LoRA adapter (GGUF) of a dataset's specialist (params.yaml ``specialists``)."""
    return specialist_dir(p, dataset) / f"{p.specialists[dataset].expert}.lora.gguf"


def specialist_name(expert: str, dataset: str) -> str:
    return f"{expert}-{dataset}-lora"


def dataset_params(p: Params, dataset: str) -> Params:
    """The params a dataset's tree is made and read with: the pool with the dataset's specialist (if any) in
    its base expert's slot, named ``<expert>-<dataset>-lora``, with its adapter and, for the cost, the
    adapter's parameters added (its f16 file holds two bytes per parameter). Every reader of a tree goes
    through this, so a specialist's nodes are never mistaken for its base model's."""
    spec = p.specialists.get(dataset)
    if spec is None:
        return p
    path = adapter_path(p, dataset)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {dataset}'s specialist adapter is missing; run `der-pipeline finetune "
                                f"-d {dataset}` (or `dvc repro finetune`)")
    experts = [dataclasses.replace(e, name=specialist_name(e.name, dataset), adapter=str(path),
                                   params_b=e.params_b + os.path.getsize(path) / 2 / 1e9)
               if e.name == spec.expert else e for e in p.experts]
    order = [specialist_name(n, dataset) if n == spec.expert else n for n in p.evaluate.round_robin_order]
    # the specialist is applied: its entry goes, so the result validates (and a second call changes nothing)
    rest = {d: s for d, s in p.specialists.items() if d != dataset}
    return dataclasses.replace(p, experts=experts, specialists=rest,
                               evaluate=dataclasses.replace(p.evaluate, round_robin_order=order))


def tree_dir(p: Params, dataset: str) -> Path:
    return p.path("data") / "tree" / dataset


def embeddings_path(p: Params, dataset: str) -> Path:
    return p.path("data") / "embeddings" / dataset / "embeddings.parquet"


def confidence_dir(p: Params, dataset: str) -> Path:
    return p.path("data") / "confidence" / dataset


def scores_path(p: Params, dataset: str) -> Path:
    return p.path("data") / "scores" / dataset / "scores.parquet"


def model_dir(p: Params, dataset: str) -> Path:
    return p.path("models") / dataset


def policy_path(p: Params, dataset: str, seed: int | None = None, root: Path | None = None) -> Path:
    """<models>/<dataset>/seed-<seed>/policy.pt; the first of ``seeds`` by default (the one `ask` loads)."""
    base = (root / dataset) if root is not None else model_dir(p, dataset)
    return base / f"seed-{p.seeds[0] if seed is None else seed}" / "policy.pt"


def results_dir(p: Params, stage: str, dataset: str | None = None) -> Path:
    """results/<stage>/<dataset>/: each evaluation stage owns one folder (one DVC out)."""
    base = p.path("results") / stage
    return base / dataset if dataset else base


# loaders ------------------------------------------------------------------
def load_prepared(p: Params, dataset: str) -> pa.Table:
    return read_table(prepared_path(p, dataset), PREPARED)


def expected_paths(names: list[str]) -> list[str]:
    """Every node of a 2-hop tree: N first answers, then N x N refinements (first expert > refiner)."""
    return [join_path([a]) for a in names] + [join_path([a, b]) for a in names for b in names]


@dataclass
class CurrentNodes:
    """The stored nodes whose key matches the current settings, by (qid, path) -> row index."""

    rows: dict[tuple[str, str], int]
    stale: dict[str, int] = field(default_factory=dict)  # path -> stored nodes skipped (made under other settings)

    @property
    def stale_total(self) -> int:
        return sum(self.stale.values())


def current_nodes(p: Params, queries: list[dict], table: pa.Table, backend: str | None = None) -> CurrentNodes:
    """Match stored nodes against the keys the current params give them (experts/keys.py).

    A hop-2 node's key depends on its parent's answer, so it is current only when its
    parent is current. Nodes of queries or experts outside ``queries`` / the pool are ignored.
    """
    from der_pipeline.experts.keys import NodeKeys

    keys = NodeKeys(p, backend)
    by_node: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for i, (qid, path, key) in enumerate(zip(table["qid"].to_pylist(), table["path"].to_pylist(),
                                             table["node_key"].to_pylist())):
        by_node[(qid, path)].append((key, i))
    answers = table["answer"].to_pylist()
    rows: dict[tuple[str, str], int] = {}
    stale: dict[str, int] = defaultdict(int)

    def take(qid: str, path: str, want: str) -> int | None:
        found = None
        for key, i in by_node.get((qid, path), ()):
            if key == want:
                found = i
            else:
                stale[path] += 1
        if found is not None:
            rows[(qid, path)] = found
        return found

    for q in queries:
        qid = q["qid"]
        if not any((qid, e.name) in by_node for e in p.experts):
            continue
        for a in p.experts:
            i = take(qid, a.name, keys.key(a, q))
            for b in p.experts:
                path = join_path([a.name, b.name])
                if i is None:
                    stale[path] += len(by_node.get((qid, path), ()))
                    continue
                take(qid, path, keys.key(b, q, answers[i]))
    return CurrentNodes(rows, {k: v for k, v in stale.items() if v})


@dataclass
class TreeRead:
    prepared: pa.Table  # the prepared queries whose tree is complete, sorted by qid
    nodes: pa.Table  # their current nodes, sorted by qid then path
    stale: dict[str, int]  # path -> stored nodes skipped because their key is not current
    incomplete: int  # prepared queries left out (a node missing or stale)


def read_tree(p: Params, dataset: str) -> TreeRead:
    """The current nodes of every prepared query whose 20-node tree is complete. Pure: changes no file."""
    p = dataset_params(p, dataset)
    folder = tree_dir(p, dataset)
    store = TreeStore(folder)
    if not store.shards():
        raise FileNotFoundError(f"{folder}: no generated tree; run `der-pipeline generate` first")
    prepared = load_prepared(p, dataset)
    table = store.read()
    cur = current_nodes(p, prepared.to_pylist(), table, p.backend_for(dataset))
    paths = expected_paths(p.expert_names())
    complete = [q for q in prepared["qid"].to_pylist() if all((q, path) in cur.rows for path in paths)]
    if cur.stale_total:
        log.warning("%s: skipped %d stored node(s) made under other settings (prompt, data seed, model, backend or "
                    "decoding); `der-pipeline generate` makes them again under the current ones",
                    dataset, cur.stale_total)
    missing = prepared.num_rows - len(complete)
    if missing:
        log.warning("%s: %d of %d prepared queries have no complete current tree yet; using the %d that do",
                    dataset, missing, prepared.num_rows, len(complete))
    idx = [cur.rows[(q, path)] for q in sorted(complete) for path in sorted(paths)]
    nodes = table.take(pa.array(idx, pa.int64())) if idx else table.slice(0, 0)
    prepared = prepared.filter(pc.is_in(prepared["qid"], pa.array(complete, pa.string()))).sort_by("qid")
    return TreeRead(prepared, nodes, cur.stale, missing)


def load_tree(p: Params, dataset: str) -> tuple[pa.Table, pa.Table]:
    """(prepared queries with a complete current tree, their nodes), both sorted by qid then path."""
    p = dataset_params(p, dataset)
    read = read_tree(p, dataset)
    if read.prepared.num_rows == 0:
        raise ValueError(f"{dataset}: no query has a complete current {len(expected_paths(p.expert_names()))}-node "
                         f"tree ({sum(read.stale.values())} stale node(s) skipped); run `der-pipeline generate`")
    return read.prepared, read.nodes


def load_embeddings(p: Params, dataset: str) -> dict[tuple[str, str], np.ndarray]:
    t = read_table(embeddings_path(p, dataset), EMBEDDINGS)
    mat = np.asarray(t["embedding"].combine_chunks().flatten().to_numpy(), dtype=np.float32)
    mat = mat.reshape(t.num_rows, -1)
    return {(q, pth): mat[i] for i, (q, pth) in enumerate(zip(t["qid"].to_pylist(), t["path"].to_pylist()))}


def load_scores(p: Params, dataset: str) -> pa.Table:
    return read_table(scores_path(p, dataset), SCORES)


def load_confidence(p: Params, dataset: str, nodes: pa.Table) -> dict[tuple[str, str], dict]:
    """The confidence signals of ``nodes`` (current tree nodes), by (qid, path); a node not scored yet is absent."""
    folder = confidence_dir(p, dataset)
    if not folder.exists() or not list(folder.glob("shard-*.parquet")):
        raise FileNotFoundError(f"{folder}: no confidence table; run `der-pipeline confidence` (or `dvc repro`)")
    table = TreeStore(folder, CONFIDENCE).read()
    by_key = {k: i for i, k in enumerate(table["node_key"].to_pylist())}
    rows = table.to_pylist()
    out = {}
    for qid, path, key in zip(nodes["qid"].to_pylist(), nodes["path"].to_pylist(), nodes["node_key"].to_pylist()):
        i = by_key.get(key)
        if i is not None:
            out[(qid, path)] = rows[i]
    return out


def load_train_summary(p: Params, dataset: str) -> dict:
    path = model_dir(p, dataset) / "train_summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run `der-pipeline train --to-models` (or `dvc repro`)")
    import json

    return json.loads(path.read_text())


def load_policy(path: Path):
    """(agent, checkpoint dict) of a trained policy: one policy, or a fold ensemble of ``members``; where
    ``fixed_path`` is set, the best fixed path that was kept in its place (``FixedPathPolicy``)."""
    import torch

    from der_pipeline.router.ppo import Agent, FixedPathPolicy, FoldEnsemble

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no trained policy; run `der-pipeline train` (or `dvc repro`) first")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    members = ckpt.get("members", 0)  # checkpoints written before fold ensembles hold one policy
    agent = Agent(ckpt["obs_dim"], ckpt["n_actions"], ckpt["hidden"])
    if members:
        agent = FoldEnsemble([Agent(ckpt["obs_dim"], ckpt["n_actions"], ckpt["hidden"]) for _ in range(members)])
    agent.load_state_dict(ckpt["state_dict"])
    agent.eval()
    if ckpt.get("fixed_path") is not None:
        agent = FixedPathPolicy(ckpt["fixed_path"], len(ckpt["experts"]), agent)
    return agent, ckpt
