// Bilinear row sampling and its adjoint for the fast scale-adaptive convolution (CPU, OpenMP).
//
// A "table" is a channels-last image [H*W*P, C] (P = 1, or the number of taps when every tap
// samples its own block of channels). Sample r (of M) reads the table at real position
// (ys[r], xs[r]) with bilinear weights and zeros outside, corners floor and floor + 1, exactly as
// sacseg.ops._reference.bilinear_gather does. Samples come in runs of `run` (the taps of one output
// pixel, tap fastest) and are visited tap-major: one tap of every pixel, then the next tap. Tap t
// of neighbouring pixels reads neighbouring table rows, so the rows stay in cache even after the
// GEMM between two chunks has evicted the table (measurements: benchmarks/DESIGN_MEASUREMENTS.md).
// Built by sacseg/ops/sampling/native.py with the system C++ compiler and loaded with ctypes, so it
// needs no torch headers.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

template <typename T>
struct Corners {
  int64_t row[4];  // table rows of (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)
  T weight[4];     // bilinear weight, 0 outside the image
  bool inside[4];
  T fy, fx;
};

template <typename T>
inline Corners<T> corners(T y, T x, int64_t h, int64_t w, int64_t taps, int64_t r) {
  Corners<T> k;
  const T y0 = std::floor(y), x0 = std::floor(x);
  k.fy = y - y0;
  k.fx = x - x0;
  // taps == 1: one image shared by all taps; else sample r = l * taps + t reads block t.
  const int64_t block = taps > 1 ? r % taps : 0;
  for (int dy = 0; dy < 2; ++dy) {
    const T yi = y0 + dy;
    const bool in_y = yi >= 0 && yi <= h - 1;  // false for NaN too
    const T wy = dy ? k.fy : 1 - k.fy;
    for (int dx = 0; dx < 2; ++dx) {
      const T xi = x0 + dx;
      const bool in = in_y && xi >= 0 && xi <= w - 1;
      const T wx = dx ? k.fx : 1 - k.fx;
      const int i = 2 * dy + dx;
      k.inside[i] = in;
      k.weight[i] = in ? wy * wx : T(0);
      k.row[i] = in ? ((static_cast<int64_t>(yi) * w + static_cast<int64_t>(xi)) * taps + block) : 0;
    }
  }
  return k;
}

// The values of corner i, or `zeros` (a row of c zeros) where `use` is false: a corner outside the
// image reads a row of zeros, not its clamped row 0, so that a NaN or Inf there stays out of every
// product with a zero coefficient (0 * NaN is NaN), as F.conv2d leaves it out.
template <typename T>
inline const T* corner_row(const T* table, const Corners<T>& k, int i, bool use, int64_t c, const T* zeros) {
  return use ? table + k.row[i] * c : zeros;
}

// o[0..c) = (or += with Accumulate) the bilinear blend of the four corners k of `table`. Corners of
// zero weight (outside, or a whole pixel away: at scale 1 three of the four) read `zeros`.
template <bool Accumulate, typename T>
inline void blend(const T* table, const Corners<T>& k, int64_t c, const T* zeros, T* o) {
  const T* a0 = corner_row(table, k, 0, k.weight[0] != 0, c, zeros);
  const T* a1 = corner_row(table, k, 1, k.weight[1] != 0, c, zeros);
  const T* a2 = corner_row(table, k, 2, k.weight[2] != 0, c, zeros);
  const T* a3 = corner_row(table, k, 3, k.weight[3] != 0, c, zeros);
  const T w0 = k.weight[0], w1 = k.weight[1], w2 = k.weight[2], w3 = k.weight[3];
#pragma omp simd
  for (int64_t j = 0; j < c; ++j) {
    const T v = w0 * a0[j] + w1 * a1[j] + w2 * a2[j] + w3 * a3[j];
    if constexpr (Accumulate) {
      o[j] += v;
    } else {
      o[j] = v;
    }
  }
}

// The k-th sample visited: tap k / pixels of pixel k % pixels, with pixels = m / run.
inline int64_t visit(int64_t k, int64_t pixels, int64_t run) { return (k % pixels) * run + k / pixels; }

template <typename T>
void sample(const T* table, int64_t h, int64_t w, int64_t c, int64_t taps, const T* ys, const T* xs, int64_t m,
            int64_t run, T* out, int threads) {
  const int64_t pixels = m / run;
  const std::vector<T> zeros(c, T(0));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t k = 0; k < m; ++k) {
    const int64_t r = visit(k, pixels, run);
    blend<false>(table, corners(ys[r], xs[r], h, w, taps, r), c, zeros.data(), out + r * c);
  }
}

// With taps > 1, the sum over each pixel's taps of their samples: out [M / taps, C]. This is the
// multiply-first forward, where the taps' projections are summed right after sampling; summing
// here saves writing and re-reading the M x C samples.
template <typename T>
void sample_sum_taps(const T* table, int64_t h, int64_t w, int64_t c, int64_t taps, const T* ys, const T* xs, int64_t m,
                     T* out, int threads) {
  const std::vector<T> zeros(c, T(0));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t l = 0; l < m / taps; ++l) {
    T* o = out + l * c;
    const int64_t r0 = l * taps;
    blend<false>(table, corners(ys[r0], xs[r0], h, w, taps, r0), c, zeros.data(), o);
    for (int64_t r = r0 + 1; r < r0 + taps; ++r)
      blend<true>(table, corners(ys[r], xs[r], h, w, taps, r), c, zeros.data(), o);
  }
}

// One sample's adjoint on channels [c0, c1): grad_table rows of its corners += weight * g, and
// (want_pos) the derivative of the sample in y and x dotted with g into sy, sx.
template <typename T>
inline void adjoint(const T* table, const Corners<T>& k, const T* g, T* grad_table, bool want_pos, int64_t c,
                    int64_t c0, int64_t c1, const T* zeros, T& sy, T& sx) {
  if (grad_table != nullptr) {
    // One loop per corner: outside corners share row 0, so the four must not be fused. Corners of
    // zero weight take nothing, not 0 * g (NaN where g is).
    for (int i = 0; i < 4; ++i) {
      if (k.weight[i] == 0) continue;
      T* gt = grad_table + k.row[i] * c;
      const T wi = k.weight[i];
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) gt[j] += wi * g[j];
    }
  }
  if (!want_pos) return;
  // Equation (14) and its y twin: the right-hand derivative of the bilinear sample, as
  // coefficients of the (masked) corner values.
  const T m0 = k.inside[0], m1 = k.inside[1], m2 = k.inside[2], m3 = k.inside[3];
  const T y0 = -(1 - k.fx) * m0, y1 = -k.fx * m1, y2 = (1 - k.fx) * m2, y3 = k.fx * m3;
  const T x0 = -(1 - k.fy) * m0, x1 = (1 - k.fy) * m1, x2 = -k.fy * m2, x3 = k.fy * m3;
  // Corners inside enter even with a zero weight (the right-hand derivative at integer positions).
  const T* a0 = corner_row(table, k, 0, k.inside[0], c, zeros);
  const T* a1 = corner_row(table, k, 1, k.inside[1], c, zeros);
  const T* a2 = corner_row(table, k, 2, k.inside[2], c, zeros);
  const T* a3 = corner_row(table, k, 3, k.inside[3], c, zeros);
  T dy = 0, dx = 0;
#pragma omp simd reduction(+ : dy, dx)
  for (int64_t j = c0; j < c1; ++j) {
    const T v0 = a0[j], v1 = a1[j], v2 = a2[j], v3 = a3[j];
    dy += g[j] * (y0 * v0 + y1 * v1 + y2 * v2 + y3 * v3);
    dx += g[j] * (x0 * v0 + x1 * v1 + x2 * v2 + x3 * v3);
  }
  sy = dy;
  sx = dx;
}

// grad_table (optional) += adjoint of the sampling applied to grad [M / share, C] (sample r takes
// row r / share: share = taps is the adjoint of sample_sum_taps, share = 1 of sample); grad_y/grad_x
// (optional) [M] = derivative of the samples in the position, dotted with grad.
template <typename T>
void sample_backward(const T* table, int64_t h, int64_t w, int64_t c, int64_t taps, const T* ys, const T* xs, int64_t m,
                     int64_t run, const T* grad, int64_t share, T* grad_table, T* grad_y, T* grad_x, int threads) {
  const bool want_pos = grad_y != nullptr;
  const std::vector<T> zeros(c, T(0));
  if (taps >= threads && m % taps == 0) {
    // A table of tap blocks (multiplying first): tap t's samples write only block t, so the
    // threads split the taps, each over all channels; splitting the (few) channels instead would
    // make every thread recompute all corners.
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t l = 0; l < m / taps; ++l) {
        const int64_t r = l * taps + t;
        T sy = 0, sx = 0;
        adjoint(table, corners(ys[r], xs[r], h, w, taps, r), grad + (r / share) * c, grad_table, want_pos, c, 0, c,
                zeros.data(), sy, sx);
        if (want_pos) {
          grad_y[r] = sy;
          grad_x[r] = sx;
        }
      }
    }
    return;
  }
  const int64_t pixels = m / run;
  // Threads split the channels, so the scatter into grad_table needs no atomics. Below 16
  // channels a thread's share is too small to pay for the split.
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, c / 16)));
  // Each thread's partial sums of the position derivatives, [nt, M, 2].
  std::vector<T> partial(want_pos ? static_cast<size_t>(nt) * 2 * m : 0);
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t c0 = c * tid / n, c1 = c * (tid + 1) / n;
    T* mine = want_pos ? partial.data() + static_cast<size_t>(tid) * 2 * m : nullptr;
    for (int64_t v = 0; v < m; ++v) {
      const int64_t r = visit(v, pixels, run);
      T sy = 0, sx = 0;
      adjoint(table, corners(ys[r], xs[r], h, w, taps, r), grad + (r / share) * c, grad_table, want_pos, c, c0, c1,
              zeros.data(), sy, sx);
      if (want_pos) {
        mine[2 * r] = sy;
        mine[2 * r + 1] = sx;
      }
    }
  }
  if (!want_pos) return;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < m; ++r) {
    T sy = 0, sx = 0;
    for (int t = 0; t < nt; ++t) {  // threads that did not run left zeros
      sy += partial[(static_cast<size_t>(t) * m + r) * 2];
      sx += partial[(static_cast<size_t>(t) * m + r) * 2 + 1];
    }
    grad_y[r] = sy;
    grad_x[r] = sx;
  }
}

// d [cols, rows] (row stride ld) = the rows x cols block of s (row stride ls) transposed.
template <typename T>
inline void transpose_block(const T* s, int64_t ls, int64_t rows, int64_t cols, T* d, int64_t ld) {
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) d[c * ld + r] = s[r * ls + c];
}

#if defined(__AVX__)
// An 8 x 8 float block in registers: unpack pairs of rows, shuffle pairs of pairs, swap 128-bit halves.
inline void transpose8x8(const float* s, int64_t ls, float* d, int64_t ld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * ls);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(d + i * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(d + (i + 4) * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// dst [cols, rows] = src [rows, cols] transposed, for each of `batch` matrices, in 64 x 64 tiles
// of 8 x 8 blocks (float ones in registers), a tile's blocks taken along its source rows: faster than
// PyTorch's permute-and-copy and than the other tilings tried (benchmarks/DESIGN_MEASUREMENTS.md).
template <typename T>
void transpose(const T* src, int64_t batch, int64_t rows, int64_t cols, T* dst, int threads) {
  constexpr int64_t kTile = 64, kBlock = 8;
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
#pragma omp parallel for num_threads(threads) schedule(static) collapse(2)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t tile = 0; tile < row_tiles * col_tiles; ++tile) {
      const int64_t r0 = (tile / col_tiles) * kTile, c0 = (tile % col_tiles) * kTile;
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      const T* s = src + b * rows * cols;
      T* d = dst + b * rows * cols;
      for (int64_t r = r0; r < r1; r += kBlock) {
        for (int64_t c = c0; c < c1; c += kBlock) {
          const int64_t nr = std::min(kBlock, r1 - r), nc = std::min(kBlock, c1 - c);
#if defined(__AVX__)
          if constexpr (std::is_same_v<T, float>) {
            if (nr == kBlock && nc == kBlock) {
              transpose8x8(s + r * cols + c, cols, d + c * rows + r, rows);
              continue;
            }
          }
#endif
          transpose_block(s + r * cols + c, cols, nr, nc, d + c * rows + r, rows);
        }
      }
    }
  }
}

}  // namespace

extern "C" {

void sac_sample_f32(const float* table, int64_t h, int64_t w, int64_t c, int64_t taps, const float* ys, const float* xs,
                    int64_t m, int64_t run, float* out, int threads) {
  sample(table, h, w, c, taps, ys, xs, m, run, out, threads);
}

void sac_sample_f64(const double* table, int64_t h, int64_t w, int64_t c, int64_t taps, const double* ys,
                    const double* xs, int64_t m, int64_t run, double* out, int threads) {
  sample(table, h, w, c, taps, ys, xs, m, run, out, threads);
}

void sac_sample_sum_taps_f32(const float* table, int64_t h, int64_t w, int64_t c, int64_t taps, const float* ys,
                             const float* xs, int64_t m, float* out, int threads) {
  sample_sum_taps(table, h, w, c, taps, ys, xs, m, out, threads);
}

void sac_sample_sum_taps_f64(const double* table, int64_t h, int64_t w, int64_t c, int64_t taps, const double* ys,
                             const double* xs, int64_t m, double* out, int threads) {
  sample_sum_taps(table, h, w, c, taps, ys, xs, m, out, threads);
}

void sac_sample_backward_f32(const float* table, int64_t h, int64_t w, int64_t c, int64_t taps, const float* ys,
                             const float* xs, int64_t m, int64_t run, const float* grad, int64_t share,
                             float* grad_table, float* grad_y, float* grad_x, int threads) {
  sample_backward(table, h, w, c, taps, ys, xs, m, run, grad, share, grad_table, grad_y, grad_x, threads);
}

void sac_sample_backward_f64(const double* table, int64_t h, int64_t w, int64_t c, int64_t taps, const double* ys,
                             const double* xs, int64_t m, int64_t run, const double* grad, int64_t share,
                             double* grad_table, double* grad_y, double* grad_x, int threads) {
  sample_backward(table, h, w, c, taps, ys, xs, m, run, grad, share, grad_table, grad_y, grad_x, threads);
}

void sac_transpose_f32(const float* src, int64_t batch, int64_t rows, int64_t cols, float* dst, int threads) {
  transpose(src, batch, rows, cols, dst, threads);
}

void sac_transpose_f64(const double* src, int64_t batch, int64_t rows, int64_t cols, double* dst, int threads) {
  transpose(src, batch, rows, cols, dst, threads);
}
}
