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


def _jit(kernel):
    from triton.runtime.jit import JITFunction

    return kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)


def compile_for(kernel, arch: int, pointer_types: dict[str, str], constexprs: dict, float_args=(), num_warps=4):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit(kernel)
    signature = {}
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
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def _lora_types(dtype: str, names: tuple[str, ...]) -> dict[str, str]:
    return {n: ("*fp32" if n in ("buf_ptr", "slot_scale_ptr") else f"*{dtype}") for n in names}


def cases():
    """(name, kernel, arch, pointer types, constexprs, float args, warps) for every kernel, a spread of configs.

    The block sizes and warps are those the launchers use (kernels/triton_lora.py, kernels/triton_attention.py).
    """
    from kernels import triton_attention, triton_lora

    bm, bk, bn = triton_lora.SGMV_BLOCK_M, triton_lora.SGMV_BLOCK_K, triton_lora.SGMV_BLOCK_N
    warps = {"_sgmv_shrink_kernel": triton_lora.SGMV_SHRINK_WARPS}

    lora = [
        (triton_lora._sgmv_shrink_kernel, "fp16", 90, dict(BLOCK_M=bm, BLOCK_R=64, BLOCK_K=bk, DOT_F32=False)),
        (triton_lora._sgmv_shrink_kernel, "bf16", 80, dict(BLOCK_M=bm, BLOCK_R=16, BLOCK_K=bk, DOT_F32=False)),
        (triton_lora._sgmv_shrink_kernel, "fp32", 90, dict(BLOCK_M=bm, BLOCK_R=64, BLOCK_K=bk, DOT_F32=True)),
        (triton_lora._sgmv_expand_kernel, "bf16", 90, dict(BLOCK_M=bm, BLOCK_R=32, BLOCK_N=bn, DOT_F32=False)),
        (triton_lora._sgmv_expand_kernel, "fp16", 80, dict(BLOCK_M=bm, BLOCK_R=16, BLOCK_N=bn, DOT_F32=False)),
        (triton_lora._bgmv_shrink_kernel, "bf16", 90, dict(BLOCK_R=16, BLOCK_K=triton_lora.BGMV_BLOCK_K)),
        (triton_lora._bgmv_expand_kernel, "fp16", 90, dict(BLOCK_R=16, BLOCK_N=triton_lora.BGMV_BLOCK_N)),
        (triton_lora._bgmv_shrink_reduce_kernel, "fp16", 90, dict(BLOCK_R=16)),
    ]
    out = []
    for kernel, dtype, arch, constexprs in lora:
        names = [p.name for p in _jit(kernel).params if p.name.endswith("_ptr")]
        types = {n: ("*fp32" if n in ("buf_ptr", "out_ptr", "part_ptr", "slot_scale_ptr") else f"*{dtype}")
                 for n in names}
        for n in ("token_slots_ptr", "seg_starts_ptr", "seg_slots_ptr", "slot_row_start_ptr", "slot_rank_ptr",
                  "tile_seg_ptr", "tile_first_ptr"):
            if n in types:
                types[n] = "*i32"
        name = _jit(kernel).fn.__name__
        out.append((f"{name}-{dtype}-sm{arch}", kernel, arch, types, constexprs, (), warps.get(name, 4)))
    for dtype, arch, group, dot_f32 in (("fp16", 90, 4, False), ("bf16", 80, 8, False), ("fp32", 90, 1, True)):
        types = {n: f"*{dtype}" for n in ("q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr")}
        out.append((f"_paged_decode_kernel-{dtype}-sm{arch}", triton_attention._paged_decode_kernel, arch, types,
                    dict(BLOCK_SIZE=16, BLOCK_G=max(16, group), BLOCK_D=128,
                         BLOCK_N=triton_attention.DECODE_BLOCK_N, DOT_F32=dot_f32), ("scale",),
                    triton_attention.decode_warps(dot_f32)))
    types = {"k_ptr": "*fp32", "v_ptr": "*fp32", "k_cache_ptr": "*bf16", "v_cache_ptr": "*bf16",
             "slot_mapping_ptr": "*i64"}
    out.append(("_store_kv_kernel-bf16-sm90", triton_attention._store_kv_kernel, 90, types, dict(BLOCK_D=128), (), 4))
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
    for name, kernel, arch, types, constexprs, float_args, num_warps in cases():
        try:
            c = compile_for(kernel, arch, types, constexprs, float_args, num_warps)
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
    assert names == {"_sgmv_shrink_kernel", "_sgmv_expand_kernel", "_bgmv_shrink_kernel", "_bgmv_expand_kernel",
                     "_bgmv_shrink_reduce_kernel", "_paged_decode_kernel", "_store_kv_kernel"}
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
