// Rows of table or activation elements to and from fp32, shared by this package's kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

namespace torchrec_models {

// Prefetches the cache line at p into every level. Inline assembly on x86-64: for the lookup's
// width-specialized loops GCC 12 emitted no instruction at all for __builtin_prefetch (seen in
// the disassembly), and the rows then arrived one cache miss at a time (2x slower).
inline void prefetch_line(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p);
#endif
}

// Prefetches every cache line of the `bytes` bytes at p (a table or gradient row).
inline void prefetch_lines(const void* p, int64_t bytes) {
  const char* line = static_cast<const char*>(p);
  for (int64_t byte = 0; byte < bytes; byte += 64) prefetch_line(line + byte);
}

// element -> fp32 (exact for fp32, fp16 and bf16).
template <typename in_t>
inline void load_row(const in_t* src, float* dst, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<float>(src[k]);
}

// bf16 is the top half of an fp32: a shift, written so that it vectorizes.
template <>
inline void load_row<at::BFloat16>(const at::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* in = reinterpret_cast<const uint16_t*>(src);
  for (int64_t k = 0; k < n; ++k) {
    const uint32_t bits = static_cast<uint32_t>(in[k]) << 16;
    std::memcpy(dst + k, &bits, sizeof(bits));
  }
}

// fp32 -> element, rounded to nearest even as torch's casts do.
template <typename out_t>
inline void store_row(const float* src, out_t* dst, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<out_t>(src[k]);
}

// The bf16 rounding as integer arithmetic, so that the compiler vectorizes it (c10::BFloat16's
// conversion does not); NaN stays a quiet NaN.
template <>
inline void store_row<at::BFloat16>(const float* src, at::BFloat16* dst, int64_t n) {
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
  for (int64_t k = 0; k < n; ++k) {
    uint32_t bits;
    std::memcpy(&bits, src + k, sizeof(bits));
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    out[k] = nan ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
  }
}

}  // namespace torchrec_models
