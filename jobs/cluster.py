"""spark-submit entry point for the cluster stage: `spark-submit jobs/cluster.py --input ... --output ...`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["cluster", *sys.argv[1:]]))
