"""Fine-tune a cheap expert into a task specialist with LoRA, on the task's own training file.

Why (docs: experts and engines, Specialists): where no cheap expert of the pool knows a task (on SST-2
the small ones answer at chance), no confidence signal can make a cheap answer worth trusting and a router
can do no better than the strongest expert; a cheap expert fine-tuned on the task's own training file can
be both competent and cheap (the probe that motivated it is in the research log).

How, every line visible:
- the expert's GGUF, dequantised into a Hugging Face model (experts/hf_export.py), in float32;
- PEFT LoRA of rank ``rank`` on every linear layer (scale ``lora_alpha / rank``), base weights frozen;
- ``train_examples`` records drawn from the training file by a seeded shuffle (the training file
  is disjoint from the tree's queries: GLUE's train and dev);
- each record rendered exactly as the tree's hop-1 prompt for this expert (experts/keys.py
  ``render_prompt``: chat template or few-shot completion) and followed by its reference answer and
  the end of the turn; the loss is the cross-entropy of the answer tokens only;
- one pass in seeded order, batches of ``batch_size`` (left-padded), AdamW at a constant
  ``learning_rate``;
- the adapter converted by llama.cpp's own converter (specialists/lora_gguf.py) and written
  atomically beside a ``train_log.json`` (the loss of every step and the recipe; no timing, since it is tracked).

The trained PEFT adapter is kept in the model cache (by the recipe's hash) before it is converted, so
an interrupted conversion costs no training. Training itself checkpoints there too: every
``CHECKPOINT_SECONDS`` the LoRA weights, the AdamW state and the losses so far are written atomically
(a few MB, under a second), and a run of the same recipe resumes after the last checkpoint, so a kill
costs at most that much training (a recipe of thousands of examples takes hours on 2 cores). The
batches are fixed by the seeded order, there is no dropout, and the optimizer's state is restored
exactly, so a resumed run makes the same adapter as an uninterrupted one on the same machine (tested).
A finished run deletes its checkpoint. CPU arithmetic is deterministic on one machine, but another
CPU may round differently, which is why the adapter is committed (its hash is in the key of every
tree node the specialist makes) and why a run whose recipe is unchanged keeps it: the log records the
recipe (the settings, the base model's fingerprint, a hash of the rendered examples and
``RECIPE_VERSION``, raised when this procedure changes), and only a different recipe trains again.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

from der_pipeline.artifacts import adapter_path, specialist_dir
from der_pipeline.config import Params
from der_pipeline.data.prepare import ROWS
from der_pipeline.data.sources import read_records
from der_pipeline.experts.keys import gguf_fingerprint, render_prompt
from der_pipeline.experts.models import cache_dir
from der_pipeline.io import atomic_write_bytes
from der_pipeline.specialists.lora_gguf import convert_adapter

RECIPE_VERSION = 1
CHECKPOINT_SECONDS = 300.0  # at most this much training is lost to a kill; a checkpoint takes under a second


def training_rows(p: Params, dataset: str) -> list[dict]:
    """``train_examples`` prepared-style rows from the dataset's training file, in a seeded random order."""
    spec = p.specialists[dataset]
    rows = [ROWS[dataset](rec, p, lineno) for lineno, rec in read_records(p.path("source_data"), dataset, train=True)]
    if len(rows) < spec.train_examples:
        raise ValueError(f"specialists.{dataset}.train_examples: {spec.train_examples} asked, but the training file "
                         f"has {len(rows)} records")
    random.Random(spec.seed).shuffle(rows)
    return rows[:spec.train_examples]


def encode(tokenizer, p: Params, expert, row: dict) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one example: the hop-1 prompt, then the reference; labels -100 on the prompt."""
    prompt = render_prompt(p, expert, row)
    if prompt.kind == "chat":
        ids = tokenizer.apply_chat_template(list(prompt.messages), add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        answer = tokenizer(row["reference"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    else:
        ids = tokenizer(prompt.text)["input_ids"]
        answer = tokenizer(" " + row["reference"] + prompt.stop[0], add_special_tokens=False)["input_ids"]
    return ids + answer, [-100] * len(ids) + answer


def finetune(p: Params, dataset: str, progress: bool = True) -> dict:
    """Train ``dataset``'s specialist and write its adapter; returns the training log."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from der_pipeline.experts.hf_export import hf_folder

    spec = p.specialists[dataset]
    expert = p.expert(spec.expert)
    rows = training_rows(p, dataset)
    recipe = recipe_of(p, dataset, rows)
    log_path = specialist_dir(p, dataset) / "train_log.json"
    if adapter_path(p, dataset).is_file() and log_path.is_file():
        old = json.loads(log_path.read_text())
        if old.get("recipe") == recipe:
            return {**old, "kept": True}
    base = hf_folder(expert)
    trained = trained_dir(recipe)
    if (trained / "train_log.json").is_file():  # trained before, its conversion or write interrupted
        return _write(p, dataset, trained, base, json.loads((trained / "train_log.json").read_text()), log_path)
    torch.manual_seed(spec.seed)
    torch.set_num_threads(p.generation.n_threads)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=spec.rank, lora_alpha=spec.lora_alpha, lora_dropout=0.0,
                                             target_modules="all-linear", bias="none"))
    examples = [encode(tokenizer, p, expert, r) for r in rows]
    optimizer = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=spec.learning_rate)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    checkpoint = trained.with_name(trained.name + ".checkpoint.pt")
    losses = resume(checkpoint, model, optimizer)
    resumed_at, t0 = len(losses), time.perf_counter()
    last_save = t0
    model.train()
    batches = range(0, len(examples), spec.batch_size)
    bar = tqdm(batches[resumed_at:], desc=f"finetune {dataset}:{expert.name}", unit="step", disable=not progress,
               initial=resumed_at, total=len(batches))
    for start in bar:
        batch = examples[start:start + spec.batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in batch])
        labels = torch.tensor([[-100] * (width - len(lab)) + lab for _, lab in batch])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 5))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if time.perf_counter() - last_save >= CHECKPOINT_SECONDS and len(losses) < len(batches):
            save_checkpoint(checkpoint, model, optimizer, losses)
            last_save = time.perf_counter()
    # no timing in the log: it is a tracked output, and a rerun must leave it byte-identical
    log = {"dataset": dataset, "expert": expert.name, "adapter": adapter_path(p, dataset).name, "recipe": recipe,
           "examples": len(examples), "steps": len(losses),
           "trainable_params": sum(w.numel() for w in model.parameters() if w.requires_grad), "loss": losses}
    # the PEFT adapter is kept in the cache first, so an interrupted conversion does not cost the training
    tmp = trained.with_name(f".{trained.name}.{os.getpid()}.tmp")
    model.save_pretrained(str(tmp))
    atomic_write_bytes(tmp / "train_log.json", (json.dumps(log, indent=1) + "\n").encode())
    shutil.rmtree(trained, ignore_errors=True)
    os.replace(tmp, trained)
    checkpoint.unlink(missing_ok=True)
    return {**_write(p, dataset, trained, base, log, log_path), "seconds": round(time.perf_counter() - t0, 1),
            "resumed_at_step": resumed_at}


def recipe_of(p: Params, dataset: str, rows: list[dict]) -> dict:
    """What decides the adapter: the settings, the base model's fingerprint, the examples, ``RECIPE_VERSION``."""
    spec = p.specialists[dataset]
    expert = p.expert(spec.expert)
    return {"version": RECIPE_VERSION, "base": gguf_fingerprint(expert),
            "settings": {k: getattr(spec, k) for k in ("train_examples", "rank", "lora_alpha", "learning_rate",
                                                       "batch_size", "seed")},
            "examples_sha256": examples_hash(p, expert, rows)}


def trained_dir(recipe: dict) -> Path:
    """The model cache's folder for a recipe's PEFT adapter (its checkpoint lies beside it)."""
    return cache_dir().parent / "peft" / hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, model, optimizer, losses: list[float]) -> None:
    """The LoRA weights, the AdamW state and the losses after ``len(losses)`` steps, written atomically."""
    import torch
    from peft import get_peft_model_state_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"losses": list(losses), "lora": get_peft_model_state_dict(model),
                "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, path)


def resume(path: Path, model, optimizer) -> list[float]:
    """Restore a checkpoint into ``model`` and ``optimizer``; the losses of the steps it holds (none without one)."""
    import torch
    from peft import set_peft_model_state_dict

    if not path.is_file():
        return []
    state = torch.load(path, weights_only=True)
    set_peft_model_state_dict(model, state["lora"])
    optimizer.load_state_dict(state["optimizer"])
    return list(state["losses"])


def _write(p: Params, dataset: str, trained: Path, base: Path, log: dict, log_path: Path) -> dict:
    """Convert the trained PEFT adapter into the dataset's llama.cpp adapter, then write its log beside it."""
    log = {k: v for k, v in log.items() if k != "seconds"}  # (logs of older runs carried one)
    specialist_dir(p, dataset).mkdir(parents=True, exist_ok=True)
    convert_adapter(trained, base, adapter_path(p, dataset))
    atomic_write_bytes(log_path, (json.dumps(log, indent=1) + "\n").encode())
    return log


def examples_hash(p: Params, expert, rows: list[dict]) -> str:
    """SHA-256 over the rendered prompts and references the specialist learns from."""
    h = hashlib.sha256()
    for r in rows:
        prompt = render_prompt(p, expert, r)
        h.update(json.dumps([prompt.kind, list(prompt.messages), prompt.text, r["reference"]]).encode())
    return h.hexdigest()


def write_manifest(p: Params, prune: bool) -> Path:
    """data/specialists/specialists.json: each dataset's specialist and adapter (written even when there is
    none, so the folder, a DVC output, exists in a fresh clone); ``prune`` removes the folders of datasets
    no longer under ``specialists``."""
    root = p.path("data") / "specialists"
    root.mkdir(parents=True, exist_ok=True)
    if prune:
        for folder in root.iterdir():
            if folder.is_dir() and folder.name not in p.specialists:
                shutil.rmtree(folder)
    manifest = {d: {"expert": s.expert, "adapter": str(adapter_path(p, d).relative_to(root))}
                for d, s in sorted(p.specialists.items())}
    out = root / "specialists.json"
    atomic_write_bytes(out, (json.dumps(manifest, indent=1) + "\n").encode())
    return out
