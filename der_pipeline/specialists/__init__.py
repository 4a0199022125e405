"""Specialists: a cheap expert fine-tuned (LoRA) on a task's own training file; it takes the expert's slot there."""
