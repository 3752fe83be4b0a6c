// csrc/rnn_network.cpp compiled against the CUDA emulation (see emulation.h): the network op
// runs its stacked-layer path on CPU tensors, through the emulated kernels.
#include "emulation.h"

#include "rnn_network.cpp"
