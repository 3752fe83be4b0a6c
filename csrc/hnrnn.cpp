// hnrnn._C: op schemas of every hnrnn op, and the Python module init.
// Kernels register themselves per dispatch key in csrc/cpu (CPU) and csrc/cuda (CUDA);
// fake kernels and autograd are registered in Python (hnrnn/ops).
#include <torch/extension.h>

TORCH_LIBRARY(hnrnn, m) {
  // --- zoo cell (recurrent step of Model0..Model3) ---

  // --- GRU / RNN recurrence ---
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
