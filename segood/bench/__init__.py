"""Benchmarks (``segood bench ...``). Submodules import torch lazily so the CLI stays fast to start."""
