"""spark-submit entry point for the report stage: `spark-submit jobs/report.py --output RUN_DIR ...`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
