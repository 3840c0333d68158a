"""spark-submit entry point for the export stage: `spark-submit jobs/export.py --input ... --output ...`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
