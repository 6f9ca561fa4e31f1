"""The pairwise dot products every score matrix is made of, in full precision."""
import torch
from torch import Tensor

# oneDNN pays off on evaluation-sized products (1024 queries x a gallery); on training-batch sizes
# (128 x 128) torch's default is as fast or faster, so those keep it.
ONEDNN_MIN_OUTPUTS = 2**20


def full_precision(x: Tensor) -> Tensor:
    """float32 (or float64 as given): scores are compared across a whole gallery, bf16 would tie them."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _onednn_matmul():
    """oneDNN's fp32 matmul x @ wᵀ (the op inductor uses for linear layers), or None where this
    torch build lacks it: it is a private op, so a torch without it just takes `a @ b.T`."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_MATMUL = _onednn_matmul()


def pairwise_dot(a: Tensor, b: Tensor) -> Tensor:
    """(A, B) matrix of a_i · b_j for a (A, d) and b (B, d): a @ bᵀ.

    Large float32 products on the CPU outside autograd (evaluation, search) go through oneDNN's
    fp32 matmul, which was faster than torch's default CPU BLAS there (bench_eval; figures in
    BENCHMARKS.md). Same fp32 arithmetic, another summation order."""
    if (_ONEDNN_MATMUL is not None and a.device.type == "cpu" and a.dtype == b.dtype == torch.float32
            and a.shape[0] * b.shape[0] >= ONEDNN_MIN_OUTPUTS
            and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))):
        return _ONEDNN_MATMUL(a, b, None, "none", [], "")
    return a @ b.T
