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
