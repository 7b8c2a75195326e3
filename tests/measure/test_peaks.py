"""The dense-peak table (membench.measure.peaks): internal consistency, lookup, and spot checks
against
the published figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from membench.measure.peaks import GPU_PEAKS, PRECISIONS, GpuPeak, _loose, gpu_peak, known_gpus

TENSOR = ("tf32", "bf16", "fp16")

# Cards whose sources print different BF16 and FP16 (FP32-accumulate) rates. None of the
# sources behind the table does (GA102, Ada, RTX Blackwell and H100 whitepapers; A100, H100,
# H200, L4, L40S datasheets all print one figure for both), so this stays empty; a card that
# breaks the rule must be listed here, with its source, rather than loosen the check.
BF16_FP16_DIFFER: frozenset[str] = frozenset()


def table_problems(name: str, peak: GpuPeak) -> list[str]:
    """What is wrong with one entry; empty when nothing is."""
    problems = []
    if not peak.source.strip():
        problems.append("no source")
    for p in PRECISIONS:
        v = peak.tflops(p)
        if v is not None and not v > 0:
            problems.append(f"{p} not positive: {v}")
    if peak.fp32 is not None:
        for p in TENSOR:
            v = peak.tflops(p)
            if v is not None and v < peak.fp32:
                problems.append(f"{p} {v} below fp32 {peak.fp32}")
    if (
        peak.bf16 is not None
        and peak.fp16 is not None
        and peak.bf16 != peak.fp16
        and name not in BF16_FP16_DIFFER
    ):
        problems.append(f"bf16 {peak.bf16} != fp16 {peak.fp16}")
    if "GeForce" in name and None not in (peak.fp32, peak.tf32, peak.bf16):
        # GA102/Ada/RTX Blackwell whitepapers: on GeForce, TF32 runs at the FP32 rate and
        # FP16/BF16 with FP32 accumulate at twice it (with FP16 accumulate, four times: a 4x
        # entry means the FP16-accumulate row was copied by mistake).
        if peak.tf32 != peak.fp32:
            problems.append(f"GeForce tf32 {peak.tf32} != fp32 {peak.fp32}")
        if abs(peak.bf16 - 2 * peak.fp32) > 0.15:
            problems.append(f"GeForce bf16 {peak.bf16} is not 2 x fp32 {peak.fp32}")
    return problems


@pytest.mark.parametrize("name", sorted(GPU_PEAKS))
def test_every_entry_is_consistent(name):
    assert table_problems(name, GPU_PEAKS[name]) == []


def test_the_checks_reject_bad_entries():
    # tensor below fp32 (e.g. a TF32 figure typed into fp32)
    assert any(
        "below fp32" in p
        for p in table_problems(
            "NVIDIA Fake", GpuPeak(fp32=156.0, tf32=19.5, bf16=312.0, fp16=312.0, source="x")
        )
    )
    # bf16 and fp16 disagreeing (one sparse, one dense)
    assert any(
        "bf16" in p
        for p in table_problems(
            "NVIDIA Fake", GpuPeak(fp32=19.5, tf32=156.0, bf16=312.0, fp16=624.0, source="x")
        )
    )
    # a GeForce entry with the FP16-accumulate (4x) figure instead of FP32-accumulate (2x)
    assert any(
        "2 x fp32" in p
        for p in table_problems(
            "NVIDIA GeForce RTX 4090", GpuPeak(82.6, 82.6, 330.3, 330.3, source="x")
        )
    )
    # no source, non-positive figure
    assert "no source" in table_problems("NVIDIA Fake", GpuPeak(1.0, 2.0, 2.0, 2.0, source=" "))
    assert any(
        "not positive" in p
        for p in table_problems("NVIDIA Fake", GpuPeak(0.0, 2.0, 2.0, 2.0, source="x"))
    )


def test_none_is_allowed_where_a_source_publishes_nothing():
    partial = GpuPeak(fp32=10.0, tf32=None, bf16=40.0, fp16=40.0, source="x")
    assert table_problems("NVIDIA Fake", partial) == []
    assert partial.tflops("tf32") is None


def test_h200_has_the_h100_sxm_compute():
    # The H200 datasheet prints the H100 SXM rows (67 / 989* / 1,979* / 1,979*) unchanged.
    h100, h200 = GPU_PEAKS["NVIDIA H100 80GB HBM3"], GPU_PEAKS["NVIDIA H200"]
    assert [h200.tflops(p) for p in PRECISIONS] == [h100.tflops(p) for p in PRECISIONS]


def test_a100_variants_share_one_peak():
    # The A100 datasheet gives SXM4/PCIe, 40/80 GB the same compute rows.
    names = [
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA A100-PCIE-40GB",
        "NVIDIA A100 80GB PCIe",
    ]
    assert len({tuple(GPU_PEAKS[n].tflops(p) for p in PRECISIONS) for n in names}) == 1


@pytest.mark.parametrize(
    "name, precision, expected",
    [
        # A100 datasheet: "BFLOAT16 Tensor Core 312 TFLOPS | 624 TFLOPS*", "TF32 156 | 312*", FP32
        # 19.5
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100 80GB PCIe", "tf32", 156.0),
        ("NVIDIA A100-SXM4-40GB", "fp32", 19.5),
        # H100 whitepaper v1.04, Table 3: "Peak BF16 Tensor TFLOPS with FP32 Accumulate
        # 312/624 | 989.4/1978.9 | 756/1513" (A100 | H100 SXM5 | H100 PCIe); TF32 494.7/989.4
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
        ("NVIDIA H100 80GB HBM3", "tf32", 494.7),
        ("NVIDIA H100 PCIe", "fp16", 756.0),
        # H100 datasheet, H100 NVL: "BFLOAT16 Tensor Core 1,671 teraFLOPS*" (* with sparsity)
        ("NVIDIA H100 NVL", "bf16", 835.5),
        # Ada whitepaper, Appendix A (RTX 4090): "Peak FP32 TFLOPS (non-Tensor) 82.6",
        # "Peak BF16 Tensor TFLOPS with FP32 Accumulate 165.2/330.4"
        ("NVIDIA GeForce RTX 4090", "fp32", 82.6),
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
        # GA102 whitepaper, Appendix A (RTX 3090): FP32 35.6; RTX Blackwell whitepaper Table 3:
        # BF16 with FP32 accumulate 71.2/142.4 (3090), 209.5/419 (5090)
        ("NVIDIA GeForce RTX 3090", "fp32", 35.6),
        ("NVIDIA GeForce RTX 3090", "bf16", 71.2),
        ("NVIDIA GeForce RTX 5090", "bf16", 209.5),
        # L40S datasheet: "BFLOAT16 Tensor Core 362.05 | 733*"; L4 datasheet "FP16 242*" (sparse)
        ("NVIDIA L40S", "bf16", 362.05),
        ("NVIDIA L4", "fp16", 121.0),
        ("NVIDIA L4", "fp32", 30.3),
    ],
)
def test_published_figures(name, precision, expected):
    assert gpu_peak(name).tflops(precision) == pytest.approx(expected)


@pytest.mark.parametrize(
    "name, cores, boost_mhz",
    [
        # Derived GeForce rows: FP32 = 2 x CUDA cores x boost clock (NVIDIA spec pages).
        ("NVIDIA GeForce RTX 3060", 3584, 1777),
        ("NVIDIA GeForce RTX 3080", 8960, 1710),  # the 12 GB board, the larger of the two
        ("NVIDIA GeForce RTX 3090 Ti", 10752, 1860),
        ("NVIDIA GeForce RTX 4070 SUPER", 7168, 2475),
        ("NVIDIA GeForce RTX 4080", 9728, 2505),
        ("NVIDIA GeForce RTX 4060 Laptop GPU", 3072, 2370),  # highest boost NVIDIA lists
        ("NVIDIA GeForce RTX 5080", 10752, 2620),
        # Whitepaper rows agree with the same formula.
        ("NVIDIA GeForce RTX 3090", 10496, 1695),
        ("NVIDIA GeForce RTX 4090", 16384, 2520),
        ("NVIDIA GeForce RTX 5090", 21760, 2407),
    ],
)
def test_geforce_rows_match_cores_times_clock(name, cores, boost_mhz):
    fp32 = 2 * cores * boost_mhz / 1e6
    assert gpu_peak(name).fp32 == pytest.approx(fp32, abs=0.05)
    assert gpu_peak(name).bf16 == pytest.approx(2 * fp32, abs=0.1)


def test_the_3080_uses_the_larger_board():
    # GA102 whitepaper Table 2 gives the 10 GB RTX 3080 29.8 / 59.5; both boards report the
    # same name, and the table keeps the 12 GB board's larger figure (conservative MFU).
    assert gpu_peak("NVIDIA GeForce RTX 3080").fp32 > 29.8


def test_lookup_exact():
    assert gpu_peak("NVIDIA GeForce RTX 4090") is GPU_PEAKS["NVIDIA GeForce RTX 4090"]
    assert gpu_peak("NVIDIA H200") is GPU_PEAKS["NVIDIA H200"]


@pytest.mark.parametrize(
    "loose, canonical",
    [
        ("rtx 4090", "NVIDIA GeForce RTX 4090"),
        ("RTX 4090", "NVIDIA GeForce RTX 4090"),
        ("GeForce RTX 4090", "NVIDIA GeForce RTX 4090"),
        ("H200", "NVIDIA H200"),
        ("nvidia h100 pcie", "NVIDIA H100 PCIe"),
        ("A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"),  # older drivers omit "NVIDIA"
        ("a100 sxm4 80gb", "NVIDIA A100-SXM4-80GB"),
        ("Tesla A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB"),
        ("rtx 4070 ti super", "NVIDIA GeForce RTX 4070 Ti SUPER"),
        ("rtx 4060 laptop gpu", "NVIDIA GeForce RTX 4060 Laptop GPU"),
    ],
)
def test_lookup_loose(loose, canonical):
    assert gpu_peak(loose) is GPU_PEAKS[canonical]


@pytest.mark.parametrize(
    "unknown",
    [
        "NVIDIA GeForce RTX 2080 Ti",
        "NVIDIA B200",
        "AMD Instinct MI300X",
        "",
        "NVIDIA",
        "rtx 4070 ti super duper",
    ],
)
def test_lookup_unknown(unknown):
    assert gpu_peak(unknown) is None


def test_loose_keys_do_not_collide():
    # Two entries collapsing to one loose key would make loose lookup pick one silently.
    keys = [_loose(name) for name in GPU_PEAKS]
    assert len(keys) == len(set(keys))


def test_names_are_as_cuda_reports_them():
    for name in GPU_PEAKS:
        assert name.startswith("NVIDIA "), name
        assert name == name.strip() and "  " not in name, name


def test_known_gpus_lists_the_table():
    names = known_gpus()
    assert names == sorted(GPU_PEAKS)
    assert "NVIDIA GeForce RTX 4060 Laptop GPU" in names


def test_tflops_precision_names():
    peak = GPU_PEAKS["NVIDIA A100-SXM4-80GB"]
    assert peak.tflops("BF16") == 312.0
    with pytest.raises(ValueError, match="unknown precision"):
        peak.tflops("fp8")


def test_importing_the_table_does_not_import_torch():
    code = "import sys, membench.measure.peaks; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
