# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint bench-ocpp bench-billing clean

$(BIN)/chargedesk: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(BIN)/chargedesk
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(BIN)/chargedesk
	$(BIN)/chargedesk db upgrade
	$(BIN)/chargedesk serve --demo --host $(HOST) --port $(PORT)

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-ocpp: $(BIN)/chargedesk
	$(BIN)/chargedesk bench ocpp --stations 1000 --duration 60

bench-billing: $(BIN)/chargedesk
	$(BIN)/chargedesk bench billing --sessions 1000000

clean:
	rm -rf $(VENV) var .pytest_cache
