// Bf16MatMul: y = x @ w with x float32 [..., in], w bfloat16 [in, out],
// y float32 [..., out].  A CPU kernel for small-batch decode (rows 1..16)
// that reads each bf16 weight exactly once from memory, converts it to
// float32 in registers with AVX2 and accumulates with FMA.
//
// w is a Keras Dense kernel: [in, out], row-major.  We therefore stream w
// row by row:  for every input index i,  y[r, :] += x[r, i] * float(w[i, :]).
//
// Two loop nests are used, picked per call by the number of rows:
//
//  * "stream" (rows <= stream_max_rows = 2): partial sums of a column tile
//    live in L1/L2; w is read row after row, 4 rows at a time, each row
//    segment contiguously (the whole of a thread's column range), which is
//    what the hardware prefetcher likes.  Used for memory-bound decode.
//
//  * "register tile" (more rows): a block of R <= 4 rows x 16 columns of y
//    is held in ymm registers while i runs over a k-block; the k-block of w
//    (k_block x col_tile bf16, 64 KB) stays in L2 and is reused by every
//    group of 4 rows, so w is still read from memory only once.
//
// Tile sizes were picked by measurement (see tune.py); a float32 panel
// variant (convert a k-block once, then pure-f32 tiles) measured slower.
//
// Columns are split between the threads of the op's CPU worker pool; each
// thread owns a contiguous column range, so no two threads write the same y.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"

namespace {

using int64 = std::int64_t;

// ---------------------------------------------------------------------------
// Tunables (defaults chosen by measurement on a 2-core AMD EPYC, AVX2 only).
// They can be overridden with environment variables for experiments.
// ---------------------------------------------------------------------------
struct Tuning {
  int64 stream_max_rows = 2;     // rows <= this use the stream loop nest
  int64 stream_col_tile = 8192;  // stream nest: columns per partial-sum tile
  int64 col_tile = 1024;         // register-tile nest: columns per tile
  int64 k_block = 32;            // register-tile nest: rows of w per k-block
};

int64 EnvInt(const char* name, int64 fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::atoll(v) : fallback;
}

Tuning ReadTuning() {
  Tuning t;
  t.stream_max_rows = EnvInt("BF16MM_STREAM_MAX_ROWS", t.stream_max_rows);
  t.stream_col_tile = EnvInt("BF16MM_STREAM_COL_TILE", t.stream_col_tile);
  t.col_tile = EnvInt("BF16MM_COL_TILE", t.col_tile);
  t.k_block = EnvInt("BF16MM_K_BLOCK", t.k_block);
  // Keep tiles whole multiples of 64 columns (whole cache lines of w and y).
  t.stream_col_tile = std::max<int64>(64, t.stream_col_tile / 64 * 64);
  t.col_tile = std::max<int64>(64, t.col_tile / 64 * 64);
  t.k_block = std::max<int64>(1, t.k_block);
  return t;
}

// Everything a worker needs to know about one call.
struct Problem {
  const float* x;     // [rows, in]
  const uint16_t* w;  // [in, out], raw bf16 bits
  float* y;           // [rows, out]
  int64 rows, in, out;
};

// ---------------------------------------------------------------------------
// bf16 -> f32 helpers
// ---------------------------------------------------------------------------

// A bf16 value is the upper 16 bits of an IEEE-754 float32, so converting it
// is a zero-extension to 32 bits followed by a 16-bit left shift.
inline float Bf16ToFloat(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// AVX2: load 8 consecutive bf16 values (16 bytes) and widen them to 8 floats.
inline __m256 LoadBf16x8(const uint16_t* p) {
  // 8 x u16 in an xmm register (unaligned load: w rows have any alignment).
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  // Zero-extend each u16 to u32: the bf16 bits now sit in the low half.
  const __m256i wide = _mm256_cvtepu16_epi32(raw);
  // Move them to the high half: the 32-bit pattern is now the float32.
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// Scalar fallback for the last (out % 8) columns: y[r, c] += x[r, i0:i1] . w.
void ScalarColumns(const Problem& p, int64 r0, int64 r1, int64 i0, int64 i1,
                   int64 c0, int64 c1) {
  for (int64 r = r0; r < r1; ++r) {
    const float* xr = p.x + r * p.in;
    for (int64 c = c0; c < c1; ++c) {
      float acc = p.y[r * p.out + c];
      for (int64 i = i0; i < i1; ++i) {
        acc += xr[i] * Bf16ToFloat(p.w[i * p.out + c]);
      }
      p.y[r * p.out + c] = acc;
    }
  }
}

// ---------------------------------------------------------------------------
// "Stream" loop nest: rows <= 2, partial sums in L1/L2, w read row by row.
// ---------------------------------------------------------------------------

constexpr int kStreamRowsAtOnce = 4;  // rows of w folded into one y update
constexpr int64 kStreamKBlock = 256;  // rows of w per partial sum

// part[r, 0:c1-c0] += sum_{u<U} x[r0+r, i+u] * w[i+u, c0:c1] for R rows, where
// (c1 - c0) is a multiple of 8.  One load/store of part per U FMAs; part
// (R rows, row stride ld) is small enough to stay in L1.
template <int R, int U>
void StreamRows(const Problem& p, int64 r0, int64 i, int64 c0, int64 c1,
                float* part, int64 ld) {
  // Broadcast the U x R input scalars once; they stay in registers.
  __m256 xb[R][U];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u)
      xb[r][u] = _mm256_broadcast_ss(p.x + (r0 + r) * p.in + i + u);

  for (int64 c = c0; c < c1; c += 8) {
    __m256 wv[U];
    for (int u = 0; u < U; ++u) wv[u] = LoadBf16x8(p.w + (i + u) * p.out + c);
    for (int r = 0; r < R; ++r) {
      float* pp = part + r * ld + (c - c0);
      __m256 acc = _mm256_loadu_ps(pp);
      for (int u = 0; u < U; ++u) acc = _mm256_fmadd_ps(xb[r][u], wv[u], acc);
      _mm256_storeu_ps(pp, acc);
    }
  }
}

// All of w's rows for one column tile [c0, c1) (multiple of 8 wide).  Each
// k-block of kStreamKBlock rows is summed into `part` from zero and then
// added to y (blocked summation keeps float32 rounding error small).
template <int R>
void StreamTile(const Problem& p, int64 r0, int64 c0, int64 c1, float* part) {
  const int64 width = c1 - c0;
  for (int64 i0 = 0; i0 < p.in; i0 += kStreamKBlock) {
    const int64 i1 = std::min(i0 + kStreamKBlock, p.in);
    std::fill(part, part + R * width, 0.f);
    int64 i = i0;
    for (; i + kStreamRowsAtOnce <= i1; i += kStreamRowsAtOnce)
      StreamRows<R, kStreamRowsAtOnce>(p, r0, i, c0, c1, part, width);
    for (; i < i1; ++i) StreamRows<R, 1>(p, r0, i, c0, c1, part, width);
    for (int r = 0; r < R; ++r) {
      float* y = p.y + (r0 + r) * p.out + c0;
      for (int64 c = 0; c < width; ++c) y[c] += part[r * width + c];
    }
  }
}

void StreamColumnRange(const Problem& p, const Tuning& t, int64 c_begin,
                       int64 c_end) {
  const int64 c_vec_end = c_begin + (c_end - c_begin) / 8 * 8;
  std::vector<float> part(2 * t.stream_col_tile);  // partial sums, <= 2 rows
  for (int64 c0 = c_begin; c0 < c_vec_end; c0 += t.stream_col_tile) {
    const int64 c1 = std::min(c0 + t.stream_col_tile, c_vec_end);
    for (int64 r0 = 0; r0 < p.rows; r0 += 2) {
      if (p.rows - r0 >= 2) StreamTile<2>(p, r0, c0, c1, part.data());
      else StreamTile<1>(p, r0, c0, c1, part.data());
    }
  }
  ScalarColumns(p, 0, p.rows, 0, p.in, c_vec_end, c_end);
}

// ---------------------------------------------------------------------------
// "Register tile" loop nest: y block of R rows x 8*NV columns in registers.
// ---------------------------------------------------------------------------

// y[r0:r0+R, c:c+8*NV] += x[r0:r0+R, i0:i1] @ w[i0:i1, c:c+8*NV].
// R*NV accumulators + NV weight vectors + 1 broadcast fit in 16 ymm registers.
template <int R, int NV>
void RegisterTile(const Problem& p, int64 r0, int64 i0, int64 i1, int64 c) {
  // Partial sums of this k-block start at zero and are added to y at the
  // end (blocked summation: shorter float32 accumulation chains).
  __m256 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();

  const float* x = p.x + r0 * p.in;
  const uint16_t* w = p.w + i0 * p.out + c;
  for (int64 i = i0; i < i1; ++i, w += p.out) {
    __m256 wv[NV];  // one row segment of w, converted once, used R times
    for (int v = 0; v < NV; ++v) wv[v] = LoadBf16x8(w + 8 * v);
    for (int r = 0; r < R; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + r * p.in + i);
      for (int v = 0; v < NV; ++v)
        acc[r][v] = _mm256_fmadd_ps(xb, wv[v], acc[r][v]);
    }
  }

  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) {
      float* yp = p.y + (r0 + r) * p.out + c + 8 * v;
      _mm256_storeu_ps(yp, _mm256_add_ps(_mm256_loadu_ps(yp), acc[r][v]));
    }
  }
}

// Row groups of up to 4 for one register tile; R is a template parameter.
template <int NV>
void RegisterTileAllRows(const Problem& p, int64 i0, int64 i1, int64 c) {
  int64 r0 = 0;
  for (; r0 + 4 <= p.rows; r0 += 4) RegisterTile<4, NV>(p, r0, i0, i1, c);
  switch (p.rows - r0) {
    case 3: RegisterTile<3, NV>(p, r0, i0, i1, c); break;
    case 2: RegisterTile<2, NV>(p, r0, i0, i1, c); break;
    case 1: RegisterTile<1, NV>(p, r0, i0, i1, c); break;
    default: break;
  }
}

// One k-block [i0, i1) of one column tile [c0, c1).  Tiles of 8*NV columns
// first (NV = 2 keeps 4x2 accumulators), then single 8-column vectors, then
// the scalar tail.
void RegisterTileBlock(const Problem& p, int64 i0, int64 i1, int64 c0,
                       int64 c1) {
  constexpr int kNV = 2;
  int64 c = c0;
  for (; c + 8 * kNV <= c1; c += 8 * kNV) RegisterTileAllRows<kNV>(p, i0, i1, c);
  for (; c + 8 <= c1; c += 8) RegisterTileAllRows<1>(p, i0, i1, c);
  if (c < c1) ScalarColumns(p, 0, p.rows, i0, i1, c, c1);
}

void RegisterColumnRange(const Problem& p, const Tuning& t, int64 c_begin,
                         int64 c_end) {
  for (int64 c0 = c_begin; c0 < c_end; c0 += t.col_tile) {
    const int64 c1 = std::min(c0 + t.col_tile, c_end);
    for (int64 i0 = 0; i0 < p.in; i0 += t.k_block)
      RegisterTileBlock(p, i0, std::min(i0 + t.k_block, p.in), c0, c1);
  }
}

// ---------------------------------------------------------------------------
// Work split between threads.
// ---------------------------------------------------------------------------

void ComputeColumnRange(const Problem& p, const Tuning& t, int64 c_begin,
                        int64 c_end) {
  // Zero this thread's part of y; both nests accumulate into y.
  for (int64 r = 0; r < p.rows; ++r)
    std::fill(p.y + r * p.out + c_begin, p.y + r * p.out + c_end, 0.f);
  if (p.rows <= t.stream_max_rows) {
    StreamColumnRange(p, t, c_begin, c_end);
  } else {
    RegisterColumnRange(p, t, c_begin, c_end);
  }
}

// Split [0, out) into `shards` contiguous ranges whose boundaries are
// multiples of 64 columns (whole cache lines of bf16 and of f32).
int64 ShardBoundary(int64 out, int64 shards, int64 s) {
  if (s >= shards) return out;
  const int64 units = (out + 63) / 64;
  return std::min(out, units * s / shards * 64);
}

class Bf16MatMulOp : public tensorflow::OpKernel {
 public:
  explicit Bf16MatMulOp(tensorflow::OpKernelConstruction* ctx)
      : OpKernel(ctx), tuning_(ReadTuning()) {}

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const tensorflow::Tensor& x = ctx->input(0);
    const tensorflow::Tensor& w = ctx->input(1);
    OP_REQUIRES(ctx, w.dims() == 2,
                absl::InvalidArgumentError("w must be 2-D [in, out]"));
    OP_REQUIRES(ctx, x.dims() >= 1,
                absl::InvalidArgumentError("x must be at least 1-D"));
    const int64 in = w.dim_size(0), out = w.dim_size(1);
    OP_REQUIRES(ctx, x.dim_size(x.dims() - 1) == in,
                absl::InvalidArgumentError(
                    "last dim of x must equal w.shape[0]"));

    tensorflow::TensorShape y_shape = x.shape();
    y_shape.set_dim(y_shape.dims() - 1, out);
    tensorflow::Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, y_shape, &y));
    if (y->NumElements() == 0) return;

    float* y_data = y->flat<float>().data();
    if (in == 0) {  // empty reduction: y = 0
      std::fill(y_data, y_data + y->NumElements(), 0.f);
      return;
    }

    Problem p;
    p.x = x.flat<float>().data();
    p.w = reinterpret_cast<const uint16_t*>(
        w.flat<tensorflow::bfloat16>().data());
    p.y = y_data;
    p.in = in;
    p.out = out;
    p.rows = x.NumElements() / in;  // all leading dims flattened

    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    // One contiguous column range per thread (at least 64 columns each).
    const int64 shards =
        std::max<int64>(1, std::min<int64>(pool->NumThreads(), (out + 63) / 64));
    const Tuning& t = tuning_;
    pool->ParallelFor(
        shards, tsl::thread::ThreadPool::SchedulingParams::Fixed(1),
        [&p, &t, out, shards](int64 s_begin, int64 s_end) {
          for (int64 s = s_begin; s < s_end; ++s) {
            ComputeColumnRange(p, t, ShardBoundary(out, shards, s),
                               ShardBoundary(out, shards, s + 1));
          }
        });
  }

 private:
  const Tuning tuning_;
};

}  // namespace

REGISTER_OP("Bf16MatMul")
    .Input("x: float")
    .Input("w: bfloat16")
    .Output("y: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      using tensorflow::shape_inference::DimensionHandle;
      using tensorflow::shape_inference::ShapeHandle;
      ShapeHandle x, w, y;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &w));
      DimensionHandle unused;
      TF_RETURN_IF_ERROR(
          c->Merge(c->Dim(x, -1), c->Dim(w, 0), &unused));  // in == in
      TF_RETURN_IF_ERROR(c->ReplaceDim(x, -1, c->Dim(w, 1), &y));
      c->set_output(0, y);
      return absl::OkStatus();
    })
    .Doc(R"doc(
y = x @ w for float32 x [..., in] and bfloat16 w [in, out]; float32 output.
CPU only; tuned for small row counts (decode).
)doc");

REGISTER_KERNEL_BUILDER(Name("Bf16MatMul").Device(tensorflow::DEVICE_CPU),
                        Bf16MatMulOp);
