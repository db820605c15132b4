#!/usr/bin/env bash
# One node, N GPUs: one rank per GPU, each with its own colocated vLLM engine.
#   scripts/train.sh CONFIG [dotted.overrides ...]
#   NUM_GPUS=8 scripts/train.sh configs/grpo_arith.yaml backend.zero_stage=3
# NUM_GPUS defaults to every GPU nvidia-smi lists; MASTER_PORT to 29500.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch_common.sh"
CONFIG="${1:?usage: scripts/train.sh CONFIG [overrides...]}"; shift
NUM_GPUS="${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
if [ "$NUM_GPUS" -lt 1 ]; then
  echo "no GPU found; use scripts/train_cpu.sh on a CPU machine" >&2
  exit 2
fi
exec "$DEEPSPEED" --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29500}" \
  --module rlkit.cli train --config "$CONFIG" backend.name=deepspeed "$@"
