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
ALT_TEXT_NOT_CHOSEN = "alt_text_not_chosen"  # another alt-text of the same image was chosen

# download
URL_REFUSED = "url_refused"  # scheme or resolved address refused by the URL guard
DOWNLOAD_FAILED = "download_failed"  # HTTP error, timeout, not an image, ...

# embed
IMAGE_DECODE_FAILED = "image_decode_failed"
NO_IMAGE = "no_image"  # the uid has no downloaded image to embed

# filter (one reason per rule; the detail holds the value that failed)
CAPTION_TOO_SHORT = "caption_too_short"  # fewer words or characters than asked
WRONG_LANGUAGE = "wrong_language"  # not a kept language, or identified with too little confidence
NO_IMAGE_SIZE = "no_image_size"  # an image rule needs sizes this row does not have
IMAGE_TOO_SMALL = "image_too_small"  # shortest side below the minimum (zero included)
BAD_ASPECT_RATIO = "bad_aspect_ratio"  # longest / shortest side above the maximum
NO_CLIP_SCORE = "no_clip_score"  # null or NaN score, or no embeddings to compute it from
LOW_CLIP_SCORE = "low_clip_score"  # below the threshold, or outside the top fraction
DUPLICATE_IMAGE = "duplicate_image"  # the same image bytes (sha256) as a smaller uid

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
