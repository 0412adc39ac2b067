# cmake -DNM=<nm> -DNS=<variant> -DOBJS=<objects;...> -P check_isa_symbols.cmake
#
# Fails when an object of one kernel variant (kernels.cpp compiled for NS) defines an external
# symbol outside namespace rnncore::NS (a const member function mangles as _ZNK..., the
# qualifiers before the name). Inline functions and templates are emitted as weak definitions
# that the linker merges by name across translation units; one outside the variant's namespace
# (a std:: template, a helper left out of RNNCORE_NS_BEGIN) would let the AVX-512 copy serve
# the AVX2 and generic kernels, or the reverse (csrc/isa.h).
string(LENGTH "${NS}" len)
set(ok "^_Z(GV|TW|TH|TV|TI|TS)?Z*N[rVKRO]*7rnncore${len}${NS}")
set(bad "")
foreach(obj IN LISTS OBJS)
  execute_process(COMMAND "${NM}" --defined-only --extern-only "${obj}" OUTPUT_VARIABLE out
                  COMMAND_ERROR_IS_FATAL ANY)
  string(REPLACE "\n" ";" lines "${out}")
  foreach(line IN LISTS lines)
    if(line MATCHES "^[0-9a-fA-F]* *[A-Za-z] (.+)$")
      set(sym "${CMAKE_MATCH_1}")
      if(NOT sym MATCHES "${ok}" AND NOT sym MATCHES "^DW\\.ref\\." AND NOT sym MATCHES "asan|sancov|ubsan")
        list(APPEND bad "${sym}")
      endif()
    endif()
  endforeach()
endforeach()
if(bad)
  list(JOIN bad "\n  " msg)
  message(FATAL_ERROR "kernel variant ${NS} defines symbols outside rnncore::${NS} (csrc/isa.h):\n  ${msg}")
endif()
