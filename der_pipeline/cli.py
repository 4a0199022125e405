"""The der-pipeline command line: one command per pipeline stage, plus `report` and `demo`.

Every command reads params.yaml (or --params) and accepts overrides for the
settings that matter in that stage; `dvc repro` calls the same commands.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from der_pipeline.config import ConfigError, Params, load_params

app = typer.Typer(
    help="Dynamic Ensemble Reasoning over small local LLMs: precompute every 2-hop expert path, "
         "score it, then train and evaluate a PPO router offline. Stages in order: "
         "prepare (, finetune) -> generate -> confidence, embed, score -> train, tune -> evaluate, curves, ablate, cross-task "
         "(-> report).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params file (the single source of truth)")
DatasetOpt = typer.Option(None, "--dataset", "-d", help="only this dataset (repeatable); default: all in params")


def _load(path: Path) -> Params:
    try:
        return load_params(path)
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> None:
    """Exit 2 for a bad setting (from params.yaml or a flag alike), 1 for any other failure."""
    if isinstance(exc, ConfigError):
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2)
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(1)


def _user_errors() -> tuple[type[Exception], ...]:
    """The failures a user can cause and fix (bad input, a missing file or model, a server down): a clean message."""
    from der_pipeline.experts.backends import BackendError
    from der_pipeline.experts.models import ModelNotFoundError
    from der_pipeline.router.live import ExpertCallError
    from der_pipeline.tree_store import CorruptShardError

    return (FileNotFoundError, ValueError, ConfigError, CorruptShardError, BackendError, ModelNotFoundError,
            ExpertCallError)


def _datasets(p: Params, chosen: Optional[list[str]]) -> list[str]:
    active = p.data.active()
    if not chosen:
        return active
    bad = [d for d in chosen if d not in active]
    if bad:
        typer.secho(f"--dataset {bad[0]!r} is not prepared by params (data.datasets with sample > 0): {active}",
                    fg="red", err=True)
        raise typer.Exit(2)
    return chosen


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # one INFO line per HTTP request (llama-server, OpenAI-compatible servers) buries the progress bar
        for name in ("httpx", "httpx2", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)


@app.command()
def prepare(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt) -> None:
    """Read the raw benchmarks (and any custom JSON-lines dataset declared in params) into one canonical Parquet
    table per dataset (data/prepared/), seeded train/test split. Without --dataset, also removes the table of a
    dataset whose sample is now 0."""
    from der_pipeline.artifacts import load_prepared
    from der_pipeline.data.prepare import prepare as run
    from der_pipeline.data.sources import SourceError

    p = _load(params)
    try:
        written = run(p, _datasets(p, dataset) if dataset else None)
    except SourceError as exc:
        _fail(exc)
    for name, path in written.items():
        t = load_prepared(p, name)
        splits = t["split"].to_pylist()
        typer.echo(f"{name}: {t.num_rows} queries (train {splits.count('train')}, test {splits.count('test')}) -> {path}")


@app.command()
def finetune(params: Path = ParamsOpt,
             dataset: Optional[list[str]] = typer.Option(None, "--dataset", "-d", help="only this dataset's specialist "
                                                         "(repeatable); default: every one under specialists"),
             progress: bool = typer.Option(True, help="show a progress bar")) -> None:
    """Train each dataset's specialist (params.yaml `specialists`): a cheap expert fine-tuned with LoRA on the
    task's own training file, written as a llama.cpp adapter to data/specialists/<dataset>/. On that dataset the
    specialist takes its base expert's slot in the pool, under the name <expert>-<dataset>-lora; `generate`
    then makes its nodes. An unchanged recipe (settings, base model, examples) keeps the adapter already
    there; a killed run resumes from its last checkpoint, written every 5 minutes of training in the model cache
    (README: Specialists)."""
    p = _load(params)
    chosen = dataset or sorted(p.specialists)
    for ds in chosen:
        if ds not in p.specialists:
            _fail(ValueError(f"--dataset {ds!r}: no specialist declared for it; specialists has "
                             f"{sorted(p.specialists)}"))
    from der_pipeline.specialists.finetune import finetune as run, write_manifest

    write_manifest(p, prune=not dataset)
    for ds in chosen:
        try:
            log = run(p, ds, progress=progress)
        except _user_errors() + (RuntimeError,) as exc:
            _fail(exc)
        typer.echo(json.dumps({k: v for k, v in log.items() if k != "loss"}))


@app.command()
def generate(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt,
             limit: Optional[int] = typer.Option(None, help="only the first N prepared queries of each dataset"),
             backend: Optional[str] = typer.Option(
                 None, help="override generation.backend for every dataset (generation.backend_by_dataset "
                 "included): llamacpp | llamaserver | openai | vllm"),
             ray: bool = typer.Option(False, "--ray", help="spread chunks of queries over Ray actors "
                                      "(generation.ray: a local cluster, or the one at its address)"),
             workers: Optional[int] = typer.Option(None, help="with --ray: override generation.ray.workers"),
             address: Optional[str] = typer.Option(None, help="with --ray: override generation.ray.address "
                                                   "('auto' joins the cluster `ray start --head` started here)"),
             progress: bool = typer.Option(True, help="show a progress bar")) -> None:
    """Run every expert path up to 2 hops (N answers, N x N KTP refinements) into data/tree/.

    Resumable: a rerun skips every node already stored under its current key (the rendered prompt,
    decoding settings, model and backend) and makes again any node made under other settings. An
    unreadable shard is moved aside as .corrupt and its nodes are made again. Each node records the
    engine that made it; nodes of another engine are never reused (they are made again).

    Engines (README, "Engines"): in-process llama.cpp (default); `--backend llamaserver` (llama.cpp's
    server with parallel slots); `--backend vllm` (GPU, or vLLM's CPU build in .venv-vllm); `--ray`
    runs any of them on several workers, here or across a cluster. `generation.backend_by_dataset` gives
    one dataset its own engine (its tree is then read under that engine too)."""
    p = _load(params)
    try:
        if backend is not None:  # the flag names the engine of every dataset
            p = p.override("generation", backend=backend,
                           backend_by_dataset={d: backend for d in p.generation.backend_by_dataset})
        if workers is not None or address is not None:
            given = {"workers": workers, "address": address}
            p = p.override("generation", ray={k: v for k, v in given.items() if v is not None})
        if ray:
            from der_pipeline.generate.distributed import generate_on_ray as run_ray

            stats = run_ray(p, _datasets(p, dataset), limit=limit, progress=progress)
        else:
            from der_pipeline.generate.run import generate as run

            stats = run(p, _datasets(p, dataset), limit=limit, progress=progress)
    except _user_errors() as exc:
        _fail(exc)
    except KeyboardInterrupt:
        typer.secho("interrupted: finished nodes are saved; rerun the same command to continue", fg="yellow", err=True)
        raise typer.Exit(130) from None
    for s in stats:
        typer.echo(json.dumps(s))


def _per_dataset(params: Path, dataset: Optional[list[str]], run) -> None:
    """Run a stage function over the chosen datasets, printing its JSON summary; clean errors."""
    p = _load(params)
    for ds in _datasets(p, dataset):
        try:
            typer.echo(json.dumps(run(p, ds)))
        except _user_errors() as exc:
            _fail(exc)


@app.command()
def embed(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt) -> None:
    """Embed every query and every node's answer with sentence-transformers (data/embeddings/)."""
    from der_pipeline.signals.embed import embed as run

    _per_dataset(params, dataset, run)


@app.command()
def score(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt) -> None:
    """Score every node: the task metric, its parsed answer, and BERTScore F1 (data/scores/)."""
    from der_pipeline.signals.score import score as run

    _per_dataset(params, dataset, run)


@app.command()
def confidence(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt,
               progress: bool = typer.Option(True, help="show a progress bar")) -> None:
    """Every current node's confidence signals (yes/no mass, token log-probabilities, length) in
    data/confidence/: copied from the tree where generation recorded them, else scored with llama.cpp by
    prompt evaluation only (no generation; the tree's text is untouched). Resumable: rerun to continue."""
    from der_pipeline.signals.confidence import confidence_dataset

    p = _load(params)
    for ds in _datasets(p, dataset):
        try:
            typer.echo(json.dumps(confidence_dataset(p, ds, progress=progress)))
        except _user_errors() as exc:
            _fail(exc)
        except KeyboardInterrupt:
            typer.secho("interrupted: scored nodes are saved; rerun the same command to continue", fg="yellow",
                        err=True)
            raise typer.Exit(130) from None


@app.command()
def train(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt,
          preset: Optional[str] = typer.Option(None, help="apply a named preset from params.yaml first (e.g. der-paper)"),
          alpha: Optional[float] = typer.Option(None, help="cost weight a in the reward"),
          beta: Optional[float] = typer.Option(None, help="weight b of the improvement P(y_t) - P(y_t-1)"),
          reward_gamma: Optional[float] = typer.Option(
              None, help="reward.gamma: the bonus/penalty g around the threshold p0 (not the PPO discount)"),
          p0: Optional[float] = typer.Option(None, help="quality threshold p0"),
          signal: Optional[str] = typer.Option(None, help="P signal: task | bertscore | mix"),
          form: Optional[str] = typer.Option(None, help="reward form: per_step (the proposal) | terminal"),
          state: Optional[str] = typer.Option(None, help="what the policy sees: query_answer | query"),
          ppo_gamma: Optional[float] = typer.Option(None, help="ppo.gamma: PPO's discount factor, in [0, 1]"),
          total_timesteps: Optional[int] = typer.Option(None, help="PPO environment steps"),
          seed: Optional[int] = typer.Option(None, help="train this one PPO seed instead of params' seeds"),
          out: Path = typer.Option(Path("runs/train"), help="checkpoint folder: <out>/<dataset>/seed-<s>/"),
          to_models: bool = typer.Option(False, "--to-models",
                                         help="write into paths.models instead of --out: the DVC-tracked "
                                              "policies (what the `train` stage of `dvc repro` does)")) -> None:
    """Train the PPO router on the train split of the cached tree (seconds per seed, no LLM).

    Writes <out>/<dataset>/seed-<s>/{policy.pt, train_log.jsonl, training_curve.png} for every seed.
    By default <out> is runs/train, so an experiment never overwrites the DVC-tracked models/ behind
    DVC's back; `dvc repro` (or --to-models) writes there.
    """
    from der_pipeline.router.train import train_dataset

    p = _load(params)
    try:
        if preset:
            p = p.with_preset(preset)
        p = p.override("reward", alpha=alpha, beta=beta, gamma=reward_gamma, p0=p0, signal=signal, form=form)
        p = p.override("ppo", total_timesteps=total_timesteps, state=state, gamma=ppo_gamma)
        if seed is not None:
            p = p.override("seeds", seeds=[seed])
    except ConfigError as exc:
        _fail(exc)
    for ds in _datasets(p, dataset):
        try:
            summary = train_dataset(p, ds, out_dir=None if to_models else out / ds)
        except _user_errors() as exc:
            _fail(exc)
        typer.echo(json.dumps(summary))


def _tables(params: Path, dataset: Optional[list[str]], run) -> None:
    p = _load(params)
    try:
        tables = run(p, _datasets(p, dataset))
    except _user_errors() as exc:
        _fail(exc)
    for ds, md in tables.items():
        typer.echo(f"\n## {ds}\n\n{md}")


@app.command()
def evaluate(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt) -> None:
    """Every method on the held-out test split, DER and the MLP router averaged over seeds, with paired
    bootstrap tests of DER's claims (results/evaluate/, metrics/metrics.json)."""
    from der_pipeline.evaluate.run import evaluate as run

    _tables(params, dataset, run)


@app.command()
def tune(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt) -> None:
    """Compare DER's settings (evaluate.tune: state, reward form, action set, learning rate, reward gamma) on
    the train split's validation folds, by score minus alpha x cost; the test split is never read
    (results/tune/)."""
    from der_pipeline.evaluate.tune import tune as run

    _tables(params, dataset, run)


@app.command()
def curves(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt) -> None:
    """Accuracy against cost over the alpha sweep, with AIQ, APGR and CPT per method (results/curves/)."""
    from der_pipeline.evaluate.curves import curves as run

    _tables(params, dataset, run)


@app.command()
def ablate(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt) -> None:
    """DER retrained with one change at a time: P signal, reward form / preset, state (results/ablate/)."""
    from der_pipeline.evaluate.ablate import ablate as run

    _tables(params, dataset, run)


@app.command("cross-task")
def cross_task(params: Path = ParamsOpt) -> None:
    """One DER policy for the mixture of evaluate.cross_task datasets, against per-task policies (results/cross_task/)."""
    from der_pipeline.evaluate.cross_task import cross_task as run

    p = _load(params)
    try:
        typer.echo(run(p))
    except _user_errors() as exc:
        _fail(exc)


@app.command()
def report(params: Path = ParamsOpt,
           readme: Path = typer.Option(Path("README.md"), help="the README whose results section is rewritten"),
           check: bool = typer.Option(False, help="exit 1 if the README's results section is out of date")) -> None:
    """Regenerate the README's results section from the metrics files under results/."""
    from der_pipeline.evaluate.report import update_readme

    p = _load(params)
    changed = update_readme(p, readme, write=not check)
    if check and changed:
        typer.secho(f"{readme}: results section is out of date; run `der-pipeline report`", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"{readme}: {'updated' if changed else 'up to date'}")


@app.command()
def inspect(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt) -> None:
    """Check a scored tree: stale nodes, task score and parse rate of every path (first expert x refiner)."""
    from der_pipeline.evaluate.inspect_tree import inspect as run

    p = _load(params)
    for ds in _datasets(p, dataset):
        try:
            typer.echo(run(p, ds))
        except _user_errors() as exc:
            _fail(exc)


@app.command()
def ask(question: str = typer.Argument(..., help="the question to answer"),
        context: str = typer.Option("", help="the passage / paragraphs the experts should read"),
        dataset: str = typer.Option("boolq", "--dataset", "-d", help="which trained policy (and answer format) to use"),
        params: Path = ParamsOpt) -> None:
    """Answer one question live: the trained policy picks experts step by step (probabilities, answers, cost).

    The context is trimmed to data.max_context_chars at a sentence boundary, as `prepare` trims passages."""
    from der_pipeline.ask import ask as run

    p = _load(params)
    try:
        run(p, dataset, question, context, echo=typer.echo)
    except _user_errors() as exc:
        _fail(exc)


@app.command()
def serve(dataset: str = typer.Option("boolq", "--dataset", "-d",
                                      help="whose trained policy (and answer format) to serve"),
          host: str = typer.Option("127.0.0.1", help="address to listen on (loopback by default; there is no "
                                                    "authentication, so expose it only behind your own proxy)"),
          port: int = typer.Option(8000, help="port to listen on"),
          policy: Optional[list[Path]] = typer.Option(
              None, "--policy", help="another trained policy.pt to serve as der:<its alpha> (repeatable), e.g. "
                                     "from `der-pipeline train --alpha 0.3 --out runs/a03`"),
          params: Path = ParamsOpt) -> None:
    """Serve the trained router as an OpenAI-compatible endpoint (POST /v1/chat/completions, GET /v1/models,
    GET /health).

    The last user message is the question; the passage goes in a `context` field of the request body or in a
    system message. `model` picks the router: `der` (the policy `ask` uses: models/<dataset>/seed-<first seed>),
    `der:<alpha>` (a policy trained at that cost weight; see --policy), or an expert's name to call that expert
    alone. The reply is a chat completion whose content is the last expert's answer, with `usage` summed over the
    expert calls and a `der` object: the path, every step (expert, action probabilities, answer, confidence,
    tokens, latency, cost) and the total cost in GFLOPs. `stream: true` streams the answer once routing is done.
    Decoding follows params.yaml (generation.*), as in the tree; request fields such as temperature are ignored.
    The experts load before the server listens; calls to one expert are serialised, other requests wait.

    Example: from openai import OpenAI; c = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none");
    c.chat.completions.create(model="der", messages=[{"role": "user", "content": "Is Paris in France?"}])"""
    import logging

    import uvicorn

    from der_pipeline.artifacts import dataset_params, policy_path
    from der_pipeline.data.sources import answer_type_of
    from der_pipeline.router.live import LiveRouter, Policy
    from der_pipeline.serve.app import create_app
    from der_pipeline.serve.service import RouterService

    p = _load(params)
    if dataset not in p.data.datasets:
        _fail(ValueError(f"--dataset {dataset!r}: unknown; one of {sorted(p.data.datasets)} (data.datasets)"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        p = dataset_params(p, dataset)  # the pool this dataset's policy was trained on (its specialist, if any)
        names = p.expert_names()
        default = Policy.load(policy_path(p, dataset), names)
        extra = [Policy.load(path, names) for path in policy or []]
        typer.echo(f"loading {len(names)} experts ({', '.join(names)}) and the embedder ...", err=True)
        live = LiveRouter(p, answer_type_of(p, dataset), preload=True)
        service = RouterService(live, dataset, default, extra)
    except _user_errors() as exc:
        _fail(exc)
    typer.echo(f"serving {service.model_ids()} for {dataset} at http://{host}:{port}/v1", err=True)
    try:
        uvicorn.run(create_app(service), host=host, port=port, access_log=False, log_level="info")
    finally:
        live.close()


@app.command()
def demo(rerun: bool = typer.Option(False, "--rerun", help="rerun the whole chain with the real experts on a small "
                                                            "BoolQ sample (minutes) instead of showing committed results"),
         sample: int = typer.Option(8, help="with --rerun: BoolQ queries to run through the whole chain"),
         workdir: Path = typer.Option(Path("runs/demo"), help="with --rerun: where its data, models and results go"),
         params: Path = ParamsOpt) -> None:
    """Show the committed results tables (seconds); with --rerun, run prepare -> ... -> evaluate on a small
    BoolQ sample with the real default experts and end with its results table."""
    from der_pipeline.demo import committed_results, run_demo

    p = _load(params)
    try:
        md = run_demo(p, sample=sample, workdir=workdir) if rerun else committed_results(p)
    except Exception as exc:  # noqa: BLE001 - surface any failure as a clean message
        _fail(exc)
    typer.echo(md)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
