"""spark-submit entry point for the whole pipeline: `spark-submit jobs/run.py --config pipeline.yaml ...`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
