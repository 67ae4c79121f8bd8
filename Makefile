# The two commands of the README. Each sets up .venv on first use.
.PHONY: demo test unit integration venv

venv:
	bash scripts/setup_venv.sh

demo:
	bash scripts/setup_venv.sh
	bash scripts/demo.sh

test:
	bash scripts/setup_venv.sh --with-test-packages
	bash scripts/run_tests.sh $(PYTEST_ARGS)

# The two halves of `make test`: fast in-process tests, and those that start processes.
unit:
	bash scripts/setup_venv.sh --with-test-packages
	TESTS=tests/unit bash scripts/run_tests.sh $(PYTEST_ARGS)

integration:
	bash scripts/setup_venv.sh --with-test-packages
	TESTS=tests/integration bash scripts/run_tests.sh $(PYTEST_ARGS)
