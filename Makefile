# Vesper. `make demo` and `make test` set up everything they need on a Debian 12 host.
SHELL := /bin/bash
NODE_TEST := node --import tsx --test --test-concurrency=1 --test-reporter=spec
UNIT_TESTS := $(shell find services -path '*/node_modules' -prune -o -name '*.test.ts' -print 2>/dev/null | grep -v '/test/integration/' | sort)
INTEGRATION_TESTS := $(sort $(wildcard test/integration/*.test.ts))
E2E_TESTS := $(sort $(wildcard test/e2e/*.test.ts))
# Two-node Pacemaker clusters in namespaces with QEMU guests (about 2 minutes).
FAILOVER_TESTS := $(sort $(wildcard test/failover/*.test.ts))
# Time-bounded fuzzing of everything read from guests (VESPER_FUZZ_SECONDS, default 30).
FUZZ_TESTS := $(sort $(wildcard test/fuzz/*.test.ts))

.PHONY: all deps build gen guest-image demo test test-unit test-integration test-e2e test-fuzz host clean bench test-failover bench-failover

all: build

deps:
	@bash scripts/setup.sh

gen: deps
	npm run --silent gen

build: deps
	npm run --silent build

guest-image: build
	bash deploy/guest-image/build.sh

# The main job: boot guest web1, load `process` from the host, kill httpd in the guest, see the event.
demo: guest-image
	node --import tsx scripts/demo.ts

test: guest-image
	$(NODE_TEST) $(UNIT_TESTS) $(FUZZ_TESTS) $(INTEGRATION_TESTS) $(E2E_TESTS) $(FAILOVER_TESTS)

test-unit: build
	$(NODE_TEST) $(UNIT_TESTS)

test-fuzz: build
	$(NODE_TEST) $(FUZZ_TESTS)

test-integration: build
	$(NODE_TEST) $(INTEGRATION_TESTS)

test-e2e: guest-image
	$(NODE_TEST) $(E2E_TESTS)

# The failover evaluation alone (also part of `make test`); scripts/setup.sh installs corosync and pacemaker.
test-failover: guest-image
	$(NODE_TEST) $(FAILOVER_TESTS)

# bench/failover: per scenario, failure -> Vesper event / Pacemaker recovery / HTTP again, vs 10 s polling monitors.
BENCH_FAILOVER_ARGS ?= --runs 3
bench-failover: guest-image
	node --import tsx bench/failover/run.ts $(BENCH_FAILOVER_ARGS)

# Host services in one process, in the foreground.
host: build
	node dist/vesper-host.mjs

clean:
	rm -rf dist .cache services/protocol/src/generated

# Benchmarks (not part of `make test`): one command each, results in bench/results/<name>.md + .svg.
BENCH_RUN := node --import tsx
.PHONY: bench-latency bench-throughput bench-overhead bench-scale bench-scale-uprobe bench-decode
bench: bench-decode bench-latency bench-throughput bench-overhead bench-scale

bench-decode: build
	$(BENCH_RUN) bench/decode/run.ts

bench-latency: guest-image
	$(BENCH_RUN) bench/latency/run.ts

bench-throughput: guest-image
	$(BENCH_RUN) bench/throughput/run.ts

bench-overhead: guest-image
	$(BENCH_RUN) bench/overhead/run.ts

bench-scale: build
	$(BENCH_RUN) bench/scale/run.ts --sizes 1,10,100,1000

# Each guest's probe on its own program (as in separate kernels), at a rate these 2 cores carry for 1,000.
bench-scale-uprobe: build
	$(BENCH_RUN) bench/scale/run.ts --sizes 1,10,100,1000 --rate 0.5 --source uprobe --result-name scale-uprobe-rate0.5
