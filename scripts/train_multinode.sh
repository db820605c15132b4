#!/usr/bin/env bash
# Several nodes: the deepspeed launcher reads a hostfile ("node1 slots=8" per line) and starts
# the ranks over ssh (passwordless ssh between the nodes, the same checkout and .venv path on
# each, train.output_dir on a file system every node sees: checkpoints are written by all ranks).
#   HOSTFILE=hosts scripts/train_multinode.sh CONFIG [overrides ...]
# MASTER_ADDR defaults to the first host of the hostfile, MASTER_PORT to 29500.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch_common.sh"
CONFIG="${1:?usage: HOSTFILE=hosts scripts/train_multinode.sh CONFIG [overrides...]}"; shift
HOSTFILE="${HOSTFILE:?set HOSTFILE to a deepspeed hostfile (lines like 'node1 slots=8')}"
[ -f "$HOSTFILE" ] || { echo "hostfile not found: $HOSTFILE" >&2; exit 2; }
MASTER_ADDR="${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}"
exec "$DEEPSPEED" --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
  --module rlkit.cli train --config "$CONFIG" backend.name=deepspeed "$@"
