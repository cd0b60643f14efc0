# daxlab: the two commands a newcomer runs are `make demo` and `make test`.
# Both install the Debian packages they need when missing (as root, or with passwordless sudo).

SHELL := /bin/bash
export PATH := $(PATH):/opt/swift/usr/bin
SWIFT ?= swift

# Libraries the C shim links: libpmem (mapping, persistence), libndctl and libdaxctl (discovery).
DEBS := libpmem-dev libndctl-dev libdaxctl-dev

# The emulated-pmem default: a file on tmpfs.
PMEM_FILE ?= /dev/shm/daxlab.pmem
PMEM_SIZE ?= 256M

RELEASE_BIN := .build/release/daxlab

.PHONY: help deps build demo test clean

help:
	@echo "make demo   build (release) and run daxlab's main job on $(PMEM_FILE)"
	@echo "make test   build and run every test"
	@echo "make build  build the release binary at $(RELEASE_BIN)"
	@echo "make clean  remove build folders"

deps:
	@scripts/ensure-debs.sh $(DEBS)

build: deps
	$(SWIFT) build -c release --product daxlab

demo: build
	$(RELEASE_BIN) devices
	$(RELEASE_BIN) info $(PMEM_FILE) --create $(PMEM_SIZE)

test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test

clean:
	rm -rf .build .build-*
