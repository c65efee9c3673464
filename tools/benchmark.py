"""Inference and training speed of a dental config: PyTorch eager, ONNX Runtime, torchvision.

    python tools/benchmark.py --config-file configs/dental_r50.yaml \\
        --images ../shared/datasets/calculus-segment-v10/test TEST.IMS_PER_BATCH 2

The benchmark is a measurement script, benchmarks/bench_runtimes.py, not part of the dental_d2
package; this runs it with the same arguments (--help lists them). It runs as a process of its
own so that its folder, where its `equal_work` package lives, is on its import path.
"""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_runtimes.py"


def main(argv=None) -> int:
    """Runs the benchmark script on `argv` (default: this process's arguments); its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return subprocess.run([sys.executable, str(SCRIPT), *argv], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
