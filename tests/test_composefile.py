"""Reading compose files as compose does: YAML 1.2, anchors, interpolation, env files, merge rules."""
from __future__ import annotations

from pathlib import Path

import pytest

from bundler.composefile import (ComposeFileError, InterpolationError, interpolate, load_yaml, merge_compose,
                                 read_env_file, references)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_is_read_with_the_1_2_core_schema(tmp_path: Path) -> None:
    document = load_yaml(write(tmp_path, "c.yml", "a: no\nb: on\nc: 22:22\nd: 0o17\ne: true\nf: 010\ng: 1.5\n"))
    assert document == {"a": "no", "b": "on", "c": "22:22", "d": 15, "e": True, "f": 10, "g": 1.5}


def test_anchors_and_merge_keys_resolve_to_independent_copies(tmp_path: Path) -> None:
    text = (
        "x-base: &base\n  restart: always\n  environment: &env {A: '1', B: '2'}\n"
        "services:\n"
        "  one:\n    <<: *base\n    restart: 'no'\n"
        "  two:\n    <<: *base\n    environment: *env\n"
    )
    document = load_yaml(write(tmp_path, "c.yml", text))
    one, two = document["services"]["one"], document["services"]["two"]
    assert one["restart"] == "no" and two["restart"] == "always"  # an explicit key beats the merged one
    one["environment"]["A"] = "changed"
    assert two["environment"]["A"] == "1"  # no sharing survives loading


@pytest.mark.parametrize("text, values, expected", [
    ("${A}", {"A": "x"}, "x"),
    ("${A:-d}", {"A": ""}, "d"),
    ("${A-d}", {"A": ""}, ""),
    ("${A-d}", {}, "d"),
    ("${A:+alt}", {"A": "x"}, "alt"),
    ("${A:+alt}", {}, ""),
    ("$A/$$B", {"A": "x"}, "x/$B"),
    ("${A:-${B:-deep}}", {}, "deep"),
    ("pre-${A:?needed}-post", {"A": "v"}, "pre-v-post"),
])
def test_interpolation_operators(text: str, values: dict, expected: str) -> None:
    assert interpolate(text, values) == expected


def test_required_variable_and_malformed_references_are_errors() -> None:
    with pytest.raises(InterpolationError, match="required variable A is missing a value: set it"):
        interpolate("${A:?set it}", {})
    with pytest.raises(InterpolationError, match="without its"):
        references("${A")
    with pytest.raises(InterpolationError, match="expected a variable name"):
        references("${}")


def test_references_see_nested_defaults_but_not_escapes() -> None:
    found = references("${A:-${B}} $$NOT $C ${D:?msg}")
    assert [(r.name, r.operator) for r in found] == [("A", ":-"), ("B", ""), ("C", ""), ("D", ":?")]
    assert found[3].required and found[0].default == "${B}"


def test_env_file_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, ".env", (
        "# comment\n\nexport A=1\nB = two words # trailing comment\nC='${NOT_EXPANDED}'\n"
        'D="quoted # kept"\nURL=postgresql://${A}:${B}@db\nEMPTY=\n'
    ))
    entries = read_env_file(path)
    assert {n: e.value for n, e in entries.items()} == {
        "A": "1", "B": "two words", "C": "${NOT_EXPANDED}", "D": "quoted # kept", "URL": "postgresql://${A}:${B}@db", "EMPTY": ""}
    assert entries["URL"].expands and not entries["C"].expands and not entries["A"].expands
    with pytest.raises(ComposeFileError, match=r"\.env: line 1: expected KEY=VALUE"):
        read_env_file(write(tmp_path, ".env", "not a line\n"))


def test_merge_follows_compose_rules(tmp_path: Path) -> None:
    base = load_yaml(write(tmp_path, "base.yml", (
        "services:\n  web:\n    image: a\n    command: [run, a]\n    ports: ['80:80']\n"
        "    environment: [A=1, B=2]\n    volumes: ['./x:/etc/x:ro', 'data:/data']\n    labels: {keep: 'yes'}\n"
        "  debug:\n    image: b\n")))
    overlay = load_yaml(write(tmp_path, "overlay.yml", (
        "services:\n  web:\n    command: [run, b]\n    ports: ['443:443']\n    environment: {B: '3', C: '4'}\n"
        "    volumes: ['./y:/etc/x:ro']\n    labels: !reset\n"
        "  debug: !reset\n")), overlay=True)
    merged = merge_compose(base, overlay)
    web = merged["services"]["web"]
    assert web["command"] == ["run", "b"]  # replaced
    assert web["ports"] == ["80:80", "443:443"]  # appended
    assert web["environment"] == {"A": "1", "B": "3", "C": "4"}  # merged by name across syntaxes
    assert web["volumes"] == ["./y:/etc/x:ro", "data:/data"]  # merged by container path
    assert "labels" not in web and "debug" not in merged["services"]  # !reset removes
    replaced = merge_compose(base, load_yaml(write(tmp_path, "o2.yml", "services:\n  web:\n    ports: !override ['8080:80']\n"),
                                             overlay=True))
    assert replaced["services"]["web"]["ports"] == ["8080:80"]


def test_unreadable_compose_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ComposeFileError, match="no such compose file"):
        load_yaml(tmp_path / "missing.yml")
    with pytest.raises(ComposeFileError, match=r"not valid YAML: line 3"):
        load_yaml(write(tmp_path, "bad.yml", "services:\n  a: [\n"))
    with pytest.raises(ComposeFileError, match="nested"):
        load_yaml(write(tmp_path, "deep.yml", "a: " + "[" * 150 + "]" * 150 + "\n"))
