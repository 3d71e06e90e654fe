"""The fast backend: the reference math of `cnnf.layers` and `cnnf.model`, computed faster on
the CPU. Chosen with `cnnf.set_backend("fast")` (the default) or `cnnf.use_backend("fast")`.

    kernels    fused C++ kernels: [InstanceNorm, Bias, AdaReLU?, AdaPool?] forward and feedback
               in one sweep per sample, the reconstruction loss over all steps in one sweep
    ops        the other layers: channels-last maps, a matmul form of the transposed
               convolution to one channel, a hand-written instance-norm backward
    passes     the feedforward and feedback loops over a model's layers; drives-only feedback
    allocator  keep freed memory in the process (glibc), which the `cnnf` command applies

Each computes what the reference computes, to rounding: tests/test_backends.py compares the two
backends in float64 (logits, every loss term, every gradient, both architectures).
"""

from cnnf.fast.kernels import use_kernels
from cnnf.fast.ops import reconstruction_error
from cnnf.fast.passes import feedback, feedforward

__all__ = ["feedback", "feedforward", "reconstruction_error", "use_kernels"]
