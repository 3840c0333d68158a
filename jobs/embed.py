"""spark-submit entry point for the embed stage: `spark-submit jobs/embed.py --input RUN --output RUN --model ViT-B-32 ...`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
