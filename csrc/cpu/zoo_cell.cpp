// CPU kernels of the zoo cell (hnrnn::zoo_cell_forward / zoo_cell_backward).
//
// Forward, per step: one gather-add pass (x = h + E[ids]), one GEMM straight into BLAS
// (no dispatcher, no allocation), one pass for ReLU + column sums, one for the variance,
// one that normalises into `out`. Backward, per step: one pass for the BN column sums, one
// that writes dz, one GEMM dx = dz W; after the loop dW = dZ^T X is a single GEMM over all
// T*B rows, db a column sum, and dE a sequential scatter-add (deterministic).
// Every buffer is allocated once per call.
#include <torch/extension.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "zoo_cell.h"

namespace {

using at::Tensor;
namespace zc = hnrnn::zoo;

// BLAS: torch's CPU library exports the Fortran sgemm_/dgemm_ of the BLAS it is built with (MKL
// on x86 wheels). Calling them directly skips the dispatcher and any allocation, which matters at
// the lesson's 64 x 64 sizes. Declared weak: where a build does not export them, the same GEMM
// goes through at::mm_out on views instead.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
            const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

// Column-major C (m x n) = op(A) op(B) + beta C, beta 0 or 1 (BLAS conventions).
template <typename scalar_t>
void gemm_colmajor(char ta, char tb, int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                   const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c, int64_t ldc) {
  const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
  const int LDA = static_cast<int>(lda), LDB = static_cast<int>(ldb), LDC = static_cast<int>(ldc);
  const scalar_t one = 1;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (sgemm_) return sgemm_(&ta, &tb, &M, &N, &K, &one, a, &LDA, b, &LDB, &beta, c, &LDC);
  } else {
    if (dgemm_) return dgemm_(&ta, &tb, &M, &N, &K, &one, a, &LDA, b, &LDB, &beta, c, &LDC);
  }
  // Fallback: a column-major (r x c, ld) matrix is the row-major (c x r) tensor with strides (ld, 1).
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  auto view = [&](const scalar_t* p, int64_t rows, int64_t cols, int64_t ld) {
    return at::from_blob(const_cast<scalar_t*>(p), {cols, rows}, {ld, 1}, opts);
  };
  // C^T = op(B)^T op(A)^T in row-major terms.
  auto opAT = ta == 'N' ? view(a, m, k, lda) : view(a, k, m, lda).t();
  auto opBT = tb == 'N' ? view(b, k, n, ldb) : view(b, n, k, ldb).t();
  auto CT = view(c, m, n, ldc);
  if (beta == scalar_t(0)) {
    at::mm_out(CT, opBT, opAT);
  } else {
    CT.addmm_(opBT, opAT);
  }
}

// Row-major C (rows x H) = A (rows x H) @ W^T (w_transposed, the forward) or A @ W (dx = dz W),
// W (H x H) row-major. A row-major matrix read column-major is its transpose: C^T = op(W)^T A^T.
template <typename scalar_t>
void gemm_rowmajor(bool w_transposed, int64_t rows, int64_t H, const scalar_t* A, const scalar_t* W,
                   scalar_t beta, scalar_t* C) {
  gemm_colmajor<scalar_t>(w_transposed ? 'T' : 'N', 'N', H, rows, H, W, H, A, H, beta, C, H);
}

void check_ids(const Tensor& ids, int64_t V) {
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0, n = ids.numel(); i < n; ++i) {
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < V, "zoo_cell: ids must be in [0, ", V,
                      ") (the embedding's rows), found ", p[i]);
  }
}

void check_forward_inputs(const Tensor& ids, const Tensor& h0, const Tensor& emb, const Tensor& weight,
                          const Tensor& bias, const Tensor& bn_weight, const Tensor& bn_bias,
                          const Tensor& running_mean, const Tensor& running_var) {
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, "zoo_cell: ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(ids.dim() == 2 && ids.size(1) >= 1, "zoo_cell: ids must be (B, T) with T >= 1, got ", ids.sizes());
  TORCH_CHECK_VALUE(h0.dim() == 2 && h0.size(0) == ids.size(0), "zoo_cell: h0 must be (B, H) with B = ",
                    ids.size(0), ", got ", h0.sizes());
  const int64_t H = h0.size(1);
  TORCH_CHECK_VALUE(emb.dim() == 2 && emb.size(1) == H, "zoo_cell: emb must be (V, ", H, "), got ", emb.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) == H && weight.size(1) == H,
                    "zoo_cell: weight must be (", H, ", ", H, "), got ", weight.sizes());
  const std::pair<const char*, const Tensor*> vecs[] = {{"bias", &bias}, {"bn_weight", &bn_weight},
      {"bn_bias", &bn_bias}, {"running_mean", &running_mean}, {"running_var", &running_var}};
  for (const auto& [name, t] : vecs) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == H, "zoo_cell: ", name, " must be (", H, ",), got ", t->sizes());
  }
  const std::pair<const char*, const Tensor*> all[] = {{"ids", &ids}, {"h0", &h0}, {"emb", &emb},
      {"weight", &weight}, {"bias", &bias}, {"bn_weight", &bn_weight}, {"bn_bias", &bn_bias},
      {"running_mean", &running_mean}, {"running_var", &running_var}};
  for (const auto& [name, t] : all) {
    TORCH_CHECK(t->is_contiguous(), "zoo_cell: ", name, " must be contiguous");
    TORCH_CHECK(t->device() == h0.device(), "zoo_cell: ", name, " is on ", t->device(), " but h0 is on ", h0.device());
    if (t != &ids) {
      TORCH_CHECK_TYPE(t->scalar_type() == h0.scalar_type(), "zoo_cell: ", name, " has dtype ", t->scalar_type(),
                       " but h0 has ", h0.scalar_type());
    }
  }
}

template <typename scalar_t>
void forward_kernel(const int64_t* ids, const scalar_t* h0, const scalar_t* E, const scalar_t* W,
                    const scalar_t* bias, const scalar_t* gamma, const scalar_t* beta, scalar_t* rm,
                    scalar_t* rv, bool norm_state, bool training, double momentum, double eps,
                    int64_t B, int64_t T, int64_t H, scalar_t* out, scalar_t* hT, scalar_t* xs,
                    scalar_t* rs, scalar_t* mean, scalar_t* invstd) {
  using acc_t = double;  // batch statistics in double: B terms, cheap, and no cancellation worries
  std::vector<acc_t> s1(H), s2(H);
  if (!training) {  // eval: the running statistics, the same for every step
    for (int64_t k = 0; k < H; ++k) {
      s1[k] = rm[k];
      s2[k] = 1.0 / std::sqrt(static_cast<acc_t>(rv[k]) + eps);
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    scalar_t* x = xs + t * B * H;
    scalar_t* r = rs + t * B * H;
    // h_{t-1}: h0, the previous output (a strided row of `out`), or the previous ReLU.
    const scalar_t* hp = t == 0 ? h0 : (norm_state ? out + (t - 1) * H : rs + (t - 1) * B * H);
    const int64_t hs = (t > 0 && norm_state) ? T * H : H;
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* e = E + ids[b * T + t] * H;
      const scalar_t* hb = hp + b * hs;
      scalar_t* xb = x + b * H;
      scalar_t* rb = r + b * H;
      for (int64_t k = 0; k < H; ++k) {
        xb[k] = hb[k] + e[k];
        rb[k] = bias[k];
      }
    }
    gemm_rowmajor<scalar_t>(true, B, H, x, W, scalar_t(1), r);  // r = x W^T + b
    scalar_t* m_t = mean + t * H;
    scalar_t* is_t = invstd + t * H;
    if (training) {
      std::fill(s1.begin(), s1.end(), acc_t(0));
      std::fill(s2.begin(), s2.end(), acc_t(0));
      for (int64_t b = 0; b < B; ++b) {
        scalar_t* rb = r + b * H;
        for (int64_t k = 0; k < H; ++k) {
          rb[k] = zc::relu(rb[k]);
          s1[k] += rb[k];
        }
      }
      for (int64_t k = 0; k < H; ++k) s1[k] /= B;
      for (int64_t b = 0; b < B; ++b) {  // two-pass variance
        const scalar_t* rb = r + b * H;
        for (int64_t k = 0; k < H; ++k) {
          const acc_t d = rb[k] - s1[k];
          s2[k] += d * d;
        }
      }
      for (int64_t k = 0; k < H; ++k) {
        const acc_t var = s2[k] / B;
        rm[k] = static_cast<scalar_t>((1.0 - momentum) * rm[k] + momentum * s1[k]);
        rv[k] = static_cast<scalar_t>((1.0 - momentum) * rv[k] + momentum * var * B / (B - 1));
        s2[k] = 1.0 / std::sqrt(var + eps);
      }
    } else {
      for (int64_t i = 0; i < B * H; ++i) r[i] = zc::relu(r[i]);
    }
    for (int64_t k = 0; k < H; ++k) {
      m_t[k] = static_cast<scalar_t>(s1[k]);
      is_t[k] = static_cast<scalar_t>(s2[k]);
    }
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* rb = r + b * H;
      scalar_t* ob = out + (b * T + t) * H;
      for (int64_t k = 0; k < H; ++k) ob[k] = zc::bn_apply(rb[k], m_t[k], is_t[k], gamma[k], beta[k]);
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* src = norm_state ? out + (b * T + T - 1) * H : rs + ((T - 1) * B + b) * H;
    std::copy(src, src + H, hT + b * H);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> zoo_cell_forward_cpu(
    const Tensor& ids, const Tensor& h0, const Tensor& emb, const Tensor& weight, const Tensor& bias,
    const Tensor& bn_weight, const Tensor& bn_bias, const Tensor& running_mean, const Tensor& running_var,
    bool norm_state, bool training, double momentum, double eps) {
  check_forward_inputs(ids, h0, emb, weight, bias, bn_weight, bn_bias, running_mean, running_var);
  const int64_t B = ids.size(0), T = ids.size(1), H = h0.size(1), V = emb.size(0);
  TORCH_CHECK_VALUE(!training || B > 1, "Expected more than 1 value per channel when training, got input size [",
                    B, ", ", H, "]");
  check_ids(ids, V);
  auto out = at::empty({B, T, H}, h0.options());
  auto hT = at::empty({B, H}, h0.options());
  auto rm = running_mean.clone();
  auto rv = running_var.clone();
  auto xs = at::empty({T, B, H}, h0.options());
  auto rs = at::empty({T, B, H}, h0.options());
  auto mean = at::empty({T, H}, h0.options());
  auto invstd = at::empty({T, H}, h0.options());
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "zoo_cell_forward_cpu", [&] {
    forward_kernel<scalar_t>(ids.data_ptr<int64_t>(), h0.data_ptr<scalar_t>(), emb.data_ptr<scalar_t>(),
                             weight.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                             bn_weight.data_ptr<scalar_t>(), bn_bias.data_ptr<scalar_t>(),
                             rm.data_ptr<scalar_t>(), rv.data_ptr<scalar_t>(), norm_state, training,
                             momentum, eps, B, T, H, out.data_ptr<scalar_t>(), hT.data_ptr<scalar_t>(),
                             xs.data_ptr<scalar_t>(), rs.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                             invstd.data_ptr<scalar_t>());
  });
  return {out, hT, rm, rv, xs, rs, mean, invstd};
}

template <typename scalar_t>
void backward_kernel(const scalar_t* gout, const scalar_t* ghT, const int64_t* ids, const scalar_t* W,
                     const scalar_t* gamma, const scalar_t* xs, const scalar_t* rs, const scalar_t* mean,
                     const scalar_t* invstd, bool norm_state, bool training, int64_t B, int64_t T,
                     int64_t H, scalar_t* gz, scalar_t* gx, scalar_t* gh0, scalar_t* gE, scalar_t* gW,
                     scalar_t* gb, scalar_t* ggamma, scalar_t* gbeta) {
  using acc_t = double;
  std::vector<acc_t> sg(H), sgx(H), dgamma(H, 0), dbeta(H, 0);
  std::vector<scalar_t> gtot(B * H);  // gradient reaching out_t
  const acc_t inv_n = acc_t(1) / B;
  const scalar_t* gh = ghT;  // gradient w.r.t. h_t
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* r = rs + t * B * H;
    const scalar_t* m_t = mean + t * H;
    const scalar_t* is_t = invstd + t * H;
    std::fill(sg.begin(), sg.end(), acc_t(0));
    std::fill(sgx.begin(), sgx.end(), acc_t(0));
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* go = gout + (b * T + t) * H;
      const scalar_t* rb = r + b * H;
      scalar_t* gt = gtot.data() + b * H;
      for (int64_t k = 0; k < H; ++k) {
        const scalar_t g = norm_state ? go[k] + gh[b * H + k] : go[k];
        gt[k] = g;
        sg[k] += g;
        sgx[k] += static_cast<acc_t>(g) * ((rb[k] - m_t[k]) * is_t[k]);
      }
    }
    for (int64_t k = 0; k < H; ++k) {
      dgamma[k] += sgx[k];
      dbeta[k] += sg[k];
    }
    scalar_t* gz_t = gz + t * B * H;
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* rb = r + b * H;
      const scalar_t* gt = gtot.data() + b * H;
      scalar_t* gzb = gz_t + b * H;
      for (int64_t k = 0; k < H; ++k) {
        // In double: with a small batch the three BN terms nearly cancel.
        gzb[k] = static_cast<scalar_t>(zc::bn_relu_backward<acc_t>(
            gt[k], norm_state ? acc_t(0) : gh[b * H + k], rb[k], m_t[k], is_t[k], gamma[k], sg[k], sgx[k], inv_n,
            training));
      }
    }
    scalar_t* gx_t = gx + t * B * H;
    gemm_rowmajor<scalar_t>(false, B, H, gz_t, W, scalar_t(0), gx_t);  // dx_t = dz_t W
    gh = gx_t;  // h_{t-1} enters x_t with coefficient 1
  }
  std::copy(gx, gx + B * H, gh0);
  // dW = sum_t dz_t^T x_t over all T*B rows at once.
  gemm_colmajor<scalar_t>('N', 'T', H, H, T * B, xs, H, gz, H, scalar_t(0), gW, H);
  std::vector<acc_t> sb(H, 0);
  for (int64_t i = 0; i < T * B; ++i)
    for (int64_t k = 0; k < H; ++k) sb[k] += gz[i * H + k];
  for (int64_t k = 0; k < H; ++k) {
    gb[k] = static_cast<scalar_t>(sb[k]);
    ggamma[k] = static_cast<scalar_t>(dgamma[k]);
    gbeta[k] = static_cast<scalar_t>(dbeta[k]);
  }
  // dE[ids[b, t]] += dx_t[b], in a fixed order.
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b) {
      scalar_t* dst = gE + ids[b * T + t] * H;
      const scalar_t* src = gx + (t * B + b) * H;
      for (int64_t k = 0; k < H; ++k) dst[k] += src[k];
    }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> zoo_cell_backward_cpu(
    const Tensor& grad_out, const Tensor& grad_hT, const Tensor& ids, int64_t vocab_size, const Tensor& weight,
    const Tensor& bn_weight, const Tensor& xs, const Tensor& rs, const Tensor& mean, const Tensor& invstd,
    bool norm_state, bool training) {
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, "zoo_cell_backward: ids must be int64");
  TORCH_CHECK_VALUE(ids.dim() == 2 && xs.dim() == 3, "zoo_cell_backward: ids must be (B, T), xs (T, B, H)");
  const int64_t B = ids.size(0), T = ids.size(1), H = weight.size(0);
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({B, T, H}), "zoo_cell_backward: grad_out must be (", B,
                    ", ", T, ", ", H, "), got ", grad_out.sizes());
  TORCH_CHECK_VALUE(grad_hT.sizes() == at::IntArrayRef({B, H}), "zoo_cell_backward: grad_h_T must be (", B, ", ",
                    H, "), got ", grad_hT.sizes());
  TORCH_CHECK_VALUE(xs.sizes() == at::IntArrayRef({T, B, H}) && rs.sizes() == xs.sizes() &&
                        mean.sizes() == at::IntArrayRef({T, H}) && invstd.sizes() == mean.sizes(),
                    "zoo_cell_backward: saved tensors have wrong shapes");
  const Tensor* all[] = {&grad_out, &grad_hT, &ids, &weight, &bn_weight, &xs, &rs, &mean, &invstd};
  for (const Tensor* t : all) {
    TORCH_CHECK(t->is_contiguous(), "zoo_cell_backward: all inputs must be contiguous");
    TORCH_CHECK(t->device() == weight.device(), "zoo_cell_backward: all inputs must be on one device");
    if (t != &ids)
      TORCH_CHECK_TYPE(t->scalar_type() == weight.scalar_type(), "zoo_cell_backward: all float inputs must share a dtype");
  }
  check_ids(ids, vocab_size);
  auto opts = weight.options();
  auto gz = at::empty({T, B, H}, opts);
  auto gx = at::empty({T, B, H}, opts);
  auto gh0 = at::empty({B, H}, opts);
  auto gE = at::zeros({vocab_size, H}, opts);
  auto gW = at::empty({H, H}, opts);
  auto gb = at::empty({H}, opts);
  auto ggamma = at::empty({H}, opts);
  auto gbeta = at::empty({H}, opts);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "zoo_cell_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad_out.data_ptr<scalar_t>(), grad_hT.data_ptr<scalar_t>(), ids.data_ptr<int64_t>(),
                              weight.data_ptr<scalar_t>(), bn_weight.data_ptr<scalar_t>(), xs.data_ptr<scalar_t>(),
                              rs.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>(),
                              norm_state, training, B, T, H, gz.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                              gh0.data_ptr<scalar_t>(), gE.data_ptr<scalar_t>(), gW.data_ptr<scalar_t>(),
                              gb.data_ptr<scalar_t>(), ggamma.data_ptr<scalar_t>(), gbeta.data_ptr<scalar_t>());
  });
  return {gh0, gE, gW, gb, ggamma, gbeta};
}

}  // namespace

TORCH_LIBRARY_IMPL(hnrnn, CPU, m) {
  m.impl("zoo_cell_forward", &zoo_cell_forward_cpu);
  m.impl("zoo_cell_backward", &zoo_cell_backward_cpu);
}
