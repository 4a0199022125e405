"""A specialist for real: LoRA fine-tuning of the packaged smollm2-135m on a few SST-2 training sentences,
llama.cpp's own adapter converter, and llama.cpp generating with the adapter applied (a tiny recipe: one
step of eight examples, at a learning rate high enough for the adapter to move the answer's probabilities)."""
import json

import pytest
import yaml
from conftest import REPO, SHARED_DATA, run_cli

from der_pipeline.artifacts import adapter_path, dataset_params, load_prepared
from der_pipeline.config import load_params
from der_pipeline.experts.backends import LlamaCppBackend
from der_pipeline.experts.keys import render_prompt
from der_pipeline.specialists.finetune import finetune

pytestmark = pytest.mark.slow


def write_params(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(source_data=str(SHARED_DATA), data=str(tmp_path / "data"))
    raw["data"]["datasets"] = {"sst2": {"sample": 1}}
    raw["specialists"] = {"sst2": {"expert": "smollm2-135m", "train_examples": 8, "rank": 4, "lora_alpha": 8,
                                   "learning_rate": 0.01, "batch_size": 8, "seed": 0}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_finetune_writes_an_adapter_that_llamacpp_applies_and_keeps_it_while_the_recipe_is_unchanged(tmp_path):
    params = write_params(tmp_path)
    first = json.loads(run_cli(["finetune", "--params", str(params), "--no-progress"], cwd=tmp_path).stdout)
    p = load_params(params)
    adapter = adapter_path(p, "sst2")
    assert first["steps"] == 1 and first["examples"] == 8 and adapter.read_bytes()[:4] == b"GGUF"
    log = json.loads((adapter.parent / "train_log.json").read_text())
    assert log["recipe"]["settings"]["rank"] == 4 and len(log["loss"]) == 1
    assert json.loads((adapter.parent.parent / "specialists.json").read_text()) == {
        "sst2": {"expert": "smollm2-135m", "adapter": "sst2/smollm2-135m.lora.gguf"}}
    before = adapter.read_bytes()
    again = finetune(p, "sst2", progress=False)  # in-process: no second interpreter start
    assert again["kept"] is True and adapter.read_bytes() == before

    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    q = dataset_params(p, "sst2")
    specialist, base = q.experts[0], p.experts[0]
    query = load_prepared(p, "sst2").to_pylist()[0]
    backend = LlamaCppBackend(p.generation)
    try:
        with_lora = next(backend.generate(specialist, [render_prompt(q, specialist, query)]))
        without = next(backend.generate(base, [render_prompt(p, base, query)]))
    finally:
        backend.close()
    assert with_lora.text.strip() and with_lora.confidence is not None
    assert (with_lora.text != without.text
            or abs(with_lora.confidence.mean_logprob - without.confidence.mean_logprob) > 1e-3)


def test_finetune_names_a_dataset_without_a_specialist(tmp_path):
    params = write_params(tmp_path)
    proc = run_cli(["finetune", "--params", str(params), "-d", "boolq"], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "no specialist declared" in proc.stderr and "Traceback" not in proc.stderr
