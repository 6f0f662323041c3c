"""What README.md and docs/ show an operator is what snapctl accepts: every YAML example is valid
as written for the model it configures (inventory, agent config, provider, engine, volumes),
every default the docs state is the model's, every `snapctl CMD --flag` they write is a flag of
CMD, and the exit-code table is the CLI's. An operator copies these examples: a renamed key or a
changed default breaks this test, not their next backup."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic import BaseModel

from node_agent.config import AgentConfig, parse_agent_config
from node_agent.engines.base import load_engine_factory, validate_engine_settings
from snapctl.cli import app
from snapctl.config import Inventory, parse_inventory
from snapctl.errors import ExitCode
from snapctl.providers import load_provider_factory, node_volumes, open_provider, provider_settings

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
ELIDED = "..."  # `{type: etcd, user: backup, ...}`: "the other keys, as above"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)


def _where(doc: Path, text: str, offset: int) -> str:
    return f"{doc.relative_to(REPO)}:{text.count(chr(10), 0, offset) + 1}"


def _blocks(lang: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in FENCE.finditer(text):
            if match["lang"] == lang:
                body = "\n".join(line[len(match["indent"]):] for line in match["body"].splitlines())
                found.append((_where(doc, text, match.start()), body))
    return found


YAML_EXAMPLES = _blocks("yaml")


def _without_elisions(value: Any) -> tuple[Any, bool]:
    """``value`` without the ``...`` keys that stand for "the rest", and whether it had any."""
    if isinstance(value, dict):
        elided = ELIDED in value
        out = {}
        for key, item in value.items():
            if key != ELIDED:
                out[key], inner = _without_elisions(item)
                elided = elided or inner
        return out, elided
    if isinstance(value, list):
        items = [_without_elisions(item) for item in value]
        return [item for item, _ in items], any(inner for _, inner in items)
    return value, False


def _check_keys_only(model: type[BaseModel], block: dict[str, Any], where: str) -> None:
    unknown = sorted(set(block) - set(model.model_fields))
    assert not unknown, f"{where}: {unknown} not among {model.__name__}'s keys {sorted(model.model_fields)}"


def _check_engine(block: dict[str, Any], elided: bool, where: str) -> None:
    if elided:  # an excerpt: its keys must exist, the rest is said elsewhere
        _check_keys_only(load_engine_factory(block["type"]).settings_model, block, where)
    else:
        validate_engine_settings(block)


def _rooted_local_volumes(volumes: list[Any], root: Path) -> list[Any]:
    """The local provider wants existing directories: the example's, made under ``root``."""
    out = []
    for volume in volumes:
        path = volume if isinstance(volume, str) else volume.get("path") if isinstance(volume, dict) else None
        if not isinstance(path, str):
            out.append(volume)  # the provider says what is wrong with it
            continue
        made = root / path.lstrip("/")
        made.mkdir(parents=True, exist_ok=True)
        out.append(str(made) if isinstance(volume, str) else {**volume, "path": str(made)})
    return out


def _check_inventory(data: dict[str, Any], elided: bool, where: str, tmp_path: Path) -> None:
    assert not elided, f"{where}: an inventory example with '...' keys cannot be checked"
    unknown = sorted(set(data) - set(Inventory.model_fields))
    assert not unknown, f"{where}: {unknown} are not inventory keys"
    whole = {"cluster": "docs", "provider": {"type": "local", "store": str(tmp_path / "store")},
             "nodes": [{"name": "n1", "agent": "http://127.0.0.1:7700"}], **data}
    inventory = parse_inventory(yaml.safe_dump(whole), source=where, base_dir=tmp_path)
    for node in inventory.nodes:
        if node.engine:
            inventory.engine_settings(node)
    checked = provider_settings(inventory)
    # Volumes are the provider's to judge: only where the example names the provider they are for.
    if "provider" in data and all(node.volumes for node in inventory.nodes):
        if inventory.provider["type"] == "local":
            for node in inventory.nodes:
                node.volumes = _rooted_local_volumes(node.volumes, tmp_path / "volumes")
        assert node_volumes(inventory, open_provider(inventory, checked))


@pytest.mark.parametrize(("where", "text"), YAML_EXAMPLES, ids=[where for where, _ in YAML_EXAMPLES])
def test_every_yaml_example_is_accepted_as_written(where: str, text: str, tmp_path: Path) -> None:
    data, elided = _without_elisions(yaml.safe_load(text))
    assert isinstance(data, dict), f"{where}: not a mapping"
    if "node" in data:  # an agent's config file
        assert not elided, where
        parse_agent_config(text, source=where, base_dir=tmp_path)
    elif set(data) == {"engine"}:
        _check_engine(data["engine"], elided, where)
    else:
        _check_inventory(data, elided, where, tmp_path)


def test_the_examples_are_found() -> None:
    # Every doc that shows configuration shows it in ```yaml blocks: were none found, the test
    # above would pass having checked nothing.
    shown = {where.split(":")[0] for where, _ in YAML_EXAMPLES}
    assert {"README.md", "docs/agent.md", "docs/restore.md", "docs/engines/etcd.md",
            "docs/providers/local.md", "docs/providers/aws.md"} <= shown


# -- stated defaults ------------------------------------------------------------------------------

OTHER_SETTINGS = re.compile(r"Other settings \(defaults\):(?P<list>.*?)(?:\n\n|$)", re.S)
SETTING = re.compile(r"`(?P<key>\w+): (?P<value>[^`]+)`")


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_the_other_settings_a_provider_doc_lists_have_the_defaults_it_says(provider: str) -> None:
    doc = (REPO / "docs" / "providers" / f"{provider}.md").read_text()
    listed = OTHER_SETTINGS.search(doc)
    assert listed, f"docs/providers/{provider}.md has no 'Other settings (defaults):' list"
    fields = load_provider_factory(provider).settings_model.model_fields
    pairs = SETTING.findall(listed["list"])
    assert pairs
    for key, value in pairs:
        assert key in fields, f"docs/providers/{provider}.md: {key} is not a {provider} setting"
        assert fields[key].default == yaml.safe_load(value), f"docs/providers/{provider}.md: {key}: {value}"


def test_what_the_agent_example_calls_the_default_is_the_default() -> None:
    [(where, text)] = [(w, t) for w, t in YAML_EXAMPLES if w.startswith("docs/agent.md") and "max_body_bytes" in t]
    said = 0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        value, _, comment = rest.partition("#")
        if re.match(r"\s*default\b", comment) and key.strip() in AgentConfig.model_fields:
            assert AgentConfig.model_fields[key.strip()].default == yaml.safe_load(value), f"{where}: {line}"
            said += 1
    assert said >= 2  # listen and port


def test_the_retention_example_that_says_it_shows_the_defaults_does() -> None:
    [(where, text)] = [(w, t) for w, t in YAML_EXAMPLES if "# the defaults" in t]
    shown = yaml.safe_load(text)["retention"]
    defaults = Inventory.model_fields["retention"].default_factory().model_dump()
    assert shown == defaults, where


def _row(table_key: str) -> str:
    readme = (REPO / "README.md").read_text()
    [row] = [line for line in readme.splitlines() if line.startswith(f"| `{table_key}` |")]
    return row


@pytest.mark.parametrize(("key", "model"), [
    ("catalog", "catalog"), ("auth", "auth"), ("policy", "policy"), ("retention", "retention"), ("drill", "drill"),
])
def test_the_readme_inventory_table_names_every_key_of_each_block(key: str, model: str) -> None:
    fields = type(Inventory.model_fields[model].default_factory()).model_fields
    row = _row(key)
    missing = [name for name in fields if not re.search(rf"\b{name}\b", row)]
    assert not missing, f"README.md's inventory table, row {key}: {missing} not named"


def test_the_defaults_the_readme_inventory_table_gives_the_policy_and_rpo_are_the_models() -> None:
    from snapctl.config import parse_duration

    policy = Inventory.model_fields["policy"].default_factory()
    stated = dict(re.findall(r"`(\w+)` (`\w[\w-]*`|unset|[\d.]+[smh]?)(?=[\s,(|])", _row("policy")))
    assert set(stated) == set(type(policy).model_fields), "README.md's policy row: a key without its default"

    def value(text: str) -> Any:
        if text == "unset":
            return None
        if text.startswith("`"):
            return yaml.safe_load(text.strip("`"))
        return parse_duration(text) if text[-1] in "smh" else yaml.safe_load(text)

    wrong = {key: text for key, text in stated.items() if value(text) != getattr(policy, key)}
    assert not wrong, f"README.md's policy row: {wrong} (the model: {policy.model_dump(include=set(wrong))})"
    [rpo] = re.findall(r"\(default `(\w+)`\)", _row("rpo"))
    assert parse_duration(rpo) == Inventory.model_fields["rpo"].default


def test_the_readme_inventory_table_names_every_key_of_a_node_and_of_its_restore() -> None:
    from snapctl.config import Node, NodeRestoreConfig

    row = _row("nodes[]")
    missing = [name for name in [*Node.model_fields, *NodeRestoreConfig.model_fields]
               if not re.search(rf"\b{name}\b", row)]
    assert not missing, f"README.md's inventory table, row nodes[]: {missing} not named"
    table = {line.split("`")[1].removesuffix("[]") for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| `")}
    assert set(Inventory.model_fields) <= table


def test_the_agent_doc_shows_every_key_of_its_config_file() -> None:
    [(where, text)] = [(w, t) for w, t in YAML_EXAMPLES if w.startswith("docs/agent.md") and "max_body_bytes" in t]
    shown = {line.lstrip("# ").split(":")[0] for line in text.splitlines() if not line.startswith(" ")}
    assert set(AgentConfig.model_fields) <= shown, f"{where}: {sorted(set(AgentConfig.model_fields) - shown)}"


DOTTED = re.compile(r"`(?P<block>policy|drill|catalog|auth|retention|restore|nodes\[\])\.(?P<key>[a-z_]+)")


def test_every_setting_the_docs_name_by_its_place_exists() -> None:
    # `policy.max_freeze_s`, `nodes[].token_file`, ...; a manifest's `nodes[].state` is said so.
    from snapctl.config import Node, NodeRestoreConfig

    blocks = {name: type(Inventory.model_fields[name].default_factory()) for name in
              ("policy", "drill", "catalog", "auth", "retention")} | {"restore": NodeRestoreConfig, "nodes[]": Node}
    named = 0
    for doc in DOCS:
        text = doc.read_text()
        for found in DOTTED.finditer(text):
            said = text[max(0, found.start() - 40):found.end() + 20]
            if "manifest" in said:
                continue
            assert found["key"] in blocks[found["block"]].model_fields, f"{_where(doc, text, found.start())}: {found[0]}"
            named += 1
    assert named > 20


# -- the command line -----------------------------------------------------------------------------

CODE = re.compile(r"```\w*\n(.*?)```|`([^`\n]+)`", re.S)
# `snapctl ...` as written, or run from a virtualenv (`.venv/bin/snapctl ...`); not a path that
# merely ends in snapctl (a bucket's `acme-backups/snapctl`).
CALL = re.compile(r"(?:(?<![\w/-])|(?<=bin/))snapctl (?P<command>demo (?:up|down|run)|[a-z]+)(?P<rest>[^\n|;&()]*)")
# A Markdown table cell writes the `|` of `[cluster|per-node]` as `\|`: the command goes on past it.
TABLE_PIPE = "\\|"


def _calls(text: str) -> Iterator[tuple[int, list[str], list[str]]]:
    """Every `snapctl CMD ...` in ``text``'s code: where its code begins, CMD's words, its flags."""
    for span in CODE.finditer(text):
        for call in CALL.finditer((span[1] or span[2]).replace(TABLE_PIPE, " ")):
            flags = re.findall(r"(?<![\w-])--?[a-zA-Z][-\w]*", call["rest"])
            yield span.start(), call["command"].split(), flags


def _flags_of(command: list[str]) -> set[str]:
    click_command = typer.main.get_command(app)
    for word in command:
        click_command = click_command.commands[word]
    return {flag for param in click_command.params for flag in (*param.opts, *param.secondary_opts)} | {"--help"}


def test_the_flag_reader_reads_a_table_cells_command_whole_and_one_run_from_a_virtualenv() -> None:
    cell = "| `snapctl backup [--force] [--consistency cluster\\|per-node] [--textfile F] [--no-prune]` | back up |"
    assert [(words, flags) for _, words, flags in _calls(cell)] == [
        (["backup"], ["--force", "--consistency", "--textfile", "--no-prune"])]
    prose = "run `.venv/bin/snapctl status -o json | jq .` or `snapctl list --limit 3`; the bucket `acme/snapctl x`"
    assert [(words, flags) for _, words, flags in _calls(prose)] == [(["status"], ["-o"]), (["list"], ["--limit"])]


def test_every_flag_the_docs_give_a_command_is_one_it_has() -> None:
    commands = set(typer.main.get_command(app).commands)
    checked = 0
    for doc in DOCS:
        text = doc.read_text()
        for offset, words, flags in _calls(text):
            if words[0] not in commands:
                continue  # `snapctl list` is a command; "snapctl never deletes" is prose
            unknown = sorted(set(flags) - _flags_of(words))
            assert not unknown, f"{_where(doc, text, offset)}: snapctl {' '.join(words)} has no {unknown}"
            checked += len(flags)
    assert checked > 30


def test_the_readme_exit_code_table_is_the_clis() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    codes = {int(row.split("|")[1]) for row in table.splitlines() if re.match(r"\| \d+ \|", row)}
    assert codes == {int(code) for code in ExitCode}


def _prose_sentences(text: str) -> Iterator[str]:
    """The sentences of ``text``'s prose: table rows (reliability.md's tell what the code once
    did) and code blocks left out, lines of a paragraph joined."""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for paragraph in re.split(r"\n\s*\n", prose):
        lines = [line.strip() for line in paragraph.splitlines() if not line.lstrip().startswith("|")]
        yield from re.split(r"(?<=[.;])\s+(?=[A-Z(`])", " ".join(lines))


def test_an_exit_code_the_docs_give_a_stopped_command_is_130() -> None:
    # README's step 7 said a backup stopped by Ctrl-C or SIGTERM exits 1; it exits 130, as the
    # exit-code table says.
    wrong = []
    for doc in DOCS:
        if doc.name == "agent.md":  # snapctl-agent's: SIGTERM is how it is stopped, and it exits 0
            continue
        for sentence in _prose_sentences(doc.read_text()):
            codes = set(re.findall(r"\bexits? (\d+)\b", sentence))
            if codes and re.search(r"Ctrl-C|SIGTERM", sentence) and "130" not in codes:
                wrong.append(f"{doc.relative_to(REPO)}: {sentence}")
    assert wrong == []


def test_the_crontab_docs_show_is_lines_of_the_deploy_file_with_its_environment() -> None:
    # Pasted without the file's PATH= line, every job failed "snapctl: not found".
    [(where, shown)] = [(w, t) for w, t in _blocks("cron")]
    deployed = (REPO / "deploy" / "crontab.example").read_text().splitlines()
    assert [line for line in shown.splitlines() if line not in deployed] == [], where
    environment = [line for line in deployed if re.match(r"[A-Z_]+=", line)]
    assert environment and all(line in shown.splitlines() for line in environment), where
