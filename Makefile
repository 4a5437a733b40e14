# The two commands a newcomer needs are `make demo` and `make test`;
# everything else here is what they are made of.
SHELL := /bin/bash
VENV := .venv/bin
export PYTHONPATH := $(CURDIR)/scripts

.PHONY: setup test lint typecheck pytest demo bench lock charts clean

setup:
	@scripts/bootstrap.sh

test: setup lint typecheck pytest

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/lint-imports

typecheck:
	$(VENV)/mypy

# pytest exits 5 when it collected nothing: that is a failure here, as every
# non-zero status is.
pytest:
	$(VENV)/pytest

demo: setup
	$(VENV)/python -m falachefe_devstack.demo $(DEMO_ARGS)

bench: setup
	$(VENV)/python -m bench $(BENCH_ARGS)

# Re-resolve the pinned dependency sets after editing pyproject.toml: the
# development set (tests, demo), the image's runtime-only set, and checkov's
# own (a tool with pins of its own: in a virtualenv of its own, so it never
# moves the versions the tests run against).
UV := $(HOME)/.cache/falachefe/uv-0.13.8/bin/uv
CHECKOV := checkov>=3.3,<3.4
lock: setup
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 --quiet -o requirements.lock
	$(UV) pip compile pyproject.toml --python-version 3.11 --quiet -o requirements-runtime.lock
	echo '$(CHECKOV)' | $(UV) pip compile - --python-version 3.11 --quiet -o requirements-checkov.lock

# Make crds/ the operator chart's CRD templates and regenerate the Falachefe chart's values schema.
charts:
	$(VENV)/python helm/sync.py --write

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache tests/node/node_modules
