"""CUDA's autocast on the CPU's fake tensors: the ops CUDA runs in float32 run in float32.

A CUDA estimate runs on fake CPU tensors (docs/estimate.md), so ``torch.autocast`` applies the
CPU's op lists, which are not CUDA's: CUDA's autocast runs softmax, layer_norm, exp, pow, sum and
sixty other ops in float32 where the CPU's leaves them in bf16 or fp16, and a LayerNorm's
saved input or a softmax's output is twice as large on a GPU. ``cuda_autocast()`` makes the CPU's
autocast apply CUDA's policy to those ops while an estimate runs.

How: for each op of CUDA's float32 and promote lists it registers a kernel for the
``AutocastCPU`` dispatch key (``torch.library.Library.impl``), the key the CPU's autocast itself
runs at, above autograd. The kernel applies CUDA's cast policy and calls the op below autocast,
as autocast's own kernels do. Every spelling reaches the dispatcher (``torch.softmax``,
``F.softmax``, ``Tensor.softmax``, ``x ** 2``, a C++ caller such as ``F.cross_entropy``'s
log_softmax), and so does a checkpoint's recomputation in the backward, where a
``TorchFunctionMode`` is not active (still so in torch 2.14.1) and patched functions miss every
spelling but the patched one. The registrations are the process's while the context is open.

The policies (``CUDA_AUTOCAST_POLICIES``) are CUDA's lists in ATen's ``autocast_mode.h`` of torch
2.14.1 (``AT_FORALL_FP32``, ``AT_FORALL_FP32_SET_OPT_DTYPE``,
``AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE``, ``AT_FORALL_PROMOTE``), registered for the CUDA
key by ``aten/src/ATen/autocast_mode.cpp``; tests/planning/test_cuda_autocast.py holds them to
the running torch's registrations. What is not modelled:

- ops both lists cast to the lower precision (conv*, linear, matmul, mm, bmm, addmm, baddbmm,
  prelu, scaled_dot_product_attention) stay with the CPU's kernels, which keep autocast's cache
  of each weight's cast copy; those only CUDA's list names (einsum, mv, addmv, addr,
  chain_matmul, linalg_multi_dot, RNN cells, convolution) are cast where they decompose into a
  listed op (einsum into bmm) or not at all;
- the reverse: ops the CPU's autocast runs in float32 and CUDA's leaves in the input's precision
  (3-D pooling, reflection and replication padding, FFTs, linear algebra; autocast_mode.cpp's
  CPU list) are sized in float32. None is called by membench's runners or the usual classifiers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.utils._pytree import tree_map

FP32, FP32_SET_OPT_DTYPE, FP32_APPEND_DTYPE, PROMOTE = (
    "fp32",
    "fp32_set_opt_dtype",
    "fp32_append_dtype",
    "promote",
)

# autocast_mode.h (torch 2.14.1), by policy; an op without an overload is its default overload.
_FP32_OPS = (
    "acos",
    "asin",
    "cosh",
    "erfinv",
    "exp",
    "expm1",
    "log",
    "log10",
    "log2",
    "log1p",
    "reciprocal",
    "rsqrt",
    "sinh",
    "tan",
    "pow.Tensor_Scalar",
    "pow.Tensor_Tensor",
    "pow.Scalar",
    "softplus",
    "layer_norm",
    "native_layer_norm",
    "rms_norm",
    "group_norm",
    "frobenius_norm.dim",
    "nuclear_norm",
    "nuclear_norm.dim",
    "cosine_similarity",
    "poisson_nll_loss",
    "cosine_embedding_loss",
    "nll_loss",
    "nll_loss2d",
    "hinge_embedding_loss",
    "kl_div",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "mse_loss",
    "margin_ranking_loss",
    "multilabel_margin_loss",
    "soft_margin_loss",
    "triplet_margin_loss",
    "multi_margin_loss",
    "binary_cross_entropy_with_logits",
    "dist",
    "pdist",
    "cdist",
    "renorm",
    "logsumexp",
    "upsample_nearest1d",
    "_upsample_nearest_exact1d",
    "upsample_nearest2d",
    "_upsample_nearest_exact2d",
    "upsample_nearest3d",
    "_upsample_nearest_exact3d",
    "upsample_linear1d",
    "upsample_bilinear2d",
    "_upsample_bilinear2d_aa",
    "upsample_trilinear3d",
    "upsample_bicubic2d",
    "_upsample_bicubic2d_aa",
)
# Run in float32 by setting their optional output dtype, when the caller left it unset.
_FP32_SET_OPT_DTYPE_OPS = (
    "prod",
    "prod.dim_int",
    "softmax.int",
    "log_softmax.int",
    "cumprod",
    "cumsum",
    "linalg_vector_norm",
    "linalg_matrix_norm",
    "linalg_matrix_norm.str_ord",
    "sum",
    "sum.dim_IntList",
)
# Overloads without an output dtype, redirected to the overload with one (float32).
_FP32_APPEND_DTYPE_OPS = {
    "norm.Scalar": "norm.ScalarOpt_dtype",
    "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype",
}
# Run in the widest floating type among their inputs.
_PROMOTE_OPS = (
    "addcdiv",
    "addcmul",
    "atan2",
    "bilinear",
    "cross",
    "dot",
    "vdot",
    "grid_sampler",
    "index_put",
    "tensordot",
    "scatter_add",
)

CUDA_AUTOCAST_POLICIES: dict[str, str] = {
    **dict.fromkeys(_FP32_OPS, FP32),
    **dict.fromkeys(_FP32_SET_OPT_DTYPE_OPS, FP32_SET_OPT_DTYPE),
    **dict.fromkeys(_FP32_APPEND_DTYPE_OPS, FP32_APPEND_DTYPE),
    **dict.fromkeys(_PROMOTE_OPS, PROMOTE),
}


def aten_op(name: str) -> torch._ops.OpOverload:
    """The aten overload ``name`` names ("softmax.int"; "exp" for the default overload)."""
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet), overload or "default")


def _eligible(value) -> bool:
    """What CUDA's autocast casts (``is_eligible``): a floating tensor other than float64."""
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.dtype != torch.float64
    )


def _cast(dtype: torch.dtype):
    return lambda value: value.to(dtype) if _eligible(value) else value


def _first_tensor_eligible(args) -> bool:
    return _eligible(next((a for a in args if isinstance(a, torch.Tensor)), None))


def _with_float32_dtype(op: torch._ops.OpOverload, args: tuple, kwargs: dict):
    """``args``/``kwargs`` with the op's optional ``dtype`` argument set to float32 if unset
    (CUDA's ``set_opt_dtype``)."""
    arguments = op._schema.arguments
    index = next(i for i, a in enumerate(arguments) if a.name == "dtype")
    if arguments[index].kwarg_only:
        if kwargs.get("dtype") is None:
            kwargs = {**kwargs, "dtype": torch.float32}
        return args, kwargs
    if len(args) > index and args[index] is not None:
        return args, kwargs
    filled = list(args) + [a.default_value for a in arguments[len(args) : index]]
    return tuple(filled[:index]) + (torch.float32,) + tuple(args[index + 1 :]), kwargs


def _widest(args) -> torch.dtype:
    """CUDA's ``promote_type``: float32 if any eligible input is float32, else the lower
    precision (float64 inputs are ignored)."""
    autocast_dtype = torch.get_autocast_dtype("cpu")
    return next(
        (torch.float32 for a in args if _eligible(a) and a.dtype == torch.float32), autocast_dtype
    )


def _policy_call(name: str, policy: str) -> Callable:
    """The call CUDA's autocast makes for ``name`` under ``policy``, autocast excluded."""
    op = aten_op(name)

    def call(*args, **kwargs):
        if policy == FP32:
            args, kwargs = tree_map(_cast(torch.float32), (args, kwargs))
        elif policy == PROMOTE:
            args, kwargs = tree_map(_cast(_widest(args)), (args, kwargs))
        elif _first_tensor_eligible(args):
            if policy == FP32_SET_OPT_DTYPE:
                args, kwargs = _with_float32_dtype(op, args, kwargs)
            else:  # FP32_APPEND_DTYPE: the overload with an output dtype, all defaults given
                target = aten_op(_FP32_APPEND_DTYPE_OPS[name])
                defaults = [a.default_value for a in op._schema.arguments[len(args) :]]
                return target(*args, *defaults, **kwargs, dtype=torch.float32)
        return op(*args, **kwargs)

    return call


def _autocast_kernel(name: str, policy: str) -> Callable:
    call = _policy_call(name, policy)
    below_autocast = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def kernel(_keyset, *args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(below_autocast):
            return call(*args, **kwargs)

    return kernel


@contextlib.contextmanager
def cuda_autocast() -> Iterator[None]:
    """While open, the CPU's autocast casts the ops of ``CUDA_AUTOCAST_POLICIES`` as CUDA's
    autocast does (the module docstring). Outside an autocast region nothing changes: the
    AutocastCPU key is not dispatched to."""
    library = torch.library.Library("aten", "IMPL")
    try:
        for name, policy in CUDA_AUTOCAST_POLICIES.items():
            library.impl(name, _autocast_kernel(name, policy), "AutocastCPU", with_keyset=True)
        yield
    finally:
        # The registrations live as long as the library; end them now, not at its collection:
        # the CPU's own autocast kernels are back.
        library._destroy()
