// The Winograd convolution's plan and weight transform: integer work per call and the one-off
// packing, compiled for the baseline ISA. The kernel is in conv2d_winograd.cpp.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include "common/checked.h"
#include "conv2d/conv2d_cpu.h"
#include "conv2d/conv2d_winograd.h"

namespace mmfast {
namespace {

constexpr const char* kTooLarge = "x: the Winograd convolution's workspace is too large";
int64_t mul(int64_t a, int64_t b) { return mul_or_throw(a, b, kTooLarge); }
int64_t add(int64_t a, int64_t b) { return add_or_throw(a, b, kTooLarge); }
int64_t round_up(int64_t a, int64_t b) { return add(a, b - 1) / b * b; }

// The images of a group share each block of tiles (so a small image's few tiles still fill a
// block and every packed weight read is used by more tiles); capped so their padded input stays
// ~8 MB.
constexpr int64_t kGroupFloats = int64_t{2} << 20;

std::atomic<int64_t> g_block_tiles{0};  // set_winograd_block_tiles(): 0 = sized from the L2

}  // namespace

void set_winograd_block_tiles(int64_t tiles) { g_block_tiles.store(tiles > 0 ? tiles : 0); }

bool conv2d_winograd_applies(const Conv2dShape& s) {
  return s.KH == 3 && s.KW == 3 && s.stride_h == 1 && s.stride_w == 1 && s.dilation_h == 1 &&
         s.dilation_w == 1 && s.groups == 1;
}

int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);  // glibc reads CPUID; 0 or -1 if unknown
    return v >= (64 << 10) ? static_cast<int64_t>(v) : int64_t{1} << 20;
  }();
  return bytes;
}

void conv2d_winograd_plan(const Conv2dShape& s, int64_t nthreads, Conv2dWinogradPlan& g) {
  g.Cp = round_up(s.C, kWinoCB);
  g.Mb = (s.M + kWinoMB - 1) / kWinoMB;
  g.tiles_h = (s.OH + 1) / 2;
  g.tiles_w = (s.OW + 1) / 2;
  g.Hp = add(mul(2, g.tiles_h), 2);
  g.Wp = add(mul(2, g.tiles_w), 2);
  g.image_floats = mul(g.Cp, mul(g.Hp, g.Wp));
  // Bigger blocks read the packed weights fewer times (once per block), and V is read by
  // broadcasts (4 bytes per 4 vector FMAs), which L3 serves as well as L2: a block holds V of
  // up to 2 L2s' worth (measured on Zen 5: 1.2-1.4x faster at 512 channels than V in half an L2,
  // the same at 64), or every tile when that is at most 1.5 blocks.
  const int64_t forced = g_block_tiles.load();
  const int64_t fit =
      forced > 0
          ? round_up(forced, kWinoTileGroup)
          : std::max<int64_t>(kWinoTileGroup, 2 * l2_cache_bytes() / (kWinoPoints * g.Cp * 4) /
                                                  kWinoTileGroup * kWinoTileGroup);
  // Images are grouped only as far as it takes to fill a block (their padded input is ~1 block
  // of work), never past ~8 MB of padded input.
  const int64_t tiles_img = mul(g.tiles_h, g.tiles_w);
  g.group_images = std::min(s.N, std::max<int64_t>(1, fit / tiles_img));
  g.group_images = std::max<int64_t>(1, std::min(g.group_images, kGroupFloats / g.image_floats));
  const int64_t tiles = mul(g.group_images, tiles_img);
  g.block_tiles = tiles <= fit * 3 / 2 ? round_up(tiles, kWinoTileGroup) : fit;
  g.nthreads = nthreads;
  // GEMM tasks: every panel x chunks of the block, at most kMaxChunk tiles each (their M, 4 KB
  // a tile, stays in L2), and a multiple of the threads where that takes few more chunks (5
  // tasks on 2 threads run as 3 + 2).
  constexpr int64_t kMaxChunk = 48;
  const int64_t groups_per_block = g.block_tiles / kWinoTileGroup;
  int64_t chunks = std::min(groups_per_block, (g.block_tiles + kMaxChunk - 1) / kMaxChunk);
  while (chunks < groups_per_block && (g.Mb * chunks) % nthreads != 0 &&
         g.Mb * chunks < 4 * nthreads)
    ++chunks;
  g.chunk_tiles = (groups_per_block + chunks - 1) / chunks * kWinoTileGroup;
  g.xb_floats = round_up(mul(g.group_images, g.image_floats), 16);
  g.v_floats = mul(kWinoPoints, mul(g.Cp, g.block_tiles));
  g.m_floats = mul(g.chunk_tiles, kWinoPoints * kWinoMB);
  g.workspace_floats = add(add(g.xb_floats, g.v_floats), mul(nthreads, g.m_floats));
  // As the direct convolution: a workspace far beyond the images' own size means a padding out
  // of proportion to them; refused before anything is allocated.
  const int64_t input_floats = mul(g.group_images, mul(s.C, mul(s.H, s.W)));
  const int64_t cap = std::max(kConvMinWorkspaceCap / 4, mul(input_floats, kConvWorkspaceRatio));
  if (g.workspace_floats > cap)
    throw std::invalid_argument("padding: the convolution would need a " +
                                std::to_string(g.workspace_floats / (int64_t{1} << 28)) +
                                " GiB workspace for its input; more than " +
                                std::to_string(kConvWorkspaceRatio) + " times the input, or " +
                                std::to_string(kConvMinWorkspaceCap >> 30) + " GiB");
}

int64_t conv2d_winograd_packed_floats(const Conv2dShape& s) {
  const int64_t cp = round_up(s.C, kWinoCB), mb = (s.M + kWinoMB - 1) / kWinoMB;
  return mul(kWinoPoints, mul(mb, mul(cp, kWinoMB)));
}

void conv2d_winograd_pack(const Conv2dShape& s, const float* w, float* packed) {
  const int64_t cp = round_up(s.C, kWinoCB), mb = (s.M + kWinoMB - 1) / kWinoMB;
  static const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  std::fill(packed, packed + conv2d_winograd_packed_floats(s), 0.0f);
  for (int64_t m = 0; m < s.M; ++m) {
    for (int64_t c = 0; c < s.C; ++c) {
      const float* g = w + (m * s.C + c) * 9;
      double t[4][3];  // G g
      for (int i = 0; i < 4; ++i)
        for (int k = 0; k < 3; ++k)
          t[i][k] = G[i][0] * g[0 * 3 + k] + G[i][1] * g[1 * 3 + k] + G[i][2] * g[2 * 3 + k];
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {  // (G g) G^T
          const double u = t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2];
          const int64_t xi = 4 * i + j;
          packed[((xi * mb + m / kWinoMB) * cp + c) * kWinoMB + m % kWinoMB] =
              static_cast<float>(u);
        }
      }
    }
  }
}

}  // namespace mmfast
