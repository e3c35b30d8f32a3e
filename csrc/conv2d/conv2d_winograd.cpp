// The Winograd F(2x2, 3x3) convolution kernel (layouts, transforms and error bound in
// conv2d/conv2d_winograd.h). Per group of images:
//  (1) the input, zero-padded and channel-blocked (16 channels innermost), so a tile's 4x4 patch
//      of 16 channels is 16 contiguous vectors (parallel over rows);
//  (2) per block of tiles: the input transform V = B^T d B of every tile and channel block
//      (parallel over channel blocks x tiles), then
//  (3) per output panel of 64 channels x chunk of the block's tiles (parallel): 16 GEMMs
//      M_xi = V_xi U_xi, register-blocked as tiles (broadcast) x 64 channels (vectors), into a
//      per-thread buffer; then the output transform A^T M A, bias, ReLU, the store into y.
#include "conv2d/conv2d_winograd.h"

#include "common/simd.h"

namespace mmfast {
namespace MMFAST_VARIANT {

void conv2d_winograd(const Conv2dParams& p, const Conv2dWinogradPlan& g);

namespace {

constexpr int W = VecF::kWidth;
constexpr int NB = kWinoCB / W;  // vectors per channel block
constexpr int PV = kWinoMB / W;  // vectors per output panel
constexpr int NV = 4;            // vectors per microkernel row (2 for a panel's last 2W channels)
constexpr int TR = W == 16 ? 6 : 3;  // tiles per microkernel (AVX-512: 6 x 4 of 32 registers)
static_assert(kWinoTileGroup % TR == 0, "a tile group is whole microkernel blocks");
static_assert(PV % NV == 0, "a panel is whole microkernel rows");
// Channel blocks per K chunk of the GEMM: 4 x 16 x 64 floats = 16 KB of weights, a third of L1.
constexpr int64_t kWinoKC = 4;

inline const float* f32(const void* ptr) { return static_cast<const float*>(ptr); }

// ---- (1) the padded, channel-blocked input -------------------------------------------------

// Row r (padded coordinates) of channel block cb of image n into dst (Wp x 16 floats).
void fill_row(const Conv2dParams& p, const Conv2dWinogradPlan& g, int64_t n, int64_t cb, int64_t r,
              float* dst) {
  const Conv2dShape& s = p.shape;
  const int64_t ir = r - s.pad_top;
  // Padded columns [j0, j1) read input columns j - pad_left in [0, W); the others are zeros.
  const int64_t j0 = s.pad_left < g.Wp ? s.pad_left : g.Wp;
  const int64_t j1 = s.pad_left + s.W < g.Wp ? s.pad_left + s.W : g.Wp;
  const bool inside = ir >= 0 && ir < s.H;
  for (int64_t i = 0; i < (inside ? j0 : g.Wp) * kWinoCB; ++i) dst[i] = 0.0f;
  if (!inside) return;
  for (int64_t i = j1 * kWinoCB; i < g.Wp * kWinoCB; ++i) dst[i] = 0.0f;
  const int64_t c0 = cb * kWinoCB;
  const int64_t nc = s.C - c0 < kWinoCB ? s.C - c0 : kWinoCB;
  const float* xr = f32(p.x) + n * p.x_stride.n + c0 * p.x_stride.c + ir * p.x_stride.h;
  int64_t j = j0;
#if defined(__AVX512F__)
  // 16 columns of 16 channels at a time: 16 row loads, a register transpose, 16 stores.
  if (p.x_stride.w == 1) {
    for (; j < j1; j += 16) {
      const int64_t cols = j1 - j < 16 ? j1 - j : 16;
      const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1u);
      __m512 v[16];
      for (int64_t ci = 0; ci < 16; ++ci)
        v[ci] = ci < nc ? _mm512_maskz_loadu_ps(mask, xr + ci * p.x_stride.c + (j - s.pad_left))
                        : _mm512_setzero_ps();
      transpose16(v);
      for (int64_t k = 0; k < cols; ++k) _mm512_storeu_ps(dst + (j + k) * kWinoCB, v[k]);
    }
  }
#endif
  // The block's channels past C are zeros too: the workspace holds whatever the last call left
  // (NaN included), and NaN times the zero weights of those channels would still be NaN.
  for (; j < j1; ++j)
    for (int64_t ci = 0; ci < kWinoCB; ++ci)
      dst[j * kWinoCB + ci] =
          ci < nc ? xr[ci * p.x_stride.c + (j - s.pad_left) * p.x_stride.w] : 0.0f;
}

// ---- (2) the input transform ---------------------------------------------------------------

// V[xi][cb][tl] = B^T d B for the tile at padded (2 ti, 2 tj) of image block `img`, or zeros.
void transform_tile(const Conv2dWinogradPlan& g, const float* img, int64_t ti, int64_t tj,
                    int64_t cb, int64_t tl, bool real, float* v) {
  const int64_t cbs = g.Cp / kWinoCB;
  const int64_t xi_stride = cbs * g.block_tiles * kWinoCB;
  float* out = v + (cb * g.block_tiles + tl) * kWinoCB;
  if (!real) {
    for (int xi = 0; xi < kWinoPoints; ++xi)
      for (int k = 0; k < kWinoCB; ++k) out[xi * xi_stride + k] = 0.0f;
    return;
  }
  const float* base = img + ((cb * g.Hp + 2 * ti) * g.Wp + 2 * tj) * kWinoCB;
  for (int s = 0; s < NB; ++s) {
    VecF t[4][4];
    for (int q = 0; q < 4; ++q) {
      VecF d[4];
      for (int r = 0; r < 4; ++r) d[r] = VecF::load(base + (r * g.Wp + q) * kWinoCB + s * W);
      t[0][q] = d[0] - d[2];
      t[1][q] = d[1] + d[2];
      t[2][q] = d[2] - d[1];
      t[3][q] = d[1] - d[3];
    }
    for (int i = 0; i < 4; ++i) {
      float* o = out + 4 * i * xi_stride + s * W;
      (t[i][0] - t[i][2]).store(o);
      (t[i][1] + t[i][2]).store(o + xi_stride);
      (t[i][2] - t[i][1]).store(o + 2 * xi_stride);
      (t[i][1] - t[i][3]).store(o + 3 * xi_stride);
    }
  }
}

// ---- (3) the GEMMs and the output transform -------------------------------------------------

// M[xi][t][h*NV*W ...] for TR tiles over the channel blocks [0, cbs) of this K chunk: v points at
// V[xi][cb0][tl], u at U[xi][panel][cb0 * 16] shifted to this half of the panel, m at the tiles'
// M[xi][tl][...] (tiles 256 bytes apart); `first`: start from zero, else add to what m holds (the
// previous chunks').
template <int NV>
void gemm_tiles(const float* v, int64_t cb_stride, int64_t cbs, const float* u, float* m,
                bool first) {
  VecF acc[TR][NV];
  for (int t = 0; t < TR; ++t)
    for (int k = 0; k < NV; ++k)
      acc[t][k] = first ? VecF::set1(0.0f) : VecF::load(m + t * kWinoMB + k * W);
  for (int64_t cb = 0; cb < cbs; ++cb) {
    const float* vb = v + cb * cb_stride;
    const float* ub = u + cb * kWinoCB * kWinoMB;
    for (int ci = 0; ci < kWinoCB; ++ci) {
      VecF w[NV];
      for (int k = 0; k < NV; ++k) w[k] = VecF::load(ub + ci * kWinoMB + k * W);
      for (int t = 0; t < TR; ++t) {
        const VecF b = VecF::set1(vb[t * kWinoCB + ci]);
        for (int k = 0; k < NV; ++k) acc[t][k] = fmadd(b, w[k], acc[t][k]);
      }
    }
  }
  for (int t = 0; t < TR; ++t)
    for (int k = 0; k < NV; ++k) acc[t][k].store(m + t * kWinoMB + k * W);
}

// Y = A^T M A for one tile and W output channels from m = M[xi][tile][lane] (points xs floats
// apart), + bias, ReLU: o[2a + b] = y[oh0 + a][ow0 + b] of the W channels.
inline void tile_outputs(const Conv2dParams& p, const float* m, int64_t xs, VecF bias, VecF o[4]) {
  VecF r[2][4];
  for (int j = 0; j < 4; ++j) {
    const VecF m0j = VecF::load(m + j * xs), m1j = VecF::load(m + (4 + j) * xs);
    const VecF m2j = VecF::load(m + (8 + j) * xs), m3j = VecF::load(m + (12 + j) * xs);
    r[0][j] = m0j + m1j + m2j;
    r[1][j] = m1j - m2j - m3j;
  }
  for (int a = 0; a < 2; ++a) {
    o[2 * a] = r[a][0] + r[a][1] + r[a][2] + bias;
    o[2 * a + 1] = r[a][1] - r[a][2] - r[a][3] + bias;
  }
  if (p.relu)
    for (int k = 0; k < 4; ++k) o[k] = max(VecF::set1(0.0f), o[k]);  // NaN stays NaN
}

// One tile's outputs for nm channels into y at the tile's corner (channel planes ys.c apart),
// only its `rows` x `cols` inside the output.
void store_tile(const NchwStrides& ys, const VecF o[4], int nm, float* y, int64_t rows,
                int64_t cols) {
  alignas(64) float tmp[4][W];
  for (int k = 0; k < 4; ++k) o[k].store(tmp[k]);
  for (int l = 0; l < nm; ++l) {
    float* yl = y + l * ys.c;
    for (int a = 0; a < rows; ++a)
      for (int b = 0; b < cols; ++b) yl[a * ys.h + b * ys.w] = tmp[2 * a + b][l];
  }
}

#if defined(__AVX512F__)
// A run of up to 8 tiles along a tile row (16 output columns) of 16 channels: per output row,
// the 16 column vectors (lanes over channels) transposed in registers into 16 channel rows
// (lanes over columns), each one masked store instead of 32 scalar ones.
void store_run(const NchwStrides& ys, const VecF o[8][4], int nm, float* y, int64_t rows,
               int64_t cols) {
  const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1u);
  for (int a = 0; a < rows; ++a) {
    __m512 r[16];
    for (int t = 0; t < 8; ++t) {
      r[2 * t] = o[t][2 * a].v;
      r[2 * t + 1] = o[t][2 * a + 1].v;
    }
    transpose16(r);
    for (int l = 0; l < nm; ++l) _mm512_mask_storeu_ps(y + l * ys.c + a * ys.h, mask, r[l]);
  }
}
#endif

}  // namespace

void conv2d_winograd(const Conv2dParams& p, const Conv2dWinogradPlan& g) {
  const Conv2dShape& s = p.shape;
  float* ws = static_cast<float*>(p.workspace);
  float* xb = ws;
  float* v = ws + g.xb_floats;
  float* mbufs = v + g.v_floats;
  const int64_t cbs = g.Cp / kWinoCB;
  const int64_t tiles_img = g.tiles_h * g.tiles_w;
  const int64_t xi_stride = cbs * g.block_tiles * kWinoCB;
  const int64_t u_xi_stride = g.Mb * g.Cp * kWinoMB;
  for (int64_t n0 = 0; n0 < s.N; n0 += g.group_images) {
    const int64_t imgs = s.N - n0 < g.group_images ? s.N - n0 : g.group_images;
    // (1) the padded input of the group's images.
    parallel_for(imgs * cbs * g.Hp, 4, [&](int64_t r0, int64_t r1) {
      for (int64_t rr = r0; rr < r1; ++rr) {
        const int64_t r = rr % g.Hp, cb = rr / g.Hp % cbs, i = rr / g.Hp / cbs;
        fill_row(p, g, n0 + i, cb, r, xb + i * g.image_floats + (cb * g.Hp + r) * g.Wp * kWinoCB);
      }
    });
    const int64_t total = imgs * tiles_img;
    for (int64_t b0 = 0; b0 < total; b0 += g.block_tiles) {
      const int64_t nt = total - b0 < g.block_tiles ? total - b0 : g.block_tiles;
      const int64_t ntp = (nt + kWinoTileGroup - 1) / kWinoTileGroup * kWinoTileGroup;
      // (2) V of the block's tiles (tiles past nt: zeros, multiplied and dropped).
      parallel_for(cbs * ntp, 8, [&](int64_t i0, int64_t i1) {
        for (int64_t it = i0; it < i1; ++it) {
          const int64_t cb = it / ntp, tl = it % ntp, t = b0 + tl;
          const int64_t img = t / tiles_img, ti = t % tiles_img / g.tiles_w, tj = t % g.tiles_w;
          transform_tile(g, xb + img * g.image_floats, ti, tj, cb, tl, tl < nt, v);
        }
      });
      // (3) per (panel, chunk of tiles): the 16 GEMMs, then the output transform.
      const int64_t chunks = (ntp + g.chunk_tiles - 1) / g.chunk_tiles;
      parallel_for(g.Mb * chunks, 1, [&](int64_t k0, int64_t k1) {
        const int tid = current_thread_index();
        float* mb = mbufs + (tid < g.nthreads ? tid : 0) * g.m_floats;
        for (int64_t task = k0; task < k1; ++task) {
          const int64_t panel = task / chunks, c0 = task % chunks * g.chunk_tiles;
          const int64_t c1 = c0 + g.chunk_tiles < ntp ? c0 + g.chunk_tiles : ntp;
          // Channels of this panel: kWinoMB, fewer in the last one.
          const int64_t mrem = s.M - panel * kWinoMB < kWinoMB ? s.M - panel * kWinoMB : kWinoMB;
          // K chunks of kWinoKC channel blocks: their weights (kWinoKC x 16 x 64 floats) stay in
          // L1 while every tile of the chunk passes; the partial sums wait in M.
          for (int xi = 0; xi < kWinoPoints; ++xi) {
            const float* u = f32(p.weight) + xi * u_xi_stride + panel * g.Cp * kWinoMB;
            for (int64_t kc = 0; kc < cbs; kc += kWinoKC) {
              const int64_t nk = cbs - kc < kWinoKC ? cbs - kc : kWinoKC;
              for (int64_t tl = c0; tl < c1; tl += TR)
                for (int64_t h = 0; h * NV * W < mrem; ++h) {
                  const float* vt = v + xi * xi_stride + (kc * g.block_tiles + tl) * kWinoCB;
                  const float* ut = u + kc * kWinoCB * kWinoMB + h * NV * W;
                  float* mt = mb + (xi * g.chunk_tiles + tl - c0) * kWinoMB + h * NV * W;
                  // A panel's last <= 2W channels (M = 32 on AVX-512): half the work.
                  if (mrem - h * NV * W <= 2 * W)
                    gemm_tiles<2>(vt, g.block_tiles * kWinoCB, nk, ut, mt, kc == 0);
                  else
                    gemm_tiles<NV>(vt, g.block_tiles * kWinoCB, nk, ut, mt, kc == 0);
                }
            }
          }
          const int64_t last = c1 < nt ? c1 : nt;
          for (int64_t tl = c0; tl < last;) {
            const int64_t t = b0 + tl;
            const int64_t n = n0 + t / tiles_img, ti = t % tiles_img / g.tiles_w,
                          tj = t % g.tiles_w;
            const int64_t rows = s.OH - 2 * ti < 2 ? s.OH - 2 * ti : 2;
            // A run: the tiles from here to the end of the tile row, the chunk, or 8 tiles.
            int64_t run = g.tiles_w - tj < last - tl ? g.tiles_w - tj : last - tl;
            run = run < 8 ? run : 8;
            const int64_t cols = s.OW - 2 * tj < 2 * run ? s.OW - 2 * tj : 2 * run;
            float* y = static_cast<float*>(p.y) + n * p.y_stride.n +
                       panel * kWinoMB * p.y_stride.c + 2 * ti * p.y_stride.h +
                       2 * tj * p.y_stride.w;
            const float* m = mb + (tl - c0) * kWinoMB;
            for (int k = 0; k < PV; ++k) {
              const int64_t m0 = panel * kWinoMB + k * W;
              if (m0 >= s.M) break;
              const int nm = static_cast<int>(s.M - m0 < W ? s.M - m0 : W);
              const VecF bias =
                  p.bias ? VecF::load_partial(f32(p.bias) + m0, nm, 0.0f) : VecF::set1(0.0f);
              VecF o[8][4];
              for (int64_t r = 0; r < run; ++r)
                tile_outputs(p, m + r * kWinoMB + k * W, g.chunk_tiles * kWinoMB, bias, o[r]);
              float* yk = y + k * W * p.y_stride.c;
#if defined(__AVX512F__)
              if (p.y_stride.w == 1) {
                for (int64_t r = run; r < 8; ++r)
                  for (int q = 0; q < 4; ++q) o[r][q] = VecF::set1(0.0f);
                store_run(p.y_stride, o, nm, yk, rows, cols);
                continue;
              }
#endif
              for (int64_t r = 0; r < run; ++r) {
                const int64_t cr = cols - 2 * r < 2 ? cols - 2 * r : 2;
                store_tile(p.y_stride, o[r], nm, yk + 2 * r * p.y_stride.w, rows, cr);
              }
            }
            tl += run;
          }
        }
      });
    }
  }
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
