"""spark-submit entry point for the count stage: `spark-submit jobs/count.py --input ... --output ...`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["count", *sys.argv[1:]]))
