"""spark-submit entry point for the balance stage: `spark-submit jobs/balance.py --input ... --output ...`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["balance", *sys.argv[1:]]))
