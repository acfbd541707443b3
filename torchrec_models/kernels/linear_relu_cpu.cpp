// The backward of an MLP layer's ReLU and bias, y = relu(x W^T + b), in one pass.
//
// One pass reads the output gradient and the saved output, writes the gradient before the ReLU
// (zero where the output was not positive) and sums it over the batch for the bias; torch's
// autograd makes the masked gradient in one pass and sums it in another. The sums run over fixed
// chunks of rows, each chunk's partial sums added in chunk order, so the bias gradient does not
// depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "float_rows.h"

namespace {

using torchrec_models::load_row;
using torchrec_models::store_row;

constexpr int64_t kChunkRows = 64;   // rows whose bias-gradient partial sums are kept together
constexpr int64_t kColBlock = 1024;  // fp32 scratch of one row segment: 4 KB, stays in L1

// One chunk of rows: grad_pre = grad where out > 0, else 0; partial[c] = sum of the chunk's grad_pre[:, c].
template <typename scalar_t>
void relu_backward_chunk(const scalar_t* grad, const scalar_t* out, scalar_t* grad_pre, float* partial,
                         int64_t begin, int64_t end, int64_t n) {
  std::vector<float> g(std::min(n, kColBlock)), o(std::min(n, kColBlock));
  std::fill(partial, partial + n, 0.0f);
  for (int64_t r = begin; r < end; ++r) {
    for (int64_t c0 = 0; c0 < n; c0 += kColBlock) {
      const int64_t w = std::min(kColBlock, n - c0), at = r * n + c0;
      load_row(grad + at, g.data(), w);
      load_row(out + at, o.data(), w);
      for (int64_t c = 0; c < w; ++c) {
        g[c] = o[c] > 0.0f ? g[c] : 0.0f;
        partial[c0 + c] += g[c];
      }
      store_row(g.data(), grad_pre + at, w);
    }
  }
}

// (grad_out, out) -> (grad before the ReLU, bias gradient); the bias gradient is summed in fp32.
std::tuple<at::Tensor, at::Tensor> relu_bias_backward(const at::Tensor& grad_out, const at::Tensor& out) {
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous(), "relu_bias_backward: the output must be a contiguous [B, N] tensor");
  TORCH_CHECK(grad_out.scalar_type() == out.scalar_type(), "relu_bias_backward: gradient and output dtypes differ");
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kBFloat16,
              "relu_bias_backward: fp32 or bf16 only");
  const at::Tensor grad = grad_out.contiguous();
  TORCH_CHECK(grad.sizes() == out.sizes(), "relu_bias_backward: gradient and output shapes differ");
  const int64_t b = out.size(0), n = out.size(1), chunks = (b + kChunkRows - 1) / kChunkRows;
  at::Tensor grad_pre = at::empty_like(out);
  at::Tensor partials = at::empty({std::max<int64_t>(chunks, 1), n}, out.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "relu_bias_backward", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* gp = grad_pre.data_ptr<scalar_t>();
    float* p = partials.data_ptr<float>();
    at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        relu_backward_chunk(g, o, gp, p + c * n, c * kChunkRows, std::min(b, (c + 1) * kChunkRows), n);
      }
    });
  });
  at::Tensor bias_grad = at::zeros({n}, out.options().dtype(at::kFloat));
  if (chunks > 0) {
    float* sum = bias_grad.data_ptr<float>();
    const float* p = partials.data_ptr<float>();
    for (int64_t c = 0; c < chunks; ++c) {
      for (int64_t k = 0; k < n; ++k) sum[k] += p[c * n + k];
    }
  }
  return {grad_pre, bias_grad.to(out.scalar_type())};
}

}  // namespace

TORCH_LIBRARY(torchrec_models_linear, m) {
  m.def("relu_bias_backward(Tensor grad_out, Tensor out) -> (Tensor, Tensor)");
  m.impl("relu_bias_backward", c10::DispatchKey::CPU, TORCH_FN(relu_bias_backward));
}
