"""curate: data curation for web-scale image-text corpora on PySpark."""

import os

__version__ = "0.1.0"

# Dependencies that phone home unless told not to, switched off on import of the package, so
# before any stage imports them, here and in every process that unpickles our code (Spark
# executors, img2dataset's workers) or inherits this environment (spark-submit, its Python
# workers). setdefault: a user who sets one explicitly keeps their value.
# - albumentations (imported by img2dataset's resizer) asks pypi.org for its latest version on
#   every import;
# - huggingface_hub (open_clip loads hf-hub: models through it) sends usage pings for the
#   libraries that call its send_telemetry.
for _switch in ("NO_ALBUMENTATIONS_UPDATE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_switch, "1")
del _switch
