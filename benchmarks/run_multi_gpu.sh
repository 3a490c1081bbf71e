#!/usr/bin/env bash
# Data-parallel scaling on a 2-GPU machine: the same case on 1 GPU and on 2 (fixed per-GPU batch), the
# 2-GPU run launched with the shipped DDP config (sdtune_ui/accelerate_configs/ddp.yaml).
#   bash benchmarks/run_multi_gpu.sh OUT_FILE "CASE" ...
set -u
out="$1"; shift
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
for case in "$@"; do
  echo "== 1 GPU: $case" >&2
  timeout 200 python3 benchmarks/bench_train.py $case >> "$out" 2> /tmp/mg1.err || tail -c 400 /tmp/mg1.err >&2
  echo "== 2 GPUs: $case" >&2
  timeout 240 python3 -m accelerate.commands.launch --config_file sdtune_ui/accelerate_configs/ddp.yaml \
    --num_processes 2 --mixed_precision bf16 benchmarks/bench_train.py $case >> "$out" 2> /tmp/mg2.err \
    || tail -c 600 /tmp/mg2.err >&2
  tail -n 2 "$out" | cut -c1-400 >&2
done
