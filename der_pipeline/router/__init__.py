"""The router: the MDP over the cached tree, PPO, model selection, the baselines, live routing.

Set before torch runs its first kernel in this process (torch reads it once, then): its element-wise
kernels (activations, the optimiser's updates) are taken in their portable build rather than the one for
the widest vector unit found (AVX2, AVX-512), which rounds differently, so that the small networks trained
here (the supervised router of `evaluate` above all, whose fit amplifies a last-bit difference into another
choice of expert on some queries) land on the same weights on every x86 machine. Their time goes to
Python, not to these kernels. Only the router's processes are affected: the embedder and BERTScore, whose
outputs are computed once and stored, keep the fast kernels. A value the user set wins.
"""
import os

os.environ.setdefault("ATEN_CPU_CAPABILITY", "default")
