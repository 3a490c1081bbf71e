#!/usr/bin/env bash
# FSDP on a 2-GPU machine (issue 7), one device call:
#   run(kind=nvidia-h200-x2, carry=["wheels"], command="python3 -m pip install --no-deps --no-index -q wheels/*.whl; BUDGET_S=560 bash benchmarks/run_fsdp.sh")
# 1. Correctness with the real trainer and the shipped config (tiny SDXL-shaped model, seconds): a 2-GPU
#    FSDP run saves checkpoints, samples and a loadable model; it resumes on 1 GPU, and a 1-GPU checkpoint
#    resumes under FSDP. Its loss curve is compared with one GPU at the same global batch.
# 2. Memory and speed: full SDXL fine-tuning (random full-size weights) on 1 GPU, then FSDP over 2.
set -u
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out=${OUT:-/tmp/out}; logs=/tmp/fsdp_logs; mkdir -p "$out" "$logs"
export DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} )) LOG_DIR="$logs"
fsdp="python3 -m accelerate.commands.launch --config_file sdtune_ui/accelerate_configs/fsdp_full.yaml --num_processes 2"
common="--model tiny-sdxl --method full --data sdtune_ui/examples/toy_robot --mixed-precision bf16 --batch-size 1
        --checkpointing-steps 2 --validation-prompts toy_robot_on_a_table --validation-steps 2 --log-every 1"
runs=/tmp/fsdp_runs; rm -rf $runs

echo "== smoke: FSDP 2 GPUs, 4 steps" >&2
timeout 150 $fsdp -m sdtune_ui train $common --steps 4 --output $runs/fsdp > "$logs/smoke_fsdp.log" 2>&1
cp -r $runs/fsdp $runs/fsdp_then_1gpu
echo "== smoke: resume that run on 1 GPU to 6 steps" >&2
timeout 120 python3 -m sdtune_ui train $common --steps 6 --output $runs/fsdp_then_1gpu > "$logs/smoke_resume_1gpu.log" 2>&1
echo "== smoke: 1 GPU, batch 2 (same global batch), 4 steps" >&2
timeout 120 python3 -m sdtune_ui train $(echo $common | sed 's/--batch-size 1/--batch-size 2/') --steps 4 --output $runs/one > "$logs/smoke_one.log" 2>&1
cp -r $runs/one $runs/one_then_fsdp
echo "== smoke: resume the 1-GPU run under FSDP to 6 steps" >&2
timeout 150 $fsdp -m sdtune_ui train $common --steps 6 --output $runs/one_then_fsdp > "$logs/smoke_resume_fsdp.log" 2>&1
python3 benchmarks/fsdp_report.py $runs > "$out/fsdp_smoke.json" 2> "$logs/report.err"
cat "$out/fsdp_smoke.json" >&2
for r in fsdp fsdp_then_1gpu one one_then_fsdp; do cp $runs/$r/events.jsonl "$logs/events_$r.jsonl" 2>/dev/null; cp $runs/$r/train.log "$logs/train_$r.log" 2>/dev/null; done

bench="benchmarks/bench_train.py --model sdxl --method full --batch 1 --steps 10 --warmup 3"
for extra in "" "--gradient-checkpointing"; do
  left=$(( DEADLINE - $(date +%s) )); [ "$left" -lt 60 ] && break
  echo "== full SDXL 1 GPU $extra (limit $(( left / 2 ))s)" >&2
  timeout $(( left / 2 )) python3 $bench $extra >> "$out/fsdp_bench.jsonl" 2> "$logs/bench_1gpu$extra.err" || tail -5 "$logs/bench_1gpu$extra.err" >&2
  left=$(( DEADLINE - $(date +%s) )); [ "$left" -lt 40 ] && break
  echo "== full SDXL FSDP 2 GPUs $extra (limit ${left}s)" >&2
  if [ -z "$extra" ]; then limit=$(( left * 2 / 3 )); else limit=$left; fi
  timeout $limit $fsdp $bench $extra >> "$out/fsdp_bench.jsonl" 2> "$logs/bench_fsdp$extra.err" || tail -5 "$logs/bench_fsdp$extra.err" >&2
  tail -n 2 "$out/fsdp_bench.jsonl" | cut -c1-600 >&2
done
tar czf "$out/logs.tar.gz" -C "$logs" .  # one file: the device tool returns a limited number of files
echo "== done, $(( DEADLINE - $(date +%s) ))s before the deadline" >&2
