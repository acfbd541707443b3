"""CPU kernels of this project that replace slower library ones (built on first use)."""
