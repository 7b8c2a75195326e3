"""Dense peak TFLOP/s of common NVIDIA GPUs per precision: the denominator of MFU.

MFU (model FLOPs utilisation) = achieved TFLOP/s / peak TFLOP/s. This module holds the peak:
one ``GpuPeak`` per GPU model, keyed by the name ``torch.cuda.get_device_name()`` reports.

What the figures are:

* **Dense.** NVIDIA prints tensor-core rates as "X / 2X" or "2X*", the second with 2:4
  structured sparsity. Ordinary training never runs sparse kernels, so the table holds X: the
  dense figure, or half the printed one where only the sparse figure is printed (H100 NVL, L4).
* **Per precision.** ``fp32``: the CUDA cores' non-tensor FP32 rate. ``tf32``: TF32 tensor
  cores. ``bf16`` / ``fp16``: tensor cores **with FP32 accumulate**, which is what PyTorch's
  autocast GEMMs and convolutions use. GeForce cards run FP16/BF16 with FP32 accumulate at half
  their FP16-accumulate rate (the GA102, Ada and RTX Blackwell whitepapers print both rows), and
  the table takes the FP32-accumulate row. On GeForce cards TF32 runs at the FP32 rate.
* **Theoretical, at boost clock.** Every figure is a datasheet or whitepaper peak at the GPU's
  rated boost clock (for GeForce: 2 FLOPs per CUDA core per clock at the boost clock NVIDIA
  lists). Real cards throttle under power and thermal limits and no real step is one perfect
  GEMM, so an MFU computed against these peaks is conservative (a lower bound on utilisation
  of what the card could really sustain).

Provenance: a card a whitepaper tabulates carries the whitepaper's numbers. For the other
GeForce cards the figures are derived the way NVIDIA derives its own: FP32 = 2 x CUDA cores x
boost clock (cores and clock from NVIDIA's spec page for the card), TF32 = FP32, FP16/BF16 with
FP32 accumulate = 2 x FP32, the ratios the whitepapers print for every GeForce card of the same
architecture they tabulate (RTX 3090, RTX 4090, RTX 5090). Each entry's comment says which.

A GPU missing from the table (or a precision left ``None``) gets no MFU; ``membench`` then asks
for ``--peak-tflops``, which also overrides the table, e.g. for a card held below its boost
clock or a laptop at a lower power limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PRECISIONS", "GpuPeak", "GPU_PEAKS", "PeakSpec", "gpu_peak", "known_gpus"]

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class PeakSpec:
    """The peak TFLOP/s a device's cells are held against, where it came from, and for which
    precision; ``tflops`` None (with a ``note`` saying why) when nothing is known."""

    tflops: float | None
    source: str = ""
    precision: str = ""
    note: str = ""


@dataclass(frozen=True)
class GpuPeak:
    """Dense peak TFLOP/s of one GPU model per precision (None where not published)."""

    fp32: float | None
    tf32: float | None
    bf16: float | None
    fp16: float | None
    source: str  # the datasheet/whitepaper it comes from, short

    def tflops(self, precision: str) -> float | None:
        """The dense peak for ``precision`` (one of ``PRECISIONS``, any case); None where the
        source publishes none. An unknown precision is an error, not a silent None."""
        key = precision.lower()
        if key not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
        return getattr(self, key)


def _geforce(fp32: float, fp16_fp32acc: float, source: str) -> GpuPeak:
    """A GeForce entry: TF32 at the FP32 rate, BF16 = FP16 at the FP32-accumulate rate."""
    return GpuPeak(fp32=fp32, tf32=fp32, bf16=fp16_fp32acc, fp16=fp16_fp32acc, source=source)


# Sources, as cited in the entries below:
#   GA102-WP   NVIDIA Ampere GA102 GPU Architecture whitepaper (V2.0), Table 2 (RTX 3080) and
#              Appendix A (RTX 3090, RTX 3070): "Peak FP32 TFLOPS (non-Tensor)", "Peak TF32
#              Tensor TFLOPS", "Peak FP16/BF16 Tensor TFLOPS with FP32 Accumulate" (dense/sparse).
#   ADA-WP     NVIDIA Ada GPU Architecture whitepaper, Appendix A, GeForce RTX 4090 table.
#   RTXBW-WP   NVIDIA RTX Blackwell GPU Architecture whitepaper, Table 3 (RTX 5090 vs 4090 vs
#              3090) and Appendix A (GB202 / RTX 5090).
#   A100-DS    NVIDIA A100 Tensor Core GPU datasheet, specifications table (same rows for the
#              SXM and PCIe, 40 GB and 80 GB boards); also the GA100 whitepaper, Table 1.
#   H100-WP    NVIDIA H100 Tensor Core GPU Architecture whitepaper V1.04 ("final clocks and
#              TFLOPS"), Table 3, pp. 39-40, columns H100 SXM5 and H100 PCIe (dense/sparse).
#   H100-DS    NVIDIA H100 datasheet / product page, H100 NVL column (sparse figures only,
#              "* With sparsity"; dense = half).
#   H200-DS    NVIDIA H200 datasheet: H200 SXM rows identical to H100 SXM's (same GH100 compute).
#   L4-DS      NVIDIA L4 Tensor Core GPU datasheet (tensor rows "* with sparsity" only).
#   L40S-DS    NVIDIA L40S datasheet ("X | 2X*", * with sparsity).
#   SPEC       NVIDIA's GeForce product spec page for the card: CUDA cores and boost clock.
GPU_PEAKS: dict[str, GpuPeak] = {
    # ---- GeForce RTX 30 (Ampere GA10x). TF32 = FP32; FP16/BF16 w/ FP32 acc = 2 x FP32. ----
    # Derived: 2 x 3584 cores x 1.777 GHz (SPEC; the 8 GB model has the same cores and clock).
    "NVIDIA GeForce RTX 3060": _geforce(
        12.7, 25.5, "derived: NVIDIA spec (3584 cores, 1777 MHz boost), GA102-WP ratios"
    ),
    # Derived: 2 x 4864 cores x 1.665 GHz (SPEC; GDDR6X model has the same cores and clock).
    "NVIDIA GeForce RTX 3060 Ti": _geforce(
        16.2, 32.4, "derived: NVIDIA spec (4864 cores, 1665 MHz boost), GA102-WP ratios"
    ),
    # GA102-WP Appendix A, GeForce RTX 3070 (5888 cores, 1725 MHz): 20.3 FP32, 40.6 FP16 w/ FP32
    # acc.
    "NVIDIA GeForce RTX 3070": _geforce(20.3, 40.6, "GA102 whitepaper, Appendix A (RTX 3070)"),
    # Derived: 2 x 6144 cores x 1.77 GHz (SPEC).
    "NVIDIA GeForce RTX 3070 Ti": _geforce(
        21.7, 43.5, "derived: NVIDIA spec (6144 cores, 1.77 GHz boost), GA102-WP ratios"
    ),
    # One name, two boards: 10 GB (8704 cores, 1710 MHz: GA102-WP Table 2 gives 29.8 / 59.5) and
    # 12 GB (8960 cores, 1710 MHz). The table holds the larger, 12 GB figure (2 x 8960 x 1.71
    # GHz), so MFU stays conservative on either board (about 3% low on a 10 GB card).
    "NVIDIA GeForce RTX 3080": _geforce(
        30.6,
        61.3,
        "derived: NVIDIA spec, 12 GB board (8960 cores, 1710 MHz); 10 GB board: GA102 "
        "whitepaper 29.8/59.5",
    ),
    # Derived: 2 x 10240 cores x 1.665 GHz (SPEC).
    "NVIDIA GeForce RTX 3080 Ti": _geforce(
        34.1, 68.2, "derived: NVIDIA spec (10240 cores, 1665 MHz boost), GA102-WP ratios"
    ),
    # GA102-WP Appendix A, GeForce RTX 3090 (10496 cores, 1695 MHz): 35.6 FP32, TF32 35.6/71,
    # FP16/BF16 w/ FP32 acc 71/142; RTXBW-WP Table 3 prints the same row as 71.2/142.4.
    "NVIDIA GeForce RTX 3090": _geforce(
        35.6, 71.2, "GA102 whitepaper, Appendix A (RTX 3090); RTX Blackwell whitepaper, Table 3"
    ),
    # Derived: 2 x 10752 cores x 1.86 GHz (SPEC; NVIDIA quotes "40 TFLOPS").
    "NVIDIA GeForce RTX 3090 Ti": _geforce(
        40.0, 80.0, "derived: NVIDIA spec (10752 cores, 1860 MHz boost), GA102-WP ratios"
    ),
    # ---- GeForce RTX 40 (Ada AD10x). TF32 = FP32; FP16/BF16 w/ FP32 acc = 2 x FP32. ----
    # Derived: 2 x 3072 cores x 2.46 GHz (SPEC).
    "NVIDIA GeForce RTX 4060": _geforce(
        15.1, 30.2, "derived: NVIDIA spec (3072 cores, 2460 MHz boost), ADA-WP ratios"
    ),
    # Derived: 2 x 4352 cores x 2.535 GHz (SPEC; 8 GB and 16 GB boards alike).
    "NVIDIA GeForce RTX 4060 Ti": _geforce(
        22.1, 44.1, "derived: NVIDIA spec (4352 cores, 2535 MHz boost), ADA-WP ratios"
    ),
    # Derived: 2 x 5888 cores x 2.475 GHz (SPEC).
    "NVIDIA GeForce RTX 4070": _geforce(
        29.1, 58.3, "derived: NVIDIA spec (5888 cores, 2475 MHz boost), ADA-WP ratios"
    ),
    # Derived: 2 x 7168 cores x 2.475 GHz (SPEC).
    "NVIDIA GeForce RTX 4070 SUPER": _geforce(
        35.5, 71.0, "derived: NVIDIA spec (7168 cores, 2475 MHz boost), ADA-WP ratios"
    ),
    # Derived: 2 x 7680 cores x 2.61 GHz (SPEC).
    "NVIDIA GeForce RTX 4070 Ti": _geforce(
        40.1, 80.2, "derived: NVIDIA spec (7680 cores, 2610 MHz boost), ADA-WP ratios"
    ),
    # Derived: 2 x 8448 cores x 2.61 GHz (SPEC).
    "NVIDIA GeForce RTX 4070 Ti SUPER": _geforce(
        44.1, 88.2, "derived: NVIDIA spec (8448 cores, 2610 MHz boost), ADA-WP ratios"
    ),
    # Derived: 2 x 9728 cores x 2.505 GHz (SPEC).
    "NVIDIA GeForce RTX 4080": _geforce(
        48.7, 97.5, "derived: NVIDIA spec (9728 cores, 2505 MHz boost), ADA-WP ratios"
    ),
    # Derived: 2 x 10240 cores x 2.55 GHz (SPEC).
    "NVIDIA GeForce RTX 4080 SUPER": _geforce(
        52.2, 104.4, "derived: NVIDIA spec (10240 cores, 2550 MHz boost), ADA-WP ratios"
    ),
    # ADA-WP Appendix A, GeForce RTX 4090 (16384 cores, 2520 MHz): FP32 82.6, TF32 82.6/165.2,
    # FP16 and BF16 w/ FP32 acc 165.2/330.4 (FP16 w/ FP16 acc: 330.3/660.6, not used).
    "NVIDIA GeForce RTX 4090": _geforce(82.6, 165.2, "Ada whitepaper, Appendix A (RTX 4090)"),
    # The laptop part's boost clock depends on the OEM's power limit: NVIDIA lists 1470-2370
    # MHz (35-115 W). The table assumes the highest, 2370 MHz: 2 x 3072 cores x 2.37 GHz.
    # A laptop held at a lower power limit runs slower; pass --peak-tflops for its own clock.
    "NVIDIA GeForce RTX 4060 Laptop GPU": _geforce(
        14.6,
        29.1,
        "derived: NVIDIA spec (3072 cores, highest listed boost 2370 MHz), ADA-WP ratios",
    ),
    # ---- GeForce RTX 50 (Blackwell GB20x). TF32 = FP32; FP16/BF16 w/ FP32 acc = 2 x FP32. ----
    # Derived: 2 x 3840 cores x 2.50 GHz (SPEC).
    "NVIDIA GeForce RTX 5060": _geforce(
        19.2, 38.4, "derived: NVIDIA spec (3840 cores, 2.50 GHz boost), RTXBW-WP ratios"
    ),
    # Derived: 2 x 4608 cores x 2.57 GHz (SPEC; 8 GB and 16 GB boards alike).
    "NVIDIA GeForce RTX 5060 Ti": _geforce(
        23.7, 47.4, "derived: NVIDIA spec (4608 cores, 2.57 GHz boost), RTXBW-WP ratios"
    ),
    # Derived: 2 x 6144 cores x 2.51 GHz (SPEC).
    "NVIDIA GeForce RTX 5070": _geforce(
        30.8, 61.7, "derived: NVIDIA spec (6144 cores, 2.51 GHz boost), RTXBW-WP ratios"
    ),
    # Derived: 2 x 8960 cores x 2.45 GHz (SPEC).
    "NVIDIA GeForce RTX 5070 Ti": _geforce(
        43.9, 87.8, "derived: NVIDIA spec (8960 cores, 2.45 GHz boost), RTXBW-WP ratios"
    ),
    # Derived: 2 x 10752 cores x 2.62 GHz (SPEC).
    "NVIDIA GeForce RTX 5080": _geforce(
        56.3, 112.7, "derived: NVIDIA spec (10752 cores, 2.62 GHz boost), RTXBW-WP ratios"
    ),
    # RTXBW-WP, GB202 / RTX 5090 (21760 cores, 2407 MHz): FP32 104.8, FP16/BF16 w/ FP32 acc
    # 209.5/419 (w/ FP16 acc 419/838, not used).
    "NVIDIA GeForce RTX 5090": _geforce(
        104.8, 209.5, "RTX Blackwell whitepaper, Table 3 / Appendix A (RTX 5090)"
    ),
    # ---- Data centre. Tensor rates here are full rate with FP32 accumulate. ----
    # A100-DS: FP32 19.5, TF32 156 | 312*, BF16 312 | 624*, FP16 312 | 624* (1410 MHz boost).
    # The datasheet gives the PCIe and SXM boards, 40 GB and 80 GB, the same compute rows.
    "NVIDIA A100-SXM4-80GB": GpuPeak(19.5, 156.0, 312.0, 312.0, "A100 datasheet (SXM4 80GB)"),
    "NVIDIA A100-SXM4-40GB": GpuPeak(19.5, 156.0, 312.0, 312.0, "A100 datasheet (SXM4 40GB)"),
    "NVIDIA A100-PCIE-40GB": GpuPeak(19.5, 156.0, 312.0, 312.0, "A100 datasheet (PCIe 40GB)"),
    "NVIDIA A100 80GB PCIe": GpuPeak(19.5, 156.0, 312.0, 312.0, "A100 datasheet (PCIe 80GB)"),
    # H100-WP Table 3, H100 SXM5 (tensor 1830 MHz, FP32 1980 MHz): FP32 66.9, TF32 494.7/989.4,
    # FP16 and BF16 (FP32 acc) 989.4/1978.9. The datasheet rounds these to 67 / 989* / 1,979*.
    "NVIDIA H100 80GB HBM3": GpuPeak(
        66.9, 494.7, 989.4, 989.4, "H100 whitepaper v1.04, Table 3 (H100 SXM5)"
    ),
    # H100-WP Table 3, H100 PCIe (tensor 1620 MHz, FP32 1755 MHz): FP32 51.2, TF32 378/756,
    # FP16 and BF16 (FP32 acc) 756/1513.
    "NVIDIA H100 PCIe": GpuPeak(
        51.2, 378.0, 756.0, 756.0, "H100 whitepaper v1.04, Table 3 (H100 PCIe)"
    ),
    # H100-DS, H100 NVL column (one GPU): FP32 60, TF32 835*, BF16 1,671*, FP16 1,671*
    # (* with sparsity): dense 417.5 / 835.5.
    "NVIDIA H100 NVL": GpuPeak(
        60.0, 417.5, 835.5, 835.5, "H100 datasheet (H100 NVL column, sparse figures halved)"
    ),
    # H200-DS: H200 SXM prints FP32 67, TF32 989*, BF16 1,979*, FP16 1,979*, the H100 SXM rows
    # exactly (same GH100 compute, more and faster HBM3e), so it carries the H100 SXM5 figures.
    "NVIDIA H200": GpuPeak(
        66.9,
        494.7,
        989.4,
        989.4,
        "H200 datasheet (= H100 SXM5 compute; H100 whitepaper v1.04, Table 3)",
    ),
    # L4-DS: FP32 30.3, TF32 120*, BF16 242*, FP16 242* (* with sparsity): dense 60 / 121.
    "NVIDIA L4": GpuPeak(30.3, 60.0, 121.0, 121.0, "L4 datasheet (sparse figures halved)"),
    # L40S-DS: FP32 91.6, TF32 183 | 366*, BF16 362.05 | 733*, FP16 362.05 | 733*.
    "NVIDIA L40S": GpuPeak(91.6, 183.0, 362.05, 362.05, "L40S datasheet"),
}

_PREFIXES = ("nvidia", "tesla", "geforce")


def _loose(name: str) -> str:
    """``name`` lower-cased, without spaces, dashes or underscores, and without a leading
    "NVIDIA", "Tesla" or "GeForce" (so "rtx 4090" and "NVIDIA GeForce RTX 4090" meet)."""
    key = re.sub(r"[\s\-_]+", "", name.lower())
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


_LOOSE_INDEX: dict[str, str] = {_loose(name): name for name in GPU_PEAKS}


def gpu_peak(name: str) -> GpuPeak | None:
    """The table entry for a GPU name: exact match first, then a match ignoring case,
    spaces/dashes and a leading 'NVIDIA ' (so 'RTX 4090' and 'NVIDIA GeForce RTX 4090' both
    work); None if unknown."""
    if name in GPU_PEAKS:
        return GPU_PEAKS[name]
    canonical = _LOOSE_INDEX.get(_loose(name))
    return GPU_PEAKS[canonical] if canonical is not None else None


def gpu_candidates(name: str) -> list[str]:
    """The table's GPUs a partial name could mean, as ``gpu_peak`` compares names ('H100' ->
    the three H100 boards, '4090' -> the RTX 4090), sorted; [] for an empty name."""
    key = _loose(name)
    return sorted(known for known in GPU_PEAKS if key and key in _loose(known))


def known_gpus() -> list[str]:
    """The GPU names the table knows, as CUDA reports them, sorted."""
    return sorted(GPU_PEAKS)
