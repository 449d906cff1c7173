#!/usr/bin/env bash
# NFDM vs VDM train step on the CIFAR-10 config, bf16 compute, global batch 128, one GPU.
#
#   bash benchmarks/gpu_cifar10.sh            # from anywhere; needs jax[cuda] installed
#
# Writes one JSON line per model (compile time, median steps/s, XLA FLOPs, achieved TFLOP/s,
# MFU against PEAK_TFLOPS, compiled memory) to benchmarks/results/cifar10_bf16_b128_<gpu>.jsonl
# and prints the table with the NFDM/VDM time, FLOP and memory ratios. PEAK_TFLOPS defaults
# to 989, the dense bf16 peak of an H100/H200 SXM; set it for other GPUs. About 10 min on an
# H200 (two ~3 min compiles, 60 s of timed steps per model). Targets (issue 10): time ratio
# <= FLOP ratio + 5 %, MFU >= 45 %.
set -euo pipefail
cd "$(dirname "$0")/.."
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '_')
out="benchmarks/results/cifar10_bf16_b128_${gpu}.jsonl"
mkdir -p benchmarks/results
# Keep XLA from grabbing 75 % of the GPU up front, so the memory numbers are XLA's own.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
python -m benchmarks.train_step --config=experiments/cifar10.py \
  --config.train.batch_size=128 --config.net.dtype=bfloat16 \
  --peak_tflops="${PEAK_TFLOPS:-989}" --min_time=60 --min_steps=50 --json="$out" \
  2>&1 | tee "${out%.jsonl}.log"
echo "results: $out"
