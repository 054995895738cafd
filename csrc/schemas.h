#pragma once
// The schemas of cuconv's ops, defined once: for the `cuconv` library (registration.cpp)
// and for the test-only `cuconv_emulated` library of the emulated CUDA kernels
// (emulation/registration.cpp), which must take exactly the same arguments.
// allow_tf32: whether a float32 convolution may multiply in TF32 on the tensor cores (CUDA only;
// cuconv.functional passes torch's setting for its own convolutions, README "TF32").
// benchmark: whether a CUDA convolution may choose its kernel family by measurement
// (cuconv.functional passes torch.backends.cudnn.benchmark; CUCONV_CUDA_TUNE, where set, overrides
// it; ignored on the CPU, which measures unless CUCONV_CPU_TUNE=0).

#define CUCONV_DEFINE_SCHEMAS(m)                                                                          \
  do {                                                                                                    \
    m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, bool allow_tf32=False, bool benchmark=False) -> Tensor"); \
    m.def("conv2d_backward_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, int[2] stride, int[2] padding, int[2] dilation, int groups, bool allow_tf32=False, bool benchmark=False) -> Tensor"); \
    m.def("conv2d_backward_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, int[2] stride, int[2] padding, int[2] dilation, int groups, bool allow_tf32=False, bool benchmark=False) -> Tensor"); \
    m.def("conv2d_backward_bias(Tensor grad_output) -> Tensor"); \
    m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)"); \
    m.def("max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[4] input_size, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor"); \
    m.def("avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor"); \
    m.def("avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor"); \
    m.def("adaptive_avg_pool2d(Tensor input, SymInt[2] output_size) -> Tensor"); \
    m.def("adaptive_avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size) -> Tensor"); \
  } while (0)
