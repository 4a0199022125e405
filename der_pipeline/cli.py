"""The der-pipeline command line: one command per pipeline stage, plus `report` and `demo`.

Every command reads params.yaml (or --params) and accepts overrides for the
settings that matter in that stage; `dvc repro` calls the same commands.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from der_pipeline.config import ConfigError, Params, load_params

_DEBUG = False  # --debug: an unexpected error shows its traceback (as does DER_DEBUG=1)


def _debugging() -> bool:
    return _DEBUG or os.environ.get("DER_DEBUG", "").strip() not in ("", "0")


def _disk_full(exc: BaseException) -> OSError | None:
    """The full-disk error in ``exc``'s chain (a clean-up on the way out may fail again), naming a file if any does."""
    from der_pipeline.io import is_disk_full

    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if is_disk_full(exc) and (found is None or (found.filename is None and exc.filename is not None)):
            found = exc
        exc = exc.__cause__ or exc.__context__
    return found


def report_error(exc: BaseException) -> None:
    """One line on stderr for an error that escaped a command: what happened and what to do."""
    full = _disk_full(exc)
    if full is not None:
        where = f" while writing {full.filename}" if full.filename else ""
        typer.secho(f"error: no space left on the device{where}. Finished work was kept (every file is written "
                    f"whole through a temp file and a rename, so nothing already written is damaged); free some "
                    f"space and rerun the same command to continue", fg="red", err=True)
        return
    msg = " ".join(str(exc).split()) or "(no message)"
    typer.secho(f"error: {type(exc).__name__}: {msg}. Rerun with --debug (or DER_DEBUG=1) for the traceback, "
                f"and report it if it looks like a bug", fg="red", err=True)


class _Typer(typer.Typer):
    """The app: an error that escapes a command ends in one line (``report_error``) and exit status 1, not a
    traceback, unless --debug or DER_DEBUG=1. The console script, ``python -m der_pipeline.cli`` and the DVC
    stages (``app([...])``) all come through here."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - SystemExit (typer.Exit, click's usage errors) passes
            if _debugging():
                raise
            report_error(exc)
            sys.exit(1)


app = _Typer(
    help="Dynamic Ensemble Reasoning over small local LLMs: precompute every 2-hop expert path, "
         "score it, then train and evaluate a PPO router offline. Stages in order: "
         "prepare (, finetune) -> generate -> confidence, embed, score -> train, tune -> evaluate, curves, ablate, "
         "cross-task "
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


# The failures a user can cause and fix (bad input, a missing file or model, a server down), by the module that
# raises them. Looked up among the modules already imported, not imported here: an error of a module that the
# command never loaded cannot have been raised, and a stage's code dependencies stay those it really runs
# (dvc.yaml; tests/test_stage_deps.py).
USER_ERRORS = {
    "der_pipeline.experts.backends": ("BackendError",),
    "der_pipeline.experts.models": ("ModelNotFoundError",),
    "der_pipeline.router.live": ("ExpertCallError",),
    "der_pipeline.router.registry": ("UnknownRouterError",),
    "der_pipeline.tree_store": ("CorruptShardError",),
    "der_pipeline.writer_lock": ("StoreBusyError",),
}


def _user_errors() -> tuple[type[Exception], ...]:
    """The failures a user can cause and fix: a clean message (see USER_ERRORS)."""
    found: list[type[Exception]] = [FileNotFoundError, ValueError, ConfigError]
    for module, names in USER_ERRORS.items():
        loaded = sys.modules.get(module)
        if loaded is not None:
            found += [getattr(loaded, name) for name in names]
    return tuple(found)


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


def _usage_error(message: str) -> None:
    """A bad flag or argument: the message, exit 2 (before anything is loaded)."""
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(2)


def _require_models(p: Params, backends: set[str] | None = None, only: set[str] | None = None) -> None:
    """Before a command loads any model: every local model it will need is there (a package installed, a file a
    GGUF), else the dotted key (``experts[2].source``) and exit 2. Nothing to check when every engine it uses is
    an OpenAI-compatible server (``backends``), which serves the models itself."""
    from der_pipeline.experts.models import ModelNotFoundError, check_expert_models

    if backends is not None and backends <= {"openai"}:
        return
    try:
        check_expert_models(p.experts, only)
    except ModelNotFoundError as exc:
        _usage_error(str(exc))


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging"),
          debug: bool = typer.Option(False, "--debug", help="show the traceback of an unexpected error instead of "
                                     "one line (also: DER_DEBUG=1)")) -> None:
    global _DEBUG
    _DEBUG = debug
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
    except (SourceError,) + _user_errors() as exc:
        _fail(exc)
    for name, path in written.items():
        t = load_prepared(p, name)
        splits = t["split"].to_pylist()
        typer.echo(f"{name}: {t.num_rows} queries (train {splits.count('train')}, test {splits.count('test')}) "
                   f"-> {path}")


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
    (docs/experts-and-engines.md: Specialists)."""
    p = _load(params)
    chosen = dataset or sorted(p.specialists)
    for ds in chosen:
        if ds not in p.specialists:
            _fail(ValueError(f"--dataset {ds!r}: no specialist declared for it; specialists has "
                             f"{sorted(p.specialists)}"))
    _require_models(p, only={p.specialists[ds].expert for ds in chosen})
    from der_pipeline.specialists.finetune import finetune as run
    from der_pipeline.specialists.finetune import write_manifest

    write_manifest(p, prune=not dataset)
    for ds in chosen:
        try:
            log = run(p, ds, progress=progress)
        except _user_errors() + (RuntimeError,) as exc:
            _fail(exc)
        typer.echo(json.dumps({k: v for k, v in log.items() if k != "loss"}))


@app.command()
def generate(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt,
             limit: Optional[int] = typer.Option(None, min=0, help="only the first N prepared queries of each "
                                                 "dataset"),
             backend: Optional[str] = typer.Option(
                 None, help="override generation.backend for every dataset (generation.backend_by_dataset "
                 "included): llamacpp | llamaserver | openai | vllm"),
             ray: bool = typer.Option(False, "--ray", help="spread chunks of queries over Ray actors "
                                      "(generation.ray: a local cluster, or the one at its address)"),
             workers: Optional[int] = typer.Option(None, min=1, help="with --ray: override generation.ray.workers"),
             address: Optional[str] = typer.Option(None, help="with --ray: override generation.ray.address "
                                                   "('auto' joins the cluster `ray start --head` started here)"),
             progress: bool = typer.Option(True, help="show a progress bar")) -> None:
    """Run every expert path up to 2 hops (N answers, N x N KTP refinements) into data/tree/.

    Resumable: a rerun skips every node already stored under its current key (the rendered prompt,
    decoding settings, model and backend) and makes again any node made under other settings. An
    unreadable shard is moved aside as .corrupt and its nodes are made again. Each node records the
    engine that made it; nodes of another engine are never reused (they are made again).

    Engines (docs/experts-and-engines.md): in-process llama.cpp (default); `--backend llamaserver` (llama.cpp's
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
        chosen = _datasets(p, dataset)
        _require_models(p, backends={p.backend_for(d) for d in chosen})
        if ray:
            from der_pipeline.generate.distributed import generate_on_ray as run_ray

            stats = run_ray(p, chosen, limit=limit, progress=progress)
        else:
            from der_pipeline.generate.run import generate as run

            stats = run(p, chosen, limit=limit, progress=progress)
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
    chosen = _datasets(p, dataset)
    _require_models(p)  # a node without recorded signals is scored with llama.cpp
    for ds in chosen:
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
          preset: Optional[str] = typer.Option(
              None, help="apply a named preset from params.yaml first (e.g. der-paper)"),
          alpha: Optional[float] = typer.Option(None, help="cost weight a in the reward"),
          cost_share: Optional[float] = typer.Option(
              None, "--cost-share",
              help="fit DER to a budget instead of an alpha: its out-of-fold mean cost at most this share of the "
                   "reference expert's (budget.reference); alpha is found by bisection on the train split's folds"),
          beta: Optional[float] = typer.Option(None, help="weight b of the improvement P(y_t) - P(y_t-1)"),
          reward_gamma: Optional[float] = typer.Option(
              None, help="reward.gamma: the bonus/penalty g around the threshold p0 (not the PPO discount)"),
          p0: Optional[float] = typer.Option(None, help="quality threshold p0"),
          signal: Optional[str] = typer.Option(None, help="P signal: task | bertscore | mix"),
          form: Optional[str] = typer.Option(None, help="reward form: per_step (the proposal) | terminal"),
          state: Optional[str] = typer.Option(None, help="what the policy sees: query_answer | query"),
          ppo_gamma: Optional[float] = typer.Option(None, help="ppo.gamma: PPO's discount factor, in [0, 1]"),
          total_timesteps: Optional[int] = typer.Option(None, min=1, help="PPO environment steps"),
          seed: Optional[int] = typer.Option(None, min=0, help="train this one PPO seed instead of params' seeds"),
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
        p = p.override("budget", cost_share=cost_share)
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
        if "budget" in summary:
            b = summary["budget"]
            oof = b["out_of_fold"]
            typer.echo(f"{ds}: budget {b['share']:g} x {b['reference']}'s {b['reference_gflops']:.1f} GFLOPs = "
                       f"{b['budget_gflops']:.1f} GFLOPs a query -> alpha {b['alpha']:.4f} "
                       f"({'met' if b['feasible'] else 'NOT met even'} at that alpha): out-of-fold cost "
                       f"{oof['cost_gflops']:.1f} GFLOPs ({oof['cost_gflops'] / b['reference_gflops']:.2f} of the "
                       f"reference), score {oof['score']:.3f}, {oof['policy']} policy", err=True)
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
def budgets(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt) -> None:
    """DER, the confidence cascade and a random mix, each fitted on the train split to spend the same budget (each
    of budget.shares x the reference expert's mean cost), on the test split: one table per dataset, a plot of
    score against cost share, and DER's non-inferiority to the reference (results/budgets/)."""
    from der_pipeline.evaluate.budgets import budgets as run

    _tables(params, dataset, run)


@app.command()
def ablate(params: Path = ParamsOpt, dataset: Optional[list[str]] = DatasetOpt) -> None:
    """DER retrained with one change at a time: P signal, reward form / preset, state (results/ablate/)."""
    from der_pipeline.evaluate.ablate import ablate as run

    _tables(params, dataset, run)


@app.command("cross-task")
def cross_task(params: Path = ParamsOpt) -> None:
    """One DER policy for the mixture of evaluate.cross_task datasets, against per-task policies
    (results/cross_task/)."""
    from der_pipeline.evaluate.cross_task import cross_task as run

    p = _load(params)
    try:
        typer.echo(run(p))
    except _user_errors() as exc:
        _fail(exc)


@app.command()
def report(params: Path = ParamsOpt,
           readme: Path = typer.Option(Path("README.md"), help="the README whose headline block is rewritten; the "
                                                             "full results go to docs/results.md beside it"),
           check: bool = typer.Option(False, help="exit 1 if the README's headline block or docs/results.md is "
                                                  "out of date")) -> None:
    """Regenerate the results page (docs/results.md) and the README's headline block from results/."""
    from der_pipeline.evaluate.report import update_readme

    p = _load(params)
    changed = update_readme(p, readme, write=not check)
    if check and changed:
        typer.secho(f"{readme}: headline block or docs/results.md is out of date; run `der-pipeline report`",
                    fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"{readme}: {'updated' if changed else 'up to date'}")


@app.command()
def gc(params: Path = ParamsOpt, dataset: list[str] = typer.Option(..., "--dataset", "-d",
                                                                  help="the dataset whose tree to clean (repeatable)"),
       dry_run: bool = typer.Option(False, "--dry-run", help="only say what would be removed")) -> None:
    """Remove a tree's stale nodes: those made under settings that are no longer current (an older adapter,
    prompt, data seed, model or backend), which no reader uses. Says what it removes, by path; with --dry-run
    it removes nothing. The current nodes are untouched (they are rewritten into new shards first), and the
    tree's writer lock keeps `generate` out meanwhile."""
    from der_pipeline.generate.gc import collect

    p = _load(params)
    for ds in _datasets(p, dataset):
        try:
            typer.echo(collect(p, ds, dry_run=dry_run).summary())
        except _user_errors() as exc:
            _fail(exc)


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


def _known_dataset(p: Params, dataset: str) -> None:
    if dataset not in p.data.datasets:
        _usage_error(f"--dataset {dataset!r}: unknown dataset; the known ones are {sorted(p.data.datasets)} "
                     f"(data.datasets in params.yaml)")


def context_text(context: str, context_file: Optional[str]) -> str:
    """--context, or the text of --context-file ('-': standard input); a bad file exits 2."""
    if context_file is None:
        return context
    if context:
        _usage_error("--context and --context-file: give one of them, not both")
    if context_file == "-":
        return sys.stdin.read()
    path = Path(context_file)
    if not path.is_file():
        _usage_error(f"--context-file {context_file}: no such file" + (" (a folder)" if path.is_dir() else ""))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        _usage_error(f"--context-file {context_file}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        _usage_error(f"--context-file {context_file}: cannot be read ({exc.strerror or exc})")


def check_port(host: str, port: int) -> None:
    """``host:port`` can be listened on: bound once and released at once (so a busy port, or an address that is
    not this machine's, is refused before any model loads), else exit 2."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        _usage_error(f"--host {host!r}: not an address of this machine ({exc.strerror})")
    family, kind, proto, _, addr = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a closed port is free
            sock.bind(addr)
    except OSError as exc:
        busy = " (is another server, or another `der-pipeline serve`, listening there?)" if \
            exc.errno == errno.EADDRINUSE else ""
        _usage_error(f"--port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}{busy}; pick another "
                     f"--port or stop what holds it")


@app.command()
def ask(question: str = typer.Argument(..., help="the question to answer"),
        context: str = typer.Option("", help="the passage / paragraphs the experts should read"),
        context_file: Optional[str] = typer.Option(
            None, "--context-file", help="read the context from this file ('-': standard input) instead of "
                                         "--context (a long passage, beyond the shell's argument limit)"),
        dataset: str = typer.Option("boolq", "--dataset", "-d", help="which trained policy (and answer format) to use"),
        params: Path = ParamsOpt) -> None:
    """Answer one question live: the trained policy picks experts step by step (probabilities, answers, cost).

    The context is trimmed to data.max_context_chars at a sentence boundary, as `prepare` trims passages."""
    from der_pipeline.ask import ask as run

    p = _load(params)
    _known_dataset(p, dataset)
    context = context_text(context, context_file)
    _require_models(p, backends={p.generation.backend})
    try:
        run(p, dataset, question, context, echo=typer.echo)
    except _user_errors() as exc:
        _fail(exc)


@app.command()
def serve(dataset: Optional[list[str]] = typer.Option(
              None, "--dataset", "-d",
              help="whose trained policies (and answer format) to serve (repeatable; default boolq): with several, "
                   "ids are qualified by the dataset (der/sst2@0.5, cascade/sst2) and the first is also served "
                   "unqualified"),
          host: str = typer.Option("127.0.0.1", help="address to listen on (loopback by default; beyond it, set "
                                                    "--api-key, or a warning is printed)"),
          port: int = typer.Option(8000, min=1, max=65535, help="port to listen on"),
          policy: Optional[list[Path]] = typer.Option(
              None, "--policy", help="another trained policy.pt to serve as der:<its alpha>, or der@<share> "
                                     "for one fitted to a budget (repeatable; DATASET=PATH for a dataset other "
                                     "than the first), e.g. from `der-pipeline train --cost-share 0.5`"),
          router: Optional[list[str]] = typer.Option(
              None, "--router", help="a router of the registry to serve by its id, fitted on the dataset's train "
                                     "split at start-up (repeatable; default: every one that routes live: "
                                     "best_fixed, cascade, knn, mlp, round_robin, self_correction...)"),
          api_key: Optional[str] = typer.Option(
              None, "--api-key", envvar="DER_API_KEY", show_envvar=True,
              help="require 'Authorization: Bearer KEY' on every request but GET /health (401 without it)"),
          max_in_flight: int = typer.Option(64, "--max-in-flight", min=1,
                                            help="chat completions answered at once; past it, 429 with Retry-After"),
          timeout_s: float = typer.Option(300.0, "--timeout-s", min=0.001,
                                          help="deadline of one request, in seconds; past it, 504 naming the steps "
                                               "done"),
          expert_timeout_s: float = typer.Option(
              60.0, "--expert-timeout-s", min=0.0,
              help="bound on one call to a served expert (openai / llamaserver backends), in seconds; past it the call "
                   "counts as failed and the router degrades (0: the client's own generation.openai.timeout_s)"),
          breaker_failures: int = typer.Option(
              3, "--breaker-failures", min=0,
              help="failed calls in a row after which an expert is skipped (its circuit breaker opens; 0: never)"),
          breaker_cooldown_s: float = typer.Option(30.0, "--breaker-cooldown-s", min=0.0,
                                                   help="how long an expert whose breaker opened is skipped, in "
                                                        "seconds"),
          max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", min=1,
                                             help="largest request body, checked before it is parsed (413 past it)"),
          max_input_chars: int = typer.Option(
              100_000, "--max-input-chars", min=1,
              help="largest question + context in characters, checked before any tokenisation (400 past it)"),
          workers: int = typer.Option(
              1, "--workers", min=1,
              help="worker processes (each loads the pool: use with served experts, the openai or llamaserver "
                   "backend); any worker answers any request, /metrics sums them all"),
          params: Path = ParamsOpt) -> None:
    """Serve the trained router as an OpenAI-compatible endpoint (POST /v1/chat/completions, GET /v1/models,
    GET /health, GET /metrics).

    The last user message is the question; the passage goes in a `context` field of the request body or in a
    system message. `model` picks the router: `der` (the policy `ask` uses: models/<dataset>/seed-<first seed>),
    `der:<alpha>` (a policy trained at that cost weight; see --policy), `der@<share>` (a policy fitted to spend
    at most that share of the reference expert's cost: the budgets stage's, or --policy from
    `train --cost-share`), a baseline router by its id (`cascade`,
    `best_fixed`, `knn`, `mlp`, ...; see --router), or an expert's name to call that expert alone. The reply is a
    chat completion whose content is the last expert's answer, with `usage` summed over the
    expert calls and a `der` object: the path, every step (expert, action probabilities, answer, confidence,
    tokens, latency, cost), the total cost in GFLOPs, the policy by its id and a hash of its file, and `degraded`
    ({expert, reason, fallback}) when an expert failed, timed out or was skipped and the router answered
    without it (a DER policy: its next most probable allowed action; a registry router: STOP with the last
    answer, else the next expert). `stream: true` streams the answer once routing is done.
    Decoding follows params.yaml (generation.*), as in the tree; request fields such as temperature are ignored,
    `n` other than 1 and a `max_tokens` under 1 are refused (400). Every error has OpenAI's error shape.

    Concurrency follows the backend: an in-process model (llamacpp) answers one call at a time, a served expert
    (openai, llamaserver) up to generation.openai.concurrency / generation.llamaserver.slots at once. GET /health
    lists the experts whose circuit breaker is open; GET /metrics is Prometheus' text format (requests by model
    and status, latency, expert calls and failures, cost per request). One log line per request.
    GET /v1/models lists every id with its dataset, and a policy's alpha and cost share.

    Several datasets: `-d boolq -d sst2` serves both over one pool (each model loads once); `der/sst2@0.5`
    names sst2's budget policy, `cascade/sst2` its cascade; the dataset picks the prompt and the parser.

    Example: from openai import OpenAI; c = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none");
    c.chat.completions.create(model="der", messages=[{"role": "user", "content": "Is Paris in France?"}])"""
    import logging
    import os
    import tempfile

    import uvicorn

    from der_pipeline.serve.app import ServeOptions, bind_warning, create_app
    from der_pipeline.serve.build import CONFIG_ENV, ServeConfig, build_services, load_policies

    p = _load(params)
    datasets = list(dict.fromkeys(dataset or ["boolq"]))
    for ds in datasets:
        _known_dataset(p, ds)
    check_port(host, port)  # before any model loads (that takes seconds)
    warning = bind_warning(host, api_key)
    if warning:
        typer.echo(warning, err=True)
    _require_models(p, backends={p.generation.backend})
    if workers > 1 and p.generation.backend not in ("openai", "llamaserver"):
        typer.secho(f"warning: --workers {workers} with the {p.generation.backend} backend loads every model in "
                    f"each worker; served experts (openai, llamaserver) are what workers are for", fg="yellow",
                    err=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = ServeOptions(api_key=api_key or None, max_in_flight=max_in_flight, timeout_s=timeout_s,
                           max_body_bytes=max_body_bytes, max_input_chars=max_input_chars)
    cfg = ServeConfig(params=str(params), datasets=datasets, policies=[str(x) for x in policy or []],
                      routers=list(router) if router else None, breaker_failures=breaker_failures,
                      breaker_cooldown_s=breaker_cooldown_s, expert_timeout_s=expert_timeout_s or None,
                      options={k: getattr(options, k) for k in options.__dataclass_fields__})
    key_note = " (API key required)" if options.api_key else ""
    if workers > 1:  # uvicorn starts the workers; each builds the same server from the config
        try:
            load_policies(cfg)  # a bad --policy fails here, once, not in every worker
        except _user_errors() as exc:
            _fail(exc)
        os.environ[CONFIG_ENV] = cfg.to_json()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="der-serve-metrics-")
        typer.echo(f"serving {', '.join(datasets)} at http://{host}:{port}/v1 with {workers} workers{key_note}",
                   err=True)
        uvicorn.run("der_pipeline.serve.build:worker_app", factory=True, workers=workers, host=host, port=port,
                    access_log=False, log_level="info")
        return
    typer.echo(f"loading the experts and the embedder for {', '.join(datasets)} ...", err=True)
    try:
        services = build_services(cfg, warn=lambda msg: typer.secho(msg, fg="yellow", err=True))
    except _user_errors() as exc:
        _fail(exc)
    typer.echo(f"serving {services.model_ids()} at http://{host}:{port}/v1{key_note}", err=True)
    try:
        uvicorn.run(create_app(services, options), host=host, port=port, access_log=False, log_level="info")
    finally:
        for live in services.lives():
            live.close()

@app.command()
def demo(rerun: bool = typer.Option(False, "--rerun", help="rerun the whole chain with the real experts on a small "
                                                            "BoolQ sample (minutes) instead of showing committed "
                                                            "results"),
         sample: int = typer.Option(8, min=1, help="with --rerun: BoolQ queries to run through the whole chain"),
         workdir: Path = typer.Option(Path("runs/demo"), help="with --rerun: where its data, models and results go"),
         steps: str = typer.Option("1,2,3", help="with --rerun: which of the three steps to run, e.g. 2 or 1,3"),
         params: Path = ParamsOpt) -> None:
    """Show the committed results tables (seconds). With --rerun, three labelled steps: (1) prepare -> generate ->
    confidence -> embed -> score -> train on a small BoolQ sample with the real default experts, printing what
    each stage made; (2) the committed policies and every baseline judged on the committed full trees (no LLM),
    ending with the headline table; (3) one question routed live through the real experts."""
    from der_pipeline.demo import committed_results, run_demo

    p = _load(params)
    try:
        if rerun:
            try:
                chosen = tuple(int(x) for x in steps.split(","))
            except ValueError:
                raise typer.BadParameter(f"{steps!r}: give step numbers separated by commas, e.g. 1,3",
                                         param_hint="--steps") from None
            run_demo(p, sample=sample, workdir=workdir, echo=typer.echo, steps=chosen)
        else:
            typer.echo(committed_results(p))
    except Exception as exc:  # noqa: BLE001 - surface any failure as a clean message
        _fail(exc)


def main() -> None:  # pragma: no cover
    """The console script `der-pipeline` (pyproject.toml [project.scripts])."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
