"""4-bit packing: AutoAWQ's GEMM layout, GPTQ's, and the one the W4A16 kernel reads.

AWQ (GEMM)  qweight [K, N // 8] int32: nibble i (bits 4i..4i+3) of qweight[k, c] holds
            column 8c + AWQ_ORDER[i]; qzeros [K // group, N // 8] packed the same way;
            scales [K // group, N] float16; W = (q - zero) * scale
GPTQ        qweight [K // 8, N] int32: nibble j of qweight[i, n] holds row 8i + j;
            qzeros [K // group, N // 8]: nibble j of qzeros[g, c] holds column 8c + j, and
            the v1 format (checkpoint_format gptq) stores zero - 1; scales as AWQ
kernel      qweight as GPTQ's; zeros unpacked, uint8 [K // group, N]
"""

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
IN_ORDER = tuple(range(8))
NIBBLES = 8  # 4-bit values per int32
_SHIFTS = tuple(range(0, 32, 4))


def _to_int32(packed: torch.Tensor) -> torch.Tensor:
    """int64 holding 32-bit patterns -> int32 with the same bits."""
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:  # [..., C] int32 -> [..., C, 8] int32
    shifts = torch.tensor(_SHIFTS, dtype=torch.int32, device=packed.device)
    return (packed[..., None] >> shifts) & 0xF


def unpack_columns(packed: torch.Tensor, order: tuple[int, ...] = IN_ORDER) -> torch.Tensor:
    """[R, C // 8] int32 -> [R, C] int32; nibble i holds column 8c + order[i]."""
    nibbles = _nibbles(packed)  # [R, C // 8, 8], in nibble order
    columns = torch.empty_like(nibbles)
    columns[..., list(order)] = nibbles
    return columns.reshape(packed.shape[0], -1)


def pack_columns(values: torch.Tensor, order: tuple[int, ...] = IN_ORDER) -> torch.Tensor:
    """[R, C] of 0..15 -> [R, C // 8] int32; nibble i holds column 8c + order[i]."""
    grouped = values.to(torch.int64).reshape(values.shape[0], -1, NIBBLES)[..., list(order)]
    shifts = torch.tensor(_SHIFTS, dtype=torch.int64, device=values.device)
    return _to_int32((grouped << shifts).sum(-1))


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """[K, N] of 0..15 -> [K // 8, N] int32; nibble j of row i holds row 8i + j."""
    return pack_columns(values.T.contiguous()).T.contiguous()


def rtn_int4(
    weight: torch.Tensor,  # [N, K] float (a linear layer's weight)
    group_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric round-to-nearest 4-bit quantization per group of `group_size` input channels,
    as AutoAWQ quantizes (without its activation-aware scaling search). Returns q [K, N] int32
    in 0..15, zeros [K // group, N] int32 and scales [K // group, N] float16, with
    W.T ~= (q - zeros) * scales; the scale is rounded to float16 before q is computed."""
    n, k = weight.shape
    groups = weight.float().reshape(n, k // group_size, group_size)
    high, low = groups.amax(-1, keepdim=True), groups.amin(-1, keepdim=True)
    scales = ((high - low).clamp(min=1e-5) / 15).half().float()
    zeros = (-torch.round(low / scales)).clamp(0, 15)
    q = (torch.round(groups / scales) + zeros).clamp(0, 15)
    return (
        _by_column(q).to(torch.int32),
        _by_column(zeros).to(torch.int32),
        _by_column(scales).half(),
    )


def _by_column(per_row: torch.Tensor) -> torch.Tensor:  # [N, ...] -> [prod(...), N]
    return per_row.reshape(per_row.shape[0], -1).T.contiguous()
