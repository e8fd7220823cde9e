import pytest

from tasks.decisions import DecisionsError, load_rejects, save_rejects


def test_round_trip_and_missing_file(tmp_path):
    path = tmp_path / "rejects.yaml"
    assert load_rejects(path) == {}
    save_rejects(path, {"b-000002-00": "eyes closed", "a-000001-00": "not him"})
    assert load_rejects(path) == {"a-000001-00": "not him", "b-000002-00": "eyes closed"}
    text = path.read_text()
    assert text.startswith("# Faces rejected by hand") and text.index("a-000001-00") < text.index("b-000002-00")


@pytest.mark.parametrize("body", ["rejects: [a, b]\n", "reject: {}\n", "rejects: {a: b\n"])
def test_malformed_files_are_named(tmp_path, body):
    path = tmp_path / "rejects.yaml"
    path.write_text(body)
    with pytest.raises(DecisionsError, match="rejects.yaml"):
        load_rejects(path)


def test_empty_reason_gets_a_default(tmp_path):
    path = tmp_path / "rejects.yaml"
    path.write_text("rejects:\n  a-000001-00:\n")
    assert load_rejects(path) == {"a-000001-00": "rejected by hand"}
