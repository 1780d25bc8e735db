# The two commands: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Cache bytecode: without it every skyfed process recompiles the Google, pyiceberg and
# pandas modules (about 10 s per process on this machine).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test install lock clean down

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "skyfed needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/skyfed demo run

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

down: $(STAMP)
	$(BIN)/skyfed down

# Re-pin the exact dependency set after editing pyproject.toml.
lock:
	test -x $(BIN)/uv || ($(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q uv)
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	-$(BIN)/skyfed down
	rm -rf $(VENV) .skyfed
