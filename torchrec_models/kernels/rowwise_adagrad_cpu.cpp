// Exact row-wise Adagrad for table-batched embedding bags on the CPU.
//
// Same arguments and update as FBGEMM's CPU op
// fbgemm::split_embedding_backward_codegen_rowwise_adagrad_cpu (no weight decay, no max norm):
// for every table row hit in the batch, g = the sum of its pooled gradients in position order,
// h += mean(g * g), w -= lr * g / (sqrt(h) + eps).
// Rows are found by a stable radix sort of (row, position), so updates touch the table in
// ascending address order, and tables are spread over the intra-op threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "float_rows.h"

namespace {

using torchrec_models::prefetch_line;
using torchrec_models::prefetch_lines;

constexpr int64_t kPoolingMean = 1;

// One physical table: the features that read it and where its rows and state live.
struct TableGroup {
  int64_t first_feature;
  int64_t end_feature;
  int64_t hash_size;
};

std::vector<TableGroup> group_features_by_table(const int64_t* hash_size_cumsum, int64_t num_features) {
  // Features sharing a table have equal hash_size_cumsum entries (as in FBGEMM's CPU op).
  std::vector<TableGroup> groups;
  int64_t begin = 0;
  for (int64_t f = 0; f < num_features; ++f) {
    const bool last = f + 1 == num_features;
    if (last || hash_size_cumsum[f + 1] != hash_size_cumsum[f]) {
      groups.push_back({begin, f + 1, 0});
      begin = f + 1;
    }
  }
  for (auto& g : groups) g.hash_size = hash_size_cumsum[g.end_feature] - hash_size_cumsum[g.first_feature];
  return groups;
}

// Stable least-significant-digit radix sort of (row, payload) pairs by row, 8 bits a pass.
void sort_by_row(std::vector<int64_t>& rows, std::vector<int64_t>& payload, int64_t max_row) {
  const size_t n = rows.size();
  std::vector<int64_t> rows_out(n), payload_out(n);
  for (int shift = 0; shift == 0 || (max_row >> shift) > 0; shift += 8) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; ++i) ++count[((rows[i] >> shift) & 255) + 1];
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (size_t i = 0; i < n; ++i) {
      const size_t slot = count[(rows[i] >> shift) & 255]++;
      rows_out[slot] = rows[i];
      payload_out[slot] = payload[i];
    }
    rows.swap(rows_out);
    payload.swap(payload_out);
  }
}

float sum_of_squares(const float* g, int64_t D) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int k = 0; k < 8; ++k) lanes[k] += g[d + k] * g[d + k];
  float total = 0;
  for (int k = 0; k < 8; ++k) total += lanes[k];
  for (; d < D; ++d) total += g[d] * g[d];
  return total;
}

template <typename weight_t, typename grad_t, typename index_t>
struct Update {
  const grad_t* grad_output;
  int64_t grad_stride;
  const int32_t* D_offsets;
  const int64_t* weights_offsets;
  const int64_t* momentum_offsets;
  const index_t* indices;
  const index_t* offsets;
  const float* indice_weights;  // null when the bags are unweighted
  int64_t pooling_mode;
  int64_t B;
  weight_t* weights;
  float* momentum;
  float lr;
  float eps;

  // The ids of one table, sorted by row. Payload of an id: the offset of the pooled gradient it
  // reads, or its position when bags are weighted or averaged (then scale[position] multiplies
  // the gradient at grad_row[position]).
  struct Ids {
    std::vector<int64_t> rows, payload, grad_row;
    std::vector<float> scale;
    bool scaled;
  };

  Ids collect(const TableGroup& group) const {
    const int64_t f0 = group.first_feature;
    const int64_t n = offsets[group.end_feature * B] - offsets[f0 * B];
    Ids ids;
    ids.scaled = indice_weights != nullptr || pooling_mode == kPoolingMean;
    ids.rows.reserve(n);
    ids.payload.reserve(n);
    if (ids.scaled) {
      ids.grad_row.reserve(n);
      ids.scale.reserve(n);
    }
    for (int64_t f = f0; f < group.end_feature; ++f) {
      for (int64_t b = 0; b < B; ++b) {
        const int64_t begin = offsets[f * B + b], end = offsets[f * B + b + 1];
        const float mean = (pooling_mode == kPoolingMean && end > begin) ? 1.0f / (end - begin) : 1.0f;
        for (int64_t i = begin; i < end; ++i) {
          const int64_t row = indices[i];
          TORCH_CHECK(row >= 0 && row < group.hash_size, "embedding index ", row, " of feature ", f,
                      " is outside its table of ", group.hash_size, " rows");
          const int64_t src = b * grad_stride + D_offsets[f];
          ids.payload.push_back(ids.scaled ? static_cast<int64_t>(ids.rows.size()) : src);
          ids.rows.push_back(row);
          if (ids.scaled) {
            ids.grad_row.push_back(src);
            ids.scale.push_back(indice_weights ? indice_weights[i] : mean);
          }
        }
      }
    }
    sort_by_row(ids.rows, ids.payload, group.hash_size - 1);
    return ids;
  }

  // The weights, state and gradient rows of sorted id i, ahead of their use: each is a cache miss.
  void prefetch_id(const Ids& ids, size_t i, const weight_t* table_weights, const float* table_momentum,
                   int64_t D) const {
    const int64_t row = ids.rows[i];
    const char* w = reinterpret_cast<const char*>(table_weights + row * D);
    for (int64_t byte = 0; byte < D * static_cast<int64_t>(sizeof(weight_t)); byte += 64)
      __builtin_prefetch(w + byte, 1);  // for writing
    prefetch_line(table_momentum + row);
    const int64_t p = ids.payload[i];
    prefetch_lines(grad_output + (ids.scaled ? ids.grad_row[p] : p), D * static_cast<int64_t>(sizeof(grad_t)));
  }

  // Adds the gradient of sorted id i to g.
  void add_gradient(const Ids& ids, size_t i, float* g, int64_t D) const {
    const int64_t p = ids.payload[i];
    if (ids.scaled) {
      const grad_t* src = grad_output + ids.grad_row[p];
      for (int64_t d = 0; d < D; ++d) g[d] += static_cast<float>(src[d]) * ids.scale[p];
    } else {
      const grad_t* src = grad_output + p;
      for (int64_t d = 0; d < D; ++d) g[d] += static_cast<float>(src[d]);
    }
  }

  void table(const TableGroup& group) const {
    const int64_t f0 = group.first_feature;
    const int64_t D = D_offsets[f0 + 1] - D_offsets[f0];
    const Ids ids = collect(group);
    std::vector<float> g(D);
    weight_t* table_weights = weights + weights_offsets[f0];
    float* table_momentum = momentum + momentum_offsets[f0];
    constexpr size_t kAhead = 16;  // rows of weights prefetched ahead of the update
    const size_t count = ids.rows.size();
    for (size_t i = 0; i < count;) {
      const int64_t row = ids.rows[i];
      std::fill(g.begin(), g.end(), 0.0f);
      for (; i < count && ids.rows[i] == row; ++i) {
        if (i + kAhead < count) prefetch_id(ids, i + kAhead, table_weights, table_momentum, D);
        add_gradient(ids, i, g.data(), D);
      }
      const float h = table_momentum[row] + sum_of_squares(g.data(), D) / D;
      table_momentum[row] = h;
      const float step = lr / (std::sqrt(h) + eps);
      weight_t* w = table_weights + row * D;
      for (int64_t d = 0; d < D; ++d) w[d] = static_cast<weight_t>(static_cast<float>(w[d]) - g[d] * step);
    }
  }
};

void rowwise_adagrad_backward(
    const at::Tensor& grad_output, const at::Tensor& host_weights, const at::Tensor& weights_offsets,
    const at::Tensor& D_offsets, const at::Tensor& hash_size_cumsum, const at::Tensor& indices,
    const at::Tensor& offsets, int64_t pooling_mode, const std::optional<at::Tensor>& indice_weights,
    const at::Tensor& momentum1_host, const at::Tensor& momentum1_offsets, double learning_rate, double eps) {
  const int64_t num_features = D_offsets.numel() - 1;
  TORCH_CHECK(num_features > 0 && host_weights.dim() == 1 && host_weights.is_contiguous());
  TORCH_CHECK(momentum1_host.scalar_type() == at::kFloat && momentum1_host.is_contiguous());
  const int64_t B = (offsets.numel() - 1) / num_features;
  // Rows of the pooled gradient may be strided (a slice of a wider gradient); elements must not be.
  const at::Tensor grad = grad_output.dim() == 2 && grad_output.stride(1) == 1 ? grad_output : grad_output.contiguous();
  const at::Tensor hash_cumsum = hash_size_cumsum.to(at::kLong).contiguous();
  const at::Tensor d_offsets = D_offsets.to(at::kInt).contiguous();
  const at::Tensor w_offsets = weights_offsets.to(at::kLong).contiguous();
  const at::Tensor m_offsets = momentum1_offsets.to(at::kLong).contiguous();
  at::Tensor bag_weights;
  if (indice_weights.has_value() && indice_weights->defined() && indice_weights->numel() > 0)
    bag_weights = indice_weights->to(at::kFloat).contiguous();
  const auto groups = group_features_by_table(hash_cumsum.data_ptr<int64_t>(), num_features);

  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "rowwise_adagrad_backward", [&] {
    const at::Tensor idx = indices.contiguous(), offs = offsets.to(indices.scalar_type()).contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(host_weights.scalar_type(), "rowwise_adagrad_backward_w", [&] {
      using weight_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rowwise_adagrad_backward_g", [&] {
        const Update<weight_t, scalar_t, index_t> update{
            grad.data_ptr<scalar_t>(), grad.stride(0), d_offsets.data_ptr<int32_t>(), w_offsets.data_ptr<int64_t>(),
            m_offsets.data_ptr<int64_t>(), idx.data_ptr<index_t>(), offs.data_ptr<index_t>(),
            bag_weights.defined() ? bag_weights.data_ptr<float>() : nullptr, pooling_mode, B,
            host_weights.data_ptr<weight_t>(), momentum1_host.data_ptr<float>(),
            static_cast<float>(learning_rate), static_cast<float>(eps)};
        at::parallel_for(0, static_cast<int64_t>(groups.size()), 1, [&](int64_t begin, int64_t end) {
          for (int64_t t = begin; t < end; ++t) update.table(groups[t]);
        });
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY(torchrec_models, m) {
  m.def("rowwise_adagrad_backward(Tensor grad_output, Tensor(a!) host_weights, Tensor weights_offsets, "
        "Tensor D_offsets, Tensor hash_size_cumsum, Tensor indices, Tensor offsets, int pooling_mode, "
        "Tensor? indice_weights, Tensor(b!) momentum1_host, Tensor momentum1_offsets, float learning_rate, "
        "float eps) -> ()");
  m.impl("rowwise_adagrad_backward", c10::DispatchKey::CPU, TORCH_FN(rowwise_adagrad_backward));
}
