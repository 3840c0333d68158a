"""ImageNet concept list with WordNet synonyms (`curate metadata imagenet`)."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.concepts.imagenet import concept_synonyms, imagenet_classnames, read_wnids
from pipeline.concepts.metadata import MetadataError, load_concepts
from tests.conftest import anchor


def test_synonyms_from_wnids_are_the_synset_lemmas(tmp_path):
    # ImageNet's LOC_synset_mapping.txt layout: "<wnid> <names>".
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n01440764 tench, Tinca tinca\nn02012849 crane\n")
    result = concept_synonyms(["tench", "crane (bird)"], read_wnids(str(mapping)))
    assert result.synonyms == {
        "tench": ["tench", "Tinca tinca"],
        "crane (bird)": ["crane (bird)", "crane"],
    }
    assert result.wnids == ["n01440764", "n02012849"]


def test_by_name_picks_a_physical_sense_and_reports_misses():
    result = concept_synonyms(["goldfish", "no such animal at all"])
    assert result.synonyms["goldfish"] == ["goldfish", "Carassius auratus"]
    assert result.synonyms["no such animal at all"] == ["no such animal at all"]
    assert result.unresolved == ["no such animal at all"]


def test_repeated_class_names_get_distinct_keys():
    result = concept_synonyms(["missile", "tench", "missile"])
    assert list(result.synonyms) == ["missile (0)", "tench", "missile (2)"]
    assert result.synonyms["missile (2)"][0] == "missile"


@pytest.mark.parametrize(
    "content, message",
    [
        ("n0144\n", "not a WordNet noun id"),
        ('{"a": 1}', "expected a JSON list"),
        ('[{"cid": 0}]', "has no 'wnid'"),
    ],
)
def test_bad_wnid_files(tmp_path, content, message):
    path = tmp_path / "ids.txt"
    path.write_text(content)
    with pytest.raises(MetadataError, match=message):
        read_wnids(str(path))


def test_wnid_count_must_match_and_exist(tmp_path):
    with pytest.raises(MetadataError, match="must pair up"):
        concept_synonyms(["a", "b"], ["n01440764"])
    with pytest.raises(MetadataError, match="not in WordNet 3.0"):
        concept_synonyms(["a"], ["n00000001"])


def test_cli_writes_a_concept_file_the_count_stage_loads(tmp_path, capsys):
    out = tmp_path / "imagenet.json"
    assert main(["metadata", "imagenet", "--output", str(out)]) == 0
    assert "1000 classes" in capsys.readouterr().out
    concepts = load_concepts(str(out))
    assert len(concepts.synonyms) == 1000
    assert list(json.loads(out.read_text()))[:2] == imagenet_classnames()[:2]


@pytest.mark.shared
def test_matches_eval_on_laion_synsets_for_all_classes():
    """With the ids of eval-on-laion's class_info.json, the synonyms are exactly its WordNet synsets."""
    info_path = anchor("eval-on-laion/imagenetv2/class_info.json")
    info = json.loads(info_path.read_text())
    names = imagenet_classnames()
    with_ids = concept_synonyms(names, read_wnids(str(info_path)))
    for (key, syns), row in zip(with_ids.synonyms.items(), info, strict=True):
        assert set(syns) - {syns[0]} == set(row["synset"]) - {syns[0]}, key
    by_name = concept_synonyms(names)
    agree = sum(a == b for a, b in zip(by_name.wnids, with_ids.wnids, strict=True))
    print(f"name-only resolution finds the ImageNet synset for {agree}/1000 classes")
    assert agree > 600
