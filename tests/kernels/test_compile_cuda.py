"""Every Triton kernel compiles to a CUDA binary (PTX -> cubin with Triton's bundled ptxas) for sm_80 and sm_90.

No GPU is needed: this is ahead-of-time compilation for a target. It catches what the interpreter cannot (a
construct the NVIDIA backend rejects, a tl.dot shape or dtype it does not support, shared memory over the limit),
so that a CPU-only CI still knows the kernels build for an A100 / H100.

The compilation runs in a subprocess without TRITON_INTERPRET: Triton decorates its own standard library
(tl.sum, tl.max, ...) as interpreted functions when the variable is set at import, and those cannot be compiled.
`python tests/kernels/test_compile_cuda.py` prints the compiled kernels' registers, spills and shared memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
ALIGNED_INTS = ("K", "N", "R", "k_per_split", "n_per_prog", "y_offset", "c1", "c2")   # multiples of 16 at Llama shapes


def _jit(kernel):
    from triton.runtime.jit import JITFunction

    return kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)


def compile_for(kernel, arch: int, pointer_types: dict[str, str], constexprs: dict, float_args=(), num_warps=4,
                num_stages=3):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit(kernel)
    signature = {}
    # what Triton's launcher specializes at run time for torch tensors and strides that are multiples of 16
    # (16-byte aligned pointers, divisible strides): without it loads are not vectorized nor pipelined, and the
    # registers and spills reported would not be those of the kernels that run
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.params)
             if p.name.endswith("_ptr") or p.name.startswith("stride_") or p.name in ALIGNED_INTS}
    for p in fn.params:
        name = p.name
        if p.is_constexpr:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types.get(name, "*i32")
        elif name in float_args:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps,
                                                                                  "num_stages": num_stages})


def _lora_types(dtype: str, names: tuple[str, ...]) -> dict[str, str]:
    return {n: ("*fp32" if n in ("buf_ptr", "slot_scale_ptr") else f"*{dtype}") for n in names}


def cases():
    """(name, kernel, arch, pointer types, constexprs, float args, warps, stages) for every kernel, a spread of
    configs.

    The block sizes and warps are those the launchers use (kernels/triton_lora.py, kernels/triton_attention.py).
    """
    from openlora.kernels import triton_attention, triton_lora

    bs, be = triton_lora.BGMV_SHRINK_CONFIG, triton_lora.BGMV_EXPAND_CONFIG
    gs, ge = triton_lora.BGMV_SHRINK_GEMV_CONFIG, triton_lora.BGMV_EXPAND_GEMV_CONFIG
    ss, se = triton_lora.SGMV_SHRINK_CONFIG, triton_lora.SGMV_EXPAND_CONFIG
    shrink, expand = triton_lora._lora_shrink_kernel, triton_lora._lora_expand_kernel
    gshrink, gexpand = triton_lora._gemv_shrink_kernel, triton_lora._gemv_expand_kernel

    def sh(cfg, segmented, multi, mode, block_t, dot_f32=False):
        return dict(SEGMENTED=segmented, MULTI=multi, MODE=mode, BLOCK_T=block_t, BLOCK_R=cfg.block_r,
                    BLOCK_K=cfg.block_k, DOT_F32=dot_f32), cfg.num_warps, cfg.num_stages

    def ex(cfg, segmented, multi, block_t, rank_bucket, dot_f32=False):   # as _launch_expand picks the tiles
        full = rank_bucket <= cfg.block_r
        block_n = min(cfg.block_n, triton_lora.F32_BLOCK_N_MAX) if dot_f32 else cfg.block_n
        return dict(SEGMENTED=segmented, MULTI=multi, BLOCK_T=block_t, BLOCK_R=rank_bucket if full else cfg.block_r,
                    BLOCK_N=block_n, FULL_R=full, DOT_F32=dot_f32), cfg.num_warps, cfg.num_stages

    # (kernel, dtype, arch, (constexprs, warps, stages), tag): the launchers' default configs, every form
    lora = [
        (gshrink, "bf16", 90, (dict(MODE=1, BLOCK_R=gs.block_r, BLOCK_K=gs.block_k), gs.num_warps,
                               gs.num_stages), "partials"),
        (gshrink, "bf16", 90, (dict(MODE=2, BLOCK_R=gs.block_r, BLOCK_K=gs.block_k), gs.num_warps,
                               gs.num_stages), "reduce"),
        (gshrink, "bf16", 80, (dict(MODE=3, BLOCK_R=gs.block_r, BLOCK_K=gs.block_k), gs.num_warps,
                               gs.num_stages), "atomic"),
        (gshrink, "fp16", 80, (dict(MODE=0, BLOCK_R=gs.block_r, BLOCK_K=gs.block_k), gs.num_warps,
                               gs.num_stages), ""),
        (gexpand, "bf16", 90, (dict(BLOCK_R=ge.block_r, BLOCK_N=ge.block_n, ROUND_BUF=True), ge.num_warps,
                               ge.num_stages), ""),
        (gexpand, "fp32", 80, (dict(BLOCK_R=ge.block_r, BLOCK_N=ge.block_n, ROUND_BUF=False), ge.num_warps,
                               ge.num_stages), ""),
        (shrink, "bf16", 90, sh(bs, False, True, 1, 16), "bgmv-multi-partials"),
        (shrink, "bf16", 90, sh(bs, False, True, 2, 16), "bgmv-multi-reduce"),
        (shrink, "bf16", 90, sh(bs, False, True, 3, 16), "bgmv-multi-atomic"),
        (shrink, "fp16", 80, sh(bs, False, True, 0, 16), "bgmv-multi"),
        (shrink, "bf16", 90, sh(bs, False, False, 1, 16), "bgmv-partials"),
        (shrink, "bf16", 90, sh(ss, True, False, 1, ss.block_m), "sgmv-partials"),
        (shrink, "bf16", 80, sh(ss, True, False, 3, ss.block_m), "sgmv-atomic"),
        (shrink, "fp16", 80, sh(ss, True, False, 0, ss.block_m), "sgmv"),
        (shrink, "fp32", 90, sh(ss, True, False, 1, ss.block_m, dot_f32=True), "sgmv-fp32"),
        (expand, "bf16", 90, ex(be, False, True, 16, 128), "bgmv-multi-r128"),
        (expand, "fp16", 80, ex(be, False, True, 16, 64), "bgmv-multi-r64"),
        (expand, "bf16", 90, ex(be, False, False, 16, 16), "bgmv-r16"),
        (expand, "bf16", 90, ex(se, True, False, se.block_m, 128), "sgmv-r128"),
        (expand, "fp16", 80, ex(se, True, False, se.block_m, 128), "sgmv-r128"),
        (expand, "bf16", 90, ex(se, True, False, se.block_m, 256), "sgmv-r256-loop"),
        (expand, "fp32", 90, ex(se, True, False, se.block_m, 64, dot_f32=True), "sgmv-fp32"),
        (expand, "fp32", 90, ex(be, False, True, 16, 128, dot_f32=True), "bgmv-multi-fp32"),
    ]
    out = []
    for kernel, dtype, arch, (constexprs, num_warps, num_stages), tag in lora:
        names = [p.name for p in _jit(kernel).params if p.name.endswith("_ptr")]
        types = {n: ("*fp32" if n in ("buf_ptr", "part_ptr", "slot_scale_ptr") else f"*{dtype}") for n in names}
        for n in ("lock_ptr", "slots_ptr", "token_slots_ptr", "seg_starts_ptr", "slot_row_start_ptr", "slot_rank_ptr",
                  "tile_seg_ptr", "tile_first_ptr"):
            if n in types:
                types[n] = "*i32"
        name = _jit(kernel).fn.__name__
        out.append((f"{name}-{tag + '-' if tag else ''}{dtype}-sm{arch}", kernel, arch, types, constexprs, (),
                    num_warps, num_stages))
    for dtype, arch, group, dot_f32, split in (("fp16", 90, 4, False, False), ("bf16", 80, 8, False, False),
                                               ("fp32", 90, 1, True, False), ("bf16", 90, 4, False, True),
                                               ("fp32", 80, 4, True, True)):
        types = {n: f"*{dtype}" for n in ("q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr")}
        types.update(part_out_ptr="*fp32", part_lse_ptr="*fp32")
        out.append((f"_paged_decode_kernel-{'split-' if split else ''}{dtype}-sm{arch}",
                    triton_attention._paged_decode_kernel, arch, types,
                    dict(BLOCK_SIZE=16, BLOCK_G=max(16, group), BLOCK_D=128,
                         BLOCK_N=triton_attention.DECODE_BLOCK_N, DOT_F32=dot_f32, SPLIT=split), ("scale",),
                    triton_attention.decode_warps(dot_f32), 3))
    for dtype, arch in (("bf16", 90), ("fp32", 80)):
        types = dict(part_out_ptr="*fp32", part_lse_ptr="*fp32", out_ptr=f"*{dtype}")
        out.append((f"_decode_reduce_kernel-{dtype}-sm{arch}", triton_attention._decode_reduce_kernel, arch, types,
                    dict(BLOCK_S=32, BLOCK_D=128), (), 4, 3))
    types = {"k_ptr": "*fp32", "v_ptr": "*fp32", "k_cache_ptr": "*bf16", "v_cache_ptr": "*bf16",
             "slot_mapping_ptr": "*i64"}
    out.append(("_store_kv_kernel-bf16-sm90", triton_attention._store_kv_kernel, 90, types, dict(BLOCK_D=128), (),
                4, 3))
    return out


def _resource_usage(cubin: bytes) -> dict:
    """Registers / spills / shared memory per kernel, from the cuobjdump bundled with Triton (best effort)."""
    import re
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    usage = {}
    for key, pat in (("registers", r"REG:(\d+)"), ("stack", r"STACK:(\d+)"), ("static_shared", r"SHARED:(\d+)")):
        m = re.search(pat, text)
        if m:
            usage[key] = int(m.group(1))
    return usage


def compile_all() -> dict:
    results = {}
    for name, kernel, arch, types, constexprs, float_args, num_warps, num_stages in cases():
        try:
            c = compile_for(kernel, arch, types, constexprs, float_args, num_warps, num_stages)
            ok = "cubin" in c.asm and len(c.asm["cubin"]) > 0
            results[name] = dict(ok=ok, arch=arch, shared=c.metadata.shared, **_resource_usage(c.asm["cubin"]))
        except Exception as e:  # noqa: BLE001 - reported per kernel
            results[name] = dict(ok=False, arch=arch, error=f"{type(e).__name__}: {str(e)[-2000:]}")
    return results


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, __file__, "--json"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_for_sm80_and_sm90(compiled):
    failed = {k: v["error"] for k, v in compiled.items() if not v["ok"]}
    assert not failed, failed
    names = {k.split("-")[0] for k in compiled}
    assert names == {"_lora_shrink_kernel", "_lora_expand_kernel", "_gemv_shrink_kernel", "_gemv_expand_kernel",
                     "_paged_decode_kernel", "_decode_reduce_kernel", "_store_kv_kernel"}
    assert {v["arch"] for v in compiled.values()} == {80, 90}
    for name, v in compiled.items():
        assert v["shared"] <= SMEM_LIMIT[v["arch"]], (name, v)
        assert v.get("stack", 0) == 0, f"{name} spills registers to the stack: {v}"


if __name__ == "__main__":
    res = compile_all()
    if "--json" in sys.argv:
        print(json.dumps(res))
    else:
        for name, v in res.items():
            print(f"{name:40s} {v}")
