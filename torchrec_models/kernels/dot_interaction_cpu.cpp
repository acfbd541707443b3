// DLRM's dot interaction on the CPU in one pass over each example, forward and backward.
//
// Forward: [dense | dots], where the N = F + 1 vectors of an example are (dense, sparse 0..F-1)
// and dots are the N(N-1)/2 pairwise dot products i < j in row-major order (torchrec's
// InteractionArch order). The sparse vectors may be stored in another feature order (the pooled
// embeddings as the all-to-all returned them): they are read in the model's order through a
// permutation instead of a reordered copy, and their gradients written back in the stored order.
// Each example's vectors are read once into a transposed fp32 block that stays in L1, the dots are
// summed in fp32 over d ascending and rounded once to the output type, and the output row is
// written once: no [B, N, D] stack, no [B, N, N] matrix, no gather of its upper triangle, no final
// concatenation.
//
// Backward: the gradient of the kept dots, g(i, j) = g(j, i), gives each vector's gradient
// sum_{j != i} g(i, j) x_j (summed in fp32 over j ascending); the dense vector's also takes the
// gradient of its pass-through copy. Written straight into the dense and sparse gradients.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "float_rows.h"

namespace {

using torchrec_models::load_row;
using torchrec_models::store_row;

// Where the pairs (i, i+1), ..., (i, N-1) start among the dots.
inline int64_t pairs_before(int64_t i, int64_t N) { return i * (N - 1) - i * (i - 1) / 2; }

// One vector register of fp32: blocks of this width vectorize fully, and the forward's kDotRows
// sums stay in registers (16 AVX2 registers hold 8 sums of 8 lanes, not of 16).
#ifdef __AVX512F__
constexpr int64_t kLanes = 16;
constexpr int64_t kGradRows = 4;  // backward's vectors at once (below)
#else
constexpr int64_t kLanes = 8;
constexpr int64_t kGradRows = 8;
#endif

inline int64_t padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// kLanes fp32 values as one vector value (GCC / Clang vector extension: one AVX-512 or AVX2 register,
// two NEON ones), so the blocks below vectorize whatever the compiler's cost model says.
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

inline Lanes lanes_at(const float* src) {
  Lanes v;
  std::memcpy(&v, src, sizeof(v));
  return v;
}

template <typename T>
struct Vectors {
  const T* dense;   // [B, D], row stride dense_stride
  const T* sparse;  // [B, F, D], strides sparse_b, sparse_f
  const int64_t* order;  // vector n >= 1 is sparse feature order[n - 1]
  int64_t dense_stride, sparse_b, sparse_f, N, D;

  int64_t feature(int64_t n) const { return order[n - 1]; }

  const T* row(int64_t b, int64_t n) const {
    return n == 0 ? dense + b * dense_stride : sparse + b * sparse_b + feature(n) * sparse_f;
  }
};

// Vectors handled together: independent sums per block keep the adder busy (one sum alone waits
// on its previous add each step). Chosen by timing: kDotRows on both machines, kGradRows (above)
// 4 on an AVX-512 Xeon, 8 on an AVX2 EPYC.
constexpr int64_t kDotRows = 8;   // forward
constexpr int64_t kRows = std::max(kDotRows, kGradRows);  // spare rows and columns in the scratch

// One thread's fp32 scratch: the example's vectors as rows [N, Dp] and columns [D, Np] (plus kRows
// spare columns read past the last vector), zero-padded; one sum per (row of a pass, column).
struct Scratch {
  int64_t Np, Dp;
  std::vector<float> rows, cols, sums;
  Scratch(int64_t N, int64_t D)
      : Np(padded(N)), Dp(padded(D)), rows((N + kRows) * Dp, 0.0f), cols(D * Np + kRows, 0.0f),
        sums(kRows * std::max(Np, Dp)) {}

  template <typename T>
  void read(const Vectors<T>& x, int64_t b, bool columns) {
    for (int64_t n = 0; n < x.N; ++n) load_row(x.row(b, n), rows.data() + n * Dp, x.D);
    if (!columns) return;
    for (int64_t n = 0; n < x.N; ++n)
      for (int64_t d = 0; d < x.D; ++d) cols[d * Np + n] = rows[n * Dp + d];
  }
};

// Dots of vectors i0 .. i0 + kDotRows - 1 with the columns from `first` on, each summed over d ascending.
void dots_pass(Scratch& s, int64_t i0, int64_t first, int64_t D) {
  const int64_t Np = s.Np;
  for (int64_t c = first; c < Np; c += kLanes) {
    Lanes sum[kDotRows] = {};
    for (int64_t d = 0; d < D; ++d) {
      const float* col = s.cols.data() + d * Np;
      const Lanes x = lanes_at(col + c);
      for (int64_t r = 0; r < kDotRows; ++r) sum[r] += col[i0 + r] * x;
    }
    for (int64_t r = 0; r < kDotRows; ++r) std::memcpy(s.sums.data() + r * Np + c, &sum[r], sizeof(Lanes));
  }
}

template <typename T>
void forward_examples(const Vectors<T>& x, T* out, int64_t out_stride, int64_t begin, int64_t end) {
  const int64_t N = x.N, D = x.D;
  Scratch s(N, D);
  for (int64_t b = begin; b < end; ++b) {
    s.read(x, b, /*columns=*/true);
    T* dst = out + b * out_stride;
    std::memcpy(dst, x.row(b, 0), D * sizeof(T));
    for (int64_t i0 = 0; i0 + 1 < N; i0 += kDotRows) {
      dots_pass(s, i0, (i0 + 1) / kLanes * kLanes, D);
      for (int64_t i = i0; i < std::min(i0 + kDotRows, N - 1); ++i)
        store_row(s.sums.data() + (i - i0) * s.Np + i + 1, dst + D + pairs_before(i, N), N - 1 - i);
    }
  }
}

// pair_grad[i, j] = pair_grad[j, i] = the gradient of dot (i, j); zero on the diagonal and past row N.
template <typename T>
void symmetric_gradient(const T* dots_grad, int64_t N, std::vector<float>& triangle, std::vector<float>& pair_grad) {
  load_row(dots_grad, triangle.data(), N * (N - 1) / 2);
  for (int64_t i = 0; i < N; ++i) {
    pair_grad[i * N + i] = 0.0f;
    for (int64_t j = i + 1; j < N; ++j)
      pair_grad[i * N + j] = pair_grad[j * N + i] = triangle[pairs_before(i, N) + j - i - 1];
  }
}

// Gradients of vectors i0 .. i0 + kGradRows - 1: sum over j of pair_grad[i, j] x_j (j ascending; the
// diagonal's zero adds nothing), on top of `start` for vector 0 (its pass-through gradient).
void gradient_pass(Scratch& s, const std::vector<float>& pair_grad, const float* start, int64_t i0, int64_t N,
                   int64_t D) {
  const int64_t Dp = s.Dp;
  for (int64_t c = 0; c < D; c += kLanes) {
    Lanes sum[kGradRows] = {};
    if (i0 == 0) sum[0] = lanes_at(start + c);
    for (int64_t j = 0; j < N; ++j) {
      const Lanes xj = lanes_at(s.rows.data() + j * Dp + c);
      for (int64_t r = 0; r < kGradRows; ++r) sum[r] += pair_grad[(i0 + r) * N + j] * xj;
    }
    for (int64_t r = 0; r < kGradRows; ++r) std::memcpy(s.sums.data() + r * Dp + c, &sum[r], sizeof(Lanes));
  }
}

template <typename T>
void backward_examples(const Vectors<T>& x, const T* grad, int64_t grad_stride, T* grad_dense, T* grad_sparse,
                       int64_t begin, int64_t end) {
  const int64_t N = x.N, D = x.D, F = N - 1;
  Scratch s(N, D);
  std::vector<float> pair_grad((N + kGradRows) * N, 0.0f), triangle(N * (N - 1) / 2), passthrough(s.Dp, 0.0f);
  for (int64_t b = begin; b < end; ++b) {
    s.read(x, b, /*columns=*/false);
    const T* g = grad + b * grad_stride;
    load_row(g, passthrough.data(), D);
    symmetric_gradient(g + D, N, triangle, pair_grad);
    for (int64_t i0 = 0; i0 < N; i0 += kGradRows) {
      gradient_pass(s, pair_grad, passthrough.data(), i0, N, D);
      for (int64_t i = i0; i < std::min(i0 + kGradRows, N); ++i) {
        T* dst = i == 0 ? grad_dense + b * D : grad_sparse + (b * F + x.feature(i)) * D;
        store_row(s.sums.data() + (i - i0) * s.Dp, dst, D);
      }
    }
  }
}

constexpr int64_t kGrain = 32;  // examples per task

#define AT_DISPATCH_CASE_FP32_BF16(...) \
  AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)

void check_inputs(const at::Tensor& dense, const at::Tensor& sparse, const at::Tensor& order) {
  TORCH_CHECK(dense.dim() == 2 && sparse.dim() == 3, "dot interaction: dense [B, D] and sparse [B, F, D]");
  TORCH_CHECK(dense.size(0) == sparse.size(0) && dense.size(1) == sparse.size(2),
              "dot interaction: dense ", dense.sizes(), " and sparse ", sparse.sizes(), " do not match");
  TORCH_CHECK(dense.scalar_type() == sparse.scalar_type(), "dot interaction: dense and sparse differ in dtype");
  TORCH_CHECK(dense.stride(1) == 1 && sparse.stride(2) == 1, "dot interaction: vectors must be contiguous");
  TORCH_CHECK(order.scalar_type() == at::kLong && order.dim() == 1 && order.size(0) == sparse.size(1),
              "dot interaction: feature order must be ", sparse.size(1), " int64 positions");
  const int64_t F = sparse.size(1);
  std::vector<bool> seen(F, false);
  for (int64_t f = 0; f < F; ++f) {
    const int64_t k = order.data_ptr<int64_t>()[f];
    TORCH_CHECK(k >= 0 && k < F && !seen[k], "dot interaction: feature order is not a permutation of 0..", F - 1);
    seen[k] = true;
  }
}

// The identity when no order is given.
at::Tensor feature_order(const std::optional<at::Tensor>& order, const at::Tensor& sparse) {
  if (order.has_value() && order->defined()) return order->to(at::kCPU).contiguous();
  return at::arange(sparse.size(1), sparse.options().dtype(at::kLong));
}

template <typename T>
Vectors<T> vectors(const at::Tensor& dense, const at::Tensor& sparse, const at::Tensor& order) {
  return Vectors<T>{dense.data_ptr<T>(), sparse.data_ptr<T>(), order.data_ptr<int64_t>(), dense.stride(0),
                    sparse.stride(0), sparse.stride(1), sparse.size(1) + 1, dense.size(1)};
}

at::Tensor dot_interaction_forward(const at::Tensor& dense, const at::Tensor& sparse,
                                   const std::optional<at::Tensor>& order) {
  const at::Tensor ord = feature_order(order, sparse);
  check_inputs(dense, sparse, ord);
  const int64_t B = dense.size(0), D = dense.size(1), N = sparse.size(1) + 1;
  at::Tensor out = at::empty({B, D + N * (N - 1) / 2}, dense.options());
  AT_DISPATCH_SWITCH(dense.scalar_type(), "dot_interaction_forward", AT_DISPATCH_CASE_FP32_BF16([&] {
    const Vectors<scalar_t> x = vectors<scalar_t>(dense, sparse, ord);
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, kGrain, [&](int64_t begin, int64_t end) {
      forward_examples(x, dst, out.stride(0), begin, end);
    });
  }));
  return out;
}

// Gradients of dense [B, D] and of sparse [B, F, D] in sparse's own feature positions.
std::tuple<at::Tensor, at::Tensor> dot_interaction_backward(const at::Tensor& grad_out, const at::Tensor& dense,
                                                            const at::Tensor& sparse,
                                                            const std::optional<at::Tensor>& order) {
  const at::Tensor ord = feature_order(order, sparse);
  check_inputs(dense, sparse, ord);
  const int64_t B = dense.size(0), D = dense.size(1), N = sparse.size(1) + 1;
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == B && grad_out.size(1) == D + N * (N - 1) / 2,
              "dot interaction: gradient of shape ", grad_out.sizes(), " for ", N, " vectors of ", D);
  const at::Tensor grad = grad_out.to(dense.scalar_type()).contiguous();
  at::Tensor grad_dense = at::empty({B, D}, dense.options());
  at::Tensor grad_sparse = at::empty({B, N - 1, D}, dense.options());
  AT_DISPATCH_SWITCH(dense.scalar_type(), "dot_interaction_backward", AT_DISPATCH_CASE_FP32_BF16([&] {
    const Vectors<scalar_t> x = vectors<scalar_t>(dense, sparse, ord);
    at::parallel_for(0, B, kGrain, [&](int64_t begin, int64_t end) {
      backward_examples(x, grad.data_ptr<scalar_t>(), grad.stride(0), grad_dense.data_ptr<scalar_t>(),
                        grad_sparse.data_ptr<scalar_t>(), begin, end);
    });
  }));
  return {grad_dense, grad_sparse};
}

// How many threads at::parallel_for runs n single-item tasks on: more than one only when the build
// has OpenMP (the loop is compiled into this file).
int64_t parallel_threads(int64_t n) {
  std::vector<int> used(at::get_num_threads(), 0);
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) { used[at::get_thread_num()] = 1; });
  return std::count(used.begin(), used.end(), 1);
}

}  // namespace

TORCH_LIBRARY(torchrec_models_interaction, m) {
  m.def("parallel_threads(int n) -> int", &parallel_threads);
  m.def("dot_interaction_forward(Tensor dense, Tensor sparse, Tensor? order=None) -> Tensor");
  m.def("dot_interaction_backward(Tensor grad_out, Tensor dense, Tensor sparse, Tensor? order=None) -> (Tensor, Tensor)");
  m.impl("dot_interaction_forward", c10::DispatchKey::CPU, TORCH_FN(dot_interaction_forward));
  m.impl("dot_interaction_backward", c10::DispatchKey::CPU, TORCH_FN(dot_interaction_backward));
}
