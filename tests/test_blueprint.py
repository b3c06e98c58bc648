"""Blueprints: loading, identity, validation messages with locations, discovery."""

from pathlib import Path

import pytest
import yaml
from ncaas_clirunner import cli, flat
from ncaas_testutil import FRAMESTATS, REPO

from ncaas.blueprint import BlueprintRegistry, load_blueprint, parse_bytes, parse_seconds, validate_blueprint_file
from ncaas.exceptions import BlueprintError


def test_framestats_blueprint_loads_with_identity():
    loaded = load_blueprint(FRAMESTATS)
    assert loaded.name == "framestats"
    assert loaded.blueprint.resources.memory == 2**30
    assert loaded.blueprint.resources.timeout == 600
    assert len(loaded.sha256) == 64
    assert loaded.sha256 == load_blueprint(FRAMESTATS).sha256
    assert loaded.git_commit is None or len(loaded.git_commit) == 40


def test_hash_changes_with_content_not_with_formatting(tmp_path):
    data = yaml.safe_load(FRAMESTATS.read_text())
    same = tmp_path / "same.json"
    same.write_text(yaml.safe_dump(data, default_flow_style=True))
    assert load_blueprint(same).sha256 == load_blueprint(FRAMESTATS).sha256
    data["version"] = "9"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    assert load_blueprint(other).sha256 != load_blueprint(FRAMESTATS).sha256


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "blueprint.yaml"
    path.write_text(text)
    model, problems = validate_blueprint_file(path)
    assert model is None
    return problems


def test_every_error_is_explained_with_its_location(tmp_path):
    problems = _problems(
        tmp_path,
        """\
name: Bad Name
version: "1"
command: ["{python}", "-m", "x", "{inptu}", "{output}"]
resources:
  memory: lots
  cpu: 2
""",
    )
    text = "\n".join(problems)
    assert "name (line 1): String should match pattern" in text
    assert "command.3 (line 3)" not in text  # the command error is reported on the list
    assert "command (line 3): unknown placeholder {inptu}" in text
    assert "resources.memory (line 5): 'lots' is not a size; write e.g. 512MB" in text
    assert "resources.cpu (line 6): unknown field; allowed here: cpus, memory, gpus, custom, timeout" in text


def test_a_disk_allowance_is_refused_with_the_reason(tmp_path):
    problems = _problems(
        tmp_path,
        """\
name: ok
version: "1"
command: ["run", "{input}", "{output}"]
resources:
  memory: 1GB
  disk: 10GB
""",
    )
    assert problems == [
        "blueprint.yaml: resources.disk (line 6): no longer supported: ncaas never limited a "
        "task's disk use, so the field promised what it did not do; remove it (the server keeps "
        "free space by refusing uploads instead: `ncaas serve --min-free`)"
    ]


def test_missing_fields_and_bad_schema_are_named(tmp_path):
    problems = _problems(
        tmp_path,
        """\
name: ok
command: ["run", "{output}"]
config_schema: {type: nonsense}
""",
    )
    text = "\n".join(problems)
    assert "version: Field required" in text
    assert "command (line 2): the command must contain {input}" in text
    assert "config_schema (line 3): not a valid JSON Schema" in text


def test_default_config_must_match_schema(tmp_path):
    problems = _problems(
        tmp_path,
        """\
name: ok
version: "1"
command: ["run", "{input}", "{output}"]
config_schema: {type: object, properties: {k: {type: integer}}}
default_config: {k: "three"}
""",
    )
    assert any("default_config.k does not match config_schema: 'three' is not of type 'integer'" in p for p in problems)


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "blueprint.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(BlueprintError, match=r"line 2"):
        validate_blueprint_file(path)


def test_units():
    assert parse_bytes("2GB") == 2_000_000_000
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_seconds("30m") == 1800
    with pytest.raises(ValueError, match="not a duration"):
        parse_seconds("soon")


def test_registry_discovers_extra_folders_and_keeps_invalid_ones(tmp_path, blueprints_dir):
    (blueprints_dir / "broken").mkdir()
    (blueprints_dir / "broken" / "blueprint.yaml").write_text("name: broken\n")
    registry = BlueprintRegistry.discover([blueprints_dir, REPO / "analyses"])
    assert {"framestats", "fs-short", "fs-private"} <= set(registry.names())
    assert any("version: Field required" in p for p in registry.invalid.values())


def test_cli_validate_and_analyses(tmp_path, blueprints_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: '1'\ncommand: [a]\n")
    done = cli("blueprint", "validate", str(bad))
    assert done.exit_code == 1
    assert "the command must contain {input}" in flat(done.stderr)
    good = cli("blueprint", "validate", str(FRAMESTATS))
    assert good.exit_code == 0 and "is a valid blueprint" in flat(good.stdout)
    listed = cli("analyses", env={"NCAAS_BLUEPRINTS": str(blueprints_dir)})
    assert listed.exit_code == 0 and "framestats" in listed.stdout and "fs-short" in listed.stdout
