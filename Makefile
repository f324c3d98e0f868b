# The README's two commands are `make up` and `make test`; the rest are their parts.
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: setup configure build test test-asan up fuzz bench bench-gateway clean engine release

setup:
	@bash scripts/setup.sh

$(BUILD)/build.ninja: CMakeLists.txt
	@bash scripts/setup.sh
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

configure: $(BUILD)/build.ninja

build: setup configure
	cmake --build $(BUILD) -j $(JOBS)

test: build engine
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

# The model engine, llama.cpp's llama-server at the pinned release: built once (15-30 min on 2 cores)
# into ~/.cache/aicloud/engine, outside the tree; a no-op after that. docs/ENGINE.md.
engine:
	@bash scripts/engine.sh --jobs $(JOBS)

# The release build: profile-guided, trained on the gateway and API benchmarks, into
# build-release/aicloud (scripts/release.sh; about twice make build's time).
release: setup
	@bash scripts/release.sh --jobs $(JOBS)

# The same suite under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan: setup
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DAICLOUD_SANITIZE=ON -DAICLOUD_BENCH=OFF
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS) --timeout 900

up: build engine
	$(BUILD)/aicloud up

# The HTTP benchmark against nginx on this machine (bench/http/run.sh; its knobs, e.g.
# RUNS=3 DURATION=5, pass through the environment). Figures: docs/PERFORMANCE.md.
bench: build
	AICLOUD_BIN=$(BUILD)/aicloud bash bench/http/run.sh

# The gateway against nginx (direct and as a reverse proxy) and llama-server direct
# (bench/gateway/run.sh; knobs such as RUNS, DURATION, RATE, SYNC, CASES pass through the
# environment). Figures: docs/PERFORMANCE.md.
bench-gateway: build engine
	AICLOUD_BIN=$(BUILD)/aicloud bash bench/gateway/run.sh

# The request fuzzer for FUZZ_SECONDS on fuzz/corpus, keeping what it finds in fuzz/corpus-run/
# (make test runs it for 25 s). See fuzz/README.md.
FUZZ_SECONDS ?= 600
fuzz: build
	@test -x $(BUILD)/fuzz/http_request_fuzzer || { echo "make fuzz: no fuzzer was built: it needs clang++ with libFuzzer (scripts/setup.sh)"; exit 1; }
	bash fuzz/run.sh $(BUILD)/fuzz/http_request_fuzzer $(FUZZ_SECONDS) fuzz/corpus-run

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-release
