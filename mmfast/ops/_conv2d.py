"""conv2d / Conv2d: ONNX Conv semantics, NCHW. The argument checks (once, for both devices),
then the CPU path (numpy / torch CPU, float32 -> mmfast._C, the weights packed once: the direct
implicit GEMM of csrc/conv2d/conv2d_cpu.cpp, or Winograd F(2x2, 3x3) of
csrc/conv2d/conv2d_winograd.cpp for 3x3 stride-1 layers) or the CUDA path (torch CUDA / CuPy,
float32 / float16 / bfloat16 -> mmfast._C_cuda, csrc/conv2d/conv2d_cuda.cu).

Both paths fill the same parameter set (csrc/conv2d/conv2d.h), whose invariants the C++ side
checks again before a kernel reads it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .. import _C
from .._cuda import cuda_kernels
from ._arrays import aligned, from_numpy, host_array, host_out, overlap
from ._bf16 import check_precision, host_array_bf16
from ._cuda_arrays import (
    CudaArray,
    cuda_array,
    cuda_contiguous,
    cuda_dtype,
    cuda_empty,
    cuda_is_c_contiguous,
    cuda_out,
    cuda_stream,
    is_cuda_array,
    overlaps,
    same_place,
)

__all__ = ["Conv2d", "conv2d", "conv2d_output_shape", "resolve_padding"]

_AUTO_PAD = ("valid", "same_upper", "same_lower")
# An output side past this comes only from an absurd padding (numpy could not even allocate it).
_MAX_OUT_SIDE = 2**31 - 1
_ACTIVATIONS = (None, "relu")
_ALGORITHMS = ("auto", "direct", "winograd")
# "auto" takes Winograd from these channel counts on (measured on a Zen 5 core, one thread: 16->32
# @56 1.3x the direct kernel, 32->32 1.5x, 64 and more 1.7-2.1x; 16->16 0.8x, where the input
# transform of few channels and a half-empty 64-channel panel cost more than the saved multiplies).
_WINOGRAD_MIN_IN, _WINOGRAD_MIN_OUT = 16, 32


# Testing hook (tests/conftest.py's conv_path fixture): what algorithm="auto" picks. None: the
# rule in choose_algorithm; "direct": always the direct kernel; "winograd": Winograd wherever it
# applies, whatever the channel counts.
_auto_override: str | None = None


def choose_algorithm(
    requested: str,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    channels: tuple[int, int],
    precision: str = "fp32",
    cuda: bool = False,
) -> str:
    """ "direct" or "winograd" for a layer with (in, out) `channels` (see :class:`Conv2d`);
    ValueError naming `algorithm` where "winograd" is asked for and cannot run."""
    if requested not in _ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {_ALGORITHMS}, got {requested!r}")
    applies = winograd_applies(kernel_size, stride, dilation, groups)
    if requested == "winograd":
        if not applies:
            raise ValueError(
                "algorithm: 'winograd' computes 3x3 convolutions with stride 1, dilation 1 and "
                f"groups 1; this one has kernel {kernel_size}, stride {stride}, dilation "
                f"{dilation}, groups {groups}"
            )
        if cuda or precision != "fp32":
            raise ValueError(
                "algorithm: 'winograd' is a float32 CPU kernel; "
                + ("these weights are on the GPU" if cuda else "precision is 'bf16'")
            )
        return "winograd"
    if requested == "auto" and applies and not cuda and precision == "fp32":
        if _auto_override is not None:
            return _auto_override
        # On the AVX2 and portable kernels Winograd measured 0.95-1.17x the direct kernel: not
        # worth a second kernel's code path there.
        if _C.active_variant() != "avx512":
            return "direct"
        if channels[0] >= _WINOGRAD_MIN_IN and channels[1] >= _WINOGRAD_MIN_OUT:
            return "winograd"
    return "direct"


def winograd_applies(
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> bool:
    """Whether the Winograd F(2x2, 3x3) kernel computes this convolution (any padding)."""
    return kernel_size == (3, 3) and stride == (1, 1) and dilation == (1, 1) and groups == 1


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    return int(v)


def _pair(v: Any, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints (h, w), each >= minimum."""
    vals = (v, v) if not isinstance(v, (tuple, list)) else tuple(v)
    if len(vals) != 2:
        raise ValueError(f"{name}: expected an int or 2 ints (h, w), got {len(vals)} values")
    h, w = (_int(x, name) for x in vals)
    if h < minimum or w < minimum:
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name}: must be {kind}, got {v!r}")
    return h, w


def resolve_padding(
    padding: Any,
    in_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Padding as (top, left, bottom, right) = ONNX ``pads`` [H_begin, W_begin, H_end, W_end].

    padding: an int (all sides), (pad_h, pad_w) (symmetric), (top, left, bottom, right), or an
    ONNX ``auto_pad`` mode: "valid" (none), "same_upper" / "same_lower" (output size
    ceil(in / stride); an odd total goes at the end for same_upper, at the beginning for
    same_lower).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in _AUTO_PAD:
            raise ValueError(f"padding: unknown mode {padding!r}; expected one of {_AUTO_PAD}")
        if mode == "valid":
            return (0, 0, 0, 0)
        begin_end = []
        for size, k, s, d in zip(in_hw, kernel_hw, stride, dilation, strict=True):
            out = -(-size // s)  # ceil
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begin_end.append((small, big) if mode == "same_upper" else (big, small))
        (t, b), (left, r) = begin_end
        return (t, left, b, r)
    if isinstance(padding, (tuple, list)):
        vals = tuple(_int(p, "padding") for p in padding)
        if len(vals) == 2:
            vals = (vals[0], vals[1], vals[0], vals[1])
        elif len(vals) != 4:
            raise ValueError(
                "padding: expected an int, (pad_h, pad_w), (top, left, bottom, right) or an "
                f"auto_pad mode, got {len(vals)} values"
            )
    else:
        p = _int(padding, "padding")
        vals = (p, p, p, p)
    if min(vals) < 0:
        raise ValueError(f"padding: must be non-negative, got {padding!r}")
    return (vals[0], vals[1], vals[2], vals[3])


def conv2d_output_shape(
    in_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pads: tuple[int, int, int, int],
) -> tuple[int, int]:
    """(OH, OW); either may be <= 0 when the dilated kernel exceeds the padded input."""
    oh = (in_hw[0] + pads[0] + pads[2] - dilation[0] * (kernel_hw[0] - 1) - 1) // stride[0] + 1
    ow = (in_hw[1] + pads[1] + pads[3] - dilation[1] * (kernel_hw[1] - 1) - 1) // stride[1] + 1
    return oh, ow


class Conv2d:
    """A 2-D convolution with its weights packed once, for repeated inference.

    weight: (M, C/groups, kH, kW) float32; bias: (M,) float32 or None. stride, dilation: an
    int or (h, w), positive. padding: see :func:`resolve_padding` (auto_pad modes are resolved
    per input size). groups divides C and M (groups == C is depthwise; M = k*C gives a channel
    multiplier k). activation: None or "relu" (fused). Call with x (N, C, H, W) float32 ->
    (N, M, OH, OW), as a numpy array or a torch CPU tensor like x. With weights on the GPU
    (a torch CUDA tensor or CuPy array, float32 / float16 / bfloat16), call it with CUDA arrays
    of the weights' dtype and device.

    precision: "fp32" (default) or "bf16" (CPU only): x and the weights rounded to bfloat16
    (nearest even), float32 accumulation, bias and output; x may then also be a bfloat16 array
    (ml_dtypes) or tensor. Runs on the AVX512-BF16 kernel where the CPU has it
    (``mmfast._C.bf16_native()``), else on the float32 kernel
    with the rounded inputs: the same error bound (csrc/conv2d/conv2d_cpu_bf16.h).

    algorithm (CPU, float32): "direct" (the implicit GEMM), "winograd" (F(2x2, 3x3): 3x3
    filters, stride 1, dilation 1, one group; 2.25x fewer multiplies, its error bound in
    csrc/conv2d/conv2d_winograd.h, measured within the direct kernel's; an infinite input makes
    NaN instead of ±inf in the outputs it reaches, as the transforms subtract it from itself,
    and inputs within 4x of float32's largest value may overflow in the transforms),
    or "auto" (default): Winograd where it applies with at least 16 input and 32 output channels
    and the AVX-512 kernels are active when the layer is made, else direct. The choice is in
    ``self.algorithm``.
    """

    def __init__(
        self,
        weight: Any,
        bias: Any = None,
        *,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        activation: str | None = None,
        precision: str = "fp32",
        algorithm: str = "auto",
    ) -> None:
        self.precision = check_precision(precision)
        self._cuda_weight: Any = None
        self._cuda_bias: Any = None
        w: np.ndarray | None = None
        if is_cuda_array(weight):
            # GPU weights: kept as given (the CUDA kernels reorder them per call, on the GPU).
            shape = tuple(int(d) for d in weight.shape)
            if len(shape) != 4:
                raise ValueError(f"weight: expected 4 dimensions, got {len(shape)} {shape}")
            if self.precision != "fp32":
                raise ValueError(
                    f"precision: {self.precision!r} is for the CPU kernels; on the GPU pass "
                    "bfloat16 arrays instead"
                )
            self._cuda_weight, self._cuda_bias = weight, bias
        elif self.precision == "bf16":
            w, _ = host_array_bf16(weight, "weight", 4)
            shape = tuple(int(d) for d in w.shape)
        else:
            w, _ = host_array(weight, "weight", 4)
            shape = tuple(int(d) for d in w.shape)
        if 0 in shape:
            raise ValueError(f"weight: has an empty dimension {shape}")
        self.groups = _int(groups, "groups")
        if self.groups < 1:
            raise ValueError(f"groups: must be positive, got {groups}")
        m, cg, kh, kw = shape
        if m % self.groups:
            raise ValueError(f"groups: {self.groups} does not divide the {m} output channels")
        if kh * kw > _C.CONV_MAX_TAPS:
            raise ValueError(
                f"weight: kernels of more than {_C.CONV_MAX_TAPS} taps are not supported "
                f"({kh}x{kw})"
            )
        self.out_channels, self.in_channels = m, cg * self.groups
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        # Validate the padding spec now (auto_pad modes are resolved per input size later).
        resolve_padding(padding, (1, 1), self.kernel_size, self.stride, self.dilation)
        self.padding = padding
        self._geometry_cache: dict[tuple[int, int], tuple[list[int], tuple[int, int]]] = {}
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected None or 'relu', got {activation!r}")
        self.activation = activation
        self.algorithm = choose_algorithm(
            algorithm,
            self.kernel_size,
            self.stride,
            self.dilation,
            self.groups,
            (self.in_channels, self.out_channels),
            self.precision,
            cuda=w is None,
        )
        self._packed_winograd: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        if w is None:
            return  # bias is checked against x by the CUDA path (dtype and device)
        if bias is not None:
            b, _ = host_array(bias, "bias", 1)
            if b.shape[0] != m:
                raise ValueError(f"bias: expected {m} values (weight's M), got {b.shape[0]}")
            self.bias = np.ascontiguousarray(b).copy()
        wc = np.ascontiguousarray(w)
        # bf16: the AVX512-BF16 kernel's packing, and the float32 packings below of the rounded
        # weights for the portable fallback.
        self._packed_bf16: np.ndarray | None = None
        self._packed_bf16_cols: np.ndarray | None = None
        if self.algorithm == "winograd":
            # Only the Winograd transform of the weights (G g G^T): the direct kernel never runs.
            self._packed_winograd = _C.conv2d_winograd_pack(wc)
            return
        if self.precision == "bf16":
            self._packed_bf16 = _C.conv2d_pack_bf16(wc, self.groups, _C.CONV_PANEL_ROWS)
            if m // self.groups >= 16 and cg > 1:
                self._packed_bf16_cols = _C.conv2d_pack_bf16(wc, self.groups, _C.CONV_PANEL_COLS)
            wc = _C.round_bf16(wc)
        # Two layouts, packed once: the kernel picks per input size (spatially vectorised, or
        # channel-vectorised for small images with many channels; the latter on AVX-512 only).
        self._packed = _C.conv2d_pack(wc, self.groups, _C.CONV_PANEL_ROWS)
        self._packed_cols = (
            _C.conv2d_pack(wc, self.groups, _C.CONV_PANEL_COLS)
            if m // self.groups >= 16 and cg > 1
            else None
        )

    def _geometry(self, h: int, w: int) -> tuple[list[int], tuple[int, int]]:
        """Pads [top, left, bottom, right] and (OH, OW) for an (h, w) input, cached: layers
        see the same few input sizes, and this keeps Python overhead off small convolutions."""
        key = (h, w)
        hit = self._geometry_cache.get(key)
        if hit is None:
            pads = resolve_padding(self.padding, key, self.kernel_size, self.stride, self.dilation)
            out_hw = conv2d_output_shape(key, self.kernel_size, self.stride, self.dilation, pads)
            hit = (list(pads), out_hw)
            if len(self._geometry_cache) < 64:
                self._geometry_cache[key] = hit
        return hit

    def output_shape(self, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(N, M, OH, OW) for an input of shape (N, C, H, W)."""
        n, _, h, w = x_shape
        _, (oh, ow) = self._geometry(h, w)
        return (n, self.out_channels, oh, ow)

    def _output(self, x_shape: tuple[int, ...]) -> tuple[list[int], tuple[int, int, int, int]]:
        """The checks every device shares, for an input of shape (N, C, H, W): its channels and
        a non-empty output. Returns the pads and the output shape (N, M, OH, OW)."""
        n, c, h, w = x_shape
        if c != self.in_channels:
            raise ValueError(
                f"x: has {c} channels but weight expects {self.in_channels} "
                f"(C/groups = {self.in_channels // self.groups}, groups = {self.groups})"
            )
        pads, (oh, ow) = self._geometry(h, w)
        if oh > _MAX_OUT_SIDE or ow > _MAX_OUT_SIDE:
            raise ValueError(
                f"padding: the output would be {oh} x {ow} (at most {_MAX_OUT_SIDE} a side; "
                f"padding {pads}, dilation {self.dilation})"
            )
        if oh <= 0 or ow <= 0:
            raise ValueError(
                f"x: the kernel {self.kernel_size} (dilation {self.dilation}) is larger than "
                f"the padded input ({h + pads[0] + pads[2]}, {w + pads[1] + pads[3]}): "
                "empty output"
            )
        return pads, (n, self.out_channels, oh, ow)

    def __call__(self, x: Any, *, out: Any = None) -> Any:
        if is_cuda_array(x) or self._cuda_weight is not None:
            if not is_cuda_array(x):
                raise TypeError("x: this Conv2d's weights are on the GPU; pass a CUDA array")
            if self._cuda_weight is None:
                raise TypeError("x: a CUDA array, but this Conv2d's weights are on the CPU")
            return self._call_cuda(x, out)
        return self._call_cpu(x, out)

    # ---- CPU: numpy arrays and torch CPU tensors -> mmfast._C -----------------------------------

    def _call_cpu(self, x: Any, out: Any) -> Any:
        bf16 = self.precision == "bf16"
        xa, kind = host_array_bf16(x, "x", 4) if bf16 else host_array(x, "x", 4)
        pads, shape = self._output(xa.shape)
        shared: bool | None = False
        if out is None:
            oa = np.empty(shape, dtype=np.float32)
        else:
            oa = host_out(out, kind, shape, "x")
            shared = overlap(oa, xa)
            if shared:
                raise ValueError("out: overlaps x (convolution cannot run in place)")
        # The kernel writes a fresh buffer where an overlap could not be ruled out cheaply, or
        # where `out` is not aligned to whole floats; it reads an aligned copy of such an x.
        o_k = oa if out is None or (shared is False and oa.flags.aligned) else np.empty_like(oa)
        packed_bf16 = self._packed_bf16 if bf16 and _C.bf16_native() else None
        if oa.size and self._packed_winograd is not None:
            relu = self.activation == "relu"
            m = self.out_channels
            _C.conv2d_winograd(aligned(xa), self._packed_winograd, self.bias, o_k, m, pads, relu)
        elif oa.size:
            geometry: dict[str, Any] = {
                "M": self.out_channels,
                "KH": self.kernel_size[0],
                "KW": self.kernel_size[1],
                "stride": self.stride,
                "dilation": self.dilation,
                "pads": pads,
                "groups": self.groups,
                "relu": self.activation == "relu",
            }
            if packed_bf16 is not None:
                _C.conv2d_bf16(
                    aligned(xa), packed_bf16, self._packed_bf16_cols, self.bias, o_k, **geometry
                )
            else:
                # bf16 without the native kernel: the rounded input, then the float32 kernel.
                xk = _C.round_bf16(np.ascontiguousarray(xa)) if bf16 else aligned(xa)
                _C.conv2d(xk, self._packed, self._packed_cols, self.bias, o_k, **geometry)
            if o_k is not oa:
                oa[...] = o_k
        return from_numpy(oa, kind) if out is None else out

    # ---- CUDA: torch CUDA tensors and CuPy arrays -> mmfast._C_cuda -----------------------------

    def _call_cuda(self, x: Any, out: Any) -> Any:
        xa = cuda_array(x, "x")
        mod = cuda_kernels()
        wa = cuda_array(self._cuda_weight, "weight")
        same_place(wa, xa, "weight", "x")
        dtype = cuda_dtype(xa, "x")
        if wa.dtype != xa.dtype:
            raise TypeError(f"weight: dtype {wa.dtype} differs from x's {xa.dtype}")
        if len(xa.shape) != 4:
            raise ValueError(f"x: expected 4 dimensions, got {len(xa.shape)} {xa.shape}")
        if len(wa.shape) != 4:
            raise ValueError(f"weight: expected 4 dimensions, got {len(wa.shape)} {wa.shape}")
        m, cg, kh, kw = wa.shape
        if (m, cg * self.groups, kh, kw) != (
            self.out_channels,
            self.in_channels,
            *self.kernel_size,
        ):
            raise ValueError("weight: shape changed since this Conv2d was made")
        pads, oshape = self._output(xa.shape)
        ba = None
        if self._cuda_bias is not None:
            ba = cuda_array(self._cuda_bias, "bias")
            same_place(ba, xa, "bias", "x")
            if ba.dtype != xa.dtype:
                raise TypeError(f"bias: dtype {ba.dtype} differs from x's {xa.dtype}")
            if ba.shape != (m,):
                raise ValueError(f"bias: expected shape ({m},), got {ba.shape}")
            ba = cuda_contiguous(ba, "bias")
        xa, wa = cuda_contiguous(xa, "x"), cuda_contiguous(wa, "weight")
        if out is None:
            oa = cuda_array(cuda_empty(xa, oshape, xa.dtype), "out")
        else:
            oa = cuda_out(out, xa, oshape, xa.dtype)
            if not cuda_is_c_contiguous(oa):
                raise ValueError("out: must be C-contiguous")
            for name, a in (("x", xa), ("weight", wa), ("bias", ba)):
                if a is not None and overlaps(oa, a):
                    raise ValueError(f"out: overlaps {name} (convolution cannot run in place)")
        n, c, h, w = xa.shape
        if n * m * oshape[2] * oshape[3] == 0:
            return oa.obj if out is None else out
        if c * h * w == 0:
            # Nothing to read (every tap lands in padding): the output is the bias (after ReLU).
            _fill_bias(oa, ba, self.activation == "relu")
            return oa.obj if out is None else out
        shapes = {
            "x_shape": xa.shape,
            "weight_shape": wa.shape,
            "out_shape": oshape,
            "stride": self.stride,
            "dilation": self.dilation,
            "pads": tuple(pads),
            "groups": self.groups,
            "dtype": getattr(mod.DType, dtype),
        }
        nbytes = int(mod.conv2d_workspace_bytes(**shapes, device=xa.device))
        ws = cuda_array(cuda_empty(xa, (nbytes,), "uint8"), "workspace") if nbytes else None
        mod.conv2d(
            x=xa.ptr,
            weight=wa.ptr,
            bias=ba.ptr if ba is not None else 0,
            out=oa.ptr,
            workspace=ws.ptr if ws is not None else 0,
            workspace_bytes=nbytes,
            x_stride=xa.strides,
            out_stride=oa.strides,
            relu=self.activation == "relu",
            device=xa.device,
            stream=cuda_stream(xa),
            **shapes,
        )
        # The caller's allocator may hand the workspace to another op only after the stream
        # passes this point: torch's caching allocator and CuPy's pool are both stream-ordered.
        del ws
        return oa.obj if out is None else out

    def __repr__(self) -> str:
        return (
            f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None or self._cuda_bias is not None}, "
            f"activation={self.activation!r}"
            + (f", precision={self.precision!r}" if self.precision != "fp32" else "")
            + (f", algorithm={self.algorithm!r})" if self._cuda_weight is None else ")")
        )


def _fill_bias(o: CudaArray, bias: CudaArray | None, relu: bool) -> None:
    """o[n, m, :, :] = bias[m] (0 without a bias), then ReLU: with the caller's framework, on
    its current stream."""
    if o.framework == "torch":
        if bias is None:
            o.obj.zero_()
        else:
            o.obj.copy_(bias.obj.view(1, -1, 1, 1).expand_as(o.obj))
            if relu:
                o.obj.clamp_(min=0)
        return
    cupy = sys.modules["cupy"]
    with cupy.cuda.Device(o.device):
        o.obj[...] = 0 if bias is None else bias.obj.reshape(1, -1, 1, 1)
        if relu:
            cupy.maximum(o.obj, 0, out=o.obj)


def conv2d(
    x: Any,
    weight: Any,
    bias: Any = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    activation: str | None = None,
    out: Any = None,
    precision: str = "fp32",
    algorithm: str = "auto",
) -> Any:
    """2-D convolution with ONNX Conv semantics (cross-correlation), float32, NCHW.

    x: (N, C, H, W); weight: (M, C/groups, kH, kW); bias: (M,) or None -> (N, M, OH, OW),
    OH = (H + pad_top + pad_bottom - dilation_h*(kH-1) - 1) // stride_h + 1 (same for W).
    padding: int, (pad_h, pad_w), (top, left, bottom, right) — the ONNX ``pads`` order
    [H_begin, W_begin, H_end, W_end] — or "valid" / "same_upper" / "same_lower" (ONNX auto_pad).
    activation: None or "relu" (fused). Takes numpy arrays or torch CPU tensors (any strides)
    and returns the kind x was. On the GPU: torch CUDA tensors or CuPy arrays of float32,
    float16 or bfloat16 (x, weight, bias of one dtype and device; float32 accumulation), the
    output on that device, enqueued on the caller's current stream. For repeated calls with
    the same weights use :class:`Conv2d`, which packs them once. precision: "fp32" or "bf16"
    (CPU: bfloat16 inputs, float32 accumulation and output); algorithm: "auto", "direct" or
    "winograd" (CPU; see :class:`Conv2d`).
    """
    check_precision(precision)
    if is_cuda_array(x):
        shape = tuple(int(d) for d in x.shape)
        if len(shape) != 4:
            raise ValueError(f"x: expected 4 dimensions, got {len(shape)} {shape}")
    else:
        shape = (host_array_bf16 if precision == "bf16" else host_array)(x, "x", 4)[0].shape
    conv = Conv2d(
        weight,
        bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        activation=activation,
        precision=precision,
        algorithm=algorithm,
    )
    if shape[1] % conv.groups:
        raise ValueError(f"groups: {conv.groups} does not divide the {shape[1]} input channels")
    return conv(x, out=out)
