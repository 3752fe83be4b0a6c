#pragma once
// The GRU / RNN recurrence ops called from C++ through the dispatcher (so the CPU or CUDA
// kernel runs, or a fake kernel under torch.compile), and the weight gradients of one
// recurrence. Shared by the network op (rnn_network.cpp) and the autograd (autograd.cpp).
#include <torch/extension.h>

#include <tuple>
#include <vector>

namespace hnrnn {

enum RnnMode : int64_t { kGru = 0, kRnnTanh = 1, kRnnRelu = 2 };

inline int64_t gates_of(int64_t mode) { return mode == kGru ? 3 : 1; }
// Width of the workspace in units of H (layouts in hnrnn/ops/rnn.py): the GRU's ends with
// h_prev; the RNN's is its states alone, h_prev being the state of the step before (or h0).
constexpr int64_t ws_width(bool gru) { return gru ? 5 : 1; }
inline int64_t ws_width_of(int64_t mode) { return ws_width(mode == kGru); }

// save = false: no workspace (an empty one comes back), for a forward no backward follows.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> call_recurrence(
    int64_t mode, const at::Tensor& gates_x, const at::Tensor& h0, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_hh, bool reverse, const c10::optional<at::Tensor>& lengths, bool save) {
  using at::Tensor;
  if (mode == kGru) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("hnrnn::gru_recurrence", "")
                         .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                   const c10::optional<Tensor>&, bool,
                                                                   const c10::optional<Tensor>&, bool)>();
    return op.call(gates_x, h0, w_hh, b_hh, reverse, lengths, save);
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hnrnn::rnn_recurrence", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                 const c10::optional<Tensor>&, bool, bool,
                                                                 const c10::optional<Tensor>&, bool)>();
  return op.call(gates_x, h0, w_hh, b_hh, mode == kRnnRelu, reverse, lengths, save);
}

// The shape of a recurrence's workspace: (T, B, ws_width * H) when saved, else (0,).
inline std::vector<int64_t> workspace_shape(bool gru, int64_t T, int64_t B, int64_t H, bool save) {
  return save ? std::vector<int64_t>{T, B, ws_width(gru) * H} : std::vector<int64_t>{0};
}

// (gradient of the input gates, of the recurrent gates, of h0); for the RNN the two gate
// gradients are the same tensor.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> call_recurrence_backward(
    int64_t mode, const at::Tensor& grad_out, const at::Tensor& grad_h_n, const at::Tensor& ws,
    const at::Tensor& w_hh, bool reverse, const c10::optional<at::Tensor>& lengths) {
  using at::Tensor;
  if (mode == kGru) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("hnrnn::gru_recurrence_backward", "")
                         .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                   const Tensor&, bool,
                                                                   const c10::optional<Tensor>&)>();
    return op.call(grad_out, grad_h_n, ws, w_hh, reverse, lengths);
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hnrnn::rnn_recurrence_backward", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                         const Tensor&, bool, bool,
                                                         const c10::optional<Tensor>&)>();
  auto r = op.call(grad_out, grad_h_n, ws, w_hh, mode == kRnnRelu, reverse, lengths);
  return {std::get<0>(r), std::get<0>(r), std::get<1>(r)};
}

// The RNN's h_prev of every step from its states (the workspace) and h0: the state of the step
// before in the direction of the recurrence, h0 at a sequence's first step (t = 0 forward;
// t = lengths[b] - 1, else T - 1, reverse). Masked steps get finite values (states there are 0),
// which the dW_hh GEMM multiplies by their zero gate gradients.
inline at::Tensor rnn_previous_states(const at::Tensor& h, const at::Tensor& h0, bool reverse,
                                      const c10::optional<at::Tensor>& lengths) {
  const auto T = h.sym_size(0);
  const at::Tensor first = h0.unsqueeze(0);
  if (!reverse) return at::cat({first, h.narrow_symint(0, 0, T - 1)}, 0);
  const at::Tensor prev = at::cat({h.narrow_symint(0, 1, T - 1), first}, 0);
  if (!lengths.has_value()) return prev;
  const at::Tensor steps = at::arange(c10::Scalar(T), lengths->options().device(h.device())).unsqueeze(1);  // (T, 1)
  const at::Tensor is_first = steps.eq(lengths->to(h.device()).unsqueeze(0) - 1).unsqueeze(2);         // (T, B, 1)
  return at::where(is_first, first, prev);
}

// dW_hh = sum_t dG_h[t]^T h_prev[t] (one GEMM over all steps) and db_hh = sum_t dG_h[t].
// h_prev: the GRU's from its workspace; the RNN's from its states and h0 (read for the RNN only).
inline std::tuple<at::Tensor, at::Tensor> recurrent_weight_grads(int64_t mode, const at::Tensor& dgh,
                                                                 const at::Tensor& ws, const at::Tensor& h0,
                                                                 bool reverse,
                                                                 const c10::optional<at::Tensor>& lengths) {
  const auto rows = ws.sym_size(0) * ws.sym_size(1);
  const auto H = dgh.sym_size(2) / gates_of(mode);
  const at::Tensor dgh2 = dgh.reshape_symint({rows, gates_of(mode) * H});
  if (rows == 0) return {at::zeros_symint({gates_of(mode) * H, H}, dgh.options()), dgh2.sum(0)};  // T = 0 or B = 0
  const at::Tensor h_prev = mode == kGru ? ws.narrow_symint(2, (ws_width_of(mode) - 1) * H, H)
                                         : rnn_previous_states(ws, h0, reverse, lengths);
  return {dgh2.t().mm(h_prev.reshape_symint({rows, H})), dgh2.sum(0)};
}

#ifdef HNRNN_WITH_CUDA
// csrc/cuda/rnn.cu: every layer of a unidirectional stack in one launch (the wavefront), when one
// block's shared memory holds all their weights. weights: torch.nn's order, 2 or 4 per layer
// (layer 0's W_ih and b_ih unused: gates_x0 is its input projection). Returns each layer's
// output (T, B, H), h_n (L, B, H) and each layer's workspace (T, B, ws_width * H; empty, (0,),
// when not `save`), as one recurrence op per layer would.
bool stack_recurrence_fits(int64_t mode, int64_t num_layers, int64_t H, at::ScalarType dtype, int device);
std::tuple<std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>> stack_recurrence_cuda(
    int64_t mode, const at::Tensor& gates_x0, const at::Tensor& hx, at::TensorList weights,
    const c10::optional<at::Tensor>& lengths, bool save);
// Its backward, the sequential part: grad_out of the top layer (T, B, H), grad_h_n (L, B, H),
// each layer's workspace. Returns each layer's input and recurrent gate gradients (T, B, G * H;
// for the RNN the same tensor) and dh0 (L, B, H); the weight gradients are GEMMs after it.
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> stack_recurrence_backward_cuda(
    int64_t mode, const at::Tensor& grad_out, const at::Tensor& grad_h_n, at::TensorList ws, at::TensorList weights,
    const c10::optional<at::Tensor>& lengths);
#endif

}  // namespace hnrnn
