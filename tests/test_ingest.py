"""Ingest: every format, every bad-input case, and a ledger whose counts add up."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.api import run_ingest
from pipeline.core import reasons as R
from pipeline.core.ledger import split_decisions
from pipeline.kernels.matcher import Matcher
from pipeline.registry import PipelineConfig
from pipeline.stages.ingest import IngestConfig, with_ingest_decisions
from pipeline.stages.sources import InputError, read_pool

# A valid caption may hold U+FFFD (LAION mojibake: "Oklahoman\ufffds"); it is a caption. Only
# bytes that are not UTF-8 make a caption undecodable.
MOJIBAKE = "caf\ufffd dog"
MOJIBAKE_UTF8 = MOJIBAKE.encode()  # b"caf\xef\xbf\xbd dog"
LATIN1_BYTES = b"caf\xe9 au lait"  # "cafe" in ISO-8859-1: not UTF-8


def assert_mojibake_goes_on(texts) -> None:
    """Kept captions holding U+FFFD match the entry next to it, as any caption would."""
    mojibake = [t for t in texts if "\ufffd" in t]
    assert mojibake and all(Matcher(["dog"]).match(t) == [0] for t in mojibake)


def invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A Parquet string column with bytes as they are; pyarrow refuses to build it from bytes."""
    return pa.array(values, pa.binary()).view(pa.string())


def decide(spark, path, **cfg_kwargs):
    cfg = IngestConfig(**cfg_kwargs)
    raw = read_pool(spark, str(path), cfg)
    decided = with_ingest_decisions(raw.df, cfg, raw.uid_given, raw.extras)
    kept, ledger = split_decisions(decided)
    return raw, kept.toPandas(), ledger.toPandas()


def reasons_of(ledger) -> dict[str, int]:
    dropped = ledger[ledger.decision == "dropped"]
    return dropped.groupby("reason").size().to_dict()


def assert_accounted(ledger, n_input: int) -> None:
    assert len(ledger) == n_input, "every input row has exactly one ledger row"
    assert ledger.uid.is_unique, "ledger uids are unique"
    assert set(ledger.decision) <= {"kept", "dropped"}
    assert ledger[ledger.decision == "kept"].reason.isna().all()
    assert ledger[ledger.decision == "dropped"].reason.notna().all()


def test_parquet_laion_style_columns_and_hash_uid(spark, tmp_path):
    path = tmp_path / "laion.parquet"
    urls = ["http://a/1.jpg", "http://a/2.jpg", "http://a/1.jpg", "http://a/3.jpg", "http://a/4.jpg"]
    texts = [b"a dog", b"a cat", b"a dog", MOJIBAKE_UTF8, LATIN1_BYTES]
    pq.write_table(pa.table({"URL": urls, "TEXT": invalid_utf8_strings(texts)}), path)
    raw, kept, ledger = decide(spark, path)
    assert raw.fmt == "parquet" and raw.uid_given is None
    assert sorted(kept.text) == ["a cat", "a dog", "caf\ufffd dog"]
    assert reasons_of(ledger) == {R.DUPLICATE_URL_TEXT: 1, R.UNDECODABLE_TEXT: 1}
    assert_accounted(ledger, 5)
    assert_mojibake_goes_on(kept.text)
    # The uid is a content hash: the same pair gets the same uid in another file.
    pq.write_table(pa.table({"url": ["http://a/1.jpg"], "caption": ["a dog"]}), tmp_path / "other.parquet")
    _, kept2, _ = decide(spark, tmp_path / "other.parquet")
    assert kept2.uid[0] == kept[kept.text == "a dog"].uid.iloc[0]
    # The documented hash, written out: sha256 of "u:" url, a unit separator, "t:" text; 32 hex digits.
    assert kept2.uid[0] == hashlib.sha256(b"u:http://a/1.jpg\x1ft:a dog").hexdigest()[:32]


def test_null_and_empty_url_hash_as_documented(spark, tmp_path):
    # A null is "u!" where a value is "u:" + value, so a null url and an empty one differ.
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table({"uid": ["a", "b"], "url": [None, ""], "text": ["x", "x"], "image_ref": ["img.jpg", "img.jpg"]}), path
    )
    from pyspark.sql import functions as F

    from pipeline.stages.ingest import content_hash

    df = spark.read.parquet(str(path)).select(content_hash(F.col("url"), F.col("text")).alias("h")).toPandas()
    assert df.h.tolist() == [hashlib.sha256(b"u!\x1ft:x").hexdigest()[:32], hashlib.sha256(b"u:\x1ft:x").hexdigest()[:32]]


def test_tsv_cc3m_style_without_header(spark, tmp_path):
    path = tmp_path / "cc3m.tsv"
    path.write_bytes(
        b'author : a life in photography -- in pictures\thttps://i.example.com/1.jpg\n'
        b'an angler fishes river on a snowy day .\thttp://www.example.net/2.jpg\n'
        b'a "quoted" caption\thttp://www.example.net/3.jpg\n'
    )
    raw, kept, ledger = decide(spark, path)
    assert raw.fmt == "tsv"
    assert kept.url.str.startswith("http").all()
    assert 'a "quoted" caption' in set(kept.text)
    assert_accounted(ledger, 3)


def test_csv_with_header_quotes_and_ragged_rows(spark, tmp_path):
    path = tmp_path / "pool.csv"
    path.write_bytes(
        'uid,url,caption\n'
        'u1,http://a/1.jpg,"dog, cat and bird"\n'
        'u2,http://a/2.jpg\n'  # ragged: too few fields
        'u3,http://a/3.jpg,fine,extra\n'  # ragged: too many fields
        ',http://a/4.jpg,no uid here\n'  # null uid
        'u1,http://a/5.jpg,same uid again\n'
        'u6,http://a/6.jpg,"Ålesund … Ņ, \u2028 dog"\n'.encode()  # bytes 0x85 and 0xA8 inside UTF-8
        + b"u7,http://a/7.jpg," + MOJIBAKE_UTF8 + b"\n"
        + b"u8,http://a/8.jpg," + LATIN1_BYTES + b"\n"
    )
    raw, kept, ledger = decide(spark, path)
    assert raw.uid_given == "uid"
    assert sorted(kept.text) == ["caf\ufffd dog", "dog, cat and bird", "Ålesund … Ņ, \u2028 dog"]
    assert_mojibake_goes_on(kept.text)
    assert reasons_of(ledger) == {R.MALFORMED_ROW: 2, R.MISSING_UID: 1, R.DUPLICATE_UID: 1, R.UNDECODABLE_TEXT: 1}
    assert ledger[ledger.reason == R.UNDECODABLE_TEXT].uid.tolist() == ["u8"]
    dup = ledger[ledger.reason == R.DUPLICATE_UID].iloc[0]
    assert dup.uid == "u1#dup2" and "u1" in dup.detail
    assert_accounted(ledger, 8)


def test_non_utf8_bytes_and_huge_caption_and_blank(spark, tmp_path):
    path = tmp_path / "bad.tsv"
    huge = "w" * (1 << 20)
    path.write_bytes(
        b"good caption\thttp://a/1.jpg\n"
        b"caf\xe9 latin-1 bytes\thttp://a/2.jpg\n"
        + huge.encode() + b"\thttp://a/3.jpg\n"
        b" \t\thttp://a/4.jpg\n"
        + MOJIBAKE_UTF8 + b"\thttp://a/5.jpg\n"
        + "Ålesund … Ņ \u00a0dog\thttp://a/6.jpg\n".encode()
    )
    _, kept, ledger = decide(spark, path)
    assert sorted(kept.text) == ["caf\ufffd dog", "good caption", "Ålesund … Ņ \u00a0dog"]
    assert_mojibake_goes_on(kept.text)
    got = reasons_of(ledger)
    assert got[R.UNDECODABLE_TEXT] == 1 and got[R.TEXT_TOO_LONG] == 1
    # " \t" before the URL: the blank line's caption is blank, or the row is ragged; either way it is recorded.
    assert sum(got.values()) == 3
    assert_accounted(ledger, 6)


def test_jsonl_with_a_corrupt_line_and_missing_url(spark, tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(
        json.dumps({"url": "http://a/1.jpg", "text": "a red car"}) + "\n"
        + "{not json\n"
        + json.dumps({"url": None, "text": "no url"}) + "\n"
        + json.dumps({"url": "http://a/3.jpg", "text": None}) + "\n",
        encoding="utf-8",
    )
    raw, kept, ledger = decide(spark, path)
    assert raw.fmt == "jsonl"
    assert kept.text.tolist() == ["a red car"]
    assert reasons_of(ledger) == {R.MALFORMED_ROW: 1, R.NO_URL_OR_IMAGE: 1, R.EMPTY_TEXT: 1}
    assert_accounted(ledger, 4)


def test_coco_captions_json(spark, tmp_path):
    doc = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "coco_url": "http://coco/1.jpg", "width": 640, "height": 480, "license": 4},
            {"id": 2, "file_name": "2.jpg", "coco_url": "http://coco/2.jpg", "width": 10, "height": 20, "license": 1},
        ],
        "annotations": [
            {"image_id": 1, "id": 10, "caption": "A black Honda motorcycle."},
            {"image_id": 1, "id": 11, "caption": "A motorcycle in a garage."},
            {"image_id": 2, "id": 12, "caption": "  "},
            {"image_id": 1, "id": 13, "caption": MOJIBAKE},
            {"image_id": 1, "id": 14, "caption": "LATIN1"},
        ],
    }
    path = tmp_path / "captions_val.json"
    path.write_bytes(json.dumps(doc, ensure_ascii=False).encode().replace(b'"LATIN1"', b'"' + LATIN1_BYTES + b'"'))
    raw, kept, ledger = decide(spark, path)
    assert raw.fmt == "coco"
    assert sorted(kept.source_key) == ["10", "11", "13"]
    assert kept[kept.source_key == "13"].text.tolist() == ["caf\ufffd dog"]
    assert_mojibake_goes_on(kept.text)
    assert set(kept.width) == {640} and set(kept.license) == {"4"}
    assert reasons_of(ledger) == {R.EMPTY_TEXT: 1, R.UNDECODABLE_TEXT: 1}


def test_flickr8k_token_file_with_space_separator(spark, tmp_path):
    path = tmp_path / "Flickr8k.token.txt"
    path.write_bytes(
        "1000268201_693b08cb0e.jpg#0 A child in a pink dress .\n"
        "1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .\n"
        "garbage line without id\n"
        "1000268201_693b08cb0e.jpg#2\tÅlesund … Ņ dog\n".encode()
        + b"1000268201_693b08cb0e.jpg#3\t" + MOJIBAKE_UTF8 + b"\n"
        + b"1000268201_693b08cb0e.jpg#4\t" + LATIN1_BYTES + b"\n"
    )
    raw, kept, ledger = decide(spark, path)
    assert raw.fmt == "flickr"
    assert sorted(kept.source_key) == [f"1000268201_693b08cb0e.jpg#{k}" for k in range(4)]
    assert set(kept.image_ref) == {"1000268201_693b08cb0e.jpg"}
    assert sorted(kept.text)[-2:] == ["caf\ufffd dog", "Ålesund … Ņ dog"]
    assert_mojibake_goes_on(kept.text)
    assert reasons_of(ledger) == {R.MALFORMED_ROW: 1, R.UNDECODABLE_TEXT: 1}


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_tars(spark, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(
        shards / "00000.tar",
        {
            "000.jpg": b"\xff\xd8fake",
            "000.txt": b"a dog on the beach",
            "000.json": json.dumps({"url": "http://a/0.jpg", "width": 64, "height": 48}).encode(),
            "001.jpg": b"\xff\xd8fake",
            "001.txt": b"\xffbroken bytes",
            "002.txt": b"caption without image or url",
            "003.jpg": b"\xff\xd8fake",
            "003.txt": MOJIBAKE_UTF8,
            # A caption from .json: invalid bytes in the url only, then in the caption.
            "004.jpg": b"\xff\xd8fake",
            "004.json": b'{"url": "http://a/\xff4.jpg", "caption": "json ' + MOJIBAKE_UTF8 + b'"}',
            "005.jpg": b"\xff\xd8fake",
            "005.json": b'{"url": "http://a/5.jpg", "caption": "' + LATIN1_BYTES + b'"}',
        },
    )
    (shards / "00001.tar").write_bytes(b"this is not a tar archive")
    raw, kept, ledger = decide(spark, shards)
    assert raw.fmt == "webdataset"
    kept = kept.sort_values("source_key")
    assert kept.text.tolist() == ["a dog on the beach", "caf\ufffd dog", "json caf\ufffd dog"]
    assert_mojibake_goes_on(kept.text)
    assert kept.image_ref.iloc[0].endswith("00000.tar::000.jpg") and kept.width.iloc[0] == 64
    assert reasons_of(ledger) == {R.UNDECODABLE_TEXT: 2, R.NO_URL_OR_IMAGE: 1, R.MALFORMED_ROW: 1}
    assert "unreadable tar" in ledger[ledger.reason == R.MALFORMED_ROW].detail.iloc[0]


def test_jsonl_lone_surrogates_and_invalid_bytes_are_caught(spark, tmp_path):
    """Java's JSON parser would turn a lone surrogate escape into '?': such lines are malformed."""
    path = tmp_path / "pool.jsonl"
    path.write_bytes(
        b'{"url": "http://a/1.jpg", "text": "a \\ud800 dog"}\n'  # lone high surrogate
        b'{"url": "http://a/2.jpg", "text": "a \\udc00 dog"}\n'  # lone low surrogate
        b'{"url": "http://a/3.jpg", "text": "an emoji \\ud83d\\ude00 dog"}\n'  # a valid pair
        b'{"url": "http://a/4.jpg", "text": "an escaped \\\\ud800 backslash"}\n'  # not an escape
        b'{"url": "http://a/5.jpg", "text": "bad \xff\xfe bytes"}\n'
        b"\n"
        b'{"url": "http://a/6.jpg", "text": "' + MOJIBAKE_UTF8 + b'"}\n'
        # Invalid bytes in the url only: the line is not UTF-8, its caption is (U+FFFD and all).
        b'{"url": "http://a/\xff7.jpg", "text": "' + MOJIBAKE_UTF8 + b' 7"}\n'
        b'{"url": "http://a/8.jpg", "text": "escaped \\ufffd dog", "alt": "\xe9"}\n'
    )
    _, kept, ledger = decide(spark, path)
    assert sorted(kept.text) == [
        "an emoji \U0001F600 dog", "an escaped \\ud800 backslash", "caf\ufffd dog", "caf\ufffd dog 7", "escaped \ufffd dog",
    ]
    assert_mojibake_goes_on(kept.text)
    assert reasons_of(ledger) == {R.MALFORMED_ROW: 2, R.UNDECODABLE_TEXT: 1}
    assert ledger[ledger.reason == R.MALFORMED_ROW].detail.str.startswith("lone UTF-16 surrogate").all()
    assert_accounted(ledger, 8)


def test_same_url_and_text_under_different_uids(spark, tmp_path):
    path = tmp_path / "pool.parquet"
    pq.write_table(
        pa.table({"uid": ["b", "a", "c"], "url": ["http://x/1"] * 3, "text": ["dog", "dog", "cat"]}), path
    )
    _, kept, ledger = decide(spark, path)
    assert sorted(kept.uid) == ["a", "c"]
    dup = ledger[ledger.reason == R.DUPLICATE_URL_TEXT]
    assert dup.uid.tolist() == ["b"] and dup.detail.tolist() == ["same url and text as uid a"]
    _, kept, _ = decide(spark, path, drop_duplicate_url_text=False)
    assert sorted(kept.uid) == ["a", "b", "c"]


def test_datacomp_metadata_parquet(spark, tmp_path):
    path = tmp_path / "metadata.parquet"
    pq.write_table(
        pa.table(
            {
                "uid": ["aa", "bb", "cc", "dd"],
                "url": ["http://a/1", "http://a/2", "http://a/3", "http://a/4"],
                "text": invalid_utf8_strings([b"one", b"two", MOJIBAKE_UTF8, LATIN1_BYTES]),
                "original_width": [100, 200, 300, 400],
                "original_height": [50, 60, 70, 80],
                "clip_b32_similarity_score": [0.31, 0.22, 0.3, 0.4],
                "clip_l14_similarity_score": [0.28, 0.2, 0.3, 0.4],
                "sha256": ["x", "y", "z", "w"],
            }
        ),
        path,
    )
    raw, kept, ledger = decide(spark, path, format="datacomp")
    assert raw.uid_given == "uid"
    kept = kept.sort_values("uid")
    assert kept.uid.tolist() == ["aa", "bb", "cc"] and kept.width.tolist() == [100, 200, 300]
    assert kept.text.tolist() == ["one", "two", "caf\ufffd dog"]
    assert_mojibake_goes_on(kept.text)
    assert kept.clip_b32_similarity_score.tolist() == pytest.approx([0.31, 0.22, 0.3])
    assert ledger[ledger.reason == R.UNDECODABLE_TEXT].uid.tolist() == ["dd"]
    assert "sha256" not in kept.columns


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "input not found"),
        (lambda p: p.mkdir(), "input is empty"),
        (lambda p: p.write_text("x"), "cannot tell the format"),
    ],
)
def test_unreadable_inputs_are_one_line_errors(spark, tmp_path, make, message):
    path = tmp_path / "in.xyz"
    make(path)
    with pytest.raises(InputError, match=message) as info:
        read_pool(spark, str(path), IngestConfig())
    assert "\n" not in str(info.value)


def test_missing_text_column_names_what_is_present(spark, tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"URL": ["http://a"], "words": ["x"]}), path)
    with pytest.raises(InputError, match="no text column found.*columns present: URL, words"):
        read_pool(spark, str(path), IngestConfig())
    with pytest.raises(InputError, match="text column 'nope' not found"):
        read_pool(spark, str(path), IngestConfig(text_col="nope"))


def test_same_output_on_any_partitioning(spark, tmp_path):
    rows = 300
    texts = [f"caption {i % 120}" for i in range(rows)]  # many duplicate (url, text) pairs
    urls = [f"http://a/{i % 150}.jpg" for i in range(rows)]
    widths = list(range(rows))  # duplicates differ in an extra column: the pick must still be stable
    pq.write_table(pa.table({"url": urls, "text": texts, "width": widths}), tmp_path / "p.parquet")
    cfg = IngestConfig()
    outputs = []
    for parts in (1, 3, 16):
        raw = read_pool(spark, str(tmp_path / "p.parquet"), cfg)
        df = raw.df.repartition(parts)
        kept, ledger = split_decisions(with_ingest_decisions(df, cfg, raw.uid_given, raw.extras))
        outputs.append(
            (
                sorted(map(tuple, kept.select("uid", "url", "text", "width").collect())),
                sorted(map(tuple, ledger.collect()), key=str),
            )
        )
    assert outputs[0] == outputs[1] == outputs[2]


def test_run_ingest_commits_with_stats_and_skips_when_complete(spark, tmp_path):
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": ["http://a/1", "http://a/2", None], "text": ["one", "", "three"]}), pool)
    run = tmp_path / "run"
    cfg = PipelineConfig()
    result = run_ingest(spark, str(pool), str(run), cfg)
    assert not result.skipped
    stats = json.loads((run / "ingest" / "stats.json").read_text())
    assert stats["rows_in"] == 3 and stats["kept"] == 1
    assert stats["dropped"] == {R.EMPTY_TEXT: 1, R.NO_URL_OR_IMAGE: 1}
    assert (run / "ingest" / "_COMPLETE").is_file()
    assert not (run / "_scratch").exists() and not (run / "_tmp").exists(), "no working folder is left behind"
    ledger = spark.read.parquet(str(run / "decisions"))
    assert ledger.count() == 3 and set(ledger.columns) == {"uid", "decision", "reason", "detail", "stage"}
    assert spark.read.parquet(str(run / "ingest" / "data")).count() == 1
    again = run_ingest(spark, str(pool), str(run), cfg)
    assert again.skipped and again.stats == stats
    # A changed config is a different fingerprint: the stage is redone.
    redone = run_ingest(spark, str(pool), str(run), PipelineConfig(ingest=IngestConfig(max_text_chars=3)))
    assert not redone.skipped and redone.stats["dropped"][R.TEXT_TOO_LONG] == 1


def test_stage_without_marker_is_redone(spark, tmp_path):
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": ["http://a/1"], "text": ["one"]}), pool)
    run = tmp_path / "run"
    run_ingest(spark, str(pool), str(run), PipelineConfig())
    (run / "ingest" / "_COMPLETE").unlink()  # as if the driver died before the marker
    leftover = run / "_scratch" / "ingest-0123456789ab" / "work"  # as if it died mid-attempt
    leftover.mkdir(parents=True)
    other = run / "_scratch" / "match-0123456789ab"  # another stage's, perhaps running now
    other.mkdir()
    stray = run / "ingest" / "data" / "part-00009-stray.parquet"  # a half-written file of the dead attempt
    stray.write_bytes(b"PAR1 cut short")
    assert not run_ingest(spark, str(pool), str(run), PipelineConfig()).skipped
    assert not leftover.parent.exists() and other.exists() and not stray.exists()
    assert spark.read.parquet(str(run / "ingest" / "data")).count() == 1


def test_mmc4_documents_become_image_sentence_pairs(spark, tmp_path):
    docs = [
        {
            "url": "http://page/1",
            "text_list": ["First sentence.", "A dog on a sofa."],
            "image_info": [
                {"image_name": "a.jpg", "raw_url": "http://img/a.jpg", "matched_text_index": 1, "matched_sim": 0.31},
                {"image_name": "b.jpg", "raw_url": "http://img/b.jpg", "matched_text_index": 7, "matched_sim": 0.2},
            ],
        },
        {"url": "http://page/2", "text_list": ["no images here"], "image_info": []},
    ]
    path = tmp_path / "shard.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n{broken\n")
    raw, kept, ledger = decide(spark, path)
    assert raw.fmt == "mmc4"
    assert kept.text.tolist() == ["A dog on a sofa."] and kept.url.tolist() == ["http://img/a.jpg"]
    assert kept.matched_sim.tolist() == pytest.approx([0.31])
    # an index past the sentence list leaves the image without text; an imageless document
    # and a broken line are recorded, not lost
    assert reasons_of(ledger) == {R.EMPTY_TEXT: 1, R.MALFORMED_ROW: 2}
    assert_accounted(ledger, 4)
