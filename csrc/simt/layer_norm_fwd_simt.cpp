// The SIMT build of csrc/cuda/layer_norm_fwd.cu: the same source, compiled by
// the host C++ compiler with FASTLN_SIMT defined (see csrc/cuda/backend.h).
#include "../cuda/layer_norm_fwd.cu"
