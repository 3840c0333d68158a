"""spark-submit entry point for the match stage: `spark-submit jobs/match.py --input ... --output ...`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["match", *sys.argv[1:]]))
