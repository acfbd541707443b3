# Two commands on a fresh machine: `make demo` (set up, then train a sharded DLRM on 2 CPU ranks)
# and `make test`. Both create .venv/ first if needed; a second run skips the install.
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test test-avx2 test-quality bench-smoke clean

setup:
	@bash scripts/setup.sh

demo: setup
	rm -rf runs/demo
	$(PY) -m torchrec_models train --config configs/tiny.toml --nproc-per-node 2 --run-dir runs/demo

test: setup
	$(PY) -m pytest -q -m "not quality"

# Presets trained to model-quality targets on generated data (NE < 1, above logistic regression,
# above the popularity baseline; bf16 and compiled runs end where fp32 does): about three minutes more.
test-quality: setup
	$(PY) -m pytest -q -m quality

# The numerical tests again with torch's AVX2 kernels and this package's kernels built for AVX2
# with FMA (other vector widths, other summation orders): bounds that hold only on one CPU's kernels
# fail here. CI runs it after `make test`. Skipped where torch's kernels are AVX2 already (`make
# test` just ran those very kernels).
NUMERICAL := tests/test_oracle.py tests/test_baseline.py tests/test_dot_interaction.py \
	tests/test_precision_options.py::test_fp16_comms_and_fp16_tables_train_on_two_gloo_ranks \
	tests/test_retrieval.py::test_two_ranks_match_one_process_with_gathered_negatives \
	tests/test_checkpoint.py::test_resume_is_bit_exact tests/test_checkpoint.py::test_resharded_resume_continues_with_the_same_losses \
	tests/test_checkpoint.py::test_export_predicts_like_the_sharded_model
test-avx2: setup
	@if [ "$$($(PY) -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')" = AVX2 ]; then \
		echo "test-avx2: torch's CPU kernels here are AVX2 already; make test ran them"; \
	else ATEN_CPU_CAPABILITY=avx2 TORCHREC_MODELS_KERNEL_ARCH=x86-64-v3 $(PY) -m pytest -q $(NUMERICAL); fi

clean:
	rm -rf runs .pytest_cache
