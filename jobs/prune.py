"""spark-submit entry point for the prune stage: `spark-submit jobs/prune.py --input ... --output ...`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["prune", *sys.argv[1:]]))
