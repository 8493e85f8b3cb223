// The load and store policies of the row kernels (kernels.h): plain structs
// of pointers that select a kernel variant at compile time. Defined once,
// outside the per-instruction-set copies of kernels.h, so that the host code
// hands the same policy object to whichever copy runs. Included by
// kernel_copies.h inside its includer's namespace.
#pragma once

// Forward: the row the norm reads. NoAdd: the input. AddResidual
// (add_norm_fwd): h = input + residual, rounded to H and written to h.
struct NoAdd {};
template <typename R, typename H>
struct AddResidual {
  const R* residual;
  H* h;
};

// Backward: what dx holds. NoGradH: the norm's input gradient. GradH
// (add_norm_bwd): that plus grad_h, of dx's type.
struct NoGradH {};
template <typename H>
struct GradH {
  const H* grad_h;
};
