# The short commands. CMake does the building; this file only sequences it.
#
#   make          build into build/ (gcc)
#   make test     every ctest test (gcc), again under ASan+UBSan (clang), the
#                 cross-thread and multi-worker gateway tests under ThreadSanitizer (clang, label tsan),
#                 then each fuzz target for FUZZ_SECONDS (default 30) on its corpus
#   make run      start duplex serve on port 8080 (PORT=...) with the chat demo in web/
#   make bench    benchmarks (optimised build), printed as a table
#   make bench-million  a million idle connections and a broadcast (docs/scaling.md)
#   make install  install the library, headers, duplex.pc, the CMake package
#                 and the CLI under PREFIX (default /usr/local), staged
#                 under DESTDIR if set (docs/library.md)
#
# Every target first runs scripts/deps.sh with the profile it needs, which
# installs missing packages: `run` for building and running (make, make run,
# make install), `test` for make test, `bench` for make bench.

JOBS         ?= $(shell nproc 2>/dev/null || echo 2)
FUZZ_SECONDS ?= 30
CMAKE        ?= cmake
PREFIX       ?= /usr/local
DESTDIR      ?=

.PHONY: all deps deps-test deps-bench build build-tests test unit asan tsan fuzz run bench bench-million install clean

all: build

deps:
	@scripts/deps.sh run
deps-test:
	@scripts/deps.sh test
deps-bench:
	@scripts/deps.sh bench

# The plain build needs nothing of the tests' or benchmarks' tools.
build: deps
	@$(CMAKE) -S . -B build -DCMAKE_C_COMPILER=gcc -DDX_TESTS=OFF -DDX_BENCH=OFF >/dev/null
	@$(CMAKE) --build build -j $(JOBS)

build-tests: deps-test
	@$(CMAKE) -S . -B build -DCMAKE_C_COMPILER=gcc -DDX_TESTS=ON -DDX_BENCH=OFF >/dev/null
	@$(CMAKE) --build build -j $(JOBS)

unit: build-tests
	cd build && ctest --output-on-failure -j $(JOBS)

asan: deps-test
	@$(CMAKE) -S . -B build-asan -DCMAKE_C_COMPILER=clang -DDX_SANITIZE=ON -DDX_BENCH=OFF >/dev/null
	@$(CMAKE) --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j $(JOBS)

# The library, the CLI and the tests labelled tsan: the cross-thread unit
# tests and the gateway's multi-worker tests (duplex serve --workers 2).
tsan: deps-test
	@$(CMAKE) -S . -B build-tsan -DCMAKE_C_COMPILER=clang -DDX_SANITIZE_THREAD=ON -DDX_BENCH=OFF >/dev/null
	@$(CMAKE) --build build-tsan -j $(JOBS)
	cd build-tsan && ctest -L tsan --output-on-failure -j $(JOBS)

fuzz: deps-test
	@$(CMAKE) -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DDX_FUZZ=ON >/dev/null
	@$(CMAKE) --build build-fuzz -j $(JOBS)
	scripts/fuzz.sh build-fuzz $(FUZZ_SECONDS)

# Reached only when every stage passed; the last line counts what ran.
test: unit asan tsan fuzz
	@n1=$$(cd build && ctest -N | sed -n 's/^Total Tests: //p'); \
	 n2=$$(cd build-asan && ctest -N | sed -n 's/^Total Tests: //p'); \
	 n4=$$(cd build-tsan && ctest -N -L tsan | sed -n 's/^Total Tests: //p'); \
	 n3=$$(find build-fuzz/tests/fuzz -maxdepth 1 -type f -name 'fuzz_*' -perm -u+x | wc -l); \
	 echo "make test: $$n1 tests (gcc), $$n2 tests (clang ASan+UBSan), $$n4 tests (clang TSan), $$n3 fuzz targets"; \
	 echo "tests: $$((n1 + n2 + n4 + n3)) passed, 0 failed"

PORT ?= 8080

# duplex serve prints the URL once it listens: the demo (a multi-room chat
# with presence and a live ticker published by the server on demo.ticker)
# at /, the gateway at /ws and /sse, the echo endpoint at /echo; Ctrl-C
# stops it. API_KEY=... turns the HTTP API on (duplex pub, curl).
run: build
	exec build/duplex serve --port $(PORT) --static web --demo $(if $(API_KEY),--api-key $(API_KEY),)

# CMAKE_INSTALL_PREFIX is fixed at configure time (GNUInstallDirs derives the
# library folder from it); duplex.pc and the CMake package are relocatable.
install: deps
	@$(CMAKE) -S . -B build -DCMAKE_C_COMPILER=gcc -DDX_TESTS=OFF -DDX_BENCH=OFF -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	@$(CMAKE) --build build -j $(JOBS)
	DESTDIR=$(DESTDIR) $(CMAKE) --install build

bench: deps-bench
	@$(CMAKE) -S . -B build-bench -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=Release -DDX_TESTS=OFF >/dev/null
	@$(CMAKE) --build build-bench -j $(JOBS)
	scripts/bench.sh build-bench

# A million idle connections and a broadcast to them (docs/scaling.md): minutes
# and most of the memory, so not in bench; DX_MILLION_TARGET=100000 for a trial.
bench-million: deps-bench
	@$(CMAKE) -S . -B build-bench -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=Release -DDX_TESTS=OFF >/dev/null
	@$(CMAKE) --build build-bench -j $(JOBS) --target duplex
	scripts/bench_million.sh build-bench

clean:
	rm -rf build build-asan build-tsan build-fuzz build-bench
