// The Python module of the CUDA emulation (see emulation.h): the ops of csrc/cuda/*.cu (which
// rnn.cpp and zoo_cell.cpp compile as C++) and the stacked-layer kernel, the emulator's switches
// and counters, and faulty kernels that the tests use to check the emulator catches what it
// claims to.
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

// Each block writes its value, then reads the next block's: a grid barrier belongs between.
__global__ void missing_grid_barrier(float* data, float* out, bool with_barrier) {
  if (threadIdx.x == 0) data[blockIdx.x] = static_cast<float>(blockIdx.x);
  if (with_barrier) hnrnn::cuda::grid_sync();
  if (threadIdx.x == 0) out[blockIdx.x] = hnrnn::cuda::load_from_grid(data + (blockIdx.x + 1) % gridDim.x);
}

__global__ void grid_barrier_in_one_block(int block) {
  if (static_cast<int>(blockIdx.x) == block) hnrnn::cuda::grid_sync();  // the others never arrive
}

__global__ void grid_barrier_in_one_thread() {
  if (threadIdx.x == 0) hnrnn::cuda::grid_sync();
  __syncthreads();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  for (const auto& bind : hnrnn_emu::recorder().bindings) bind(m);
  // the stacked-layer kernel is called from C++ (csrc/rnn_network.cpp), not registered as an op
  m.def("stack_recurrence", [](int64_t mode, const at::Tensor& gates_x0, const at::Tensor& hx,
                               const std::vector<at::Tensor>& weights, const c10::optional<at::Tensor>& lengths,
                               bool save) {
    return hnrnn::stack_recurrence_cuda(mode, gates_x0, hx, weights, lengths, save);
  }, pybind11::arg("mode"), pybind11::arg("gates_x0"), pybind11::arg("hx"), pybind11::arg("weights"),
     pybind11::arg("lengths"), pybind11::arg("save") = true);
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
  m.def("set_device_limits",
        [](int64_t sm_count, size_t max_shared) {
          hnrnn_emu::scheduler().sm_count = sm_count;
          hnrnn_emu::scheduler().max_shared = max_shared;
        },
        "The emulated device's SM count and shared memory per block (and per SM).");
  m.def("default_device_limits", [] { return std::make_tuple(hnrnn_emu::kSmCount, hnrnn_emu::kMaxDynamicShared); });
  m.def("launch_counts", [] {
    return std::make_tuple(hnrnn_emu::scheduler().launches, hnrnn_emu::scheduler().cooperative_launches);
  }, "(plain, cooperative) launches so far");
  m.def("faulty_missing_grid_barrier", [](bool with_barrier) {
    at::Tensor data = at::zeros({4}), out = at::empty({4});
    hnrnn::cuda::launch_cooperative(missing_grid_barrier, 4, 32, 0, 0, data.data_ptr<float>(), out.data_ptr<float>(),
                                    with_barrier);
    return out;
  });
  m.def("faulty_grid_barrier_in_one_block", [] { hnrnn::cuda::launch_cooperative(grid_barrier_in_one_block, 3, 32, 0, 0, 1); });
  m.def("faulty_grid_barrier_in_one_thread", [] { hnrnn::cuda::launch_cooperative(grid_barrier_in_one_thread, 2, 32, 0, 0); });
  m.def("faulty_grid_barrier_not_cooperative", [] { hnrnn::cuda::launch(grid_barrier_in_one_block, 2, 32, 0, 0, 0); });
  m.def("faulty_cooperative_grid_too_large", [] {
    const int64_t blocks = hnrnn::cuda::co_resident_blocks(grid_barrier_in_one_thread, 1024, 0, 0) + 1;
    hnrnn::cuda::launch_cooperative(grid_barrier_in_one_thread, static_cast<unsigned>(blocks), 1024, 0, 0);
  });
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
