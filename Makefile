# daxlab: the two commands a newcomer runs are `make demo` and `make test`.
# Both install the Debian packages they need when missing (as root, or with passwordless sudo).

SHELL := /bin/bash
export PATH := $(PATH):/opt/swift/usr/bin
SWIFT ?= swift

# Libraries the C shims link: libpmem (mapping, persistence), libndctl and libdaxctl (discovery),
# libblkid (mkfs recognizes data), libpmemobj and liburing (baselines of `daxlab bench`),
# libibverbs and its providers (RDMA devices); pkg-config for libdaxlab's C tests.
DEBS := libpmem-dev libndctl-dev libdaxctl-dev libblkid-dev libpmemobj-dev liburing-dev libibverbs-dev ibverbs-providers \
	pkg-config

# The emulated-pmem default: a file on tmpfs.
PMEM_FILE ?= /dev/shm/daxlab.pmem
PMEM_SIZE ?= 256M
# Thread counts of the scaling rows of `make bench`.
BENCH_THREADS ?= 1,2
# Seconds each policy races in `make demo`.
DEMO_SECONDS ?= 3

RELEASE_BIN := .build/release/daxlab
# `make crash-test`: SEEDS workloads of OPS operations from seed SEED, POINTS crash points each
# (the test suite runs 10 workloads of 800 operations, 24 points each, from a new seed each run).
POINTS ?= 300
SEEDS ?= 10
SEED ?= 1
# Thread counts of `make bench-scaling`.
SCALING_THREADS ?= 1,2,4,8,16
OPS ?= 800

# Where `make install` puts libdaxlab, daxlab.h, daxlab.pc and the daxlab command.
PREFIX ?= /usr/local
LIB := .build-lib/release/libDaxlabC.so

.PHONY: help deps build demo test check-layers test-pmem test-c tsan crash-test bench bench-suites bench-scaling bench-haltpoll \
	count-locked lib install clean

help:
	@echo "make demo        build (release) and run daxlab's main job on $(PMEM_FILE)"
	@echo "make test        build and run every test, the ThreadSanitizer run, then test-pmem where QEMU can run"
	@echo "make check-layers  every package dependency used, and in layer order (scripts/check-layers.swift)"
	@echo "make test-pmem   daxlab on kernel fs-dax and device-dax in QEMU guests (NVDIMM, reboot, memmap=)"
	@echo "make tsan        the concurrency tests under ThreadSanitizer"
	@echo "make test-c      libdaxlab from C: installed in a temporary prefix, the C tests and examples"
	@echo "                 built through pkg-config alone"
	@echo "make install     libdaxlab (Swift runtime linked in), daxlab.h, daxlab.pc and the daxlab"
	@echo "                 command into PREFIX=$(PREFIX)"
	@echo "make crash-test  the crash campaign: SEEDS=$(SEEDS) workloads of OPS=$(OPS) operations from SEED=$(SEED),"
	@echo "                 POINTS=$(POINTS) persist points each"
	@echo "make bench       daxlab bench (every row against its baseline) -> docs/bench.json, .svg, .md,"
	@echo "                 then the ordo-one/benchmark suites in Benchmarks/ (malloc thresholds)"
	@echo "make bench-scaling  on a many-core machine: a static build, then only the thread-scaling rows"
	@echo "                 (SCALING_THREADS=$(SCALING_THREADS)) -> docs/bench-scaling.json and .svg"
	@echo "make bench-haltpoll  as root on a VM booted with guest halt polling off: the kernel rows with"
	@echo "                 the haltpoll governor's default (200 us), then the old value -> docs/bench-haltpoll.json"
	@echo "make count-locked  the instructions and locked instructions of one pin+unpin (1 and 512 pages)"
	@echo "                 and of one alloc.block cycle (write fault + punch), stepped in gdb: counts no"
	@echo "                 noisy machine can move"
	@echo "make build       build the release binary at $(RELEASE_BIN)"
	@echo "make clean       remove build folders"

deps:
	@scripts/ensure-debs.sh $(DEBS)

build: deps
	$(SWIFT) build -c release --product daxlab

demo: build
	$(RELEASE_BIN) devices
	$(RELEASE_BIN) info $(PMEM_FILE) --create $(PMEM_SIZE)
	@# A file system on the emulated pmem (re-created each run), a file round trip, and fsck.
	$(RELEASE_BIN) mkfs $(PMEM_FILE) --force
	$(RELEASE_BIN) write $(PMEM_FILE) README.md --input README.md
	$(RELEASE_BIN) ls $(PMEM_FILE)
	$(RELEASE_BIN) read $(PMEM_FILE) README.md | cmp - README.md && echo "read back: identical"
	$(RELEASE_BIN) fsck $(PMEM_FILE)
	@# The main job: DMA devices against truncate under every policy, judged by the oracle.
	$(RELEASE_BIN) demo /dev/shm/daxlab-demo.pmem --seconds $(DEMO_SECONDS)

# The tests run one at a time: many of them block their thread on purpose (a device holding a
# pin, a CLI run, a truncate asleep), and Swift Testing runs tests on the cooperative pool, one
# thread per CPU. In parallel on a loaded 2-core machine, two such tests hold both threads while
# the rest wait their turn, and the waiting counts against each test's time limit: tests that take
# a millisecond "exceeded 60 s". One at a time, a time limit measures its own test only.
# Both runs are debug builds, so every lock acquisition in them goes through the lock-order
# checker (docs/architecture.md, "The lock order"): an inversion traps with both locks' names.
# The tests' builds compile the DAX layer's test hooks in (DAXLAB_TEST_HOOKS=1; no other build has
# them, whatever its configuration).
test: export DAXLAB_TEST_HOOKS := 1
test: deps check-layers
	$(SWIFT) build --build-tests
	scripts/run-tests.sh .build/test.log $(SWIFT) test --no-parallel
	$(MAKE) test-c
	$(MAKE) tsan
	@# Real pmem: skipped, with one line saying why, where QEMU or a kernel cannot be had.
	SWIFT=$(SWIFT) scripts/test-pmem.sh --if-possible

# The module graph: no dependency a layer does not import, none that skips the layer order.
check-layers:
	$(SWIFT) package dump-package | $(SWIFT) scripts/check-layers.swift

# Real kernel pmem in QEMU guests under software emulation (about 6 minutes after the static build;
# see scripts/test-pmem.sh).
test-pmem: deps
	SWIFT=$(SWIFT) scripts/test-pmem.sh

# libdaxlab from C (scripts/test-c.sh): the tests' build of the library (the Swift runtime found
# through its RUNPATH), installed in a temporary prefix; C builds through pkg-config alone.
test-c: export DAXLAB_TEST_HOOKS := 1
test-c: deps
	$(SWIFT) build --product DaxlabC
	scripts/test-c.sh .build/debug/libDaxlabC.so

# libdaxlab for installing: a release build with the Swift runtime linked into the library, so
# that a C program needs nothing of Swift's where it runs.
lib: deps
	$(SWIFT) build -c release --product DaxlabC -Xswiftc -static-stdlib --scratch-path .build-lib \
		-Xlinker --version-script=$(CURDIR)/CDaxlab/libdaxlab.map

# The command is the static build test-pmem's guests run (the Swift standard library linked in).
install: lib
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path .build-static --product daxlab
	scripts/install-lib.sh $(LIB) $(PREFIX) --cli .build-static/release/daxlab

# The tests that run threads against one file system, under ThreadSanitizer (its own build folder).
tsan: export DAXLAB_TEST_HOOKS := 1
tsan: deps
	scripts/run-tests.sh .build-tsan/test.log $(SWIFT) test --no-parallel --sanitize=thread --scratch-path .build-tsan \
		--filter 'DaxlabSupportTests|DaxFSTests.FaultServedMemoryTests|DaxFSTests.SemanticsTests|DaxFSTests.FileSystemTests|DaxFSTests.ReservationTests|PmemTests.MappingTests|DAXTests|RaceTests'
	@# libdaxlab from C threads: the library and the C programs built with ThreadSanitizer.
	$(SWIFT) build --sanitize=thread --scratch-path .build-tsan --product DaxlabC
	scripts/test-c.sh --tsan .build-tsan/debug/libDaxlabC.so

# The comparison harness, then the ordo-one suites (a separate package; its first release build
# takes several minutes).
bench: build
	$(RELEASE_BIN) bench --threads $(BENCH_THREADS) --json docs/bench.json --plot docs/bench.svg
	@# The table docs/benchmarks.md shows: the committed run's JSON, rendered again.
	$(RELEASE_BIN) bench --from docs/bench.json --markdown > docs/bench.md
	$(MAKE) bench-suites

# The pin-scaling curve (and the naive mutex+dictionary pin table beside it) on a machine with
# many cores: the static build test-pmem uses (no Swift runtime needed where it runs), the
# scaling rows only.
bench-scaling: deps
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path .build-static --product daxlab
	.build-static/release/daxlab bench --only scaling --threads $(SCALING_THREADS) \
		--json docs/bench-scaling.json --plot docs/bench-scaling.svg

# The kernel rows with the guest's idle CPUs polling 200 µs before they halt (the 4 KiB window
# fault's wake-up is what halt polling changes): docs/benchmarks.md, "The window's 4 KiB fault".
bench-haltpoll: build
	scripts/bench-haltpoll.sh $(RELEASE_BIN) docs/bench-haltpoll.json

# What one pin+unpin executes (instructions, and locked ones with where they run), stepped in gdb.
count-locked: build
	@scripts/ensure-debs.sh gdb
	@for pages in 1 512; do gdb -batch -ex "py PAGES=$$pages" -x scripts/count-locked.py $(RELEASE_BIN) 2>&1 \
		| sed -n '/^pin+unpin/,$$p' | grep -v '^\[Inferior'; done
	@gdb -batch -ex 'py CYCLE="alloc"' -x scripts/count-locked.py $(RELEASE_BIN) 2>&1 \
		| sed -n '/^write fault/,$$p' | grep -v '^\[Inferior'

bench-suites: deps
	cd Benchmarks && $(SWIFT) package --disable-sandbox benchmark

crash-test: build
	$(RELEASE_BIN) crash-test --points $(POINTS) --ops $(OPS) --seed $(SEED) --seeds $(SEEDS)

clean:
	rm -rf .build .build-*
