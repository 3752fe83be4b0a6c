// csrc/cuda/rnn.cu compiled as C++ on the CPU (see emulation.h).
#include "emulation.h"

#include "rnn.cu"
