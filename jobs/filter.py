"""spark-submit entry point for the filter stage: `spark-submit jobs/filter.py --input ... --output ...`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["filter", *sys.argv[1:]]))
