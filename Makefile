# The two commands of the README. Each sets up .venv on first use.
.PHONY: demo test venv

venv:
	bash scripts/setup_venv.sh

demo:
	bash scripts/setup_venv.sh
	bash scripts/demo.sh

test:
	bash scripts/setup_venv.sh --with-test-packages
	bash scripts/run_tests.sh $(PYTEST_ARGS)
