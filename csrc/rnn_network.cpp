// Stacked, optionally bidirectional GRU / vanilla RNN as one op: what hnrnn.nn.GRU / RNN run on
// the compiled backends (cpu, cuda). Device-generic: it composes ATen GEMMs with the per-device
// recurrence ops (hnrnn::gru_recurrence / rnn_recurrence, csrc/cpu and csrc/cuda) through the
// dispatcher, so it is registered for CPU and CUDA alike.
//
// Forward, per layer and direction: the input projection of all steps as one GEMM, then the
// fused recurrence. Between layers (training, dropout > 0) ATen's CPU dropout: a bernoulli noise
// tensor scaled by 1 / (1 - p), so the RNG stream is the one torch.nn.GRU / RNN draw on the CPU.
// Backward walks the layers in reverse: the recurrence backward op (only dh stays sequential),
// then dW_hh, dW_ih, the biases and dx as GEMMs / reductions over all steps at once.
// On the GPU a unidirectional stack of 2+ layers with no dropout running (eval, or p = 0) whose
// weights fit one SM runs its recurrences as one launch instead, forward and backward (stack_recurrence_cuda, the wavefront of
// csrc/cuda/rnn.cu), with the same outputs and `saved`; the GEMMs stay as above.
//
// One op per module call replaces a Python loop over layers whose glue (projection, autograd
// wrappers, stacking) cost more than the kernels at the lesson's sizes; its autograd is C++ too
// (csrc/autograd.cpp).
//
// `saved` (what backward needs besides input, hx and the weights; an op output so that fake
// tensors and torch.compile see it):
//   [ws of each layer and direction (L*D), input of layers 1..L-1 after dropout (L-1),
//    dropout noise of layers 1..L-1 (L-1; empty tensors where no dropout ran)];
// with save = false (a forward no backward follows) nothing: the recurrences write no
// workspace and the list is empty.
#include <torch/extension.h>

#include <algorithm>

#include "rnn_dispatch.h"

namespace hnrnn {
namespace {

using at::Tensor;

struct LayerWeights {
  Tensor w_ih, w_hh;
  c10::optional<Tensor> b_ih, b_hh;
};

// weights: per layer and direction k, [w_ih, w_hh] or [w_ih, w_hh, b_ih, b_hh] (torch.nn's order).
bool has_bias(at::TensorList weights, int64_t layers_dirs) {
  TORCH_CHECK(weights.size() == static_cast<size_t>(2 * layers_dirs) ||
                  weights.size() == static_cast<size_t>(4 * layers_dirs),
              "rnn_network: expected 2 or 4 weight tensors per layer and direction (", layers_dirs,
              " of them), got ", weights.size());
  return weights.size() == static_cast<size_t>(4 * layers_dirs);
}

LayerWeights layer_weights(at::TensorList weights, int64_t k, bool bias) {
  const int64_t n = bias ? 4 : 2;
  LayerWeights w{weights[k * n], weights[k * n + 1], c10::nullopt, c10::nullopt};
  if (bias) {
    w.b_ih = weights[k * n + 2];
    w.b_hh = weights[k * n + 3];
  }
  return w;
}

void check_network(const Tensor& input, const Tensor& hx, at::TensorList weights, int64_t mode,
                   int64_t num_layers, bool bidirectional) {
  TORCH_CHECK(mode == kGru || mode == kRnnTanh || mode == kRnnRelu,
              "rnn_network: mode must be 0 (gru), 1 (rnn_tanh) or 2 (rnn_relu), got ", mode);
  TORCH_CHECK(num_layers >= 1, "rnn_network: num_layers must be >= 1, got ", num_layers);
  TORCH_CHECK(input.dim() == 3, "rnn_network: input must be (T, B, input_size), got ", input.sizes());
  const int64_t D = bidirectional ? 2 : 1;
  TORCH_CHECK(hx.dim() == 3 && hx.size(0) == num_layers * D && hx.size(1) == input.size(1),
              "rnn_network: hx must be (", num_layers * D, ", ", input.size(1), ", H), got ", hx.sizes());
  has_bias(weights, num_layers * D);
}

#ifdef HNRNN_WITH_CUDA
// The stacked kernel (csrc/cuda/rnn.cu) runs on CUDA tensors; in the tests' CUDA emulation
// (tests/cuda_emulation), on CPU ones.
bool on_stack_device(const Tensor& t) {
#ifdef HNRNN_CUDA_EMULATION
  return t.is_cpu();
#else
  return t.is_cuda();
#endif
}
#endif

}  // namespace

std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_network(const Tensor& input, const Tensor& hx,
                                                            at::TensorList weights, int64_t mode,
                                                            int64_t num_layers, bool bidirectional,
                                                            double dropout, bool train,
                                                            const c10::optional<Tensor>& lengths, bool save) {
  check_network(input, hx, weights, mode, num_layers, bidirectional);
  const int64_t D = bidirectional ? 2 : 1;
  const bool bias = has_bias(weights, num_layers * D);
#ifdef HNRNN_WITH_CUDA
  // A unidirectional stack without dropout on the GPU: all layers in one launch (the wavefront).
  if (on_stack_device(input) && D == 1 && num_layers > 1 && !(train && dropout > 0) &&
      stack_recurrence_fits(mode, num_layers, hx.size(2), input.scalar_type(), input.get_device())) {
    const LayerWeights w0 = layer_weights(weights, 0, bias);
    auto [outs, h_n, saved] =
        stack_recurrence_cuda(mode, at::linear(input, w0.w_ih, w0.b_ih), hx, weights, lengths, save);
    if (!save) return {outs[num_layers - 1], h_n, {}};
    // `saved` as the loop below leaves it: workspaces, the inputs of layers 1.., dropout noises
    for (int64_t l = 0; l + 1 < num_layers; ++l) saved.push_back(outs[l]);
    for (int64_t l = 0; l + 1 < num_layers; ++l) saved.push_back(at::empty({0}, input.options()));
    return {outs[num_layers - 1], h_n, saved};
  }
#endif
  std::vector<Tensor> ws(num_layers * D), h_n(num_layers * D), layer_inputs, noises;
  Tensor x = input;
  for (int64_t l = 0; l < num_layers; ++l) {
    std::vector<Tensor> outs(D);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      const LayerWeights w = layer_weights(weights, k, bias);
      const Tensor gates_x = at::linear(x, w.w_ih, w.b_ih);  // every step at once: one GEMM
      std::tie(outs[d], h_n[k], ws[k]) =
          call_recurrence(mode, gates_x, hx[k], w.w_hh, w.b_hh, d == 1, lengths, save);
    }
    x = D == 2 ? at::cat(outs, 2) : outs[0];
    if (l + 1 < num_layers) {
      Tensor noise = at::empty({0}, x.options());
      if (train && dropout > 0) {
        // ATen's CPU dropout (Dropout.cpp, _dropout_impl): the same draws as torch.nn's RNNs.
        noise = dropout >= 1 ? at::zeros_like(x) : at::empty_like(x).bernoulli_(1 - dropout).div_(1 - dropout);
        x = x * noise;
      }
      layer_inputs.push_back(x);
      noises.push_back(noise);
    }
  }
  if (!save) return {x, at::stack(h_n, 0), {}};
  std::vector<Tensor> saved = std::move(ws);
  saved.insert(saved.end(), layer_inputs.begin(), layer_inputs.end());
  saved.insert(saved.end(), noises.begin(), noises.end());
  return {x, at::stack(h_n, 0), saved};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_network_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx, at::TensorList weights,
    at::TensorList saved, int64_t mode, int64_t num_layers, bool bidirectional,
    const c10::optional<Tensor>& lengths, bool input_grad) {
  const int64_t D = bidirectional ? 2 : 1, LD = num_layers * D;
  const bool bias = has_bias(weights, LD);
  TORCH_CHECK(saved.size() == static_cast<size_t>(LD + 2 * (num_layers - 1)),
              "rnn_network_backward: expected ", LD + 2 * (num_layers - 1), " saved tensors, got ", saved.size());
  // hx gives the RNN's h_prev at each sequence's first step (recurrent_weight_grads)
  TORCH_CHECK_VALUE(hx.sizes() == grad_h_n.sizes() && hx.scalar_type() == grad_h_n.scalar_type() &&
                        hx.device() == grad_h_n.device(),
                    "rnn_network_backward: hx must be the forward's initial state, ", grad_h_n.sizes(), " ",
                    grad_h_n.scalar_type(), " on ", grad_h_n.device(), " as grad_h_n, got ", hx.sizes(), " ",
                    hx.scalar_type(), " on ", hx.device());
  const int64_t T = input.size(0), B = input.size(1), H = grad_h_n.size(2), G = gates_of(mode);
  const int64_t n = bias ? 4 : 2;  // weights per layer and direction
  std::vector<Tensor> grad_weights(weights.size());
  // The weight gradients of layer-direction k from its gate gradients: GEMMs / sums over all steps.
  auto weight_grads = [&](int64_t k, const Tensor& dgx2, const Tensor& dgh, const Tensor& x2) {
    auto [dw_hh, db_hh] = recurrent_weight_grads(mode, dgh, saved[k], hx[k], k % D == 1, lengths);
    grad_weights[k * n] = dgx2.t().mm(x2);
    grad_weights[k * n + 1] = dw_hh;
    if (bias) {
      grad_weights[k * n + 2] = dgx2.sum(0);
      grad_weights[k * n + 3] = db_hh;
    }
  };
  auto layer_input = [&](int64_t l) { return l == 0 ? input : saved[LD + l - 1]; };
#ifdef HNRNN_WITH_CUDA
  // The stack's sequential parts in one launch on the GPU, as its forward (rnn_network above).
  const bool dropout_ran = std::any_of(saved.begin() + LD + num_layers - 1, saved.end(),
                                       [](const Tensor& noise) { return noise.numel() > 0; });
  if (on_stack_device(grad_output) && D == 1 && num_layers > 1 && !dropout_ran &&
      stack_recurrence_fits(mode, num_layers, H, grad_output.scalar_type(), grad_output.get_device())) {
    auto [dgx, dgh, dh0] =
        stack_recurrence_backward_cuda(mode, grad_output, grad_h_n, saved.slice(0, LD), weights, lengths);
    for (int64_t l = 0; l < num_layers; ++l) {
      const Tensor x = layer_input(l);
      weight_grads(l, dgx[l].view({T * B, G * H}), dgh[l], x.reshape({T * B, x.size(2)}));
    }
    const Tensor grad_input = input_grad ? dgx[0].view({T * B, G * H}).mm(weights[0]).view(input.sizes())
                                         : at::zeros_like(input);
    return {grad_input, dh0, grad_weights};
  }
#endif
  std::vector<Tensor> grad_hx(LD);
  Tensor grad_input;
  Tensor dy = grad_output;  // gradient of the current layer's output (T, B, D*H)
  for (int64_t l = num_layers - 1; l >= 0; --l) {
    const Tensor x = layer_input(l);
    const int64_t I = x.size(2);
    const Tensor x2 = x.reshape({T * B, I});
    const bool need_dx = l > 0 || input_grad;  // dx of layer 0 only when the input wants it
    Tensor dx;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      const LayerWeights w = layer_weights(weights, k, bias);
      const Tensor go = D == 2 ? dy.narrow(2, d * H, H).contiguous() : dy.contiguous();
      auto [dgx, dgh, dh0] = call_recurrence_backward(mode, go, grad_h_n[k].contiguous(), saved[k], w.w_hh,
                                                      d == 1, lengths);
      const Tensor dgx2 = dgx.view({T * B, G * H});
      weight_grads(k, dgx2, dgh, x2);
      grad_hx[k] = dh0;
      if (need_dx) dx = d == 0 ? dgx2.mm(w.w_ih) : dx.addmm_(dgx2, w.w_ih);
    }
    if (l == 0) {
      grad_input = need_dx ? dx.view({T, B, I}) : at::zeros_like(input);  // zeros keep the schema
    } else {
      dx = dx.view({T, B, I});
      const Tensor& noise = saved[LD + (num_layers - 1) + l - 1];
      dy = noise.numel() > 0 ? dx * noise : dx;
    }
  }
  return {grad_input, at::stack(grad_hx, 0), grad_weights};
}

}  // namespace hnrnn

TORCH_LIBRARY_IMPL(hnrnn, CPU, m) {
  m.impl("rnn_network", &hnrnn::rnn_network);
  m.impl("rnn_network_backward", &hnrnn::rnn_network_backward);
}

#ifdef HNRNN_WITH_CUDA
TORCH_LIBRARY_IMPL(hnrnn, CUDA, m) {
  m.impl("rnn_network", &hnrnn::rnn_network);
  m.impl("rnn_network_backward", &hnrnn::rnn_network_backward);
}
#endif
