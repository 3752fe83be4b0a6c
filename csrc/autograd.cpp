// Autograd of the compiled forward ops, in C++: a torch::autograd::Function per op, registered
// at the Autograd dispatch key. At the lesson's sizes a Python autograd wrapper
// (torch.library.register_autograd) costs as much host time as the kernels themselves, on the
// CPU and as launch latency on the GPU. Each Function runs its op below autograd (the CPU / CUDA
// kernel, or the fake kernel under torch.compile) and saves what its backward op needs; the
// backward ops have schemas and fake kernels too, so torch.compile traces forward and backward.
// The Triton ops keep their Python autograd (hnrnn/ops).
#include <torch/extension.h>

#include "rnn_dispatch.h"

namespace hnrnn {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A gradient the engine did not materialise (that output was unused): zeros shaped like `like`.
Tensor grad_or_zeros(const Tensor& grad, const Tensor& like) {
  return grad.defined() ? grad.contiguous() : at::zeros_like(like, at::MemoryFormat::Contiguous);
}

// Refuses save = false on a call autograd records (grad mode on, one of `inputs` requiring grad):
// its backward would need the workspace that call does not write.
void check_save(const char* op, bool save, at::ArrayRef<Tensor> inputs) {
  if (save || !at::GradMode::is_enabled()) return;
  for (const Tensor& t : inputs) {
    TORCH_CHECK_VALUE(!(t.defined() && t.requires_grad()), op,
                      ": save=False, but autograd records this call (grad mode is on and an input requires "
                      "grad), and its backward needs what is saved; pass save=True or run under torch.no_grad()");
  }
}

// ------------------------------------------------------------------ zoo cell
using ZooForward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, bool, bool, double, double, bool);
using ZooBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, c10::SymInt, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, bool, bool, bool);

struct ZooCellFunction : public torch::autograd::Function<ZooCellFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& ids, const Tensor& h0, const Tensor& emb,
                               const Tensor& weight, const Tensor& bias, const Tensor& bn_weight,
                               const Tensor& bn_bias, const Tensor& running_mean, const Tensor& running_var,
                               bool norm_state, bool training, double momentum, double eps,
                               bool skip_first_linear) {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("hnrnn::zoo_cell_forward", "").typed<ZooForward>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, h_T, new_rm, new_rv, xs, rs, mean, invstd] =
        op.call(ids, h0, emb, weight, bias, bn_weight, bn_bias, running_mean, running_var, norm_state, training,
                momentum, eps, skip_first_linear);
    ctx->save_for_backward({ids, weight, bn_weight, xs, rs, mean, invstd, h_T});
    ctx->saved_data["vocab_size"] = emb.sym_size(0);
    ctx->saved_data["norm_state"] = norm_state;
    ctx->saved_data["training"] = training;
    ctx->saved_data["skip_first_linear"] = skip_first_linear;
    ctx->mark_non_differentiable({new_rm, new_rv, xs, rs, mean, invstd});
    ctx->set_materialize_grads(false);  // no zeros for the outputs backward ignores
    return {out, h_T, new_rm, new_rv, xs, rs, mean, invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("hnrnn::zoo_cell_backward", "").typed<ZooBackward>();
    const auto s = ctx->get_saved_variables();
    const Tensor &ids = s[0], &weight = s[1], &bn_weight = s[2], &xs = s[3], &h_T = s[7];
    // grad of out is (B, T, H); xs is (T, B, H)
    const Tensor grad_out = grads[0].defined() ? grads[0].contiguous()
                                               : at::zeros_symint({xs.sym_size(1), xs.sym_size(0), xs.sym_size(2)},
                                                                  xs.options());
    auto [g_h0, g_emb, g_w, g_b, g_gamma, g_beta] =
        op.call(grad_out, grad_or_zeros(grads[1], h_T), ids, ctx->saved_data["vocab_size"].toSymInt(), weight,
                bn_weight, xs, s[4], s[5], s[6], ctx->saved_data["norm_state"].toBool(),
                ctx->saved_data["training"].toBool(), ctx->saved_data["skip_first_linear"].toBool());
    return {Tensor(), g_h0,     g_emb,    g_w,      g_b,      g_gamma, g_beta,
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> zoo_cell_forward_autograd(
    const Tensor& ids, const Tensor& h0, const Tensor& emb, const Tensor& weight, const Tensor& bias,
    const Tensor& bn_weight, const Tensor& bn_bias, const Tensor& running_mean, const Tensor& running_var,
    bool norm_state, bool training, double momentum, double eps, bool skip_first_linear) {
  auto r = ZooCellFunction::apply(ids, h0, emb, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                  norm_state, training, momentum, eps, skip_first_linear);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]};
}

// ------------------------------------------------------------------ one recurrence (GRU / RNN)
struct RecurrenceFunction : public torch::autograd::Function<RecurrenceFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& gates_x, const Tensor& h0, const Tensor& w_hh,
                               const c10::optional<Tensor>& b_hh, int64_t mode, bool reverse,
                               const c10::optional<Tensor>& lengths, bool save) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, h_n, ws] = call_recurrence(mode, gates_x, h0, w_hh, b_hh, reverse, lengths, save);
    // h0: the RNN's h_prev at each sequence's first step (the GRU's workspace holds its h_prev)
    ctx->save_for_backward({ws, w_hh, h_n, lengths.value_or(Tensor()), mode == kGru ? Tensor() : h0});
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["has_bias"] = b_hh.has_value();
    ctx->mark_non_differentiable({ws});
    ctx->set_materialize_grads(false);  // no zero-filled gradient for the workspace
    return {out, h_n, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const Tensor &ws = s[0], &w_hh = s[1], &h_n = s[2];
    const c10::optional<Tensor> lengths = s[3].defined() ? c10::optional<Tensor>(s[3]) : c10::nullopt;
    const int64_t mode = ctx->saved_data["mode"].toInt();
    const Tensor grad_out = grads[0].defined() ? grads[0].contiguous()
                                               : at::zeros_symint({ws.sym_size(0), ws.sym_size(1), h_n.sym_size(1)},
                                                                  ws.options());
    auto [dgx, dgh, dh0] = call_recurrence_backward(mode, grad_out, grad_or_zeros(grads[1], h_n), ws, w_hh,
                                                    ctx->saved_data["reverse"].toBool(), lengths);
    auto [dw, db] = recurrent_weight_grads(mode, dgh, ws, s[4], ctx->saved_data["reverse"].toBool(), lengths);
    return {dgx, dh0, dw, ctx->saved_data["has_bias"].toBool() ? db : Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> recurrence_autograd(const char* op, int64_t mode, const Tensor& gates_x,
                                                       const Tensor& h0, const Tensor& w_hh,
                                                       const c10::optional<Tensor>& b_hh, bool reverse,
                                                       const c10::optional<Tensor>& lengths, bool save) {
  check_save(op, save, {gates_x, h0, w_hh, b_hh.value_or(Tensor())});
  auto r = RecurrenceFunction::apply(gates_x, h0, w_hh, b_hh, mode, reverse, lengths, save);
  return {r[0], r[1], r[2]};
}

std::tuple<Tensor, Tensor, Tensor> gru_recurrence_autograd(const Tensor& gates_x, const Tensor& h0,
                                                           const Tensor& w_hh, const c10::optional<Tensor>& b_hh,
                                                           bool reverse, const c10::optional<Tensor>& lengths,
                                                           bool save) {
  return recurrence_autograd("gru_recurrence", kGru, gates_x, h0, w_hh, b_hh, reverse, lengths, save);
}

std::tuple<Tensor, Tensor, Tensor> rnn_recurrence_autograd(const Tensor& gates_x, const Tensor& h0,
                                                           const Tensor& w_hh, const c10::optional<Tensor>& b_hh,
                                                           bool relu, bool reverse,
                                                           const c10::optional<Tensor>& lengths, bool save) {
  return recurrence_autograd("rnn_recurrence", relu ? kRnnRelu : kRnnTanh, gates_x, h0, w_hh, b_hh, reverse,
                             lengths, save);
}

// ------------------------------------------------------------------ stacked network
using NetworkForward = std::tuple<Tensor, Tensor, std::vector<Tensor>>(
    const Tensor&, const Tensor&, at::TensorList, int64_t, int64_t, bool, double, bool, const c10::optional<Tensor>&,
    bool);
using NetworkBackward = std::tuple<Tensor, Tensor, std::vector<Tensor>>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, at::TensorList, at::TensorList, int64_t, int64_t, bool,
    const c10::optional<Tensor>&, bool);

struct NetworkFunction : public torch::autograd::Function<NetworkFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx, at::TensorList weights,
                               int64_t mode, int64_t num_layers, bool bidirectional, double dropout, bool train,
                               const c10::optional<Tensor>& lengths, bool save) {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("hnrnn::rnn_network", "").typed<NetworkForward>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, h_n, saved] =
        op.call(input, hx, weights, mode, num_layers, bidirectional, dropout, train, lengths, save);
    variable_list to_save{input, h_n, lengths.value_or(Tensor()), hx};
    to_save.insert(to_save.end(), weights.begin(), weights.end());
    to_save.insert(to_save.end(), saved.begin(), saved.end());
    ctx->save_for_backward(to_save);
    ctx->saved_data["n_weights"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["num_layers"] = num_layers;
    ctx->saved_data["bidirectional"] = bidirectional;
    ctx->mark_non_differentiable(saved);
    ctx->set_materialize_grads(false);
    variable_list outputs{output, h_n};
    outputs.insert(outputs.end(), saved.begin(), saved.end());
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("hnrnn::rnn_network_backward", "").typed<NetworkBackward>();
    const auto s = ctx->get_saved_variables();
    const Tensor &input = s[0], &h_n = s[1];
    const c10::optional<Tensor> lengths = s[2].defined() ? c10::optional<Tensor>(s[2]) : c10::nullopt;
    const int64_t n_weights = ctx->saved_data["n_weights"].toInt();
    const Tensor& hx = s[3];
    const std::vector<Tensor> weights(s.begin() + 4, s.begin() + 4 + n_weights);
    const std::vector<Tensor> saved(s.begin() + 4 + n_weights, s.end());
    const int64_t num_layers = ctx->saved_data["num_layers"].toInt();
    // grad of output is (T, B, D*H), D = h_n.size(0) / num_layers
    const Tensor grad_output =
        grads[0].defined() ? grads[0].contiguous()
                           : at::zeros_symint({input.sym_size(0), input.sym_size(1),
                                               h_n.sym_size(0) / num_layers * h_n.sym_size(2)},
                                              input.options());
    auto [d_input, d_hx, d_weights] =
        op.call(grad_output, grad_or_zeros(grads[1], h_n), input, hx, weights, saved, ctx->saved_data["mode"].toInt(),
                num_layers, ctx->saved_data["bidirectional"].toBool(), lengths,
                ctx->needs_input_grad(0));
    // one gradient per forward argument: input, hx, each weight, then the 7 non-differentiable ones
    variable_list result{d_input, d_hx};
    result.insert(result.end(), d_weights.begin(), d_weights.end());
    result.resize(result.size() + 7);
    return result;
  }
};

std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_network_autograd(const Tensor& input, const Tensor& hx,
                                                                     at::TensorList weights, int64_t mode,
                                                                     int64_t num_layers, bool bidirectional,
                                                                     double dropout, bool train,
                                                                     const c10::optional<Tensor>& lengths, bool save) {
  check_save("rnn_network", save, {input, hx});
  check_save("rnn_network", save, weights);
  auto r = NetworkFunction::apply(input, hx, weights, mode, num_layers, bidirectional, dropout, train, lengths, save);
  return {r[0], r[1], std::vector<Tensor>(r.begin() + 2, r.end())};
}

}  // namespace
}  // namespace hnrnn

TORCH_LIBRARY_IMPL(hnrnn, Autograd, m) {
  m.impl("zoo_cell_forward", &hnrnn::zoo_cell_forward_autograd);
  m.impl("gru_recurrence", &hnrnn::gru_recurrence_autograd);
  m.impl("rnn_recurrence", &hnrnn::rnn_recurrence_autograd);
  m.impl("rnn_network", &hnrnn::rnn_network_autograd);
}
