#pragma once
// Input checks of the compiled ops, shared by the CPU and CUDA kernels so that both refuse bad
// input alike, naming the input, before any kernel reads a pointer (the Python entry points check
// first, with torch.nn's exception types; these guard direct calls of torch.ops.hnrnn.*).
#include <torch/extension.h>

namespace hnrnn {

// gru_recurrence / rnn_recurrence (gates = 3 / 1): shapes, one dtype, one device (lengths, int64
// (B,), may be on any device: the kernels copy it where they read it).
void check_recurrence_inputs(const at::Tensor& gates_x, const at::Tensor& h0, const at::Tensor& w_hh,
                             const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
                             int64_t gates);

// Their backward ops (workspace width ws_width * H, see hnrnn/ops/rnn.py).
void check_recurrence_backward_inputs(const at::Tensor& grad_out, const at::Tensor& grad_h_n, const at::Tensor& ws,
                                      const at::Tensor& w_hh, const c10::optional<at::Tensor>& lengths,
                                      int64_t gates, int64_t ws_width);

}  // namespace hnrnn

namespace hnrnn::zoo {

// The zoo cell; the ids range is checked by each kernel.

void check_forward_inputs(const at::Tensor& ids, const at::Tensor& h0, const at::Tensor& emb,
                          const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& bn_weight,
                          const at::Tensor& bn_bias, const at::Tensor& running_mean, const at::Tensor& running_var,
                          bool training);

void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& grad_hT, const at::Tensor& ids,
                           const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& xs,
                           const at::Tensor& rs, const at::Tensor& mean, const at::Tensor& invstd);

}  // namespace hnrnn::zoo
