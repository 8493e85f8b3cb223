// The AVX2 + FMA + F16C copy of the CPU row kernels and their host loops
// (copy_unit.h).
#define FASTLN_CPU_COPY 1
#include "copy_unit.h"
