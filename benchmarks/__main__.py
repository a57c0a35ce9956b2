"""``make bench``: every benchmark, one after another, each printing its figures side by side.

Benchmarks are not tests: they measure and print, they do not pass or fail on timing.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "benchmarks.lakefs_io",  # lakeFS ingest and read-back through the SDK vs a plain file copy
    "benchmarks.training",  # training time and peak memory at 20k, 200k, 1M rows
    "benchmarks.cluster_training",  # flow memory: in process vs Dask workers reading lakeFS
    "benchmarks.validation",  # warm Great Expectations vs the same checks in plain pandas
    "benchmarks.draft",  # `lakeloop dataset init` on 100k and 1M rows vs reading the CSV
    "benchmarks.drift",  # the monitor step vs Evidently alone, 50k vs 20k rows
    "benchmarks.api",  # lakeloop API vs mlflow models serve, single and batch, log on and off
    "benchmarks.soak",  # 120 s of mixed traffic with a hot swap: failures, latency, memory
    "benchmarks.clean_gate",  # the clean-holdout gate: legitimate vs poisoned feedback
    "benchmarks.stack",  # `lakeloop up` cold and on a running stack, `lakeloop down`
    "benchmarks.flow_start",  # event -> running flow run: serve()'s new process vs forked warm
    "benchmarks.loop",  # commit -> served and drift -> served hop by hop, beside the fit alone
]


def main() -> int:
    failed = []
    for module in BENCHMARKS:
        print(f"\n=== {module} ===", flush=True)
        if subprocess.run([sys.executable, "-m", module], check=False).returncode != 0:
            failed.append(module)
    if failed:
        print(f"\nbenchmarks that did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
