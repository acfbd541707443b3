// Pooled lookup of table-batched embedding bags on the CPU, with fp32, fp16 or bf16 output.
//
// Same arguments and result as FBGEMM's CPU op fbgemm::split_embedding_codegen_forward_cpu for
// sum and mean pooling, which has no bf16 output: each bag's rows (times their per-sample weights)
// are summed in fp32 in position order, averaged for mean pooling, and rounded once to the output
// type. A bf16 output saves the fp32 pooled tensor, its cast, and the cast of its gradient.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "float_rows.h"

namespace {

constexpr int64_t kPoolingSum = 0;
constexpr int64_t kPoolingMean = 1;

// FBGEMM's SparseType codes for the output.
at::ScalarType output_scalar_type(int64_t output_dtype) {
  switch (output_dtype) {
    case 0: return at::kFloat;
    case 1: return at::kHalf;
    case 5: return at::kBFloat16;
    default: TORCH_CHECK(false, "pooled lookup: output type ", output_dtype, " is not fp32, fp16 or bf16");
  }
}

using torchrec_models::prefetch_lines;
using torchrec_models::store_row;

template <typename weight_t, typename out_t, typename index_t>
struct Lookup {
  const weight_t* weights;
  const int64_t* weights_offsets;
  const int32_t* D_offsets;
  const int64_t* table_rows;  // rows of each feature's table
  const index_t* indices;
  const index_t* offsets;
  const float* indice_weights;  // null when the bags are unweighted
  int64_t pooling_mode;
  int64_t B;
  int64_t total_D;
  out_t* output;

  // Rows kAhead ids ahead are prefetched: a row is a cache (and usually TLB) miss, and waiting
  // for each one in turn costs several times the arithmetic.
  static constexpr int64_t kAhead = 8;

  // The row kAhead ids ahead (the block's last id near its end; never an invalid address).
  void prefetch_row(const weight_t* table, int64_t rows, int64_t D, int64_t i, int64_t ids_end) const {
    const int64_t ahead = indices[std::min(i + kAhead, ids_end - 1)];
    prefetch_lines(table + (ahead >= 0 && ahead < rows ? ahead : 0) * D, D * static_cast<int64_t>(sizeof(weight_t)));
  }

  int64_t checked_row(int64_t f, int64_t i, int64_t rows) const {
    const int64_t row = indices[i];
    TORCH_CHECK(row >= 0 && row < rows, "embedding index ", row, " of feature ", f,
                " is outside its table of ", rows, " rows");
    return row;
  }

  // Bags b in [begin, end) of feature f, with the row width D (kD when known at compile time, so
  // that the sum stays in registers) and per-sample weights or not.
  template <int64_t kD, bool kWeighted>
  void bags(int64_t f, int64_t begin, int64_t end, float* __restrict__ heap_acc) const {
    const int64_t D = kD > 0 ? kD : D_offsets[f + 1] - D_offsets[f];
    const int64_t rows = table_rows[f];
    const weight_t* table = weights + weights_offsets[f];
    const int64_t ids_end = offsets[f * B + end];
    float local_acc[kD > 0 ? kD : 1];
    float* __restrict__ acc = kD > 0 ? local_acc : heap_acc;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = offsets[f * B + b], last = offsets[f * B + b + 1];
      for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
      for (int64_t i = first; i < last; ++i) {
        prefetch_row(table, rows, D, i, ids_end);
        const weight_t* __restrict__ w = table + checked_row(f, i, rows) * D;
        if (kWeighted) {
          const float scale = indice_weights[i];
          for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<float>(w[d]) * scale;
        } else {  // x * 1.0f is x: skipping the product changes no bit
          for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<float>(w[d]);
        }
      }
      if (pooling_mode == kPoolingMean && last > first) {
        const float mean = 1.0f / (last - first);
        for (int64_t d = 0; d < D; ++d) acc[d] *= mean;
      }
      store_row(acc, output + b * total_D + D_offsets[f], D);
    }
  }

  template <bool kWeighted>
  void bags_of_width(int64_t f, int64_t begin, int64_t end, float* heap_acc) const {
    switch (D_offsets[f + 1] - D_offsets[f]) {
      case 16: return bags<16, kWeighted>(f, begin, end, heap_acc);
      case 32: return bags<32, kWeighted>(f, begin, end, heap_acc);
      case 64: return bags<64, kWeighted>(f, begin, end, heap_acc);
      case 128: return bags<128, kWeighted>(f, begin, end, heap_acc);
      default: return bags<0, kWeighted>(f, begin, end, heap_acc);
    }
  }

  void run(int64_t f, int64_t begin, int64_t end, float* heap_acc) const {
    if (indice_weights) bags_of_width<true>(f, begin, end, heap_acc);
    else bags_of_width<false>(f, begin, end, heap_acc);
  }
};

// Features sharing a table have equal hash_size_cumsum entries; the last of them starts the next table.
std::vector<int64_t> rows_of_each_table(const at::Tensor& hash_size_cumsum, int64_t T) {
  const int64_t* cumsum = hash_size_cumsum.data_ptr<int64_t>();
  std::vector<int64_t> rows(T);
  int64_t end = cumsum[T];
  for (int64_t f = T - 1; f >= 0; --f) {
    if (f + 1 < T && cumsum[f + 1] != cumsum[f]) end = cumsum[f + 1];
    rows[f] = end - cumsum[f];
  }
  return rows;
}

at::Tensor pooled_lookup(const at::Tensor& weights, const at::Tensor& weights_offsets, const at::Tensor& D_offsets,
                         int64_t total_D, const at::Tensor& hash_size_cumsum, const at::Tensor& indices,
                         const at::Tensor& offsets, int64_t pooling_mode, const std::optional<at::Tensor>& indice_weights,
                         int64_t output_dtype) {
  TORCH_CHECK(pooling_mode == kPoolingSum || pooling_mode == kPoolingMean, "pooled lookup: sum or mean pooling only");
  const int64_t T = D_offsets.numel() - 1;
  TORCH_CHECK(T > 0 && (offsets.numel() - 1) % T == 0 && weights.dim() == 1);
  const int64_t B = (offsets.numel() - 1) / T;
  const at::Tensor w = weights.contiguous();
  const at::Tensor d_offsets = D_offsets.to(at::kInt).contiguous();
  const at::Tensor w_offsets = weights_offsets.to(at::kLong).contiguous();
  const std::vector<int64_t> table_rows = rows_of_each_table(hash_size_cumsum.to(at::kLong).contiguous(), T);
  at::Tensor bag_weights;
  if (indice_weights.has_value() && indice_weights->defined() && indice_weights->numel() > 0)
    bag_weights = indice_weights->to(at::kFloat).contiguous();
  at::Tensor output = at::empty({B, total_D}, w.options().dtype(output_scalar_type(output_dtype)));
  const int64_t max_D = d_offsets.diff().max().item<int64_t>();

  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "pooled_lookup", [&] {
    const at::Tensor idx = indices.contiguous(), offs = offsets.to(indices.scalar_type()).contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(w.scalar_type(), "pooled_lookup_w", [&] {
      using weight_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "pooled_lookup_out", [&] {
        const Lookup<weight_t, scalar_t, index_t> lookup{
            w.data_ptr<weight_t>(), w_offsets.data_ptr<int64_t>(), d_offsets.data_ptr<int32_t>(),
            table_rows.data(), idx.data_ptr<index_t>(), offs.data_ptr<index_t>(),
            bag_weights.defined() ? bag_weights.data_ptr<float>() : nullptr, pooling_mode, B, total_D,
            output.data_ptr<scalar_t>()};
        // Work items are (feature, block of bags): every thread writes its own slice of the output.
        constexpr int64_t kBagsPerBlock = 256;
        const int64_t blocks = (B + kBagsPerBlock - 1) / kBagsPerBlock;
        at::parallel_for(0, T * blocks, 1, [&](int64_t begin, int64_t end) {
          std::vector<float> acc(max_D);
          for (int64_t item = begin; item < end; ++item) {
            const int64_t f = item / blocks, first = (item % blocks) * kBagsPerBlock;
            lookup.run(f, first, std::min(B, first + kBagsPerBlock), acc.data());
          }
        });
      });
    });
  });
  return output;
}

}  // namespace

TORCH_LIBRARY(torchrec_models_lookup, m) {
  m.def("pooled_lookup(Tensor weights, Tensor weights_offsets, Tensor D_offsets, int total_D, "
        "Tensor hash_size_cumsum, Tensor indices, Tensor offsets, int pooling_mode, Tensor? indice_weights, "
        "int output_dtype) -> Tensor");
  m.impl("pooled_lookup", c10::DispatchKey::CPU, TORCH_FN(pooled_lookup));
}
