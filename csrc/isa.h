// isa.h: the namespace of one instruction-set variant of the kernels.
//
// kernels.cpp is compiled three times (CMakeLists.txt): with AVX-512, with AVX2 + FMA and for
// baseline x86-64, each time with RNNCORE_ISA_NS naming the variant (avx512, avx2, generic).
// Every header the kernels include (activations.h, blas.h, cells.h, dense.h, driver.h,
// parallel.h, problem.h, small_gemm.h, softmax.h) wraps ALL its content in
// RNNCORE_NS_BEGIN / RNNCORE_NS_END, i.e. namespace rnncore::<variant>.
//
// Why it matters: an inline function or template compiled in two translation units gets one
// mangled name, and the linker keeps one copy for both. Were the kernels' helpers in one
// namespace for all three variants, the AVX-512 copy of (say) vsigmoid could end up serving
// the AVX2 and generic kernels (an illegal instruction on an AVX2 CPU), or the generic copy
// all three (silently slow). In per-variant namespaces every copy has its own name. The same
// holds for the standard library's templates, which stay in std: the kernels use none that
// would be emitted out of line (their buffers are plain aligned allocations, no std::vector),
// and CMake checks each variant's object for weak definitions outside its namespace
// (cmake/check_isa_symbols.cmake) and fails the build if it finds one.
//
// bindings.cpp and dispatch.cpp never include these headers: they are compiled for baseline
// x86-64 and reach the kernels only through the table of kernels.h.
#pragma once

#ifndef RNNCORE_ISA_NS
#error "the kernel headers belong to an ISA translation unit (kernels.cpp, -DRNNCORE_ISA_NS=...)"
#endif

#define RNNCORE_NS_BEGIN \
  namespace rnncore {    \
  namespace RNNCORE_ISA_NS {
#define RNNCORE_NS_END \
  }                    \
  }
