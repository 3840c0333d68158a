"""curate: data curation for web-scale image-text corpora on PySpark."""

__version__ = "0.1.0"
