// The AVX-512 (F, BW, VL, DQ) copy of the CPU row kernels and their host
// loops (copy_unit.h).
#define FASTLN_CPU_COPY 2
#include "copy_unit.h"
