"""spark-submit entry point for the download stage: `spark-submit jobs/download.py --input RUN --output RUN`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
