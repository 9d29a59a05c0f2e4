# The two commands: `make up` (everything, on loopback) and `make test` (every test).
# Both install what is missing and start the real servers first (infra/local/servers.sh).

SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help up down test sdk-test web-test faults faults-prove fuzz bench servers servers-down status lint clean-data infra-check images

help:
	@echo "make up        install what is missing, start Kafka, Cassandra, Redis and the services; print where to connect"
	@echo "make down      stop everything make up started"
	@echo "make test      install what is missing, start the servers, run every test"
	@echo "make sdk-test  the TypeScript SDK's tests (clients/js, node --test) against real gateways"
	@echo "make web-test  the web chat (clients/web) in headless Chromium against real gateways; screenshots in target/"
	@echo "make faults    the fault scenarios at their large size, with counts"
	@echo "make faults-prove  each fault scenario with the failpoint of its bug on: each must fail (target/faults-prove.md)"
	@echo "make fuzz      the decoders' fuzz targets with a long budget (FUZZ_CASES, default 200000 each)"
	@echo "make bench     the benchmarks beside their floors (release build): bench-results/ (JSON, summary, charts)"
	@echo "make lint      rustfmt check and clippy"
	@echo "make infra-check  the Terraform modules' offline checks and the images' check (debug build; make test runs it)"
	@echo "make images    OCI images of the release binaries in target/images, checked"
	@echo "make status    what is running"
	@echo "make clean-data  stop everything and delete local data and logs (.local/data, .local/logs)"

servers:
	infra/local/servers.sh up

servers-down:
	infra/local/servers.sh down

up: servers
	infra/local/platform.sh up

down:
	infra/local/platform.sh down
	infra/local/servers.sh down

status:
	@infra/local/servers.sh status
	@infra/local/platform.sh status

# Unit tests need nothing; the end-to-end tests in tests/ talk to the servers started here.
# Locally the servers stay up for the next run; in CI (CI=true) they are stopped at the end.
test: servers infra-check
	$(CARGO) build --bins
	@status=0; $(CARGO) test --workspace --no-fail-fast || status=$$?; \
	$(MAKE) --no-print-directory sdk-test || status=$$?; \
	$(MAKE) --no-print-directory web-test || status=$$?; \
	if [ -n "$${CI:-}" ]; then infra/local/servers.sh down; fi; exit $$status

# The TypeScript SDK (clients/js): its dependencies from the committed lock file (when missing or changed),
# its build (tsc), and its tests with Node's test runner against real services, which the `harness` binary
# (tests/src/bin/harness.rs) starts as processes. Needs Node 20 or later.
sdk-test: servers
	$(CARGO) build --bins
	infra/local/node-deps.sh --build clients/js
	cd clients/js && npm test

# The web chat (clients/web: a static page on the SDK, served by the gateways at /app/) in Debian's Chromium,
# driven by playwright-core: two users in two browser contexts through two gateways. Screenshots in
# target/web-screenshots/.
web-test: servers
	infra/local/browser.sh
	$(CARGO) build --bins
	infra/local/node-deps.sh --build clients/js clients/web
	cd clients/web && npm test

# The fault scenarios at their large size (the small size runs in `make test`); prints the counts.
faults: servers
	$(CARGO) build --bins
	FAULTS_SCALE=large $(CARGO) test -p tests --test faults -- --nocapture --test-threads=1

# Each fault and security scenario run against its bug (a failpoint, built into target/failpoints) and
# required to fail: the proof that the tests can fail.
faults-prove: servers
	tests/faults-prove.sh

# The client-frame and log-event decoders' property tests (make test runs them at 2000 cases each).
FUZZ_CASES ?= 200000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p gateway --test fuzz_frames
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p chat-model --test fuzz_events

# The benchmarks (kept out of `make test`, which runs a smoke-sized run of them): release binaries, results
# and charts in bench-results/, the summary table printed last. BENCH_ARGS: e.g. --scenarios latency.
BENCH_ARGS ?=
bench: servers
	infra/local/bench-tools.sh
	$(CARGO) build --release --bins
	target/release/bench --out bench-results $(BENCH_ARGS)
	.local/venv/bin/python tests/bench/charts.py bench-results
	@cat bench-results/summary.md

# The Terraform modules (fmt, tflint, checkov, the consistency test) and the OCI images of the debug binaries,
# each run from its own root filesystem against the servers (infra/terraform/check.sh, infra/images/check.sh).
infra-check: servers
	$(CARGO) build --bins
	infra/terraform/check.sh
	infra/images/check.sh debug

# The images to deploy: release binaries, built into target/images (an OCI layout) and checked.
images: servers
	nice -n 19 $(CARGO) build --release --bins
	infra/images/check.sh release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-data: down
	rm -rf .local/data .local/logs
