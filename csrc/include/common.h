#pragma once
// Shared by CPU and CUDA kernels.
#ifdef __CUDACC__
#define HNRNN_HOST_DEVICE __host__ __device__
#else
#define HNRNN_HOST_DEVICE
#endif
