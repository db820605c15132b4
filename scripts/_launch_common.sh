# Shared by the train*.sh launchers: find the deepspeed launcher (the project's .venv first).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$ROOT/.venv/bin/deepspeed" ]; then
  DEEPSPEED="$ROOT/.venv/bin/deepspeed"
  export PATH="$ROOT/.venv/bin:$PATH"
else
  DEEPSPEED="$(command -v deepspeed || true)"
fi
if [ -z "$DEEPSPEED" ]; then
  echo "deepspeed launcher not found: run 'make setup' (or pip install -e '.[deepspeed]')" >&2
  exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_ENABLE_V1_MULTIPROCESSING=0   # each rank's vLLM engine lives in the rank's process
cd "$ROOT"
