"""der-pipeline: Dynamic Ensemble Reasoning over small local LLMs, precompute-then-train.

Set before torch (or numpy's BLAS) is first used, so that a rerun on another x86 machine reproduces the
committed numbers: MKL's conditional numerical reproducibility in its compatible mode takes the same code
path on every instruction set (AVX2, AVX-512, AMX), where its default picks the fastest one and rounds
differently. A value the user set wins. The other half, a fixed thread count for the small networks
trained here, is where they train (router/ppo.py, router/methods.py), and torch's portable element-wise
kernels are chosen for the router's processes in router/__init__.py.
"""
import os

os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

__version__ = "0.1.0"
