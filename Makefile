# gil-adapt: `make demo` installs and runs the demo; `make test` runs every test.
PYTHON ?= python3

.PHONY: demo test ctest test-aarch64 clean
demo:
	scripts/install-deps.sh
	$(PYTHON) -m venv .venv
	.venv/bin/python -m pip install -q .
	.venv/bin/gil-adapt demo

test:
	scripts/test-all.sh

test-aarch64:
	scripts/test-aarch64.sh

ctest:
	$(MAKE) -C tests/c

clean:
	rm -rf build dist src/*.egg-info tests/c/bin .venv .venv-*
