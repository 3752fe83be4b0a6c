// hnrnn._C: op schemas of every hnrnn op, and the Python module init.
// Kernels register themselves per dispatch key in csrc/cpu (CPU) and csrc/cuda (CUDA);
// fake kernels and autograd are registered in Python (hnrnn/ops).
#include <torch/extension.h>

TORCH_LIBRARY(hnrnn, m) {
  // --- zoo cell (recurrent step of Model0..Model3) ---

  // --- GRU / RNN recurrence (one layer, one direction; see hnrnn/ops/rnn.py) ---
  // gates_x: (T, B, G*H) = x W_ih^T + b_ih for every step (G = 3 for GRU, 1 for RNN);
  // h0: (B, H); w_hh: (G*H, H); lengths: optional int64 (B,) for packed sequences.
  // Returns out (T, B, H), h_n (B, H) and the workspace backward needs
  // (GRU: (T, B, 5H) = [r, z, n, W_hn h + b_hn, h_prev]; RNN: (T, B, 2H) = [h, h_prev]).
  m.def("gru_recurrence(Tensor gates_x, Tensor h0, Tensor w_hh, Tensor? b_hh, bool reverse, "
        "Tensor? lengths) -> (Tensor, Tensor, Tensor)");
  // Returns the gradients of the input gates and of the recurrent gates (T, B, 3H), and of h0.
  m.def("gru_recurrence_backward(Tensor grad_out, Tensor grad_h_n, Tensor ws, Tensor w_hh, "
        "bool reverse, Tensor? lengths) -> (Tensor, Tensor, Tensor)");
  m.def("rnn_recurrence(Tensor gates_x, Tensor h0, Tensor w_hh, Tensor? b_hh, bool relu, bool reverse, "
        "Tensor? lengths) -> (Tensor, Tensor, Tensor)");
  // Returns the gradient of the pre-activation gates (T, B, H) (input and recurrent alike) and of h0.
  m.def("rnn_recurrence_backward(Tensor grad_out, Tensor grad_h_n, Tensor ws, Tensor w_hh, bool relu, "
        "bool reverse, Tensor? lengths) -> (Tensor, Tensor)");
}

static bool cuda_compiled() {
#ifdef HNRNN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hnrnn compiled ops (registered under torch.ops.hnrnn)";
  m.def("cuda_compiled", &cuda_compiled, "True when the CUDA kernels were compiled into this build");
}
