# ispstream: two commands on a fresh Debian 12 machine.
#   make demo   run the usage spine on embedded defaults (broker, PostgreSQL, simulated NAS)
#   make test   run every test against real services
.PHONY: demo test bootstrap postgres bench schemas

bootstrap:
	@bash scripts/bootstrap.sh

postgres: bootstrap
	@bash scripts/postgres.sh

demo: postgres
	.venv/bin/ispstream demo

test: postgres
	@bash scripts/test.sh

bench: postgres
	.venv/bin/python -m bench

schemas: bootstrap
	.venv/bin/ispstream schemas --out docs/schemas
