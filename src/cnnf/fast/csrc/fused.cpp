// Fused CPU kernels for CNN-F's memory-bound layers (the fast backend, cnnf.fast), on channels-last maps.
//
// Each kernel does in one sweep per sample what the layer-by-layer path does in several passes
// over the whole batch: a sample's map (H*W pixels x C channels, 25-200 KB) stays in cache
// between the reduction and the elementwise pass. Float and double; results equal the layer
// path up to the order of the H*W sums (tests/test_kernels.py and tests/test_backends.py, float64).
//
//   norm_bias_relu_forward:  y = f * r + b,  r = (mean_{H,W} f^2 + eps)^(-1/2)   (appendix A.4)
//                            out = z * y,    z = 1(y > 0) or 1(y * g > 0)        (AdaReLU, eq. 3)
//   norm_bias_relu_backward: the gradient of the above wrt f and b, z held constant
//   adaptive_pool_forward:   max (g >= 0) or min (g < 0) over r x r windows, with the flat
//                            index of the chosen pixel                           (AdaPool, eq. 3)
//   unpool_forward/backward: AdaPool's feedback, g placed at the chosen pixels   (eq. 2), and
//                            its gradient, a gather (unpool_forward is AdaPool's backward)
//   norm_bias_relu_pool_forward: the above, then AdaPool, in one sweep: the map between the
//                            ReLU and the pool is never written; and its backward
//   feedback_norm_forward:   the feedback through [norm, bias, AdaReLU?, AdaPool?] (eq. 2):
//                            u = unpool(g), m = z * u, y = m * r(m); and its backward
//   squared_error_sums:      sum (g_t - h)^2 for every reconstruction g_t against one target h
//   squared_errors_backward: d g_t = s (g_t - h) and d h = -sum_t d g_t, in one pass

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;

// AdaPool's latent: the flat index h * W + w of the chosen pixel in its sample and channel's
// (H, W) plane, as int32: half the bytes of torch's int64 pooling indices, and as wide as a
// float, so that the comparisons with it vectorise in the same lanes as the float32 values.
using Index = int32_t;
constexpr auto kIndex = at::kInt;

void check_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be a (B, C, H, W) map, got ", t.dim(), " dimensions");
  TORCH_CHECK(t.is_contiguous(kChannelsLast), name, " must be channels-last contiguous");
}

// An AdaReLU mask: bool, channels-last, the shape of the map it masks.
void check_mask(const at::Tensor& mask, const at::Tensor& map) {
  check_map(mask, "mask");
  TORCH_CHECK(mask.scalar_type() == at::kBool, "mask must be bool (an AdaReLU latent), got ", mask.scalar_type());
  TORCH_CHECK(mask.sizes() == map.sizes(), "mask must have the shape of the map it masks");
}

// The AdaReLU mask a forward kernel writes for map f: bool like f, or size 0 without a ReLU.
at::Tensor new_mask(const at::Tensor& f, bool relu) {
  return relu ? at::empty_like(f, f.options().dtype(at::kBool), kChannelsLast) : at::empty({0}, f.options());
}

// A bool mask's values as bytes (0/1): the kernels read and write masks through uint8_t,
// whose conversion to float gcc vectorises (bool's it does not).
uint8_t* mask_bytes(const at::Tensor& mask) { return reinterpret_cast<uint8_t*>(mask.data_ptr<bool>()); }

// y * z for the mask value z that the kernel has just written, as the torch layers compute
// f * mask: y, or a zero with y's sign. A select, which gcc vectorises next to the mask's
// one-byte stores (the product with z converted to float it does not).
template <typename T>
inline T times_mask(T y, bool z) {
  return z ? y : y * T(0);
}

// Calls kernel(channels) with the channel count as a compile-time constant
// (std::integral_constant) for the counts of the registered networks, else as an int64_t.
// The kernels' inner loops run over the channels of one NHWC pixel; with a fixed trip count
// they compile to whole vectors without loop set-up, which made the fused kernels 15-27 %
// faster at 32 and 64 channels (benchmarks/README.md).
// `fixed_channels` false (set_fixed_channels) always passes the runtime count, for
// benchmarks/speedup.py's A/B and the test that compares both.
bool fixed_channels = true;

template <typename Kernel>
void with_channels(int64_t channels, Kernel&& kernel) {
  if (fixed_channels) {
    switch (channels) {
      case 16: return kernel(std::integral_constant<int64_t, 16>{});
      case 32: return kernel(std::integral_constant<int64_t, 32>{});
      case 64: return kernel(std::integral_constant<int64_t, 64>{});
    }
  }
  kernel(channels);
}

// One sample: `pixels` rows of `channels` values (NHWC). Sets r[c] = (mean f^2 + eps)^(-1/2);
// sums accumulate in T, as torch's own reductions do.
template <typename T, typename Channels>
void rms_scale(const T* __restrict__ f, int64_t pixels, Channels channels, double eps, T* __restrict__ r,
               T* __restrict__ sum) {
  std::fill(sum, sum + channels, T(0));
  for (int64_t p = 0; p < pixels; ++p) {
    const T* __restrict__ row = f + p * channels;
    for (int64_t c = 0; c < channels; ++c) sum[c] += row[c] * row[c];
  }
  for (int64_t c = 0; c < channels; ++c) r[c] = T(1.0 / std::sqrt(double(sum[c]) / double(pixels) + eps));
}

// out = z * (f r + b) for one sample; the variant is a template argument, so the inner loop
// has no branches and vectorises.
enum class Relu { none, plain, driven, driven_by_pooled };  // the last: norm_bias_relu_pool only

template <typename T, Relu relu, typename Channels>
void norm_bias_relu_sample(const T* __restrict__ f, const T* __restrict__ bias, const T* __restrict__ drive,
                           int64_t pixels, Channels channels, double eps, T* __restrict__ r,
                           T* __restrict__ out, uint8_t* __restrict__ mask, T* __restrict__ scratch) {
  rms_scale(f, pixels, channels, eps, r, scratch);
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t o = p * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const T y = f[o + c] * r[c] + bias[c];
      if constexpr (relu == Relu::none) {
        out[o + c] = y;
      } else if constexpr (relu == Relu::plain) {
        mask[o + c] = y > T(0);
        out[o + c] = y > T(0) ? y : T(0);  // +0.0 where y <= 0, as F.relu
      } else {
        const bool z = y * drive[o + c] > T(0);
        mask[o + c] = z;
        out[o + c] = times_mask(y, z);
      }
    }
  }
}

}  // namespace

// f: (B, C, H, W) channels-last; bias: (C,) or empty; drive: like f or empty (first pass).
// Returns (out, mask, r): out like f; mask like f (bool; size 0 without relu); r (B, C).
std::vector<at::Tensor> norm_bias_relu_forward(const at::Tensor& f, const at::Tensor& bias,
                                               const at::Tensor& drive, bool relu, double eps) {
  check_map(f, "f");
  const bool has_bias = bias.defined() && bias.numel() > 0;
  const bool has_drive = drive.defined() && drive.numel() > 0;
  if (has_drive) {
    check_map(drive, "drive");
    TORCH_CHECK(drive.sizes() == f.sizes(), "drive must have the shape of f");
  }
  const int64_t batch = f.size(0), channels = f.size(1), pixels = f.size(2) * f.size(3);
  at::Tensor out = at::empty_like(f, kChannelsLast);
  at::Tensor mask = new_mask(f, relu);
  at::Tensor r = at::empty({batch, channels}, f.options());
  // without a bias, add zeros: one code path, and the add costs nothing next to the memory traffic
  const at::Tensor b = has_bias ? bias.contiguous() : at::zeros({channels}, f.options());
  const Relu variant = !relu ? Relu::none : has_drive ? Relu::driven : Relu::plain;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "norm_bias_relu_forward", [&] {
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    const scalar_t* gp = has_drive ? drive.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    uint8_t* mp = relu ? mask_bytes(mask) : nullptr;
    scalar_t* rp = r.mutable_data_ptr<scalar_t>();
    const int64_t plane = pixels * channels;
    with_channels(channels, [&](auto channels) {
      using C = decltype(channels);
      const auto run = variant == Relu::none    ? norm_bias_relu_sample<scalar_t, Relu::none, C>
                       : variant == Relu::plain ? norm_bias_relu_sample<scalar_t, Relu::plain, C>
                                                : norm_bias_relu_sample<scalar_t, Relu::driven, C>;
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(channels);
        for (int64_t n = begin; n < end; ++n) {
          const int64_t o = n * plane;
          run(fp + o, bp, gp ? gp + o : nullptr, pixels, channels, eps, rp + n * channels, op + o,
              mp ? mp + o : nullptr, scratch.data());
        }
      });
    });
  });
  return {out, mask, r};
}

namespace {

// One sample of norm_bias_relu_backward; `masked` is false without a ReLU.
template <typename T, bool masked, typename Channels>
void norm_bias_relu_backward_sample(const T* __restrict__ d_out, const T* __restrict__ f, const T* __restrict__ r,
                                    const uint8_t* __restrict__ mask, int64_t pixels, Channels channels,
                                    T* __restrict__ d_f, T* __restrict__ d_b, T* __restrict__ dot) {
  std::fill(d_b, d_b + channels, T(0));
  std::fill(dot, dot + channels, T(0));
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t o = p * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const T dy = masked ? d_out[o + c] * T(mask[o + c]) : d_out[o + c];
      d_b[c] += dy;
      dot[c] += dy * (f[o + c] * r[c]);
    }
  }
  for (int64_t c = 0; c < channels; ++c) dot[c] /= T(pixels);
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t o = p * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const T dy = masked ? d_out[o + c] * T(mask[o + c]) : d_out[o + c];
      d_f[o + c] = r[c] * (dy - (f[o + c] * r[c]) * dot[c]);
    }
  }
}

}  // namespace

// Gradient of norm_bias_relu_forward with the mask held constant: dy = z * d_out,
// d_b = sum dy, d_f = r (dy - n mean_{H,W}(dy n)) with n = f r (the norm's output).
// Returns (d_f like f, d_b per sample (B, C)).
std::vector<at::Tensor> norm_bias_relu_backward(const at::Tensor& d_out, const at::Tensor& f,
                                                const at::Tensor& r, const at::Tensor& mask) {
  check_map(f, "f");
  const at::Tensor grad = d_out.contiguous(kChannelsLast);
  const bool has_mask = mask.defined() && mask.numel() > 0;
  if (has_mask) check_mask(mask, f);
  const int64_t batch = f.size(0), channels = f.size(1), pixels = f.size(2) * f.size(3);
  at::Tensor d_f = at::empty_like(f, kChannelsLast);
  at::Tensor d_b = at::empty({batch, channels}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "norm_bias_relu_backward", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const uint8_t* mp = has_mask ? mask_bytes(mask) : nullptr;
    scalar_t* dfp = d_f.mutable_data_ptr<scalar_t>();
    scalar_t* dbp = d_b.mutable_data_ptr<scalar_t>();
    const int64_t plane = pixels * channels;
    with_channels(channels, [&](auto channels) {
      using C = decltype(channels);
      const auto run = mp ? norm_bias_relu_backward_sample<scalar_t, true, C>
                          : norm_bias_relu_backward_sample<scalar_t, false, C>;
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> dot(channels);
        for (int64_t n = begin; n < end; ++n) {
          const int64_t o = n * plane, k = n * channels;
          run(gp + o, fp + o, rp + k, mp ? mp + o : nullptr, pixels, channels, dfp + o, dbp + k, dot.data());
        }
      });
    });
  });
  return {d_f, d_b};
}

namespace {

// s = +1 where g >= 0 (-0.0 included), else -1.
template <typename T, typename Channels>
void signs_of(const T* __restrict__ g, Channels channels, T* __restrict__ sign) {
  for (int64_t c = 0; c < channels; ++c) sign[c] = g[c] < T(0) ? T(-1) : T(1);
}

// One size x size window at (h0, w0) of a sample's NHWC plane `f` of row length `width`: per
// channel the pixel with the largest s * f (the first in scan order on ties; NaN wins, as in
// F.max_pool2d); writes f there (= s * max(s * f)) and its flat index h * width + w.
template <typename T, typename Channels>
void pool_window(const T* __restrict__ f, int64_t width, int64_t h0, int64_t w0, int64_t size, Channels channels,
                 const T* __restrict__ sign, T* __restrict__ pooled, Index* __restrict__ index) {
  const T* first = f + (h0 * width + w0) * channels;
  for (int64_t c = 0; c < channels; ++c) {
    pooled[c] = sign[c] * first[c];
    index[c] = static_cast<Index>(h0 * width + w0);
  }
  for (int64_t i = 0; i < size; ++i) {
    for (int64_t j = (i == 0); j < size; ++j) {
      const Index at = static_cast<Index>((h0 + i) * width + w0 + j);
      const T* px = f + at * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const T v = sign[c] * px[c];
        const bool take = v > pooled[c] || v != v;
        pooled[c] = take ? v : pooled[c];
        index[c] = take ? at : index[c];
      }
    }
  }
  for (int64_t c = 0; c < channels; ++c) pooled[c] *= sign[c];
}

// Checks shared by the pooling kernels (f's H and W multiples of `size`; `drive`, if given, at
// the pooled resolution) and their outputs: {pooled, index}, channels-last, at that resolution.
std::vector<at::Tensor> pooled_outputs(const at::Tensor& f, const at::Tensor& drive, int64_t size,
                                       const char* drive_name) {
  check_map(f, "f");
  const int64_t batch = f.size(0), channels = f.size(1), height = f.size(2), width = f.size(3);
  TORCH_CHECK(size > 0 && height % size == 0 && width % size == 0, "the map's H and W must be multiples of ",
              size);
  TORCH_CHECK(height * width <= std::numeric_limits<Index>::max(), "a ", height, "x", width,
              " map has more pixels than an int32 pooling index can address");
  const int64_t out_h = height / size, out_w = width / size;
  if (drive.numel() > 0) {
    check_map(drive, drive_name);
    TORCH_CHECK(drive.size(0) == batch && drive.size(1) == channels && drive.size(2) == out_h &&
                    drive.size(3) == out_w, drive_name, " must have the pooled shape");
  }
  return {at::empty({batch, channels, out_h, out_w}, f.options(), kChannelsLast),
          at::empty({batch, channels, out_h, out_w}, f.options().dtype(kIndex), kChannelsLast)};
}

// Checks shared by unpool_forward and unpool_backward: pooled-resolution maps, windows of `size`.
void check_unpool(const at::Tensor& pooled, const at::Tensor& index, int64_t size) {
  check_map(pooled, "g");
  check_map(index, "index");
  TORCH_CHECK(index.sizes() == pooled.sizes() && index.scalar_type() == kIndex,
              "index must be the int32 pooling choice (an AdaPool latent) of g's shape");
  TORCH_CHECK(size > 0, "size must be positive");
}

// One window of unpool_forward (`gather` false): full[pixel] = g where index == pixel, else 0;
// or of unpool_backward (`gather` true): g = full[index]. `full` is the sample's NHWC plane.
template <typename T, bool gather, typename Channels>
void unpool_window(T* __restrict__ g, const Index* __restrict__ index, T* __restrict__ full, int64_t width,
                   int64_t h0, int64_t w0, int64_t size, Channels channels) {
  for (int64_t i = 0; i < size; ++i) {
    for (int64_t j = 0; j < size; ++j) {
      const Index at = static_cast<Index>((h0 + i) * width + w0 + j);
      T* __restrict__ px = full + at * channels;
      for (int64_t c = 0; c < channels; ++c) {
        if constexpr (gather) {
          g[c] = index[c] == at ? px[c] : g[c];
        } else {
          px[c] = index[c] == at ? g[c] : T(0);
        }
      }
    }
  }
}

// Moves values between the pooled map (B, C, h, w) and the full map (B, C, h * size, w * size)
// through `index`: full from pooled (`gather` false), or pooled from full (`gather` true). The
// source is only read; both are channels-last.
template <bool gather>
void unpool_between(const at::Tensor& pooled, const at::Tensor& full, const at::Tensor& index, int64_t size) {
  const int64_t batch = pooled.size(0), channels = pooled.size(1), out_h = pooled.size(2), out_w = pooled.size(3);
  const int64_t width = out_w * size, plane = out_h * size * width * channels;
  AT_DISPATCH_FLOATING_TYPES(pooled.scalar_type(), "unpool", [&] {
    scalar_t* pp = pooled.data_ptr<scalar_t>();
    scalar_t* fp = full.data_ptr<scalar_t>();
    const Index* ip = index.const_data_ptr<Index>();
    with_channels(channels, [&](auto channels) {
      at::parallel_for(0, batch * out_h, 1, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t n = row / out_h, oh = row % out_h;
          for (int64_t ow = 0; ow < out_w; ++ow) {
            const int64_t o = ((n * out_h + oh) * out_w + ow) * channels;
            unpool_window<scalar_t, gather>(pp + o, ip + o, fp + n * plane, width, oh * size, ow * size, size,
                                            channels);
          }
        }
      });
    });
  });
}

}  // namespace

// f: (B, C, H, W) channels-last, H and W multiples of `size`; drive: (B, C, H/size, W/size)
// channels-last or empty (plain max pooling). Per window: the max of f where g >= 0 (-0.0
// included), the min where g < 0; ties and NaN resolve as F.max_pool2d does (first in scan
// order; NaN wins). Returns (pooled, index): index is the flat h * W + w of the chosen pixel
// in its (sample, channel) plane, as F.max_pool2d(return_indices=True) gives, in int32 (`Index`).
std::vector<at::Tensor> adaptive_pool_forward(const at::Tensor& f, const at::Tensor& drive, int64_t size) {
  const auto outputs = pooled_outputs(f, drive, size, "drive");
  const at::Tensor &pooled = outputs[0], &index = outputs[1];
  const int64_t batch = f.size(0), channels = f.size(1), height = f.size(2), width = f.size(3);
  const int64_t out_h = height / size, out_w = width / size;
  const bool has_drive = drive.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "adaptive_pool_forward", [&] {
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    const scalar_t* gp = has_drive ? drive.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* pp = pooled.mutable_data_ptr<scalar_t>();
    Index* ip = index.mutable_data_ptr<Index>();
    with_channels(channels, [&](auto channels) {
      at::parallel_for(0, batch * out_h, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> sign(channels, scalar_t(1));
        for (int64_t row = begin; row < end; ++row) {
          const int64_t n = row / out_h, oh = row % out_h;
          for (int64_t ow = 0; ow < out_w; ++ow) {
            const int64_t o = ((n * out_h + oh) * out_w + ow) * channels;
            if (gp) signs_of(gp + o, channels, sign.data());
            pool_window(fp + (n * height * width) * channels, width, oh * size, ow * size, size, channels,
                        sign.data(), pp + o, ip + o);
          }
        }
      });
    });
  });
  return {pooled, index};
}

// The AdaPool feedback (unpool): g (B, C, h, w) placed at the chosen pixels of each size x size
// window, zeros elsewhere, in one write of the (B, C, h * size, w * size) map. `index` must come
// from adaptive_pool_forward (each index inside its own window), unlike F.max_unpool2d's.
at::Tensor unpool_forward(const at::Tensor& g, const at::Tensor& index, int64_t size) {
  check_unpool(g, index, size);
  at::Tensor full = at::empty({g.size(0), g.size(1), g.size(2) * size, g.size(3) * size}, g.options(), kChannelsLast);
  unpool_between<false>(g, full, index, size);
  return full;
}

// Gradient of unpool_forward wrt g: the value of d_full at each window's chosen pixel, (B, C, h, w).
at::Tensor unpool_backward(const at::Tensor& d_full, const at::Tensor& index, int64_t size) {
  const at::Tensor grad = d_full.contiguous(kChannelsLast);
  at::Tensor d_g = at::empty(index.sizes(), grad.options(), kChannelsLast).zero_();
  check_unpool(d_g, index, size);
  TORCH_CHECK(grad.size(2) == index.size(2) * size && grad.size(3) == index.size(3) * size,
              "d_full must be index's shape times size");
  unpool_between<true>(d_g, grad, index, size);
  return d_g;
}

namespace {

// Visits a (height x width) NHWC plane window by window (size x size; size 1 = pixel by
// pixel): visit(offset of the window in the pooled plane, flat pixel h * width + w, offset of
// the pixel in the plane). Window-major order keeps a window's pooled row in registers.
template <typename Channels, typename Visit>
void for_each_window_pixel(int64_t height, int64_t width, int64_t size, Channels channels, Visit&& visit) {
  const int64_t pooled_height = height / size, pooled_width = width / size;
  for (int64_t oh = 0; oh < pooled_height; ++oh) {
    for (int64_t ow = 0; ow < pooled_width; ++ow) {
      const int64_t window = (oh * pooled_width + ow) * channels;
      for (int64_t i = 0; i < size; ++i) {
        for (int64_t j = 0; j < size; ++j) {
          const int64_t at = (oh * size + i) * width + ow * size + j;
          visit(window, at, at * channels);
        }
      }
    }
  }
}

// One pixel of feedback_norm_sample's first pass (its own function, so that the pointers are
// __restrict__ and the channel loop vectorises without aliasing checks): u = g where index
// chose this pixel, else 0; m = mask * u; sum += m^2.
template <typename T, bool pooled, bool masked, typename Channels>
inline void feedback_norm_pixel(const T* __restrict__ g, const Index* __restrict__ index, const uint8_t* __restrict__ mask,
                                Index at, Channels channels, T* __restrict__ unpooled, T* __restrict__ masked_out,
                                T* __restrict__ sum) {
  for (int64_t c = 0; c < channels; ++c) {
    T v = g[c];
    if constexpr (pooled) {
      v = index[c] == at ? v : T(0);
      unpooled[c] = v;
    }
    if constexpr (masked) {
      v *= T(mask[c]);
      masked_out[c] = v;
    }
    sum[c] += v * v;
  }
}

// One pixel of feedback_norm_backward_sample's second pass: the gradient wrt the norm's input,
// plus the outputs' own gradients, through the mask, to g (at the chosen pixel if pooled).
// `z` (channels values) takes the mask as T first: in one loop with the one-byte mask loads
// and the (then int64) index, gcc picked 256-bit vectors for all of it and the pass ran 1.3x slower.
template <typename T, bool pooled, bool masked, typename Channels>
inline void feedback_norm_backward_pixel(const T* __restrict__ d_out, const T* __restrict__ out,
                                         const T* __restrict__ r, const T* __restrict__ dot,
                                         const Index* __restrict__ index, const uint8_t* __restrict__ mask,
                                         const T* __restrict__ d_normed, const T* __restrict__ d_unpooled, Index at,
                                         Channels channels, T* __restrict__ z, T* __restrict__ d_g) {
  if constexpr (masked) {
    for (int64_t c = 0; c < channels; ++c) z[c] = T(mask[c]);
  }
  for (int64_t c = 0; c < channels; ++c) {
    T d = r[c] * (d_out[c] - out[c] * dot[c]);
    if (d_normed) d += d_normed[c];
    if constexpr (masked) {
      d *= z[c];
      if (d_unpooled) d += d_unpooled[c];
    }
    if constexpr (pooled) {
      d_g[c] = index[c] == at ? d : d_g[c];  // a select, not a branch: vectorises
    } else {
      d_g[c] = d;
    }
  }
}

// One sample of feedback_norm_forward on its (height x width) x channels NHWC plane. `pooled`:
// g is at the pooled resolution and goes to the pixels `index` chose (u); `masked`: u is
// multiplied by the ReLU mask (m). Pass 1 writes u and m (to the outputs, or to one plane of
// per-thread scratch where the caller does not keep them) and sums m^2; pass 2 scales m, which
// is still in cache, by r = (mean m^2 + eps)^(-1/2). Without pooling u is g itself.
template <typename T, bool pooled, bool masked, typename Channels>
void feedback_norm_sample(const T* __restrict__ g, const Index* __restrict__ index, const uint8_t* __restrict__ mask,
                          int64_t height, int64_t width, int64_t size, Channels channels, double eps,
                          T* __restrict__ unpooled, T* __restrict__ masked_out, T* __restrict__ out,
                          T* __restrict__ r, T* __restrict__ sum) {
  std::fill(sum, sum + channels, T(0));
  for_each_window_pixel(height, width, size, channels, [&](int64_t from, int64_t at, int64_t o) {
    feedback_norm_pixel<T, pooled, masked>(g + from, pooled ? index + from : nullptr, masked ? mask + o : nullptr,
                                           at, channels, pooled ? unpooled + o : nullptr,
                                           masked ? masked_out + o : nullptr, sum);
  });
  const int64_t pixels = height * width;
  for (int64_t c = 0; c < channels; ++c) r[c] = T(1.0 / std::sqrt(double(sum[c]) / double(pixels) + eps));
  const T* __restrict__ normed = masked ? masked_out : unpooled;
  for (int64_t p = 0; p < pixels; ++p) {
    for (int64_t c = 0; c < channels; ++c) out[p * channels + c] = normed[p * channels + c] * r[c];
  }
}

// One sample of feedback_norm_backward. `out` is the forward's output (the norm's, m r or
// u r); d_normed and d_unpooled are the gradients of the forward's m / u outputs (nullptr
// where unused). d_g is written at the chosen pixels (pooled) or everywhere. dot and z:
// channels values of scratch each.
template <typename T, bool pooled, bool masked, typename Channels>
void feedback_norm_backward_sample(const T* __restrict__ d_out, const T* __restrict__ out, const T* __restrict__ r,
                                   const Index* __restrict__ index, const uint8_t* __restrict__ mask,
                                   const T* __restrict__ d_normed, const T* __restrict__ d_unpooled, int64_t height,
                                   int64_t width, int64_t size, Channels channels, T* __restrict__ d_g,
                                   T* __restrict__ dot, T* __restrict__ z) {
  const int64_t pixels = height * width;
  std::fill(dot, dot + channels, T(0));
  for (int64_t p = 0; p < pixels; ++p) {
    for (int64_t c = 0; c < channels; ++c) dot[c] += d_out[p * channels + c] * out[p * channels + c];
  }
  for (int64_t c = 0; c < channels; ++c) dot[c] /= T(pixels);
  for_each_window_pixel(height, width, size, channels, [&](int64_t to, int64_t at, int64_t o) {
    feedback_norm_backward_pixel<T, pooled, masked>(
        d_out + o, out + o, r, dot, pooled ? index + to : nullptr, masked ? mask + o : nullptr,
        d_normed ? d_normed + o : nullptr, d_unpooled ? d_unpooled + o : nullptr, at, channels, z,
        d_g + (pooled ? to : o));
  });
}

// Calls kernel(pooled, masked) with the flags as std::bool_constant, so that the kernel can
// pass them on as template arguments (one branch-free instance per case).
template <typename Kernel>
void with_flags(bool pooled, bool masked, Kernel&& kernel) {
  if (pooled && masked) kernel(std::true_type{}, std::true_type{});
  else if (pooled) kernel(std::true_type{}, std::false_type{});
  else kernel(std::false_type{}, std::true_type{});
}

template <typename T>
const T* or_null(const at::Tensor& t) {
  return t.defined() && t.numel() ? t.const_data_ptr<T>() : nullptr;
}

}  // namespace

// The feedback through a [norm, bias, AdaReLU?, AdaPool?] run, with g at the run's output:
// with `index` (pooled g, AdaPool's choice), u = unpool(g); with `mask` (AdaReLU's z), m = z * u;
// out = InstanceNorm(m). Bias is the identity in feedback. At least one of index and mask.
// Returns (u or empty, m or empty, out, r (B, C)); u and m are the signals at those layers,
// written only if keep_unpooled / keep_masked (else empty: they stay in a per-thread plane).
std::vector<at::Tensor> feedback_norm_forward(const at::Tensor& g, const at::Tensor& index, const at::Tensor& mask,
                                              int64_t size, double eps, bool keep_unpooled, bool keep_masked) {
  const bool pooled = index.numel() > 0, masked = mask.numel() > 0;
  TORCH_CHECK(pooled || masked, "feedback_norm needs a pooling index, a ReLU mask or both");
  if (pooled) check_unpool(g, index, size);
  else check_map(g, "g");
  const int64_t batch = g.size(0), channels = g.size(1);
  const int64_t height = pooled ? g.size(2) * size : g.size(2), width = pooled ? g.size(3) * size : g.size(3);
  const auto options = g.options();
  at::Tensor out = at::empty({batch, channels, height, width}, options, kChannelsLast);
  if (masked) check_mask(mask, out);
  at::Tensor unpooled = pooled && keep_unpooled ? at::empty_like(out, kChannelsLast) : at::empty({0}, options);
  at::Tensor masked_out = masked && keep_masked ? at::empty_like(out, kChannelsLast) : at::empty({0}, options);
  at::Tensor r = at::empty({batch, channels}, options);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "feedback_norm_forward", [&] {
    using T = scalar_t;
    const int64_t plane = height * width * channels, in_plane = g.size(2) * g.size(3) * channels;
    with_flags(pooled, masked, [&](auto pooled_flag, auto masked_flag) {
      constexpr bool P = decltype(pooled_flag)::value, M = decltype(masked_flag)::value;
      const T* gp = g.const_data_ptr<T>();
      const Index* ip = P ? index.const_data_ptr<Index>() : nullptr;
      const uint8_t* mp = M ? mask_bytes(mask) : nullptr;
      T* up = P && keep_unpooled ? unpooled.mutable_data_ptr<T>() : nullptr;  // nullptr: not kept
      T* mo = M && keep_masked ? masked_out.mutable_data_ptr<T>() : nullptr;
      T* op = out.mutable_data_ptr<T>();
      T* rp = r.mutable_data_ptr<T>();
      with_channels(channels, [&](auto channels) {
        at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
          std::vector<T> sum(channels), u_plane(P && !up ? plane : 0), m_plane(M && !mo ? plane : 0);
          for (int64_t n = begin; n < end; ++n) {
            T* u = P ? (up ? up + n * plane : u_plane.data()) : nullptr;
            T* m = M ? (mo ? mo + n * plane : m_plane.data()) : nullptr;
            feedback_norm_sample<T, P, M>(gp + n * in_plane, P ? ip + n * in_plane : nullptr, M ? mp + n * plane : nullptr,
                                          height, width, pooled ? size : 1, channels, eps, u, m, op + n * plane,
                                          rp + n * channels, sum.data());
          }
        });
      });
    });
  });
  return {unpooled, masked_out, out, r};
}

// Gradient of feedback_norm_forward wrt g: d_out and the saved `out` (the forward's) and r;
// d_normed / d_unpooled are the gradients of the m / u outputs or empty.
at::Tensor feedback_norm_backward(const at::Tensor& d_out, const at::Tensor& out, const at::Tensor& r,
                                  const at::Tensor& index, const at::Tensor& mask, const at::Tensor& d_normed,
                                  const at::Tensor& d_unpooled, int64_t size) {
  const bool pooled = index.numel() > 0, masked = mask.numel() > 0;
  TORCH_CHECK(pooled || masked, "feedback_norm needs a pooling index, a ReLU mask or both");
  check_map(out, "out");
  const at::Tensor grad = d_out.contiguous(kChannelsLast);
  const at::Tensor grad_normed = d_normed.numel() ? d_normed.contiguous(kChannelsLast) : d_normed;
  const at::Tensor grad_unpooled = d_unpooled.numel() ? d_unpooled.contiguous(kChannelsLast) : d_unpooled;
  const int64_t batch = out.size(0), channels = out.size(1), height = out.size(2), width = out.size(3);
  at::Tensor d_g = pooled ? at::empty(index.sizes(), out.options(), kChannelsLast).zero_()  // zeros: see unpool_backward
                          : at::empty_like(out, kChannelsLast);
  if (pooled) check_unpool(d_g, index, size);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "feedback_norm_backward", [&] {
    using T = scalar_t;
    const int64_t plane = height * width * channels, g_plane = d_g.size(2) * d_g.size(3) * channels;
    const T* dn = or_null<T>(grad_normed);
    const T* du = or_null<T>(grad_unpooled);
    with_flags(pooled, masked, [&](auto pooled_flag, auto masked_flag) {
      constexpr bool P = decltype(pooled_flag)::value, M = decltype(masked_flag)::value;
      with_channels(channels, [&](auto channels) {
        at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
          std::vector<T> dot(channels), z(channels);
          for (int64_t n = begin; n < end; ++n) {
            feedback_norm_backward_sample<T, P, M>(
                grad.const_data_ptr<T>() + n * plane, out.const_data_ptr<T>() + n * plane,
                r.const_data_ptr<T>() + n * channels, P ? index.const_data_ptr<Index>() + n * g_plane : nullptr,
                M ? mask_bytes(mask) + n * plane : nullptr, dn ? dn + n * plane : nullptr,
                du ? du + n * plane : nullptr, height, width, pooled ? size : 1, channels,
                d_g.mutable_data_ptr<T>() + n * (P ? g_plane : plane), dot.data(), z.data());
          }
        });
      });
    });
  });
  return d_g;
}

namespace {

// The squared-error kernels walk the maps as flat arrays in fixed chunks: the sums add the
// chunks' partial sums in chunk order, so they do not depend on the number of threads.
constexpr int64_t kChunk = 16384;

void check_like_target(const std::vector<at::Tensor>& maps, const at::Tensor& target) {
  TORCH_CHECK(!maps.empty(), "need at least one reconstruction");
  for (const auto& g : maps) {
    TORCH_CHECK(g.sizes() == target.sizes() && g.strides() == target.strides() && g.scalar_type() == target.scalar_type(),
                "each reconstruction must have the target's shape, strides and dtype");
  }
  TORCH_CHECK(target.is_non_overlapping_and_dense(), "the target must be dense in memory");
}

// sum (g[i] - h[i])^2 over [from, to), in kLanes independent partial sums: the loop then
// vectorises without reassociating floating-point additions.
template <typename T>
double squared_error_sum(const T* __restrict__ g, const T* __restrict__ h, int64_t from, int64_t to) {
  constexpr int64_t kLanes = 16;
  T lanes[kLanes] = {};
  int64_t i = from;
  for (; i + kLanes <= to; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += (g[i + l] - h[i + l]) * (g[i + l] - h[i + l]);
  }
  for (; i < to; ++i) lanes[0] += (g[i] - h[i]) * (g[i] - h[i]);
  double sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += double(lanes[l]);
  return sum;
}

}  // namespace

// The summed squared error of each reconstruction g_t against `target` h (same shape, strides
// and dtype, dense), read in one sweep that loads each chunk of h once. Returns (T,) float64.
at::Tensor squared_error_sums(const std::vector<at::Tensor>& reconstructions, const at::Tensor& target) {
  check_like_target(reconstructions, target);
  const int64_t steps = reconstructions.size(), numel = target.numel();
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  at::Tensor partial = at::empty({chunks, steps}, target.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(target.scalar_type(), "squared_error_sums", [&] {
    using T = scalar_t;
    const T* h = target.const_data_ptr<T>();
    std::vector<const T*> gs;
    for (const auto& g : reconstructions) gs.push_back(g.const_data_ptr<T>());
    double* out = partial.mutable_data_ptr<double>();
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t from = chunk * kChunk, to = std::min(numel, from + kChunk);
        for (int64_t t = 0; t < steps; ++t) out[chunk * steps + t] = squared_error_sum(gs[t], h, from, to);
      }
    });
  });
  return partial.sum(0);
}

namespace {

// One chunk of squared_errors_backward: d g_t = scale (g_t - h), d h = -sum_t d g_t.
template <typename T>
void squared_errors_backward_chunk(const std::vector<const T*>& gs, const T* __restrict__ h, T scale, int64_t from,
                                   int64_t to, const std::vector<T*>& d_gs, T* __restrict__ d_h) {
  if (d_h) std::fill(d_h + from, d_h + to, T(0));
  for (size_t t = 0; t < gs.size(); ++t) {
    const T* __restrict__ g = gs[t];
    T* __restrict__ d_g = d_gs[t];
    if (d_h && d_g) {
      for (int64_t i = from; i < to; ++i) {
        const T d = scale * (g[i] - h[i]);
        d_g[i] = d;
        d_h[i] -= d;
      }
    } else if (d_g) {
      for (int64_t i = from; i < to; ++i) d_g[i] = scale * (g[i] - h[i]);
    } else if (d_h) {
      for (int64_t i = from; i < to; ++i) d_h[i] -= scale * (g[i] - h[i]);
    }
  }
}

}  // namespace

// Gradient of scale / 2 * sum_t sum (g_t - h)^2: d g_t = scale (g_t - h) where `wanted[t]`, and
// d h = -sum_t scale (g_t - h) if `wanted[T]`; a chunk of h and its gradient stay in cache
// while every g_t passes. Returns T + 1 tensors (undefined where not wanted).
std::vector<at::Tensor> squared_errors_backward(const std::vector<at::Tensor>& reconstructions,
                                                const at::Tensor& target, double scale,
                                                const std::vector<bool>& wanted) {
  check_like_target(reconstructions, target);
  const int64_t steps = reconstructions.size(), numel = target.numel();
  TORCH_CHECK(int64_t(wanted.size()) == steps + 1, "wanted needs one flag per reconstruction and one for the target");
  std::vector<at::Tensor> grads(steps + 1);
  for (int64_t t = 0; t <= steps; ++t) {
    if (wanted[t]) grads[t] = at::empty_like(target, at::MemoryFormat::Preserve);
  }
  AT_DISPATCH_FLOATING_TYPES(target.scalar_type(), "squared_errors_backward", [&] {
    using T = scalar_t;
    std::vector<const T*> gs;
    std::vector<T*> d_gs;
    for (int64_t t = 0; t < steps; ++t) {
      gs.push_back(reconstructions[t].const_data_ptr<T>());
      d_gs.push_back(wanted[t] ? grads[t].mutable_data_ptr<T>() : nullptr);
    }
    const T* h = target.const_data_ptr<T>();
    T* d_h = wanted[steps] ? grads[steps].mutable_data_ptr<T>() : nullptr;
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        squared_errors_backward_chunk<T>(gs, h, T(scale), chunk * kChunk, std::min(numel, (chunk + 1) * kChunk),
                                         d_gs, d_h);
      }
    });
  });
  return grads;
}

namespace {

// One pixel of a norm_bias_relu_pool window (its own function, so that the pointers are
// __restrict__ and the channel loop vectorises): per channel y = f r + b, v = z y (AdaReLU,
// or v = y without a ReLU) as norm_bias_relu_sample computes them, and the pool's running
// choice of the largest sign * v as pool_window makes it (`first`: the window's first pixel).
// The ReLU's drive u is `drive` at this pixel (Relu::driven), or (Relu::driven_by_pooled)
// unpool(pooled_drive, drive_index): the window's pooled value where drive_index chose this
// pixel, else 0, the same u without the map written.
template <typename T, Relu relu, bool first, typename Channels>
inline void norm_bias_relu_pool_pixel(const T* __restrict__ f, const T* __restrict__ bias, const T* __restrict__ drive,
                                      const T* __restrict__ pooled_drive, const Index* __restrict__ drive_index,
                                      const T* __restrict__ r, const T* __restrict__ sign, Index at, Channels channels,
                                      uint8_t* __restrict__ mask, T* __restrict__ pooled, Index* __restrict__ index) {
  for (int64_t c = 0; c < channels; ++c) {
    const T y = f[c] * r[c] + bias[c];
    T v = y;
    if constexpr (relu == Relu::plain) {
      mask[c] = y > T(0);
      v = y > T(0) ? y : T(0);
    } else if constexpr (relu == Relu::driven || relu == Relu::driven_by_pooled) {
      T u;
      if constexpr (relu == Relu::driven) {
        u = drive[c];
      } else {
        u = drive_index[c] == at ? pooled_drive[c] : T(0);
      }
      const bool z = y * u > T(0);
      mask[c] = z;
      v = times_mask(y, z);
    }
    const T signed_v = sign[c] * v;
    if constexpr (first) {
      pooled[c] = signed_v;
      index[c] = at;
    } else {
      const bool take = signed_v > pooled[c] || signed_v != signed_v;
      pooled[c] = take ? signed_v : pooled[c];
      index[c] = take ? at : index[c];
    }
  }
}

// One sample of norm_bias_relu_pool_forward: r from the sample's map, then window by window
// the pixels' y, z and the pooled choice; `drive` (the ReLU's) and `mask` are like f, or null;
// `drive_index` (Relu::driven_by_pooled) is at the pooled resolution.
template <typename T, Relu relu, typename Channels>
void norm_bias_relu_pool_sample(const T* __restrict__ f, const T* __restrict__ bias, const T* __restrict__ drive,
                                const Index* __restrict__ drive_index, const T* __restrict__ pool_drive,
                                int64_t height, int64_t width, int64_t size, Channels channels, double eps,
                                T* __restrict__ r, uint8_t* __restrict__ mask,
                                T* __restrict__ pooled, Index* __restrict__ index, T* __restrict__ sign,
                                T* __restrict__ scratch) {
  rms_scale(f, height * width, channels, eps, r, scratch);
  const int64_t pooled_width = width / size;
  for (int64_t oh = 0; oh < height / size; ++oh) {
    for (int64_t ow = 0; ow < pooled_width; ++ow) {
      const int64_t window = (oh * pooled_width + ow) * channels;
      if (pool_drive) signs_of(pool_drive + window, channels, sign);
      for (int64_t i = 0; i < size; ++i) {
        for (int64_t j = 0; j < size; ++j) {
          const int64_t at = (oh * size + i) * width + ow * size + j, o = at * channels;
          const auto pixel = i == 0 && j == 0 ? norm_bias_relu_pool_pixel<T, relu, true, decltype(channels)>
                                              : norm_bias_relu_pool_pixel<T, relu, false, decltype(channels)>;
          pixel(f + o, bias, drive ? drive + o : nullptr, pool_drive ? pool_drive + window : nullptr,
                drive_index ? drive_index + window : nullptr, r, sign, at, channels, mask ? mask + o : nullptr,
                pooled + window, index + window);
        }
      }
      for (int64_t c = 0; c < channels; ++c) pooled[window + c] *= sign[c];
    }
  }
}

}  // namespace

// [InstanceNorm, Bias, AdaReLU?, AdaPool(size)] on f (B, C, H, W) channels-last in one sweep per
// sample: norm_bias_relu_forward, then adaptive_pool_forward on its output, without writing
// that output. relu_drive: like f or empty (first pass; ignored without relu); pool_drive:
// (B, C, H/size, W/size) or empty; relu_drive_index: empty, or with relu_drive empty, the
// pooling choice (like pool_drive, int64) that makes the ReLU's drive unpool(pool_drive,
// relu_drive_index), read without that map. Returns (pooled, index, mask (size 0 without
// relu), r).
std::vector<at::Tensor> norm_bias_relu_pool_forward(const at::Tensor& f, const at::Tensor& bias,
                                                    const at::Tensor& relu_drive, const at::Tensor& relu_drive_index,
                                                    const at::Tensor& pool_drive, bool relu, int64_t size, double eps) {
  const auto outputs = pooled_outputs(f, pool_drive, size, "pool_drive");
  const at::Tensor &pooled = outputs[0], &index = outputs[1];
  const int64_t batch = f.size(0), channels = f.size(1), height = f.size(2), width = f.size(3);
  const int64_t out_h = height / size, out_w = width / size;
  const bool relu_driven = relu && relu_drive.numel() > 0, pool_driven = pool_drive.numel() > 0;
  const bool relu_driven_by_pooled = relu && !relu_driven && relu_drive_index.numel() > 0;
  if (relu_driven) {
    check_map(relu_drive, "relu_drive");
    TORCH_CHECK(relu_drive.sizes() == f.sizes(), "relu_drive must have the shape of f");
  }
  if (relu_driven_by_pooled) {
    TORCH_CHECK(pool_driven, "relu_drive_index needs the pool_drive it unpools");
    check_unpool(pool_drive, relu_drive_index, size);
  }
  at::Tensor mask = new_mask(f, relu);
  at::Tensor r = at::empty({batch, channels}, f.options());
  const at::Tensor b = bias.numel() > 0 ? bias.contiguous() : at::zeros({channels}, f.options());
  const Relu variant = !relu                  ? Relu::none
                       : relu_driven           ? Relu::driven
                       : relu_driven_by_pooled ? Relu::driven_by_pooled
                                               : Relu::plain;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "norm_bias_relu_pool_forward", [&] {
    using T = scalar_t;
    const int64_t plane = height * width * channels, pooled_plane = out_h * out_w * channels;
    const T* fp = f.const_data_ptr<T>();
    const T* bp = b.const_data_ptr<T>();
    const T* dp = relu_driven ? relu_drive.const_data_ptr<T>() : nullptr;
    const Index* dip = relu_driven_by_pooled ? relu_drive_index.const_data_ptr<Index>() : nullptr;
    const T* pdp = pool_driven ? pool_drive.const_data_ptr<T>() : nullptr;
    uint8_t* mp = relu ? mask_bytes(mask) : nullptr;
    T* rp = r.mutable_data_ptr<T>();
    T* pp = pooled.mutable_data_ptr<T>();
    Index* ip = index.mutable_data_ptr<Index>();
    with_channels(channels, [&](auto channels) {
      using C = decltype(channels);
      const auto run = variant == Relu::none     ? norm_bias_relu_pool_sample<T, Relu::none, C>
                       : variant == Relu::plain  ? norm_bias_relu_pool_sample<T, Relu::plain, C>
                       : variant == Relu::driven ? norm_bias_relu_pool_sample<T, Relu::driven, C>
                                                 : norm_bias_relu_pool_sample<T, Relu::driven_by_pooled, C>;
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> scratch(channels), sign(channels, T(1));
        for (int64_t n = begin; n < end; ++n) {
          run(fp + n * plane, bp, dp ? dp + n * plane : nullptr, dip ? dip + n * pooled_plane : nullptr,
              pdp ? pdp + n * pooled_plane : nullptr, height, width, size, channels, eps, rp + n * channels,
              mp ? mp + n * plane : nullptr, pp + n * pooled_plane, ip + n * pooled_plane, sign.data(),
              scratch.data());
        }
      });
    });
  });
  return {pooled, index, mask, r};
}

namespace {

// One pixel of norm_bias_relu_pool_backward_sample: dy = d_pooled where the pool chose this
// pixel (else 0), times the ReLU mask.
template <typename T, bool masked, typename Channels>
inline void pooled_gradient_pixel(const T* __restrict__ d_pooled, const Index* __restrict__ index,
                                  const uint8_t* __restrict__ mask, Index at, Channels channels, T* __restrict__ dy) {
  for (int64_t c = 0; c < channels; ++c) {
    const T d = index[c] == at ? d_pooled[c] : T(0);
    dy[c] = masked ? d * T(mask[c]) : d;
  }
}

// One sample of norm_bias_relu_pool_backward: the pooled gradient spread to the chosen pixels
// and masked (dy, into the sample-sized `scratch`, which stays in cache), then the norm's
// backward on dy as norm_bias_relu_backward_sample computes it.
template <typename T, bool masked, typename Channels>
void norm_bias_relu_pool_backward_sample(const T* __restrict__ d_pooled, const Index* __restrict__ index,
                                         const T* __restrict__ f, const T* __restrict__ r, const uint8_t* __restrict__ mask,
                                         int64_t height, int64_t width, int64_t size, Channels channels,
                                         T* __restrict__ d_f, T* __restrict__ d_b, T* __restrict__ dot,
                                         T* __restrict__ scratch) {
  for_each_window_pixel(height, width, size, channels, [&](int64_t window, int64_t at, int64_t o) {
    pooled_gradient_pixel<T, masked>(d_pooled + window, index + window, masked ? mask + o : nullptr, at, channels,
                                     scratch + o);
  });
  norm_bias_relu_backward_sample<T, false>(scratch, f, r, nullptr, height * width, channels, d_f, d_b, dot);
}

}  // namespace

// Gradient of norm_bias_relu_pool_forward wrt f and b, the mask and index held constant; d_pooled
// like the pooled output. Returns (d_f like f, d_b per sample (B, C)).
std::vector<at::Tensor> norm_bias_relu_pool_backward(const at::Tensor& d_pooled, const at::Tensor& f,
                                                     const at::Tensor& r, const at::Tensor& mask,
                                                     const at::Tensor& index, int64_t size) {
  check_map(f, "f");
  const at::Tensor grad = d_pooled.contiguous(kChannelsLast);
  check_unpool(grad, index, size);
  const bool masked = mask.numel() > 0;
  if (masked) check_mask(mask, f);
  const int64_t batch = f.size(0), channels = f.size(1), height = f.size(2), width = f.size(3);
  TORCH_CHECK(height == index.size(2) * size && width == index.size(3) * size, "f must be index's shape times size");
  at::Tensor d_f = at::empty_like(f, kChannelsLast);
  at::Tensor d_b = at::empty({batch, channels}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "norm_bias_relu_pool_backward", [&] {
    using T = scalar_t;
    const int64_t plane = height * width * channels, pooled_plane = index.size(2) * index.size(3) * channels;
    with_channels(channels, [&](auto channels) {
      using C = decltype(channels);
      const auto run = masked ? norm_bias_relu_pool_backward_sample<T, true, C>
                              : norm_bias_relu_pool_backward_sample<T, false, C>;
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> dot(channels), scratch(plane);
        for (int64_t n = begin; n < end; ++n) {
          run(grad.const_data_ptr<T>() + n * pooled_plane, index.const_data_ptr<Index>() + n * pooled_plane,
              f.const_data_ptr<T>() + n * plane, r.const_data_ptr<T>() + n * channels,
              masked ? mask_bytes(mask) + n * plane : nullptr, height, width, size, channels,
              d_f.mutable_data_ptr<T>() + n * plane, d_b.mutable_data_ptr<T>() + n * channels, dot.data(),
              scratch.data());
        }
      });
    });
  });
  return {d_f, d_b};
}

void set_fixed_channels(bool on) { fixed_channels = on; }
bool uses_fixed_channels() { return fixed_channels; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_fixed_channels", &set_fixed_channels);
  m.def("uses_fixed_channels", &uses_fixed_channels);
  m.def("norm_bias_relu_forward", &norm_bias_relu_forward);
  m.def("norm_bias_relu_backward", &norm_bias_relu_backward);
  m.def("adaptive_pool_forward", &adaptive_pool_forward);
  m.def("norm_bias_relu_pool_forward", &norm_bias_relu_pool_forward);
  m.def("norm_bias_relu_pool_backward", &norm_bias_relu_pool_backward);
  m.def("unpool_forward", &unpool_forward);
  m.def("unpool_backward", &unpool_backward);
  m.def("feedback_norm_forward", &feedback_norm_forward);
  m.def("feedback_norm_backward", &feedback_norm_backward);
  m.def("squared_error_sums", &squared_error_sums);
  m.def("squared_errors_backward", &squared_errors_backward);
}
