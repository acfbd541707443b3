import sys, time, statistics, torch
from torchrec_models.config import load_config
from torchrec_models.data.synthetic import SyntheticData, SyntheticSpec
dev = sys.argv[2] if len(sys.argv) > 2 else "cpu"
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
for cfgp, b in (("configs/dlrm_criteo_onehot.toml", 2048), ("configs/dlrm_criteo_onehot.toml", 8192), ("configs/dlrm_dcnv2_mlperf.toml", 8192)):
    src = SyntheticData(SyntheticSpec.from_config(load_config(cfgp, [])), dev)
    src.batch(0, 0, b)
    ts = []
    for s in range(1, 3):
        sync(); t = time.perf_counter(); src.batch(s, 0, b); sync(); ts.append(time.perf_counter() - t)
    print(sys.argv[1], cfgp.split("/")[-1], b, f"median {statistics.median(ts)*1e3:.2f} ms min {min(ts)*1e3:.2f}")
