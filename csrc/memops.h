// memops.h: fill and copy for the kernels, in the variant's namespace (isa.h): std::fill and
// std::copy are templates of namespace std, whose out-of-line copies the linker would share
// between the variants.
#pragma once

#include "isa.h"

RNNCORE_NS_BEGIN

template <typename T>
inline void fill(T* first, T* last, T v) {
  for (; first != last; ++first) *first = v;
}

template <typename T>
inline void copy(const T* first, const T* last, T* out) {
  for (; first != last; ++first, ++out) *out = *first;
}

RNNCORE_NS_END
