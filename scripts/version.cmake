# Writes OUT with KVMSCALE_VERSION = `git describe`, touching it only when the value changes.
execute_process(COMMAND git describe --always --dirty --tags
                WORKING_DIRECTORY ${SRC} OUTPUT_VARIABLE v OUTPUT_STRIP_TRAILING_WHITESPACE
                ERROR_QUIET RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR v STREQUAL "")
  set(v "unknown")
endif()
set(text "#define KVMSCALE_VERSION \"${v}\"\n")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT "${old}" STREQUAL "${text}")
  file(WRITE ${OUT} "${text}")
endif()
