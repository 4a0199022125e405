"""An expert's GGUF as a Hugging Face model folder, for vLLM (which has no GGUF loader on its CPU build).

transformers reads a GGUF into a normal model (the weights dequantised, here kept in
bf16) and its tokenizer with the chat template; the folder gets those weights as
safetensors (the tied ``lm_head.weight`` dropped: safetensors refuses shared
tensors, and the config's ``tie_word_embeddings`` restores it), a ``config.json``
without the GGUF's ``quantization_config``, the tokenizer files and a manifest.

The folder lives in the model cache under the GGUF's fingerprint, is built in a
temp folder and renamed into place (a crash leaves no half folder), and is reused
only when its manifest names the same GGUF hash and its weights file has the size
the manifest recorded. Note: vLLM computes in bf16 on these dequantised weights,
llama.cpp on the quantised ones, so their answers can differ (docs/experts-and-engines.md, Engines
section reports by how much).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from der_pipeline.config import ExpertSpec
from der_pipeline.experts.keys import gguf_fingerprint
from der_pipeline.experts.models import ModelNotFoundError, cache_dir, expert_model_path

MANIFEST = "der-pipeline.json"


def hf_folder(expert: ExpertSpec) -> Path:
    """The converted folder of ``expert`` (built on first use, a minute or so per model)."""
    fingerprint = gguf_fingerprint(expert)
    out = cache_dir().parent / "hf" / f"{expert.name}-{fingerprint.removeprefix('sha256:')}"
    if _valid(out, fingerprint):
        return out
    if out.exists():
        shutil.rmtree(out)
    gguf = expert_model_path(expert)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _convert(gguf, tmp, fingerprint)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def adds_bos(expert: ExpertSpec) -> bool:
    """Whether llama.cpp puts BOS before a completion prompt for this GGUF (``tokenizer.ggml.add_bos_token``;
    absent means no). The converted tokenizer does not always carry this over (Gemma's lost it, and Gemma
    without BOS answers differently), so the vLLM backend tokenises completion prompts itself."""
    from gguf import GGUFReader

    field = GGUFReader(str(expert_model_path(expert))).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field.parts[field.data[0]][0]) if field is not None else False


def _valid(folder: Path, fingerprint: str) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    weights = folder / "model.safetensors"
    return (manifest.get("gguf") == fingerprint and weights.exists()
            and weights.stat().st_size == manifest.get("weights_bytes"))


def _convert(gguf: Path, dest: Path, fingerprint: str) -> None:
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelNotFoundError(f"converting {gguf.name} for vLLM needs torch, transformers, safetensors and "
                                 f"gguf (the .venv-vllm environment has them: `make setup-vllm`): {exc}") from None
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    weights = dest / "model.safetensors"
    save_file(state, str(weights), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = "bfloat16"
    (dest / "config.json").write_text(json.dumps(config, indent=1, default=str))
    tokenizer.save_pretrained(dest)
    (dest / MANIFEST).write_text(json.dumps({"gguf": fingerprint, "source": gguf.name,
                                             "weights_bytes": weights.stat().st_size}, indent=1))
