# Refuses an #include against the direction of the layers (run by the build and by CI):
#   cmake -DSRC=<source dir> -P scripts/check-layers.cmake
#
# Bottom up: locks/ -> sim/ -> mm/ -> vmm/ -> sched/ -> app/ -> study/ and bench/. A file may include its
# own layer and those below it. guests/ holds the guest ABI headers, usable by every layer.
# app/main.cpp is the entry point of the binary and may include every layer. tests/ may include
# anything.
if(NOT SRC)
  message(FATAL_ERROR "usage: cmake -DSRC=<source dir> -P check-layers.cmake")
endif()

set(layers locks sim mm vmm sched app study bench)
set(rank_locks 0)
set(rank_sim 1)
set(rank_mm 2)
set(rank_vmm 3)
set(rank_sched 4)
set(rank_app 5)
set(rank_study 6)
set(rank_bench 6)
set(rank_guests -1)

set(bad "")
foreach(layer ${layers})
  file(GLOB_RECURSE files RELATIVE ${SRC} ${SRC}/${layer}/*.cpp ${SRC}/${layer}/*.hpp
       ${SRC}/${layer}/*.c ${SRC}/${layer}/*.h)
  foreach(f ${files})
    if(f STREQUAL "app/main.cpp")
      continue()
    endif()
    file(STRINGS ${SRC}/${f} includes REGEX "^[ \t]*#[ \t]*include[ \t]+\"[a-z_]+/")
    foreach(line ${includes})
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]+\"([a-z_]+)/.*" "\\1" target "${line}")
      if(NOT DEFINED rank_${target})
        continue()  # not a layer (e.g. a generated header)
      endif()
      set(ok FALSE)
      if(target STREQUAL layer OR rank_${target} LESS rank_${layer})
        set(ok TRUE)
      endif()
      if(NOT ok)
        string(STRIP "${line}" line)
        string(APPEND bad "  ${f}: ${line}  (${layer}/ may not include ${target}/)\n")
      endif()
    endforeach()
  endforeach()
endforeach()

if(bad)
  message(FATAL_ERROR "includes against the layers "
          "(locks -> sim -> mm -> vmm -> sched -> app -> study, bench):\n${bad}")
endif()
