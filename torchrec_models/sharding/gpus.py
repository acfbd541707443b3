"""GPU presets for planning (sizes, bandwidths, peaks); importable without torch."""
from __future__ import annotations

from dataclasses import dataclass

GPUS_PER_NODE = 8
# Assumed share of the dense peak that the MLPs and the interaction reach: not a measurement.
DENSE_PEAK_FRACTION = 0.35


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model: memory per GPU (GiB), bandwidths (GB/s = 1e9 bytes/s), dense peak (TFLOP/s)."""

    name: str  # the key in the price table
    hbm_gb: float
    ddr_gb: float  # host memory per GPU
    hbm_bw: float
    hbm_to_ddr_bw: float  # PCIe, one direction
    intra_host_bw: float  # NVLink, one direction
    inter_host_bw: float  # network per GPU
    peak_tflops: dict[str, float]  # bf16 / tf32 / fp32, dense (no sparsity)

    def topology_args(self) -> dict[str, float]:
        """Bandwidths as torchrec's Topology wants them: bytes per millisecond."""
        per_ms = 1e9 / 1e3
        return {
            "hbm_mem_bw": self.hbm_bw * per_ms,
            "hbm_to_ddr_mem_bw": self.hbm_to_ddr_bw * per_ms,
            "intra_host_bw": self.intra_host_bw * per_ms,
            "inter_host_bw": self.inter_host_bw * per_ms,
        }


# SXM parts in 8-GPU HGX/DGX hosts. Sources: NVIDIA H100, H200 and A100 datasheets (HBM size and
# bandwidth; NVLink 900 GB/s (H100, H200) and 600 GB/s (A100) total, i.e. 450 / 300 GB/s per
# direction; dense BF16 / TF32 / FP32 tensor-core peaks without sparsity), the DGX H100 / H200 /
# A100 user guides (one 400 Gb/s ConnectX-7 NIC per GPU on H100 / H200 = 50 GB/s, one 200 Gb/s
# ConnectX-6 per GPU on A100 = 25 GB/s; 2 TB host memory per 8 GPUs = 256 GiB per GPU) and PCIe
# Gen5 / Gen4 x16 (64 / 32 GB/s per direction). H200's 141 GB is about 140 GiB as CUDA counts it.
GPUS = {
    "h100": GpuSpec("H100", 80, 256, 3350, 64, 450, 50, {"bf16": 989, "tf32": 495, "fp32": 67}),
    "h200": GpuSpec("H200", 140, 256, 4800, 64, 450, 50, {"bf16": 989, "tf32": 495, "fp32": 67}),
    "a100": GpuSpec("A100", 80, 256, 2039, 32, 300, 25, {"bf16": 312, "tf32": 156, "fp32": 19.5}),
}
