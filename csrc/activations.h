// activations.h: exp, tanh and sigmoid written so the compiler vectorizes them.
//
// libm's scalar tanh would cost as much as the recurrent GEMM at large sizes. These use the
// Cephes range reduction: exp(x) = 2^n * exp(r), |r| <= ln2/2, a degree-6 polynomial for
// float and a Pade approximant for double (both within a few ulp), with 2^n built from the
// exponent bits. Inputs are clamped, so the results are finite for any finite argument.
#pragma once

#include "isa.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

RNNCORE_NS_BEGIN

template <typename To, typename From>
inline To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "size mismatch");
  return __builtin_bit_cast(To, v);
}

inline float vexp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float fn = x * 1.44269504088896341f + magic;
  uint32_t nbits = bits_as<uint32_t>(fn);
  float n = fn - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  float scale = bits_as<float>((uint32_t)((nbits + 127u) << 23));
  return y * scale;
}

inline double vexp(double x) {
  x = std::min(std::max(x, -708.0), 709.0);
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  double fn = x * 1.4426950408889634073599 + magic;
  uint64_t nbits = bits_as<uint64_t>(fn);
  double n = fn - magic;
  double r = x - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  double rr = r * r;
  double px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr +
                   9.99999999999999999910e-1);
  double qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
               2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  double y = 1.0 + 2.0 * (px / (qx - px));
  double scale = bits_as<double>((uint64_t)((nbits + 1023u) << 52));
  return y * scale;
}

template <typename T>
inline T vsigmoid(T x) {
  return T(1) / (T(1) + vexp(-x));
}

template <typename T>
inline T vtanh(T x) {
  T e = vexp(T(-2) * std::fabs(x));
  return std::copysign((T(1) - e) / (T(1) + e), x);
}

enum Activation : int { kTanh = 0, kRelu = 1, kSigmoid = 2 };

template <typename T>
inline T activate(int act, T a) {
  if (act == kTanh) return vtanh(a);
  if (act == kSigmoid) return vsigmoid(a);
  return a > T(0) ? a : T(0);
}

// f'(a) written in terms of the output h = f(a).
template <typename T>
inline T activate_grad(int act, T h) {
  if (act == kTanh) return T(1) - h * h;
  if (act == kSigmoid) return h * (T(1) - h);
  return h > T(0) ? T(1) : T(0);
}

RNNCORE_NS_END
