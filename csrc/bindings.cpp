// bindings.cpp: the private module rnncore._core.
//
// Python (rnncore/_native.py) validates every argument first; the checks here are a last
// line of defence so that nothing reaching the kernels can crash the interpreter. Arrays come
// in C-contiguous with the dtype of x; outputs are allocated here, then the GIL is released
// for the whole native call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "buffers.h"
#include "kernels.h"
#include "team.h"

// Compiled for baseline x86-64 (CMakeLists.txt): every computation goes through the kernel
// table of the variant dispatch.cpp chose (kernels.h), never through the kernel headers.

namespace py = pybind11;
using namespace rnncore;

namespace {

// The cells: kernels.h's table, derived from the traits (cells.h). Their descriptions are the
// same in every variant, so they are read from the generic one (plain data, whatever the CPU);
// the ops come from the variant in use at the call.
const KernelTable& cell_table() { return generic::kernel_table(); }

int cell_index(const std::string& name) {
  const KernelTable& k = cell_table();
  for (int i = 0; i < k.num_cells; ++i)
    if (name == k.cells[i].name) return i;
  throw std::invalid_argument("unknown cell '" + name + "'");
}

int activation_id(const std::string& a) {  // activations.h's Activation
  if (a == "tanh") return 0;
  if (a == "relu") return 1;
  if (a == "sigmoid") return 2;
  throw std::invalid_argument("unknown activation '" + a + "'");
}

// The ops of the chosen variant for dtype T (throws, with the GIL held, if RNNCORE_ISA asks for
// a variant this CPU cannot run).
template <typename T>
const Ops<T>& ops();
template <>
const Ops<float>& ops<float>() { return kernels().f32; }
template <>
const Ops<double>& ops<double>() { return kernels().f64; }

int call_threads() {
  const int n = rnncore_get_num_threads(), cap = local_thread_cap();
  return cap > 0 ? std::min(n, cap) : n;
}

void blas_single_thread() {
  if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
}

// A C-contiguous array of T with `n` elements, or null for None (when allowed).
template <typename T>
const T* in_ptr(const py::object& o, long n, const char* name, bool optional = false) {
  if (o.is_none()) {
    if (optional) return nullptr;
    throw std::invalid_argument(std::string(name) + " is required");
  }
  py::array a = py::reinterpret_borrow<py::array>(o);
  if (!py::isinstance<py::array>(o) || !a.dtype().equal(py::dtype::of<T>()) ||
      !(a.flags() & py::array::c_style) || a.size() != n)
    throw std::invalid_argument(std::string(name) + ": expected a C-contiguous array of " +
                                std::to_string(n) + " elements of the dtype of x");
  return static_cast<const T*>(a.data());
}


bool is_double(const py::object& o, const char* name) {
  if (!py::isinstance<py::array>(o)) throw std::invalid_argument(std::string(name) + " must be an array");
  py::array a = py::reinterpret_borrow<py::array>(o);
  if (a.dtype().equal(py::dtype::of<double>())) return true;
  if (a.dtype().equal(py::dtype::of<float>())) return false;
  throw std::invalid_argument(std::string(name) + " must be float32 or float64");
}

bool is_double(const py::array& x) { return is_double(x, "x"); }

struct Sizes {
  int T, B, D, H;
};

py::array as_array(const py::object& o, const char* name) {
  if (!py::isinstance<py::array>(o)) throw std::invalid_argument(std::string(name) + " must be an array");
  return py::reinterpret_borrow<py::array>(o);
}

Sizes sizes_of(const py::array& x, const py::array& wh, bool batch_first, bool wt) {
  if (x.ndim() != 3 || wh.ndim() != 2) throw std::invalid_argument("x must be 3-D and wh 2-D");
  Sizes s;
  s.T = (int)x.shape(batch_first ? 1 : 0);
  s.B = (int)x.shape(batch_first ? 0 : 1);
  s.D = (int)x.shape(2);
  s.H = (int)wh.shape(wt ? 1 : 0);
  if (s.T < 1 || s.B < 1 || s.D < 1 || s.H < 1) throw std::invalid_argument("empty sizes");
  return s;
}

std::vector<int> lengths_of(const py::object& o, int T, int B) {
  std::vector<int> len(B, T);
  if (o.is_none()) return len;
  const int* l = in_ptr<int>(o, B, "lengths");
  for (int b = 0; b < B; ++b) {
    if (l[b] < 1 || l[b] > T) throw std::invalid_argument("lengths must lie in [1, T]");
    len[b] = l[b];
  }
  return len;
}

// One recurrent call as Python describes it: rnncore._checks.Inputs (or any object with its
// attributes cell, activation, batch_first, x, wx, wh, b_ih, b_hh, h0, c0, lengths, and optionally
// transposed: the weights in PyTorch's layout), the
// same description for forward and backward.
struct Call {
  int cell;  // index into the cell table
  const CellKernels* desc;
  int act;
  bool batch_first;
  bool transposed;  // weights (and their gradients) in PyTorch's layout
  py::object x, wx, wh, b_ih, b_hh, h0, c0, lengths;
};

Call describe(const py::object& in) {
  Call c;
  c.cell = cell_index(py::cast<std::string>(in.attr("cell")));
  c.desc = &cell_table().cells[c.cell];
  c.act = activation_id(py::cast<std::string>(in.attr("activation")));
  c.batch_first = py::cast<bool>(in.attr("batch_first"));
  c.transposed = py::hasattr(in, "transposed") && py::cast<bool>(in.attr("transposed"));
  c.x = in.attr("x");
  c.wx = in.attr("wx");
  c.wh = in.attr("wh");
  c.b_ih = in.attr("b_ih");
  c.b_hh = in.attr("b_hh");
  c.h0 = in.attr("h0");
  c.c0 = in.attr("c0");
  c.lengths = in.attr("lengths");
  return c;
}

// The kernels' view of a call's inputs, checked: sizes, lengths and the input arrays.
template <typename T>
struct Args {
  Sizes s;
  long G, GC, GH, nTB, nBH;
  std::vector<int> len;
  RecurrentArgs<T> p;

  explicit Args(const Call& c) {
    s = sizes_of(as_array(c.x, "x"), as_array(c.wh, "wh"), c.batch_first, c.transposed);
    G = c.desc->G, GC = c.desc->GC, GH = G * s.H;
    nTB = (long)s.T * s.B, nBH = (long)s.B * s.H;
    len = lengths_of(c.lengths, s.T, s.B);
    p.T_ = s.T, p.B = s.B, p.D = s.D, p.H = s.H, p.batch_first = c.batch_first, p.act = c.act;
    p.wt = c.transposed;
    p.x = in_ptr<T>(c.x, nTB * s.D, "x");
    p.wx = in_ptr<T>(c.wx, s.D * GH, "wx");
    p.wh = in_ptr<T>(c.wh, s.H * GH, "wh");
    p.b_ih = in_ptr<T>(c.b_ih, GH, "b");
    p.b_hh = in_ptr<T>(c.b_hh, GH, "b_hh", true);
    p.h0 = in_ptr<T>(c.h0, nBH, "h0", true);
    p.c0 = in_ptr<T>(c.c0, nBH, "c0", true);
    p.len = len.data();
  }

  // A new (T, B, F) or (B, T, F) array, in the call's layout.
  py::array_t<T> seq(long F) const {
    if (p.batch_first) return new_array<T>({s.B, s.T, (py::ssize_t)F});
    return new_array<T>({s.T, s.B, (py::ssize_t)F});
  }
};

// The cell's ops for dtype T in the variant in use (throws, with the GIL held, if RNNCORE_ISA
// asks for a variant this CPU cannot run).
template <typename T>
const CellOps<T>& cell_ops(int cell);
template <>
const CellOps<float>& cell_ops<float>(int cell) { return kernels().cells[cell].f32; }
template <>
const CellOps<double>& cell_ops<double>(int cell) { return kernels().cells[cell].f64; }

template <typename T>
py::tuple forward_t(const Call& c, bool keep_cache) {
  Args<T> a(c);
  RecurrentArgs<T>& p = a.p;
  auto hs = a.seq(a.s.H);
  auto h_n = new_array<T>({a.s.B, a.s.H});
  p.hs = hs.mutable_data();
  p.h_n = h_n.mutable_data();
  p.no_cache = !keep_cache;
  py::object c_n = py::none(), gates = py::none(), cs = py::none();
  if (a.GC && keep_cache) {
    auto g = a.seq(a.GC * a.s.H);
    p.gates = g.mutable_data();
    gates = g;
  }
  if (c.desc->has_c) {
    auto n = new_array<T>({a.s.B, a.s.H});
    p.c_n = n.mutable_data();
    c_n = n;
    if (keep_cache) {
      auto s = a.seq(a.s.H);
      p.cs = s.mutable_data();
      cs = s;
    }
  }
  const CellOps<T>& o = cell_ops<T>(c.cell);
  {
    py::gil_scoped_release release;
    o.forward(p);
  }
  return py::make_tuple(hs, h_n, c_n, gates, cs);
}

template <typename T>
py::tuple backward_t(const Call& c, const py::object& hs, const py::object& gates, const py::object& cs,
                     const py::object& dhs, const py::object& dhn, const py::object& dcn) {
  Args<T> a(c);
  RecurrentArgs<T>& p = a.p;
  const Sizes& s = a.s;
  p.hs = const_cast<T*>(in_ptr<T>(hs, a.nTB * s.H, "cache hs"));
  if (a.GC) p.gates = const_cast<T*>(in_ptr<T>(gates, a.nTB * a.GC * s.H, "cache gates"));
  if (c.desc->has_c) p.cs = const_cast<T*>(in_ptr<T>(cs, a.nTB * s.H, "cache cs"));
  p.dhs = in_ptr<T>(dhs, a.nTB * s.H, "dhs", true);
  p.dhn = in_ptr<T>(dhn, a.nBH, "dh_n", true);
  p.dcn = in_ptr<T>(dcn, a.nBH, "dc_n", true);
  auto dx = a.seq(s.D);
  auto dwx = p.wt ? new_array<T>({(py::ssize_t)a.GH, s.D}) : new_array<T>({s.D, (py::ssize_t)a.GH});
  auto dwh = p.wt ? new_array<T>({(py::ssize_t)a.GH, s.H}) : new_array<T>({s.H, (py::ssize_t)a.GH});
  auto db_ih = new_array<T>({(py::ssize_t)a.GH});
  auto dh0 = new_array<T>({s.B, s.H});
  p.dx = dx.mutable_data();
  p.dwx = dwx.mutable_data();
  p.dwh = dwh.mutable_data();
  p.db_ih = db_ih.mutable_data();
  p.dh0 = dh0.mutable_data();
  py::object db_hh = py::none(), dc0 = py::none();
  if (p.b_hh) {
    auto b = new_array<T>({(py::ssize_t)a.GH});
    p.db_hh = b.mutable_data();
    db_hh = b;
  }
  if (c.desc->has_c) {
    auto d = new_array<T>({s.B, s.H});
    p.dc0 = d.mutable_data();
    dc0 = d;
  }
  const CellOps<T>& o = cell_ops<T>(c.cell);
  {
    py::gil_scoped_release release;
    o.backward(p);
  }
  return py::make_tuple(dx, dwx, dwh, db_ih, db_hh, dh0, dc0);
}

// Arrays of fewer elements are scanned with the GIL held: releasing and taking it again costs
// more than the scan.
constexpr long kScanReleaseGil = 1 << 16;

template <typename T>
bool all_finite_t(const py::array& a) {
  const Ops<T>& o = ops<T>();
  const T* d = static_cast<const T*>(a.data());
  const long n = (long)a.size();
  if (n < kScanReleaseGil) return o.all_finite(d, n);
  py::gil_scoped_release release;
  return o.all_finite(d, n);
}

bool all_finite_any(const py::array& a) {
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("expected a C-contiguous array");
  return is_double(a) ? all_finite_t<double>(a) : all_finite_t<float>(a);
}

// Other OpenBLAS pools' idle workers (threads.py, quiet_other_pools): the addresses of their
// blas_thread_shutdown_, called before rnncore's native calls while this is the only Python
// thread (so that none can be inside that BLAS at the moment). One walk of the interpreter's
// thread states and the calls, where the Python-side test and ctypes calls cost some 2.5 us a call.
std::vector<int (*)()>& quiet_fns() {
  static std::vector<int (*)()> fns;
  return fns;
}

bool only_python_thread() {
  PyThreadState* ts = PyThreadState_Get();
  PyThreadState* head = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(ts));
  return head != nullptr && PyThreadState_Next(head) == nullptr;
}

// (min, max) of a C-contiguous int64 array with at least one element: the range check of
// targets and ids in one pass, where NumPy's two reductions cost some 5 us for a small array.
py::tuple int64_range(const py::array& a) {
  if (!(a.flags() & py::array::c_style) || !py::isinstance<py::array_t<int64_t>>(a) || a.size() < 1)
    throw std::invalid_argument("expected a non-empty C-contiguous int64 array");
  const int64_t* d = static_cast<const int64_t*>(a.data());
  const long n = (long)a.size();
  int64_t lo = d[0], hi = d[0];
  for (long i = 1; i < n; ++i) {
    lo = std::min(lo, d[i]);
    hi = std::max(hi, d[i]);
  }
  return py::make_tuple(lo, hi);
}

template <typename T>
py::tuple xent_forward_t(const py::array& x, const py::array& t, int64_t ignore) {
  const long N = (long)x.shape(0), V = (long)x.shape(1);
  const T* xp = in_ptr<T>(x, N * V, "logits");
  const int64_t* tp = in_ptr<int64_t>(t, N, "targets");
  for (long n = 0; n < N; ++n)
    if (tp[n] != ignore && (tp[n] < 0 || tp[n] >= V)) throw std::invalid_argument("targets out of range");
  auto probs = new_array<T>({(py::ssize_t)N, (py::ssize_t)V});
  auto loss = new_array<double>({(py::ssize_t)N});
  T* pp = probs.mutable_data();
  double* lp = loss.mutable_data();
  {
    const Ops<T>& o = ops<T>();
    py::gil_scoped_release release;
    o.softmax_xent_forward(xp, tp, N, V, ignore, pp, lp);
  }
  return py::make_tuple(probs, loss);
}

template <typename T>
py::array xent_backward_t(const py::array& probs, const py::array& t, int64_t ignore, double scale,
                          const py::object& out) {
  const long N = (long)probs.shape(0), V = (long)probs.shape(1);
  const T* pp = in_ptr<T>(probs, N * V, "probs");
  const int64_t* tp = in_ptr<int64_t>(t, N, "targets");
  for (long n = 0; n < N; ++n)
    if (tp[n] != ignore && (tp[n] < 0 || tp[n] >= V)) throw std::invalid_argument("targets out of range");
  py::array_t<T> dx;
  if (out.is_none()) {
    dx = new_array<T>({(py::ssize_t)N, (py::ssize_t)V});
  } else {
    dx = py::reinterpret_borrow<py::array_t<T>>(out);
    in_ptr<T>(out, N * V, "out");
    if (!dx.writeable()) throw std::invalid_argument("out must be writeable");
  }
  T* dp = dx.mutable_data();
  {
    const Ops<T>& o = ops<T>();
    py::gil_scoped_release release;
    o.softmax_xent_backward(pp, tp, N, V, ignore, (T)scale, dp);
  }
  return dx;
}

// A writeable C-contiguous array of T with `n` elements, written in place.
template <typename T>
T* out_ptr(const py::object& o, long n, const char* name) {
  const T* p = in_ptr<T>(o, n, name);
  if (!py::reinterpret_borrow<py::array>(o).writeable()) throw std::invalid_argument(std::string(name) + " must be writeable");
  return const_cast<T*>(p);
}

long dim(const py::array& a, int axis, const char* name, int ndim) {
  if (a.ndim() != ndim) throw std::invalid_argument(std::string(name) + " must be " + std::to_string(ndim) + "-D");
  return (long)a.shape(axis);
}

// op(W): W (D, M), or with wt the transpose of the given (M, D) array.
template <typename T>
py::array affine_forward_t(const py::array& x, const py::array& W, bool wt, const py::object& b) {
  const long N = dim(x, 0, "x", 2), D = dim(x, 1, "x", 2), M = dim(W, wt ? 0 : 1, "W", 2);
  if (dim(W, wt ? 1 : 0, "W", 2) != D) throw std::invalid_argument("W must be (D, M)");
  const T* xp = in_ptr<T>(x, N * D, "x");
  const T* wp = in_ptr<T>(W, D * M, "W");
  const T* bp = in_ptr<T>(b, M, "b", true);
  auto y = new_array<T>({(py::ssize_t)N, (py::ssize_t)M});
  T* yp = y.mutable_data();
  {
    const Ops<T>& o = ops<T>();
    py::gil_scoped_release release;
    o.affine_forward(xp, wp, wt, bp, N, D, M, yp);
  }
  return y;
}

template <typename T>
py::object affine_backward_t(const py::array& dy, const py::array& x, const py::array& W, bool wt,
                             const py::object& dW, bool dwt, const py::object& db, bool need_dx) {
  const long N = dim(x, 0, "x", 2), D = dim(x, 1, "x", 2), M = dim(W, wt ? 0 : 1, "W", 2);
  if (dim(W, wt ? 1 : 0, "W", 2) != D || dim(dy, 0, "dy", 2) != N || dim(dy, 1, "dy", 2) != M)
    throw std::invalid_argument("dy must be (N, M), x (N, D), W (D, M)");
  const T* dyp = in_ptr<T>(dy, N * M, "dy");
  const T* xp = in_ptr<T>(x, N * D, "x");
  const T* wp = in_ptr<T>(W, D * M, "W");
  T* dwp = out_ptr<T>(dW, D * M, "dW");
  T* dbp = db.is_none() ? nullptr : out_ptr<T>(db, M, "db");
  py::object dx = py::none();
  T* dxp = nullptr;
  if (need_dx) {
    auto a = new_array<T>({(py::ssize_t)N, (py::ssize_t)D});
    dxp = a.mutable_data();
    dx = a;
  }
  {
    const Ops<T>& o = ops<T>();
    py::gil_scoped_release release;
    o.affine_backward(dyp, xp, wp, wt, N, D, M, dwp, dwt, dbp, dxp);
  }
  return dx;
}

template <typename T>
void embedding_backward_t(const py::array& ids, const py::array& dout, const py::object& dW) {
  const long N = (long)ids.size();
  const py::array w = py::reinterpret_borrow<py::array>(dW);
  const long V = dim(w, 0, "dW", 2), D = dim(w, 1, "dW", 2);
  const int64_t* ip = in_ptr<int64_t>(ids, N, "ids");
  for (long n = 0; n < N; ++n)
    if (ip[n] < 0 || ip[n] >= V) throw std::invalid_argument("ids out of range");
  const T* dp = in_ptr<T>(dout, N * D, "dout");
  T* wp = out_ptr<T>(dW, V * D, "dW");
  const Ops<T>& o = ops<T>();
  py::gil_scoped_release release;
  o.embedding_backward(ip, dp, N, V, D, wp);
}

template <typename T>
void adam_update_t(const py::object& p, const py::object& g, const py::object& m, const py::object& v,
                   double lr_c1, double b1, double b2, double eps, double c2) {
  const long n = (long)py::reinterpret_borrow<py::array>(p).size();
  T* pp = out_ptr<T>(p, n, "param");
  const T* gp = in_ptr<T>(g, n, "grad");
  T* mp = out_ptr<T>(m, n, "m");
  T* vp = out_ptr<T>(v, n, "v");
  const Ops<T>& o = ops<T>();
  py::gil_scoped_release release;
  o.adam_update(pp, gp, mp, vp, n, (T)lr_c1, (T)b1, (T)(1.0 - b1), (T)b2, (T)(1.0 - b2), (T)eps, (T)c2);
}

template <typename T>
double sum_squares_t(const py::array& a) {
  const long n = (long)a.size();
  const T* ap = in_ptr<T>(a, n, "array");
  const Ops<T>& o = ops<T>();
  py::gil_scoped_release release;
  return o.sum_squares(ap, n);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rnncore native kernels (private: use the rnncore package)";
  blas_single_thread();  // at import, so OpenBLAS's idle pool winds down before the first op

  m.def(
      "forward",
      [](const py::object& inputs, bool cache) {
        const Call c = describe(inputs);
        return is_double(c.x, "x") ? forward_t<double>(c, cache) : forward_t<float>(c, cache);
      },
      py::arg("inputs"), py::arg("cache") = true,
      "Forward over all steps of the call described by `inputs` (rnncore._checks.Inputs) -> "
      "(hs, h_n, c_n | None, gates | None, cs | None); with cache=False (inference) gates and cs "
      "are None and no cache is kept.");
  m.def(
      "backward",
      [](const py::object& inputs, const py::object& hs, const py::object& gates, const py::object& cs,
         const py::object& dhs, const py::object& dh_n, const py::object& dc_n) {
        const Call c = describe(inputs);
        return is_double(c.x, "x") ? backward_t<double>(c, hs, gates, cs, dhs, dh_n, dc_n)
                                   : backward_t<float>(c, hs, gates, cs, dhs, dh_n, dc_n);
      },
      py::arg("inputs"), py::arg("hs"), py::arg("gates"), py::arg("cs"), py::arg("dhs"), py::arg("dh_n"),
      py::arg("dc_n"),
      "BPTT over all steps of the call described by `inputs`, given forward's cache (hs, gates, cs) "
      "-> (dx, dwx, dwh, db_ih, db_hh | None, dh0, dc0 | None).");
  m.def(
      "cells",
      [] {
        const KernelTable& k = cell_table();
        py::list l;
        for (int i = 0; i < k.num_cells; ++i) {
          const CellKernels& c = k.cells[i];
          py::dict d;
          d["name"] = c.name;
          d["gates"] = c.G;
          d["cache_blocks"] = c.GC;
          d["has_c"] = c.has_c;
          d["has_activation"] = c.has_activation;
          l.append(d);
        }
        return l;
      },
      "The native cells, from their traits (csrc/cells.h): name, gates, cache_blocks, has_c, has_activation.");

  m.def(
      "softmax_xent_forward",
      [](const py::array& x, const py::array& t, int64_t ignore) {
        if (x.ndim() != 2) throw std::invalid_argument("logits must be 2-D");
        return is_double(x) ? xent_forward_t<double>(x, t, ignore) : xent_forward_t<float>(x, t, ignore);
      },
      "Row softmax of (N, V) logits and per-row cross-entropy -> (probs, row_loss float64).");
  m.def(
      "softmax_xent_backward",
      [](const py::array& probs, const py::array& t, int64_t ignore, double scale, const py::object& out) {
        if (probs.ndim() != 2) throw std::invalid_argument("probs must be 2-D");
        return is_double(probs) ? xent_backward_t<double>(probs, t, ignore, scale, out)
                                : xent_backward_t<float>(probs, t, ignore, scale, out);
      },
      py::arg("probs"), py::arg("targets"), py::arg("ignore"), py::arg("scale"), py::arg("out") = py::none(),
      "scale * (probs - onehot(targets)), zero rows where targets == ignore.");


  m.def(
      "affine_forward",
      [](const py::array& x, const py::array& W, bool wt, const py::object& b) {
        return is_double(x) ? affine_forward_t<double>(x, W, wt, b) : affine_forward_t<float>(x, W, wt, b);
      },
      py::arg("x"), py::arg("W"), py::arg("wt"), py::arg("b"), "x (N, D) @ op(W) + b -> (N, M).");
  m.def(
      "affine_backward",
      [](const py::array& dy, const py::array& x, const py::array& W, bool wt, const py::object& dW, bool dwt,
         const py::object& db, bool need_dx) {
        return is_double(x) ? affine_backward_t<double>(dy, x, W, wt, dW, dwt, db, need_dx)
                            : affine_backward_t<float>(dy, x, W, wt, dW, dwt, db, need_dx);
      },
      py::arg("dy"), py::arg("x"), py::arg("W"), py::arg("wt"), py::arg("dW"), py::arg("dwt"), py::arg("db"),
      py::arg("need_dx"), "dW (or its transpose) and db written in place; returns dx = dy op(W)^T (or None).");
  m.def(
      "embedding_backward",
      [](const py::array& ids, const py::array& dout, const py::object& dW) {
        if (is_double(dW, "dW")) embedding_backward_t<double>(ids, dout, dW);
        else embedding_backward_t<float>(ids, dout, dW);
      },
      py::arg("ids"), py::arg("dout"), py::arg("dW"), "dW (V, D) = scatter-add of dout rows at ids, in place.");
  m.def(
      "adam_update",
      [](const py::object& p, const py::object& g, const py::object& mm, const py::object& v, double lr_c1,
         double b1, double b2, double eps, double c2) {
        if (is_double(p, "param")) adam_update_t<double>(p, g, mm, v, lr_c1, b1, b2, eps, c2);
        else adam_update_t<float>(p, g, mm, v, lr_c1, b1, b2, eps, c2);
      },
      "One Adam step in place (see csrc/layers.h).");
  m.def(
      "sum_squares",
      [](const py::array& a) { return is_double(a, "array") ? sum_squares_t<double>(a) : sum_squares_t<float>(a); },
      "Sum of squares in float64, the same bits for any thread count.");
  m.def(
      "all_finite", &all_finite_any, "True when no element is NaN or infinite.");
  m.def(
      "first_nonfinite",
      [](const py::sequence& arrays) {
        for (size_t i = 0; i < arrays.size(); ++i)
          if (!all_finite_any(arrays[i].cast<py::array>())) return (long)i;
        return -1L;
      },
      "Index of the first array that holds a NaN or an infinity, -1 when none does.");

  m.def(
      "set_quiet_fns",
      [](const std::vector<uintptr_t>& addrs) {
        auto& fns = quiet_fns();
        fns.clear();
        for (uintptr_t a : addrs) fns.push_back(reinterpret_cast<int (*)()>(a));
      },
      py::arg("addresses"), "The blas_thread_shutdown_ functions quiet_pools calls (addresses; [] for none).");
  m.def(
      "quiet_pools",
      [] {
        if (quiet_fns().empty() || !only_python_thread()) return false;
        for (auto fn : quiet_fns()) fn();
        return true;
      },
      "Stop other OpenBLAS pools' idle workers if this is the only Python thread; whether it did.");
  m.def("int64_range", &int64_range, py::arg("a"), "(min, max) of a non-empty C-contiguous int64 array.");

  m.def(
      "set_isa", [](const std::string& name) { set_isa(name); }, py::arg("isa"),
      "Run the avx512, avx2 or generic kernels from now on ('auto': the best this CPU runs; '': the "
      "default again, RNNCORE_ISA or the best). ValueError if this CPU cannot run them.");
  m.def(
      "kernel_info",
      [] {
        const KernelTable& k = kernels();
        py::dict d;
        d["isa"] = k.isa;
        d["supported"] = supported_isas();
        d["isa_flags"] = k.flags;
        d["vector_bytes"] = k.vec_bytes;
        d["unit_block"] = py::dict(py::arg("float32") = k.unit_block_f32, py::arg("float64") = k.unit_block_f64);
        d["step_kernel"] = k.step_kernel;
        d["l2_bytes"] = l2_cache_bytes();
        d["step_split"] = step_split_mode() == 1 ? "units" : step_split_mode() == 2 ? "rows" : "auto";
        d["step_balance"] = step_balance_mode() == 1 ? "fixed" : step_balance_mode() == 2 ? "probe" : "timed";
#ifdef RNNCORE_NATIVE_TUNE
        d["build"] = "native";
#else
        d["build"] = "portable";
#endif
        d["build_flags"] = RNNCORE_BUILD_FLAGS;
#ifdef RNNCORE_SANITIZE_BUILD
        d["sanitizers"] = true;  // -fsanitize=address,undefined: slower, and less vectorized
#else
        d["sanitizers"] = false;
#endif
        py::dict f;
        for (const auto& [name, has] : cpu_features()) f[py::str(name)] = has;
        d["cpu_features"] = f;
        return d;
      },
      "The kernel variant in use and what this CPU supports (rnncore.kernel_info).");

  m.def("get_num_threads", [] { return call_threads(); }, "Threads a native call may use.");
  m.def(
      "set_num_threads", [](int n) { rnncore_set_num_threads(n); },
      "Set the threads a native call may use (0: the default).");
  m.def(
      "set_local_thread_cap", [](int n) { local_thread_cap() = n < 0 ? 0 : n; },
      "Cap the threads of this OS thread's native calls (0: no cap).");
  // The time loops' settings (kernels.h): set_<name>(mode) (0, 1 or 2; anything else 0) and <name>().
  auto def_mode = [&m](const char* name, int& (*mode)(), const char* doc, const char* get_doc) {
    m.def(("set_" + std::string(name)).c_str(), [mode](int v) { mode() = v < 0 || v > 2 ? 0 : v; },
          py::arg("mode"), doc);
    m.def(name, [mode] { return mode(); }, get_doc);
  };
  def_mode("step_split", &step_split_mode,
           "How the time loops split their work among their threads: 0 automatic (by batch rows or by "
           "hidden units, from the sizes and the L2: driver.h, split_rows), 1 by units, 2 by rows from 2 "
           "rows on (tests).",
           "The time loops' split setting.");
  def_mode("step_balance", &step_balance_mode,
           "Whether the time loops move work between their threads as their speeds differ (a unit "
           "split its unit blocks, a row split its rows): 0 yes (default), 1 never (the fixed split), "
           "2 at every chance (tests: the bits must not change).",
           "The time loops' balance setting.");
  m.def("row_moves", [] { return row_moves().load(); },
        "Rows a row split's threads have taken from each other since load (driver.h: RowSteal).");
  m.def("cached_output_bytes", [] { return BufferCache::instance().cached_bytes(); },
        "Bytes of freed large outputs kept for reuse (buffers.h).");
  m.def("thread_setting", &rnncore_thread_setting, "The stored thread setting (0: the default).");
  m.def(
      "team_set_spin", [](int idle_us, int barrier_us) { rnncore_team_set_spin(idle_us, barrier_us); },
      py::arg("idle_us") = -1, py::arg("barrier_us") = -1,
      "Spin budgets (microseconds) before the team's waiting threads sleep.");
  m.def(
      "team_stats",
      [] {
        long r = 0, b = 0, s = 0, c = 0, o = 0, l = 0;
        rnncore_team_stats(&r, &b, &s, &c, &o, &l);
        return py::make_tuple(r, b, s, c, o, l);
      },
      "(regions on the team, inline as the team was busy, barrier waits that slept, inline as the cores were "
      "taken, on a borrowed OpenMP team, workers that came to a flexible region after its caller finished it).");
  m.def(
      "team_borrow_openmp",
      [](uintptr_t parallel, uintptr_t thread_num, uintptr_t num_threads) {
        return rnncore_team_borrow_openmp(reinterpret_cast<void*>(parallel), reinterpret_cast<void*>(thread_num),
                                          reinterpret_cast<void*>(num_threads)) != 0;
      },
      py::arg("gomp_parallel"), py::arg("omp_get_thread_num"), py::arg("omp_get_num_threads"),
      "Run regions on a libgomp team (the addresses of its GOMP_parallel, omp_get_thread_num, "
      "omp_get_num_threads; all 0: rnncore's own workers again). Returns whether borrowing is on.");
  m.def("team_borrowing", [] { return rnncore_team_borrowing() != 0; }, "Whether regions run on a borrowed OpenMP team.");
  m.def(
      "team_set_adaptive", [](bool on) { rnncore_team_set_adaptive(on ? 1 : 0); }, py::arg("on"),
      "Whether the team falls back to one thread while its threads lose their cores (default on).");
  m.def(
      "team_set_far", [](int mode) { rnncore_team_set_far(mode); }, py::arg("mode"),
      "Tests: whether the team's cores count as far apart (1), near (0), or as measured (-1, the default).");
  m.def("team_far", [] { return rnncore_team_far() != 0; }, "Whether the team's cores count as far apart now.");
  m.def("blas_corename", [] { return std::string(scipy_openblas_get_corename()); }, "Kernel set the BLAS chose for this CPU.");
  m.def("blas_config", [] { return std::string(scipy_openblas_get_config()); }, "Build configuration of the vendored BLAS.");

#ifdef VERSION_INFO
#define RNNCORE_STR2(x) #x
#define RNNCORE_STR(x) RNNCORE_STR2(x)
  m.attr("__version__") = RNNCORE_STR(VERSION_INFO);
#endif
}
