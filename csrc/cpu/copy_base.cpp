// The baseline copy (SSE2 on x86-64; any processor) of the CPU row kernels
// and their host loops (copy_unit.h).
#define FASTLN_CPU_COPY 0
#include "copy_unit.h"
