# Vesper. `make demo` and `make test` set up everything they need on a Debian 12 host.
SHELL := /bin/bash
NODE_TEST := node --import tsx --test --test-concurrency=1 --test-reporter=spec
UNIT_TESTS := $(shell find services -path '*/node_modules' -prune -o -name '*.test.ts' -print 2>/dev/null | grep -v '/test/integration/' | sort)
INTEGRATION_TESTS := $(sort $(wildcard test/integration/*.test.ts))
E2E_TESTS := $(sort $(wildcard test/e2e/*.test.ts))

.PHONY: all deps build gen guest-image demo test test-unit test-integration test-e2e host clean bench

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
	$(NODE_TEST) $(UNIT_TESTS) $(INTEGRATION_TESTS) $(E2E_TESTS)

test-unit: build
	$(NODE_TEST) $(UNIT_TESTS)

test-integration: build
	$(NODE_TEST) $(INTEGRATION_TESTS)

test-e2e: guest-image
	$(NODE_TEST) $(E2E_TESTS)

# Host services in one process, in the foreground.
host: build
	node dist/vesper-host.mjs

clean:
	rm -rf dist .cache services/protocol/src/generated
