"""der-pipeline: Dynamic Ensemble Reasoning over small local LLMs, precompute-then-train."""

__version__ = "0.1.0"
