// The Python module of the CUDA emulation (see emulation.h): the ops of csrc/cuda/*.cu (which
// rnn.cpp and zoo_cell.cpp compile as C++) and the stacked-layer kernel, the emulator's switch,
// and four faulty kernels that the tests use to check the emulator catches what it claims to.
#include "emulation.h"

#include "rnn_dispatch.h"

namespace {

__global__ void write_past_shared(int n) {
  float* s = hnrnn::cuda::dynamic_shared<float>();
  s[threadIdx.x + n] = 1.f;  // n = 1: the last thread writes one float past the end
}

__global__ void missing_barrier(float* out) {
  float* s = hnrnn::cuda::dynamic_shared<float>();
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  // __syncthreads() belongs here
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

__global__ void read_past_global(const float* in, float* out) {
  out[threadIdx.x] = in[threadIdx.x + 1];  // the last thread reads one float past `in`
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  for (const auto& bind : hnrnn_emu::recorder().bindings) bind(m);
  // the stacked-layer kernel is called from C++ (csrc/rnn_network.cpp), not registered as an op
  m.def("stack_recurrence", [](int64_t mode, const at::Tensor& gates_x0, const at::Tensor& hx,
                               const std::vector<at::Tensor>& weights, const c10::optional<at::Tensor>& lengths) {
    return hnrnn::stack_recurrence_cuda(mode, gates_x0, hx, weights, lengths);
  });
  m.def("stack_recurrence_backward",
        [](int64_t mode, const at::Tensor& grad_out, const at::Tensor& grad_h_n, const std::vector<at::Tensor>& ws,
           const std::vector<at::Tensor>& weights, const c10::optional<at::Tensor>& lengths) {
          return hnrnn::stack_recurrence_backward_cuda(mode, grad_out, grad_h_n, ws, weights, lengths);
        });
  m.def("stack_recurrence_fits", [](int64_t mode, int64_t layers, int64_t H, at::ScalarType dtype) {
    return hnrnn::stack_recurrence_fits(mode, layers, H, dtype, 0);
  });
  m.def("set_thread_order", [](bool reverse) { hnrnn_emu::scheduler().reverse_order = reverse; },
        "Between barriers, run a block's threads in reverse order (a race then changes results).");
  m.def("faulty_write_past_shared", [] { hnrnn::cuda::launch(write_past_shared, 1, 32, 32 * sizeof(float), 0, 1); });
  m.def("faulty_missing_barrier", [] {
    at::Tensor out = at::empty({32});
    hnrnn::cuda::launch(missing_barrier, 1, 32, 32 * sizeof(float), 0, out.data_ptr<float>());
    return out;
  });
  m.def("faulty_read_past_global", [] {  // caught by AddressSanitizer, when the module is built with it
    at::Tensor in = at::zeros({32}), out = at::empty({32});
    hnrnn::cuda::launch(read_past_global, 1, 32, 0, 0, in.data_ptr<float>(), out.data_ptr<float>());
    return out;
  });
  m.def("faulty_too_much_shared",
        [] { hnrnn::cuda::launch(write_past_shared, 1, 32, hnrnn_emu::kMaxDynamicShared + 1, 0, 0); });
}
