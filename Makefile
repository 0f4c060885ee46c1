# The two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
SOURCES := switchyard tests bench tools

.PHONY: run test bench check format clean

# constraints.txt pins the versions CI tested. silero-vad's wheel declares torch, which
# switchyard never imports (it runs the wheel's ONNX file), so it goes in without deps.
$(VENV)/.base: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt -e '.[all]'
	$(PIP) install -c constraints.txt --no-deps silero-vad
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -c constraints.txt -e '.[test]'
	touch $@

$(VENV)/.dev: $(VENV)/.test
	$(PIP) install -c constraints.txt -e '.[test,dev]'
	touch $@

$(VENV)/.bench: $(VENV)/.test
	$(PIP) install -c constraints.txt -e '.[bench]'
	touch $@

run: $(VENV)/.base
	$(VENV)/bin/switchyard run $(MANIFEST)

test: $(VENV)/.test
	$(PY) -m pytest $(PYTEST_ARGS)

# lint, format and types: the same as the pre-commit hooks
check: $(VENV)/.dev
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy

format: $(VENV)/.dev
	$(VENV)/bin/ruff format $(SOURCES)
	$(VENV)/bin/ruff check --fix $(SOURCES)

bench: $(VENV)/.bench
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
