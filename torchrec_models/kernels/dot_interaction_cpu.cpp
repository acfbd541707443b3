// DLRM's dot interaction on the CPU in one pass over each example, forward and backward.
//
// Forward: [dense | dots], where the N = F + 1 vectors of an example are (dense, sparse 0..F-1)
// and dots are the N(N-1)/2 pairwise dot products i < j in row-major order (torchrec's
// InteractionArch order). The sparse vectors may be stored in another feature order (the pooled
// embeddings as the all-to-all returned them): they are read in the model's order through a
// permutation instead of a reordered copy, and their gradients written back in the stored order.
// Each example's vectors are read once into an fp32 block that stays in L1, each dot is summed in
// fp32 and rounded once to the output type, and the output row is written once: no [B, N, D] stack,
// no [B, N, N] matrix, no gather of its upper triangle, no final concatenation. The order of a dot's
// sum depends on the build (`dot_order()` names it):
// - "lanes16" (AVX-512, or AVX2 with FMA): lane l of a 16-lane register (two AVX2 registers) sums x_i[d] x_j[d] for d = l, l + 16, ...
//   ascending, one fused multiply-add each (from zero); the 16 lanes are then added in halves
//   (l + l+8, then 4, 2 and 1 apart). Sixteen consecutive dots are folded together in registers.
// - "sequential" (other CPUs): products rounded, then added over d ascending.
//
// Backward: the gradient of the kept dots, g(i, j) = g(j, i), gives each vector's gradient
// sum_{j != i} g(i, j) x_j (summed in fp32 over j ascending: one fused multiply-add each in the
// "lanes16" build, a rounded product and sum otherwise); the dense vector's starts from the gradient
// of its pass-through copy. Written straight into the dense and sparse gradients.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define TORCHREC_MODELS_LANES16 1
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "float_rows.h"

namespace {

using torchrec_models::load_row;
using torchrec_models::store_row;

// Where the pairs (i, i+1), ..., (i, N-1) start among the dots.
inline int64_t pairs_before(int64_t i, int64_t N) { return i * (N - 1) - i * (i - 1) / 2; }

// Rows are zero-padded to kLanes values. "lanes16" builds: 16; others: one vector register of fp32, so
// that blocks of this width vectorize fully and the forward's kDotRows sums stay in registers (16 AVX2
// registers hold 8 sums of 8 lanes, not of 16). kGradRows: the backward's vectors at once (below).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
constexpr int64_t kGradRows = 4;
#elif defined(TORCHREC_MODELS_LANES16)
constexpr int64_t kLanes = 16;
constexpr int64_t kGradRows = 8;  // over columns of 8 lanes
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
  const int64_t* slot;   // sparse feature f is vector slot[f] (vector 0 is the dense one)
  int64_t dense_stride, sparse_b, sparse_f, N, D;

  const T* dense_row(int64_t b) const { return dense + b * dense_stride; }
  const T* sparse_row(int64_t b, int64_t f) const { return sparse + b * sparse_b + f * sparse_f; }
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
  std::vector<float> rows, cols, sums, coefs;  // coefs: a backward pass's pair gradients, where a build keeps them
  Scratch(int64_t N, int64_t D)
      : Np(padded(N)), Dp(padded(D)), rows((N + kRows) * Dp, 0.0f), cols(D * Np + kRows, 0.0f),
        sums(kRows * std::max(Np, Dp)), coefs(N * kGradRows) {}

  // Reads the features in their stored order (one forward stream through memory), each into its
  // vector's row.
  template <typename T>
  void read(const Vectors<T>& x, int64_t b, bool columns) {
    load_row(x.dense_row(b), rows.data(), x.D);
    for (int64_t f = 0; f + 1 < x.N; ++f) load_row(x.sparse_row(b, f), rows.data() + x.slot[f] * Dp, x.D);
    if (!columns) return;
    for (int64_t n = 0; n < x.N; ++n)
      for (int64_t d = 0; d < x.D; ++d) cols[d * Np + n] = rows[n * Dp + d];
  }
};

#ifdef TORCHREC_MODELS_LANES16
constexpr const char* kDotOrder = "lanes16";

#ifdef __AVX512F__
using V16 = __m512;     // 16 fp32 lanes
using Folded = __m512;  // the partly folded lanes of several dots

inline V16 v16_zero() { return _mm512_setzero_ps(); }
inline V16 v16_load(const float* p) { return _mm512_loadu_ps(p); }
inline V16 v16_fma(V16 a, V16 b, V16 c) { return _mm512_fmadd_ps(a, b, c); }
inline void v16_store(float* p, V16 v) { _mm512_storeu_ps(p, v); }

// Folding 16 registers' lanes in halves (l + l+8, then 4, 2, 1 apart), two registers' halves side
// by side at each level: 15 adds and 31 shuffles for 16 sums. fold8(a, b): a's lanes 0-7 + 8-15 in
// the low 256 bits, b's in the high ones.
__attribute__((always_inline)) inline Folded fold8(V16 a, V16 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}

// Of two fold8 results (registers r..r+3): one 128-bit block per register, in order.
__attribute__((always_inline)) inline Folded fold4(Folded a, Folded b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Of two fold4 results (registers r..r+3 and r+4..r+7): block k, lanes 0-1 register r+k, 2-3 r+4+k.
__attribute__((always_inline)) inline Folded fold2(Folded a, Folded b) {
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}

// Of two fold2 results (registers 0-7 and 8-15): the 16 sums in register order.
__attribute__((always_inline)) inline V16 fold1(Folded a, Folded b) {
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  // z's block k, lane m holds register k + 4m
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), z);
}

// 16 sums to the output type (bf16: rounded to nearest even, NaN a quiet NaN, as store_row does).
inline void store16(V16 v, float* dst) { _mm512_storeu_ps(dst, v); }

inline void store16(V16 v, at::BFloat16* dst) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), odd), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(rounded));
}
#else
struct V16 {  // 16 fp32 lanes in two AVX2 registers: lanes 0-7, 8-15
  __m256 lo, hi;
};
using Folded = __m256;

inline V16 v16_zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline V16 v16_load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline V16 v16_fma(V16 a, V16 b, V16 c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline void v16_store(float* p, V16 v) { _mm256_storeu_ps(p, v.lo), _mm256_storeu_ps(p + 8, v.hi); }

// The same folds as the AVX-512 build's, the same sums in the same order. fold8(a, b): lanes l + l+8,
// then those 4 apart: a's 4 in the low 128 bits, b's in the high ones.
__attribute__((always_inline)) inline Folded fold8(V16 a, V16 b) {
  const __m256 x = _mm256_add_ps(a.lo, a.hi), y = _mm256_add_ps(b.lo, b.hi);
  return _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20), _mm256_permute2f128_ps(x, y, 0x31));
}

// Of two fold8 results (registers r..r+1, r+2..r+3): half h, lanes 0-1 register r+h, 2-3 r+2+h.
__attribute__((always_inline)) inline Folded fold4(Folded a, Folded b) {
  return _mm256_add_ps(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}

// Of two fold4 results (registers r..r+3, r+4..r+7): half h holds registers r+h, r+2+h, r+4+h, r+6+h.
__attribute__((always_inline)) inline Folded fold2(Folded a, Folded b) {
  return _mm256_add_ps(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Of two fold2 results (registers 0-7 and 8-15): the 16 sums in register order.
__attribute__((always_inline)) inline V16 fold1(Folded a, Folded b) {
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  return {_mm256_permutevar8x32_ps(a, order), _mm256_permutevar8x32_ps(b, order)};
}

// 8 fp32 values' bf16 bits (rounded to nearest even, NaN a quiet NaN), one per 32-bit lane.
inline __m256i bf16_bits(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), odd), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
}

inline void store16(V16 v, float* dst) { v16_store(dst, v); }

inline void store16(V16 v, at::BFloat16* dst) {  // packs lanes 0-3, 8-11, 4-7, 12-15: reordered by 64 bits
  const __m256i packed = _mm256_packus_epi32(bf16_bits(v.lo), bf16_bits(v.hi));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permute4x64_epi64(packed, _MM_SHUFFLE(3, 1, 2, 0)));
}
#endif

// Lane l: x[d] y[d] summed over d = l, l + 16, ... ascending (kChunks registers of 16), one fused
// multiply-add each, from zero. x is already in registers.
template <int kChunks>
__attribute__((always_inline)) inline V16 pair_lanes(const V16 (&x)[kChunks], const float* y) {
  V16 acc = v16_zero();
#pragma GCC unroll 8
  for (int c = 0; c < kChunks; ++c) acc = v16_fma(x[c], v16_load(y + 16 * c), acc);
  return acc;
}

// The same sums for rows of any width (`chunks` registers of 16), both read from memory.
__attribute__((always_inline)) inline V16 pair_lanes(const float* x, const float* y, int64_t chunks) {
  V16 acc = v16_zero();
  for (int64_t c = 0; c < chunks; ++c) acc = v16_fma(v16_load(x + 16 * c), v16_load(y + 16 * c), acc);
  return acc;
}

// The pairs i < j in row-major order, as vector indices.
struct PairList {
  std::vector<int32_t> i, j;
  explicit PairList(int64_t N) {
    for (int32_t a = 0; a < N; ++a)
      for (int32_t b = a + 1; b < N; ++b) i.push_back(a), j.push_back(b);
  }
};

// Dots p0 .. p0 + n - 1 (n <= 16) of one example's rows (16 * chunks values each), folded as each
// pair of registers is ready (few registers live). Consecutive pairs mostly share their first
// vector: for a width known here (kChunks = chunks) it stays in registers while they do; kChunks = 0
// reads both vectors of every pair from memory (any width).
template <int kChunks>
struct DotsChunk {
  const float* rows;
  const PairList& pairs;
  int64_t p0, n, chunks;
  V16 xi[kChunks > 0 ? kChunks : 1];
  int32_t loaded = -1;

  __attribute__((always_inline)) inline V16 lanes(int t) {
    if (t >= n) return v16_zero();
    const int32_t i = pairs.i[p0 + t];
    if constexpr (kChunks == 0) {
      return pair_lanes(rows + 16 * chunks * i, rows + 16 * chunks * pairs.j[p0 + t], chunks);
    } else {
      if (i != loaded) {
        loaded = i;
        for (int c = 0; c < kChunks; ++c) xi[c] = v16_load(rows + (16 * kChunks) * i + 16 * c);
      }
      return pair_lanes<kChunks>(xi, rows + (16 * kChunks) * pairs.j[p0 + t]);
    }
  }

  __attribute__((always_inline)) inline Folded quarter(int q) {  // pairs 4q .. 4q+3
    const Folded a = fold8(lanes(4 * q), lanes(4 * q + 1));
    return fold4(a, fold8(lanes(4 * q + 2), lanes(4 * q + 3)));
  }

  __attribute__((always_inline)) inline V16 run() {
    const Folded low = fold2(quarter(0), quarter(1));
    return fold1(low, fold2(quarter(2), quarter(3)));
  }
};

template <typename T, int kChunks>
void forward_examples_of_width(const Vectors<T>& x, T* out, int64_t out_stride, int64_t begin, int64_t end) {
  const int64_t N = x.N, D = x.D, P = N * (N - 1) / 2;
  Scratch s(N, D);
  const PairList pairs(N);
  alignas(64) float dots[16];
  for (int64_t b = begin; b < end; ++b) {
    s.read(x, b, /*columns=*/false);
    T* dst = out + b * out_stride;
    std::memcpy(dst, x.dense_row(b), D * sizeof(T));
    for (int64_t p0 = 0; p0 < P; p0 += 16) {
      const int64_t n = std::min<int64_t>(16, P - p0);
      const V16 sums = DotsChunk<kChunks>{s.rows.data(), pairs, p0, n, s.Dp / 16}.run();
      if (n == 16) {
        store16(sums, dst + D + p0);
      } else {
        v16_store(dots, sums);
        store_row(dots, dst + D + p0, n);
      }
    }
  }
}

// Rows of up to 128 values (64 with AVX2's 16 registers; zero-padded to a multiple of 16) keep the
// first vector of a pair in registers; wider ones are read from memory for each pair.
template <typename T>
void forward_examples(const Vectors<T>& x, T* out, int64_t out_stride, int64_t begin, int64_t end) {
  switch (padded(x.D) / 16) {
    case 1: return forward_examples_of_width<T, 1>(x, out, out_stride, begin, end);
    case 2: return forward_examples_of_width<T, 2>(x, out, out_stride, begin, end);
    case 3: return forward_examples_of_width<T, 3>(x, out, out_stride, begin, end);
    case 4: return forward_examples_of_width<T, 4>(x, out, out_stride, begin, end);
#ifdef __AVX512F__
    case 5: return forward_examples_of_width<T, 5>(x, out, out_stride, begin, end);
    case 6: return forward_examples_of_width<T, 6>(x, out, out_stride, begin, end);
    case 7: return forward_examples_of_width<T, 7>(x, out, out_stride, begin, end);
    case 8: return forward_examples_of_width<T, 8>(x, out, out_stride, begin, end);
#endif
    default: return forward_examples_of_width<T, 0>(x, out, out_stride, begin, end);
  }
}
#else
constexpr const char* kDotOrder = "sequential";

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
    std::memcpy(dst, x.dense_row(b), D * sizeof(T));
    for (int64_t i0 = 0; i0 + 1 < N; i0 += kDotRows) {
      dots_pass(s, i0, (i0 + 1) / kLanes * kLanes, D);
      for (int64_t i = i0; i < std::min(i0 + kDotRows, N - 1); ++i)
        store_row(s.sums.data() + (i - i0) * s.Np + i + 1, dst + D + pairs_before(i, N), N - 1 - i);
    }
  }
}
#endif

#ifdef TORCHREC_MODELS_LANES16
// pair_grad[i, j] for i < j = the gradient of dot (i, j): the upper triangle only, copied row by row
// (coefficient() reads the rest from it).
template <typename T>
void pair_gradient(const T* dots_grad, int64_t N, std::vector<float>&, std::vector<float>& pair_grad) {
  for (int64_t i = 0; i + 1 < N; ++i) load_row(dots_grad + pairs_before(i, N), pair_grad.data() + i * N + i + 1, N - 1 - i);
}

// The coefficient of x_j in vector i's gradient: g(i, j) = g(j, i), zero for j = i. Rows past N read
// values of the buffer that no stored gradient uses.
__attribute__((always_inline)) inline float coefficient(const float* upper, int64_t N, int64_t i, int64_t j) {
  return j > i ? upper[i * N + j] : j < i ? upper[j * N + i] : 0.0f;
}

// One register of fp32 columns, for the backward's loop over column registers.
#ifdef __AVX512F__
struct ColumnRegister {
  using R = __m512;
  static constexpr int64_t kWidth = 16;
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static R zero() { return _mm512_setzero_ps(); }
  static R fma(float a, R b, R c) { return _mm512_fmadd_ps(_mm512_set1_ps(a), b, c); }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
};
#else
struct ColumnRegister {
  using R = __m256;
  static constexpr int64_t kWidth = 8;
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static R zero() { return _mm256_setzero_ps(); }
  static R fma(float a, R b, R c) { return _mm256_fmadd_ps(_mm256_set1_ps(a), b, c); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
};
#endif

// Gradients of vectors i0 .. i0 + kGradRows - 1: sum over j of g(i, j) x_j (j ascending, one fused
// multiply-add each; the diagonal's zero adds nothing), on top of `start` for vector 0 (its
// pass-through gradient), into out's rows 0 .. kGradRows - 1: one column register at a time, for
// rows of any width. The coefficients are read once for all column registers.
void gradient_columns(Scratch& s, const std::vector<float>& pair_grad, const float* start, int64_t i0, int64_t N,
                      float* out) {
  using C = ColumnRegister;
  const int64_t Dp = s.Dp;
  const float* rows = s.rows.data();
  float* coefs = s.coefs.data();  // [j][r]
  for (int64_t j = 0; j < N; ++j)
    for (int r = 0; r < kGradRows; ++r) coefs[j * kGradRows + r] = coefficient(pair_grad.data(), N, i0 + r, j);
  for (int64_t c = 0; c < Dp; c += C::kWidth) {
    C::R acc[kGradRows];
    for (int r = 0; r < kGradRows; ++r) acc[r] = i0 == 0 && r == 0 ? C::load(start + c) : C::zero();
    for (int64_t j = 0; j < N; ++j) {
      const C::R xj = C::load(rows + j * Dp + c);
      for (int r = 0; r < kGradRows; ++r) acc[r] = C::fma(coefs[j * kGradRows + r], xj, acc[r]);
    }
    for (int r = 0; r < kGradRows; ++r) C::store(out + r * Dp + c, acc[r]);
  }
}

#ifdef __AVX512F__
// The same sums for rows of 16 * kChunks values, into sums[r * 16 * kChunks ...], with all kChunks
// registers of each row in registers: per j, kChunks loads and kGradRows broadcasts feed
// kGradRows * kChunks multiply-adds.
template <int kChunks>
void gradient_block(const float* rows, const float* pair_grad, const float* start, int64_t i0, int64_t N, float* sums) {
  constexpr int64_t kWidth = 16 * kChunks;
  __m512 acc[kGradRows][kChunks];
  for (int r = 0; r < kGradRows; ++r)
    for (int c = 0; c < kChunks; ++c)
      acc[r][c] = i0 == 0 && r == 0 ? _mm512_loadu_ps(start + 16 * c) : _mm512_setzero_ps();
  for (int64_t j = 0; j < N; ++j) {
    __m512 xj[kChunks];
    for (int c = 0; c < kChunks; ++c) {
      xj[c] = _mm512_loadu_ps(rows + j * kWidth + 16 * c);
      asm("" : "+v"(xj[c]));  // kept in a register: folded into each multiply-add it was loaded kGradRows times
    }
    for (int r = 0; r < kGradRows; ++r) {
      const __m512 g = _mm512_set1_ps(coefficient(pair_grad, N, i0 + r, j));
      for (int c = 0; c < kChunks; ++c) acc[r][c] = _mm512_fmadd_ps(g, xj[c], acc[r][c]);
    }
  }
  for (int r = 0; r < kGradRows; ++r)
    for (int c = 0; c < kChunks; ++c) _mm512_storeu_ps(sums + r * kWidth + 16 * c, acc[r][c]);
}

void gradient_pass(Scratch& s, const std::vector<float>& pair_grad, const float* start, int64_t i0, int64_t N,
                   int64_t, float* out) {
  const float* rows = s.rows.data();
  switch (s.Dp / 16) {
    case 1: return gradient_block<1>(rows, pair_grad.data(), start, i0, N, out);
    case 2: return gradient_block<2>(rows, pair_grad.data(), start, i0, N, out);
    case 3: return gradient_block<3>(rows, pair_grad.data(), start, i0, N, out);
    case 4: return gradient_block<4>(rows, pair_grad.data(), start, i0, N, out);
    default: return gradient_columns(s, pair_grad, start, i0, N, out);
  }
}
#else
void gradient_pass(Scratch& s, const std::vector<float>& pair_grad, const float* start, int64_t i0, int64_t N,
                   int64_t, float* out) {
  gradient_columns(s, pair_grad, start, i0, N, out);
}
#endif
#else
// pair_grad[i, j] = pair_grad[j, i] = the gradient of dot (i, j); zero on the diagonal and past row N.
template <typename T>
void pair_gradient(const T* dots_grad, int64_t N, std::vector<float>& triangle, std::vector<float>& pair_grad) {
  load_row(dots_grad, triangle.data(), N * (N - 1) / 2);
  for (int64_t i = 0; i < N; ++i) {
    pair_grad[i * N + i] = 0.0f;
    for (int64_t j = i + 1; j < N; ++j)
      pair_grad[i * N + j] = pair_grad[j * N + i] = triangle[pairs_before(i, N) + j - i - 1];
  }
}

// Gradients of vectors i0 .. i0 + kGradRows - 1: sum over j of pair_grad[i, j] x_j (j ascending; the
// diagonal's zero adds nothing), on top of `start` for vector 0 (its pass-through gradient), into
// out's rows 0 .. kGradRows - 1.
void gradient_pass(Scratch& s, const std::vector<float>& pair_grad, const float* start, int64_t i0, int64_t N,
                   int64_t D, float* out) {
  const int64_t Dp = s.Dp;
  for (int64_t c = 0; c < D; c += kLanes) {
    Lanes sum[kGradRows] = {};
    if (i0 == 0) sum[0] = lanes_at(start + c);
    for (int64_t j = 0; j < N; ++j) {
      const Lanes xj = lanes_at(s.rows.data() + j * Dp + c);
      for (int64_t r = 0; r < kGradRows; ++r) sum[r] += pair_grad[(i0 + r) * N + j] * xj;
    }
    for (int64_t r = 0; r < kGradRows; ++r) std::memcpy(out + r * Dp + c, &sum[r], sizeof(Lanes));
  }
}
#endif

template <typename T>
void backward_examples(const Vectors<T>& x, const T* grad, int64_t grad_stride, T* grad_dense, T* grad_sparse,
                       int64_t begin, int64_t end) {
  const int64_t N = x.N, D = x.D, F = N - 1;
  Scratch s(N, D);
  std::vector<float> pair_grad((N + kGradRows) * N, 0.0f), triangle(N * (N - 1) / 2), passthrough(s.Dp, 0.0f);
  std::vector<float> grads((N + kGradRows) * s.Dp);  // every vector's gradient, a pass's spare rows past N
  for (int64_t b = begin; b < end; ++b) {
    s.read(x, b, /*columns=*/false);
    const T* g = grad + b * grad_stride;
    load_row(g, passthrough.data(), D);
    pair_gradient(g + D, N, triangle, pair_grad);
    // each feature's gradient is written once it and every feature stored before it are done: one
    // forward stream through memory whatever the order, each row written soon after its pass
    int64_t next = 0;
    for (int64_t i0 = 0; i0 < N; i0 += kGradRows) {
      gradient_pass(s, pair_grad, passthrough.data(), i0, N, D, grads.data() + i0 * s.Dp);
      if (i0 == 0) store_row(grads.data(), grad_dense + b * D, D);
      for (; next < F && x.slot[next] < i0 + kGradRows; ++next)
        store_row(grads.data() + x.slot[next] * s.Dp, grad_sparse + (b * F + next) * D, D);
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

// Which vector each stored feature is: slot[order[n - 1]] = n.
std::vector<int64_t> vector_slots(const at::Tensor& order) {
  std::vector<int64_t> slot(order.size(0));
  for (int64_t n = 1; n <= order.size(0); ++n) slot[order.data_ptr<int64_t>()[n - 1]] = n;
  return slot;
}

template <typename T>
Vectors<T> vectors(const at::Tensor& dense, const at::Tensor& sparse, const std::vector<int64_t>& slot) {
  return Vectors<T>{dense.data_ptr<T>(), sparse.data_ptr<T>(), slot.data(), dense.stride(0), sparse.stride(0),
                    sparse.stride(1), sparse.size(1) + 1, dense.size(1)};
}

at::Tensor dot_interaction_forward(const at::Tensor& dense, const at::Tensor& sparse,
                                   const std::optional<at::Tensor>& order) {
  const at::Tensor ord = feature_order(order, sparse);
  check_inputs(dense, sparse, ord);
  const int64_t B = dense.size(0), D = dense.size(1), N = sparse.size(1) + 1;
  at::Tensor out = at::empty({B, D + N * (N - 1) / 2}, dense.options());
  const std::vector<int64_t> slot = vector_slots(ord);
  AT_DISPATCH_SWITCH(dense.scalar_type(), "dot_interaction_forward", AT_DISPATCH_CASE_FP32_BF16([&] {
    const Vectors<scalar_t> x = vectors<scalar_t>(dense, sparse, slot);
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
  const std::vector<int64_t> slot = vector_slots(ord);
  AT_DISPATCH_SWITCH(dense.scalar_type(), "dot_interaction_backward", AT_DISPATCH_CASE_FP32_BF16([&] {
    const Vectors<scalar_t> x = vectors<scalar_t>(dense, sparse, slot);
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

// How this build sums a dot (header comment).
std::string dot_order() { return kDotOrder; }

TORCH_LIBRARY(torchrec_models_interaction, m) {
  m.def("parallel_threads(int n) -> int", &parallel_threads);
  m.def("dot_order() -> str", &dot_order);
  m.def("dot_interaction_forward(Tensor dense, Tensor sparse, Tensor? order=None) -> Tensor");
  m.def("dot_interaction_backward(Tensor grad_out, Tensor dense, Tensor sparse, Tensor? order=None) -> (Tensor, Tensor)");
  m.impl("dot_interaction_forward", c10::DispatchKey::CPU, TORCH_FN(dot_interaction_forward));
  m.impl("dot_interaction_backward", c10::DispatchKey::CPU, TORCH_FN(dot_interaction_backward));
}
