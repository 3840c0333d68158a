"""Every reason string the decisions ledger can carry, in one place."""

from __future__ import annotations

KEPT = "kept"
DROPPED = "dropped"

# ingest
MALFORMED_ROW = "malformed_row"
MISSING_UID = "missing_uid"
EMPTY_TEXT = "empty_text"
UNDECODABLE_TEXT = "undecodable_text"
TEXT_TOO_LONG = "text_too_long"
NO_URL_OR_IMAGE = "no_url_or_image"
DUPLICATE_UID = "duplicate_uid"
DUPLICATE_URL_TEXT = "duplicate_url_text"

# later stages (match, balance, download, embed, prune) add theirs here.
NO_CONCEPT_MATCH = "no_concept_match"
BALANCED_OUT = "balanced_out"

# download
URL_REFUSED = "url_refused"  # scheme or resolved address refused by the URL guard
DOWNLOAD_FAILED = "download_failed"  # HTTP error, timeout, not an image, ...

# embed
IMAGE_DECODE_FAILED = "image_decode_failed"
NO_IMAGE = "no_image"  # the uid has no downloaded image to embed

# cluster / prune
INVALID_EMBEDDING = "invalid_embedding"  # NaN, inf or zero vector
SEMANTIC_DUPLICATE = "semantic_duplicate"
DENSITY_PRUNED = "density_pruned"
CLUSTER_CAPPED = "cluster_capped"

INGEST_REASONS = (
    MALFORMED_ROW,
    MISSING_UID,
    EMPTY_TEXT,
    UNDECODABLE_TEXT,
    TEXT_TOO_LONG,
    NO_URL_OR_IMAGE,
    DUPLICATE_UID,
    DUPLICATE_URL_TEXT,
)
