.PHONY: check test demo bench

# What CI runs; do this before you stop.
check:
	bash bootstrap/test.sh

test:
	.venv/bin/pytest -q -p no:cacheprovider

demo:
	bash bootstrap/demo.sh

bench:
	bash bootstrap/setup.sh
	@for b in benchmarks/bench_*.py; do .venv/bin/python $$b; done
