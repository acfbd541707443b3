"""Benchmark harness: suites of training rows -> typed records -> reports and A/B comparisons."""
import os

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # ranks inherit it: no profiler start/stop chatter
