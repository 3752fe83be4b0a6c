// Input checks of the compiled ops (op_checks.h), shared by csrc/cpu and csrc/cuda.
#include "op_checks.h"

#include <initializer_list>
#include <utility>

namespace hnrnn {
namespace {

using at::Tensor;
using Named = std::pair<const char*, const Tensor*>;

// Every tensor on `like`'s device, contiguous where asked; the float ones (all but `index`) of its dtype.
void check_layout(const char* op, std::initializer_list<Named> tensors, const Named& like, const Tensor* index,
                  bool contiguous) {
  const Tensor& ref = *like.second;
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(!contiguous || t->is_contiguous(), op, ": ", name, " must be contiguous");
    TORCH_CHECK(t->device() == ref.device(), op, ": ", name, " is on ", t->device(), " but ", like.first, " is on ",
                ref.device());
    if (t != index) {
      TORCH_CHECK_TYPE(t->scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t->scalar_type(),
                       " but ", like.first, " has ", ref.scalar_type());
    }
  }
}

void check_lengths(const char* op, const c10::optional<Tensor>& lengths, int64_t B) {
  if (!lengths.has_value()) return;
  TORCH_CHECK_VALUE(lengths->dim() == 1 && lengths->size(0) == B, op, ": lengths must be (", B, ",), got ",
                    lengths->sizes());
  TORCH_CHECK_TYPE(lengths->scalar_type() == at::kLong, op, ": lengths must be int64, got ", lengths->scalar_type());
}

}  // namespace

void check_recurrence_inputs(const Tensor& gates_x, const Tensor& h0, const Tensor& w_hh,
                             const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& lengths,
                             int64_t gates) {
  const char* op = gates == 3 ? "gru_recurrence" : "rnn_recurrence";
  TORCH_CHECK_VALUE(gates_x.dim() == 3, op, ": gates_x must be (T, B, ", gates, " * H), got ", gates_x.sizes());
  TORCH_CHECK_VALUE(h0.dim() == 2 && h0.size(0) == gates_x.size(1), op, ": h0 must be (B, H) with B = ",
                    gates_x.size(1), ", got ", h0.sizes());
  const int64_t B = h0.size(0), H = h0.size(1);
  TORCH_CHECK_VALUE(gates_x.size(2) == gates * H, op, ": gates_x must be (T, B, ", gates * H, "), got ",
                    gates_x.sizes());
  TORCH_CHECK_VALUE(w_hh.dim() == 2 && w_hh.size(0) == gates * H && w_hh.size(1) == H, op, ": w_hh must be (",
                    gates * H, ", ", H, "), got ", w_hh.sizes());
  if (b_hh.has_value()) {
    TORCH_CHECK_VALUE(b_hh->numel() == gates * H, op, ": b_hh must have ", gates * H, " elements, got ",
                      b_hh->sizes());
    check_layout(op, {{"b_hh", &*b_hh}}, {"h0", &h0}, nullptr, false);
  }
  check_layout(op, {{"gates_x", &gates_x}, {"w_hh", &w_hh}}, {"h0", &h0}, nullptr, false);
  check_lengths(op, lengths, B);
}

void check_recurrence_backward_inputs(const Tensor& grad_out, const Tensor& grad_h_n, const Tensor& ws,
                                      const Tensor& w_hh, const c10::optional<Tensor>& lengths, int64_t gates,
                                      int64_t ws_width) {
  const char* op = gates == 3 ? "gru_recurrence_backward" : "rnn_recurrence_backward";
  TORCH_CHECK_VALUE(grad_out.dim() == 3, op, ": grad_out must be (T, B, H), got ", grad_out.sizes());
  const int64_t T = grad_out.size(0), B = grad_out.size(1), H = grad_out.size(2);
  TORCH_CHECK_VALUE(grad_h_n.sizes() == at::IntArrayRef({B, H}), op, ": grad_h_n must be (", B, ", ", H, "), got ",
                    grad_h_n.sizes());
  TORCH_CHECK_VALUE(ws.sizes() == at::IntArrayRef({T, B, ws_width * H}), op, ": the workspace must be (", T, ", ", B,
                    ", ", ws_width * H, "), got ", ws.sizes());
  TORCH_CHECK_VALUE(w_hh.dim() == 2 && w_hh.size(0) == gates * H && w_hh.size(1) == H, op, ": w_hh must be (",
                    gates * H, ", ", H, "), got ", w_hh.sizes());
  check_layout(op, {{"grad_h_n", &grad_h_n}, {"ws", &ws}, {"w_hh", &w_hh}}, {"grad_out", &grad_out}, nullptr, false);
  check_lengths(op, lengths, B);
}

}  // namespace hnrnn

namespace hnrnn::zoo {
namespace {

void check_ids_shape(const char* op, const Tensor& ids) {
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, op, ": ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(ids.dim() == 2 && ids.size(1) >= 1, op, ": ids must be (B, T) with T >= 1, got ", ids.sizes());
}

void check_vectors(const char* op, std::initializer_list<Named> vectors, int64_t H) {
  for (const auto& [name, t] : vectors) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == H, op, ": ", name, " must be (", H, ",), got ", t->sizes());
  }
}

void check_square(const char* op, const Tensor& weight, int64_t H) {
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) == H && weight.size(1) == H, op, ": weight must be (", H,
                    ", ", H, "), got ", weight.sizes());
}

}  // namespace

void check_forward_inputs(const Tensor& ids, const Tensor& h0, const Tensor& emb, const Tensor& weight,
                          const Tensor& bias, const Tensor& bn_weight, const Tensor& bn_bias,
                          const Tensor& running_mean, const Tensor& running_var, bool training) {
  const char* op = "zoo_cell";
  check_ids_shape(op, ids);
  TORCH_CHECK_VALUE(h0.dim() == 2 && h0.size(0) == ids.size(0), op, ": h0 must be (B, H) with B = ", ids.size(0),
                    ", got ", h0.sizes());
  const int64_t B = h0.size(0), H = h0.size(1);
  TORCH_CHECK_VALUE(emb.dim() == 2 && emb.size(1) == H, op, ": emb must be (V, ", H, "), got ", emb.sizes());
  check_square(op, weight, H);
  check_vectors(op, {{"bias", &bias}, {"bn_weight", &bn_weight}, {"bn_bias", &bn_bias},
                     {"running_mean", &running_mean}, {"running_var", &running_var}}, H);
  check_layout(op, {{"ids", &ids}, {"h0", &h0}, {"emb", &emb}, {"weight", &weight}, {"bias", &bias},
                    {"bn_weight", &bn_weight}, {"bn_bias", &bn_bias}, {"running_mean", &running_mean},
                    {"running_var", &running_var}}, {"h0", &h0}, &ids, true);
  TORCH_CHECK_VALUE(!training || B > 1, "Expected more than 1 value per channel when training, got input size [",
                    B, ", ", H, "]");  // nn.BatchNorm1d's message
}

void check_backward_inputs(const Tensor& grad_out, const Tensor& grad_hT, const Tensor& ids, const Tensor& weight,
                           const Tensor& bn_weight, const Tensor& xs, const Tensor& rs, const Tensor& mean,
                           const Tensor& invstd) {
  const char* op = "zoo_cell_backward";
  check_ids_shape(op, ids);
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be (H, H), got ", weight.sizes());
  const int64_t B = ids.size(0), T = ids.size(1), H = weight.size(0);
  check_square(op, weight, H);
  check_vectors(op, {{"bn_weight", &bn_weight}}, H);
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({B, T, H}), op, ": grad_out must be (", B, ", ", T, ", ", H,
                    "), got ", grad_out.sizes());
  TORCH_CHECK_VALUE(grad_hT.sizes() == at::IntArrayRef({B, H}), op, ": grad_h_T must be (", B, ", ", H, "), got ",
                    grad_hT.sizes());
  TORCH_CHECK_VALUE(xs.sizes() == at::IntArrayRef({T, B, H}) && rs.sizes() == xs.sizes(), op,
                    ": xs and rs must be (", T, ", ", B, ", ", H, "), got ", xs.sizes(), " and ", rs.sizes());
  TORCH_CHECK_VALUE(mean.sizes() == at::IntArrayRef({T, H}) && invstd.sizes() == mean.sizes(), op,
                    ": mean and invstd must be (", T, ", ", H, "), got ", mean.sizes(), " and ", invstd.sizes());
  check_layout(op, {{"grad_out", &grad_out}, {"grad_h_T", &grad_hT}, {"ids", &ids}, {"weight", &weight},
                    {"bn_weight", &bn_weight}, {"xs", &xs}, {"rs", &rs}, {"mean", &mean}, {"invstd", &invstd}},
               {"weight", &weight}, &ids, true);
}

}  // namespace hnrnn::zoo
