// hnrnn._C: op schemas of every hnrnn op, and the Python module init.
// Kernels register themselves per dispatch key in csrc/cpu (CPU) and csrc/cuda (CUDA), the
// device-generic network op in csrc/rnn_network.cpp; autograd of the forward ops is C++
// (csrc/autograd.cpp), fake kernels are registered in Python (hnrnn/ops).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <mutex>
#include <set>

#include "common.h"

// The single zoo step is the sequence op with one time step.
static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> zoo_cell_step(
    const at::Tensor& ids, const at::Tensor& h, const at::Tensor& emb, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
    const at::Tensor& running_mean, const at::Tensor& running_var, bool norm_state, bool training,
    double momentum, double eps) {
  TORCH_CHECK(ids.dim() == 1, "zoo_cell_step: ids must be 1-D (B,), got shape ", ids.sizes());
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hnrnn::zoo_cell_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                         at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, bool, bool, double, double, bool)>();
  auto res = op.call(ids.unsqueeze(1).contiguous(), h, emb, weight, bias, bn_weight, bn_bias,
                     running_mean, running_var, norm_state, training, momentum, eps, /*skip_first_linear=*/false);
  return {std::get<0>(res).squeeze(1), std::get<1>(res), std::get<2>(res), std::get<3>(res)};
}

TORCH_LIBRARY(hnrnn, m) {
  // --- zoo cell (recurrent step of Model0..Model3) ---
  // Whole sequence. ids (B, T) int64; h0 (B, H); emb (V, H); weight (H, H); the rest (H,).
  // Returns out (B, T, H), h_T (B, H), the updated running statistics (copies), and what backward
  // needs: xs = h_{t-1} + E[ids_t] and rs = ReLU(xs W^T + b), both time-major (T, B, H), and the
  // per-step batch mean and invstd (T, H) (the running ones, repeated, in eval).
  // skip_first_linear: step 0 has no linear layer, rs_0 = ReLU(xs_0) (the lesson's Model0).
  m.def("zoo_cell_forward(Tensor ids, Tensor h0, Tensor emb, Tensor weight, Tensor bias, "
        "Tensor bn_weight, Tensor bn_bias, Tensor running_mean, Tensor running_var, bool norm_state, "
        "bool training, float momentum, float eps, bool skip_first_linear=False) -> (Tensor out, Tensor h_T, Tensor new_running_mean, "
        "Tensor new_running_var, Tensor xs, Tensor rs, Tensor mean, Tensor invstd)");
  // Reverse time loop. Returns the gradients of h0, emb, weight, bias, bn_weight, bn_bias.
  m.def("zoo_cell_backward(Tensor grad_out, Tensor grad_h_T, Tensor ids, SymInt vocab_size, "
        "Tensor weight, Tensor bn_weight, Tensor xs, Tensor rs, Tensor mean, Tensor invstd, "
        "bool norm_state, bool training, bool skip_first_linear=False) -> (Tensor grad_h0, Tensor grad_emb, Tensor grad_weight, "
        "Tensor grad_bias, Tensor grad_bn_weight, Tensor grad_bn_bias)");
  // One step: ids (B,), h (B, H). Composite of zoo_cell_forward with T = 1 (so autograd, fake
  // tensors and every backend come from the sequence op).
  m.def("zoo_cell_step(Tensor ids, Tensor h, Tensor emb, Tensor weight, Tensor bias, "
        "Tensor bn_weight, Tensor bn_bias, Tensor running_mean, Tensor running_var, bool norm_state, "
        "bool training, float momentum, float eps) -> (Tensor out, Tensor h_new, Tensor new_running_mean, "
        "Tensor new_running_var)", torch::dispatch(c10::DispatchKey::CompositeImplicitAutograd, &zoo_cell_step));

  // --- GRU / RNN recurrence (one layer, one direction; see hnrnn/ops/rnn.py) ---
  // gates_x: (T, B, G*H) = x W_ih^T + b_ih for every step (G = 3 for GRU, 1 for RNN);
  // h0: (B, H); w_hh: (G*H, H); lengths: optional int64 (B,) for packed sequences.
  // Returns out (T, B, H), h_n (B, H) and the workspace backward needs
  // (GRU: (T, B, 5H) = [r, z, n, W_hn h + b_hn, h_prev]; RNN: (T, B, H) = [h], whose h_prev is the
  // state of the step before, or h0: rnn_dispatch.h). save = false (a forward no backward
  // follows: no_grad, inference) writes no workspace and returns an empty one, (0,).
  m.def("gru_recurrence(Tensor gates_x, Tensor h0, Tensor w_hh, Tensor? b_hh, bool reverse, "
        "Tensor? lengths, bool save=True) -> (Tensor, Tensor, Tensor)");
  // Returns the gradients of the input gates and of the recurrent gates (T, B, 3H), and of h0.
  m.def("gru_recurrence_backward(Tensor grad_out, Tensor grad_h_n, Tensor ws, Tensor w_hh, "
        "bool reverse, Tensor? lengths) -> (Tensor, Tensor, Tensor)");
  m.def("rnn_recurrence(Tensor gates_x, Tensor h0, Tensor w_hh, Tensor? b_hh, bool relu, bool reverse, "
        "Tensor? lengths, bool save=True) -> (Tensor, Tensor, Tensor)");
  // Returns the gradient of the pre-activation gates (T, B, H) (input and recurrent alike) and of h0.
  m.def("rnn_recurrence_backward(Tensor grad_out, Tensor grad_h_n, Tensor ws, Tensor w_hh, bool relu, "
        "bool reverse, Tensor? lengths) -> (Tensor, Tensor)");

  // --- stacked / bidirectional GRU and RNN (csrc/rnn_network.cpp; what hnrnn.nn runs) ---
  // input (T, B, I) time-major; hx (num_layers * D, B, H); weights: per layer and direction
  // [w_ih, w_hh] or [w_ih, w_hh, b_ih, b_hh] as torch.nn orders them; mode 0 gru, 1 rnn_tanh,
  // 2 rnn_relu. Returns output (T, B, D*H), h_n, and what backward needs (none, an empty list,
  // when save = false). Draws the dropout noise.
  m.def("rnn_network(Tensor input, Tensor hx, Tensor[] weights, int mode, int num_layers, "
        "bool bidirectional, float dropout, bool train, Tensor? lengths, bool save=True) -> "
        "(Tensor output, Tensor h_n, Tensor[] saved)", {at::Tag::nondeterministic_seeded});
  // Gradients of input (zeros unless input_grad), hx and every weight (in the order of weights).
  m.def("rnn_network_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor hx, Tensor[] weights, "
        "Tensor[] saved, int mode, int num_layers, bool bidirectional, Tensor? lengths, bool input_grad) -> "
        "(Tensor grad_input, Tensor grad_hx, Tensor[] grad_weights)");
}

static bool cuda_compiled() {
#ifdef HNRNN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The number of threads at::parallel_for spreads `tasks` one-item tasks over: the CPU kernels
// split their batch blocks this way, and an extension built without the flags of torch's
// parallel backend (-fopenmp) silently runs them all on one thread.
static int64_t parallel_for_threads(int64_t tasks) {
  std::mutex mutex;
  std::set<int> threads;
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mutex);
    threads.insert(at::get_thread_num());
  });
  return static_cast<int64_t>(threads.size());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hnrnn compiled ops (registered under torch.ops.hnrnn)";
  m.def("cuda_compiled", &cuda_compiled, "True when the CUDA kernels were compiled into this build");
  m.def("parallel_for_threads", &parallel_for_threads,
        "How many threads at::parallel_for (as the CPU kernels call it) uses for `tasks` tasks");
  m.def("debug_fill_nan", &hnrnn::debug_fill_nan,
        "True when HNRNN_DEBUG_FILL_NAN=1 was set at the first kernel allocation: buffers start as NaN");
}
