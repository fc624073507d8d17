"""Batched-LoRA and paged-attention kernels: Triton implementations and pure-torch references.

Imports only torch, triton and the standard library. Every kernel has a `Semantics:` docstring and a reference with
the same signature (see kernels/reference.py once the kernels issue lands).
"""
