"""A fast fake backend: deterministic text from the prompt, for the resume and invalidation tests.

It stands in for the engine named in params (its ``name``), so the nodes it writes are keyed as that
engine's would be; the real-model tests in test_generate_real.py run the same paths with llama.cpp.
"""
from __future__ import annotations

import hashlib
import json

from der_pipeline.experts.backends import Backend, Completion


class FakeBackend(Backend):
    def __init__(self, cfg, name: str | None = None, fail_after: int | None = None):
        super().__init__(cfg)
        self.name = name or cfg.backend
        self.calls = 0
        self.fail_after = fail_after

    def generate(self, expert, prompts):
        for p in prompts:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RuntimeError("fake backend: failing on purpose")
            self.calls += 1
            blob = json.dumps([expert.name, p.kind, list(p.messages), p.text], sort_keys=True)
            h = hashlib.sha256(blob.encode()).hexdigest()
            text = ("Yes" if int(h[0], 16) % 2 else "No") + f", because {h[:8]}."
            yield Completion(text=text, prompt_tokens=len(blob) // 4, completion_tokens=6, latency_s=0.0,
                             finish_reason="stop")
