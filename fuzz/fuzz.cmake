# Included by the main CMakeLists.txt (with the tests): builds fuzz/ with clang++ as an external
# project in ${CMAKE_BINARY_DIR}/fuzz and adds the CTest test fuzz_http_request, which runs the
# fuzzer for AICLOUD_FUZZ_SECONDS on the seed corpus. Without a clang++ that can link libFuzzer
# the test is reported as skipped, not failed. `make fuzz` runs it longer (fuzz/README.md).
option(AICLOUD_FUZZ "Build the libFuzzer target with clang++ and run it briefly in the tests" ON)
set(AICLOUD_FUZZ_SECONDS 25 CACHE STRING "How long the fuzz_http_request test fuzzes, in seconds")
set(AICLOUD_FUZZ_ANSWER_SECONDS 15 CACHE STRING "How long the fuzz_upstream_answer test fuzzes, in seconds")

set(_fuzz_skip "")
if(NOT AICLOUD_FUZZ)
  set(_fuzz_skip "AICLOUD_FUZZ is OFF")
elseif(AICLOUD_SANITIZE)
  set(_fuzz_skip "the fuzzer carries its own sanitizers and runs in the tests of the plain build")
else()
  find_program(AICLOUD_CLANGXX NAMES clang++ clang++-14 clang++-15 clang++-16)
  if(NOT AICLOUD_CLANGXX)
    set(_fuzz_skip "clang++ not found (scripts/setup.sh installs clang and libFuzzer)")
  elseif(NOT DEFINED AICLOUD_CLANG_LIBFUZZER)
    # Can this clang link a libFuzzer target with the sanitizers? (libfuzzer-14-dev, libclang-rt-14-dev)
    set(_probe_dir ${CMAKE_BINARY_DIR}/CMakeFiles/fuzz-probe)
    file(MAKE_DIRECTORY ${_probe_dir})
    file(WRITE ${_probe_dir}/probe.cpp
         "#include <cstddef>\n#include <cstdint>\n"
         "extern \"C\" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n")
    execute_process(
      COMMAND ${AICLOUD_CLANGXX} -fsanitize=fuzzer,address,undefined ${_probe_dir}/probe.cpp -o ${_probe_dir}/probe
      RESULT_VARIABLE _probe_rc OUTPUT_QUIET ERROR_QUIET)
    if(_probe_rc EQUAL 0)  # only success is cached: a later install is found on the next configure
      set(AICLOUD_CLANG_LIBFUZZER ON CACHE INTERNAL "clang++ links -fsanitize=fuzzer")
    endif()
  endif()
  if(AICLOUD_CLANGXX AND NOT AICLOUD_CLANG_LIBFUZZER)
    set(_fuzz_skip "${AICLOUD_CLANGXX} cannot link -fsanitize=fuzzer (install libfuzzer-14-dev libclang-rt-14-dev)")
  endif()
endif()

if(_fuzz_skip STREQUAL "")
  include(ExternalProject)
  set(_fuzz_args -DCMAKE_CXX_COMPILER=${AICLOUD_CLANGXX})
  if(CCACHE)
    list(APPEND _fuzz_args -DCMAKE_CXX_COMPILER_LAUNCHER=${CCACHE})
  endif()
  ExternalProject_Add(aicloud_fuzz
    SOURCE_DIR ${CMAKE_SOURCE_DIR}/fuzz
    BINARY_DIR ${CMAKE_BINARY_DIR}/fuzz
    CMAKE_ARGS ${_fuzz_args}
    INSTALL_COMMAND ""
    BUILD_ALWAYS ON  # its own build decides what is out of date (src/http/router.cpp, ...)
    BUILD_BYPRODUCTS ${CMAKE_BINARY_DIR}/fuzz/http_request_fuzzer ${CMAKE_BINARY_DIR}/fuzz/upstream_answer_fuzzer)
  add_test(NAME fuzz_http_request
           COMMAND bash ${CMAKE_SOURCE_DIR}/fuzz/run.sh ${CMAKE_BINARY_DIR}/fuzz/http_request_fuzzer
                   ${AICLOUD_FUZZ_SECONDS} ${CMAKE_BINARY_DIR}/fuzz-ctest)
  set_tests_properties(fuzz_http_request PROPERTIES TIMEOUT 300 LABELS fuzz)
  add_test(NAME fuzz_upstream_answer
           COMMAND env FUZZ_CORPUS=${CMAKE_SOURCE_DIR}/fuzz/corpus-answer
                   bash ${CMAKE_SOURCE_DIR}/fuzz/run.sh ${CMAKE_BINARY_DIR}/fuzz/upstream_answer_fuzzer
                   ${AICLOUD_FUZZ_ANSWER_SECONDS} ${CMAKE_BINARY_DIR}/fuzz-ctest-answer)
  set_tests_properties(fuzz_upstream_answer PROPERTIES TIMEOUT 300 LABELS fuzz)
else()
  message(STATUS "fuzz: the fuzz_http_request test will be skipped: ${_fuzz_skip}")
  add_test(NAME fuzz_http_request COMMAND sh -c "echo 'fuzz_http_request skipped: ${_fuzz_skip}'; exit 77")
  set_tests_properties(fuzz_http_request PROPERTIES SKIP_RETURN_CODE 77 LABELS fuzz)
  add_test(NAME fuzz_upstream_answer COMMAND sh -c "echo 'fuzz_upstream_answer skipped: ${_fuzz_skip}'; exit 77")
  set_tests_properties(fuzz_upstream_answer PROPERTIES SKIP_RETURN_CODE 77 LABELS fuzz)
endif()
