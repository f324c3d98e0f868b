# The model engine (llama.cpp's llama-server at a pinned release): built by scripts/engine.sh into a
# cache outside the source and build trees, never linked into aicloud, never rebuilt with it.
# This file only tells aicloud where that build lives (AICLOUD_ENGINE_DIR, compiled into
# src/models/engine.cpp as the default after --engine-dir and $AICLOUD_ENGINE_DIR) and adds an
# `engine` target (`cmake --build build --target engine`, the same as `make engine`).
set(AICLOUD_ENGINE_FLAVOR "cpu" CACHE STRING "The llama.cpp build flavor: cpu or cuda (docs/ENGINE.md)")
set(LLAMA_CPP_SOURCE_DIR "$ENV{LLAMA_CPP_SOURCE_DIR}" CACHE PATH "Build the engine from this llama.cpp checkout")

set(_engine_args --flavor ${AICLOUD_ENGINE_FLAVOR})
if(LLAMA_CPP_SOURCE_DIR)
  list(APPEND _engine_args --source-dir ${LLAMA_CPP_SOURCE_DIR})
endif()

if(NOT AICLOUD_ENGINE_DIR)
  execute_process(
    COMMAND bash ${CMAKE_SOURCE_DIR}/scripts/engine.sh --print-dir ${_engine_args}
    OUTPUT_VARIABLE _engine_dir OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _engine_rc)
  if(NOT _engine_rc EQUAL 0)
    message(FATAL_ERROR "scripts/engine.sh --print-dir failed")
  endif()
  set(AICLOUD_ENGINE_DIR "${_engine_dir}")
endif()
message(STATUS "Model engine dir: ${AICLOUD_ENGINE_DIR} (`make engine` builds it)")

# Only engine.cpp sees the path, so a change of it recompiles one file.
set_property(SOURCE src/models/engine.cpp APPEND PROPERTY COMPILE_DEFINITIONS
             AICLOUD_ENGINE_DIR="${AICLOUD_ENGINE_DIR}")

add_custom_target(engine
  COMMAND bash ${CMAKE_SOURCE_DIR}/scripts/engine.sh ${_engine_args}
  COMMENT "llama.cpp engine (cached outside the tree; a no-op once built)"
  USES_TERMINAL VERBATIM)
