// fp32 matrix products through a CBLAS sgemm bound at run time (numpy's OpenBLAS), run on torch's
// own threads.
//
// The library is asked for one thread and each of torch's threads multiplies its own block of
// output rows: a BLAS thread pool of its own would spin between calls on the cores torch's threads
// need (measured: 1.4x slower steps than torch's MKL on two cores, against 1.15x faster with one
// thread per process). The rows each thread takes depend only on the shape and the thread count, so
// values are deterministic for a given thread count (OpenBLAS may pick other kernels for blocks of
// other shapes: another thread count can change the last bits). The MLP forward adds the bias and applies the ReLU
// to each block of rows right after its product, while the block is still in cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enum values
constexpr int64_t kEpilogueRows = 256;  // rows multiplied, then biased and rectified, at a time

using Sgemm32 = void (*)(int, int, int, int32_t, int32_t, int32_t, float, const float*, int32_t, const float*,
                         int32_t, float, float*, int32_t);
using Sgemm64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                         int64_t, float, float*, int64_t);
void* g_sgemm = nullptr;
bool g_int64 = false;

// Binds cblas_sgemm as `symbol` of the already loaded library at `path`; int64_indices for ILP64 builds.
void bind(const std::string& path, const std::string& symbol, bool int64_indices) {
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (lib == nullptr) lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  TORCH_CHECK(lib != nullptr, "blas_gemm: cannot open ", path, ": ", dlerror());
  void* fn = dlsym(lib, symbol.c_str());
  TORCH_CHECK(fn != nullptr, "blas_gemm: ", path, " has no ", symbol);
  g_sgemm = fn;
  g_int64 = int64_indices;
}

void sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
           int64_t ldb, float* c, int64_t ldc) {
  if (g_int64) {
    reinterpret_cast<Sgemm64>(g_sgemm)(kRowMajor, trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
  } else {
    reinterpret_cast<Sgemm32>(g_sgemm)(kRowMajor, trans_a, trans_b, static_cast<int32_t>(m), static_cast<int32_t>(n),
                                       static_cast<int32_t>(k), 1.0f, a, static_cast<int32_t>(lda), b,
                                       static_cast<int32_t>(ldb), 0.0f, c, static_cast<int32_t>(ldc));
  }
}

// A [rows, cols] operand as BLAS reads it: its storage (a copy only if neither dimension has unit
// stride), whether it is stored transposed, and its leading dimension.
struct Operand {
  at::Tensor t;
  int trans;
  int64_t ld;
};

Operand operand(const at::Tensor& x) {
  const int64_t rows = x.size(0), cols = x.size(1);
  if ((x.stride(1) == 1 || cols == 1) && x.stride(0) >= std::max<int64_t>(cols, 1)) return {x, kNoTrans, x.stride(0)};
  if ((x.stride(0) == 1 || rows == 1) && x.stride(1) >= std::max<int64_t>(rows, 1)) return {x, kTrans, x.stride(1)};
  at::Tensor c = x.contiguous();
  return {c, kNoTrans, std::max<int64_t>(cols, 1)};
}

void check(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK(g_sgemm != nullptr, op, ": no sgemm bound");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), op, ": shapes ", a.sizes(), " and ", b.sizes(),
              " do not multiply");
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && a.is_cpu() && b.is_cpu(), op,
              ": fp32 CPU tensors only");
}

// out[M, N] = a[M, K] b[K, N], rows of out split over torch's threads; `epilogue(block, rows)` runs
// on each block of up to kEpilogueRows rows (contiguous, N wide) right after its product.
template <typename Epilogue>
at::Tensor product(const at::Tensor& a_in, const at::Tensor& b_in, Epilogue epilogue) {
  const Operand a = operand(a_in), b = operand(b_in);
  const int64_t m = a_in.size(0), k = a_in.size(1), n = b_in.size(1);
  at::Tensor out = at::empty({m, n}, a_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (m == 0 || n == 0) return out;
  if (k == 0) return out.zero_();
  const float* pa = a.t.data_ptr<float>();
  const float* pb = b.t.data_ptr<float>();
  float* pc = out.data_ptr<float>();
  const int64_t row_step = a.trans == kNoTrans ? a.ld : 1;  // storage distance between rows of a
  const int64_t grain = std::max<int64_t>(16, (m + at::get_num_threads() - 1) / at::get_num_threads());
  at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r += kEpilogueRows) {
      const int64_t rows = std::min(kEpilogueRows, end - r);
      sgemm(a.trans, b.trans, rows, n, k, pa + r * row_step, a.ld, pb, b.ld, pc + r * n, n);
      epilogue(pc + r * n, rows);
    }
  });
  return out;
}

at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  check(a, b, "blas_gemm.mm");
  return product(a, b, [](float*, int64_t) {});
}

// relu(x weight^T + bias) for x [B, K], weight [N, K], bias [N].
at::Tensor linear_relu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const at::Tensor w_t = weight.t();
  check(x, w_t, "blas_gemm.linear_relu");
  const at::Tensor b = bias.to(at::kFloat).contiguous();
  TORCH_CHECK(b.numel() == weight.size(0), "blas_gemm.linear_relu: bias has ", b.numel(), " values for ",
              weight.size(0), " outputs");
  const int64_t n = weight.size(0);
  const float* pb = b.data_ptr<float>();
  return product(x, w_t, [&](float* row, int64_t rows) {
    for (int64_t i = 0; i < rows; ++i, row += n) {
      for (int64_t c = 0; c < n; ++c) row[c] = std::max(row[c] + pb[c], 0.0f);
    }
  });
}

}  // namespace

TORCH_LIBRARY(torchrec_models_blas, m) {
  m.def("bind(str path, str symbol, bool int64_indices) -> ()");
  m.def("mm(Tensor a, Tensor b) -> Tensor");
  m.def("linear_relu(Tensor x, Tensor weight, Tensor bias) -> Tensor");
  m.impl("bind", c10::DispatchKey::CatchAll, TORCH_FN(bind));
  m.impl("mm", c10::DispatchKey::CPU, TORCH_FN(mm));
  m.impl("linear_relu", c10::DispatchKey::CPU, TORCH_FN(linear_relu));
}
