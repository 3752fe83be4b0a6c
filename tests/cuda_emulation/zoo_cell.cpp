// csrc/cuda/zoo_cell.cu compiled as C++ on the CPU (see emulation.h).
#include "emulation.h"

#include "zoo_cell.cu"
