"""Batched-LoRA and paged-attention kernels: Triton implementations and pure-torch references.

Imports only torch, triton (flash_attn when present on CUDA) and the standard library. kernels/reference.py holds
the semantics (pure torch), kernels/torch_ops.py the fast CPU path, kernels/triton_*.py the Triton kernels with the
same signatures; kernels/ops.py picks one backend (see docs/kernels.md).
"""
