"""Bad input gets one line with file:line and exit code 2; --help loads no cloud SDK; an interrupted
command says so and exits 130."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest

from snapctl.errors import ExitCode

GOOD_NODE = """
  - name: n1
    agent: http://127.0.0.1:7701
    volumes: [data]
"""


def snapctl(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapctl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cluster: c\nprovider: {type: local}\nbogus: 1\nnodes:" + GOOD_NODE, "inv.yaml:3: unknown key 'bogus'"),
        ("cluster: c\nprovider: {type: local}\npolicy:\n  concurrency: many\nnodes:" + GOOD_NODE,
         "inv.yaml:4: policy.concurrency:"),
        ("cluster: c\nprovider: {type: local}\nnodes:" + GOOD_NODE + GOOD_NODE, "duplicate node name 'n1'"),
        ("cluster: c\nprovider: {type: local}\nnodes:\n  - name: n1\n    agent: 127.0.0.1:7701\n",
         "inv.yaml:5: nodes[0].agent: '127.0.0.1:7701' is not an agent address"),
        ("cluster: c\nprovider: {type: local}\nnodes:\n  - name: n1\n    agent: http://127.0.0.1:99999\n",
         "inv.yaml:5: nodes[0].agent: 'http://127.0.0.1:99999': port 99999 is not between 1 and 65535"),
        ("cluster: c\nprovider: {type: local}\nnodes: [\n", "inv.yaml:"),
        ("cluster: c\nprovider: {type: local}\nnodes:\n  - name: n1\n    agent: http://fd00::1:7701\n",
         "is not an agent address: put an IPv6 address in brackets (http://[fd00::1]:7700)"),
        ("cluster: c\nprovider: {type: local}\nnodes:\n  - name: n1\n    agent: 'http://[/x]:7701'\n",
         "inv.yaml:5: nodes[0].agent: 'http://[/x]:7701' is not an agent address"),
        ("cluster: c\nprovider: {type: local}\nnodes:\n  - name: db 1\n    agent: http://127.0.0.1:7701\n",
         ("inv.yaml:4: nodes[0].name: 'db 1' is not a valid name: 1-63 letters, digits, '.', '_' or '-', beginning "
          "with a letter or digit")),
        ("cluster: c\nprovider: {type: local}\ncatalog: {path: c, url: 's3://b/p'}\nnodes:" + GOOD_NODE,
         "inv.yaml:3: catalog: set either 'path' or 'url', not both"),
        ("cluster: c\nprovider: {type: local}\ncatalog:\n  url: gs://b/p\nnodes:" + GOOD_NODE,
         "inv.yaml:4: catalog.url 'gs://b/p' is not supported"),
    ],
    ids=["unknown-key", "wrong-type", "duplicate-names", "bad-agent-address", "agent-port-out-of-range", "bad-yaml",
         "ipv6-without-brackets", "brackets-in-the-message", "name-in-words", "catalog-path-and-url",
         "catalog-url-not-s3"],
)
def test_bad_inventory_is_one_line_with_file_and_line(tmp_path, text, expected):
    (tmp_path / "inv.yaml").write_text(text)
    result = snapctl("list", "-i", "inv.yaml", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT
    first = result.stderr.strip().splitlines()[0]
    assert expected in first, result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_lists_the_valid_ones(tmp_path):
    (tmp_path / "inv.yaml").write_text("cluster: c\nprovider: {type: local}\npolicy: {leese_ttl_s: 3}\nnodes:" + GOOD_NODE)
    result = snapctl("list", "-i", "inv.yaml", cwd=tmp_path)
    assert "valid keys: lease_ttl_s" in result.stderr


def test_an_embedded_nodes_bad_engine_block_names_the_node(tmp_path):
    (tmp_path / "inv.yaml").write_text(
        "cluster: c\nprovider: {type: local}\nnodes:\n"
        "  - {name: n1, agent: embedded, engine: {type: sqlite, path: a.db}, volumes: [data]}\n"
        "  - {name: n2, agent: embedded, engine: {type: sqlite, pathx: b.db}, volumes: [data]}\n")
    result = snapctl("status", "-i", "inv.yaml", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT
    assert result.stderr.startswith("snapctl: error: inv.yaml:5: node n2: engine sqlite: unknown key 'pathx'"), \
        result.stderr


def test_missing_inventory_names_the_file_and_the_fix(tmp_path):
    result = snapctl("list", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT
    # Where it looked, too: cron's and CI's working directory is rarely the one meant.
    assert f"snapctl: error: inventory.yaml: inventory file not found in {tmp_path}" in result.stderr
    assert "SNAPCTL_INVENTORY" in result.stderr


def test_a_missing_inventory_named_by_snapctl_inventory_says_so_and_how_to_fix_it(tmp_path):
    # It said "pass -i FILE, set SNAPCTL_INVENTORY, ..." to one who had set it.
    env = {**os.environ, "SNAPCTL_INVENTORY": str(tmp_path / "nope.yaml")}
    run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=tmp_path, timeout=60, env=env)
    result = run([sys.executable, "-m", "snapctl.cli", "list"])
    assert result.returncode == ExitCode.BAD_INPUT
    assert f"snapctl: error: {tmp_path}/nope.yaml: inventory file not found (from $SNAPCTL_INVENTORY)" in result.stderr
    assert ("hint: fix $SNAPCTL_INVENTORY, or unset it to use ./inventory.yaml; -i FILE overrides it"
            in result.stderr)
    as_json = json.loads(run([sys.executable, "-m", "snapctl.cli", "list", "-o", "json"]).stdout)
    assert as_json["error"].endswith("(from $SNAPCTL_INVENTORY)") and "unset it" in as_json["hint"]

    given = run([sys.executable, "-m", "snapctl.cli", "list", "-i", str(tmp_path / "other.yaml")])
    assert "other.yaml: inventory file not found" in given.stderr and "SNAPCTL_INVENTORY)" not in given.stderr


def test_unknown_provider_lists_the_installed_ones(tmp_path):
    (tmp_path / "inv.yaml").write_text("cluster: c\nprovider: {type: nimbus}\nnodes:" + GOOD_NODE)
    result = snapctl("backup", "-i", "inv.yaml", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT
    assert "unknown provider type 'nimbus'" in result.stderr and "local" in result.stderr


def test_bad_output_flag_is_bad_input(tmp_path):
    result = snapctl("list", "-o", "yaml", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["backup", "--help"]])
def test_help_imports_no_cloud_sdk(argv):
    code = (
        "import sys\n"
        f"sys.argv = ['snapctl', *{argv!r}]\n"
        "from snapctl.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {{'boto3','botocore','azure'}} "
        "or m.startswith('google.cloud') or m.startswith('google.api_core'))\n"
        "print('LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "LOADED []" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"]])
def test_help_loads_no_logging(argv):
    # The handler that says logged warnings needs `logging` (~2.5 ms of `snapctl --help`): it is
    # installed as a command begins, and nothing before that logs. (A usage error is said as every
    # error is, through snapctl.render, which loads it: no start-up goal covers that path.)
    code = (
        "import sys\n"
        f"sys.argv = ['snapctl', *{argv!r}]\n"
        "from snapctl.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOGGING', 'logging' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "LOGGING False" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("argv", [["list", "--bogus"], ["nosuch"], ["backup", "--consistency"]])
def test_usage_errors_are_bad_input_without_a_traceback(argv):
    result = snapctl(*argv)
    assert result.returncode == ExitCode.BAD_INPUT
    assert "Traceback" not in result.stderr and result.stderr.startswith("snapctl: error: ")


# A command that Ctrl-C (typer alone would exit 130 in silence) or SIGTERM (by default the process
# would die where it stands) stops while it loads its inventory.
_INTERRUPTED = """
import os, signal, sys, time

import snapctl.cli as cli

how = sys.argv[1]


def interrupted(path):
    if how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    raise KeyboardInterrupt


cli._inventory = interrupted
sys.argv = ["snapctl", *sys.argv[2:]]
cli.main()
"""


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
@pytest.mark.parametrize("argv", [["drill", "latest"], ["list", "-o", "json"], ["verify", "latest"],
                                  ["status", "-o", "json"]], ids=" ".join)
def test_an_interrupted_command_says_so_and_exits_130(argv, how):
    result = subprocess.run([sys.executable, "-c", _INTERRUPTED, how, *argv], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    said = "interrupted (SIGTERM)" if how == "sigterm" else "interrupted (SIGINT)"
    assert result.stderr.splitlines()[-1] == f"snapctl: error: {said}"
    if "json" in argv:
        assert json.loads(result.stdout) == {"schema_version": 1, "error": said,
                                             "hint": None, "exit_code": ExitCode.INTERRUPTED}
    else:
        assert result.stdout == ""


@pytest.mark.parametrize("command", [["backup"], ["list"], ["show", "latest"], ["status"], ["restore", "latest"],
                                     ["drill"], ["verify", "latest"], ["trigger"], ["prune"], ["gc"],
                                     ["demo", "up"], ["demo", "down"], ["demo", "run"]],
                         ids=lambda command: " ".join(command))
def test_with_json_output_every_command_prints_its_error_as_the_one_document(tmp_path, command):
    result = snapctl(*command, "-i", "missing.yaml", "-o", "json", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    document = json.loads(result.stdout)
    assert document["exit_code"] == ExitCode.BAD_INPUT and "missing.yaml: inventory file not found" in document["error"]


@pytest.mark.parametrize(("argv", "error", "hint"), [
    (["show", "latest", "-o", "json", "--bogus"], "no such option: --bogus", "show --help`"),
    (["show", "--output=json"], "missing argument 'RUN'", "show --help`"),
    (["restore", "latest", "-ojson", "--zone"], "option '--zone' requires an argument", "--help`"),
])
def test_with_json_output_a_usage_error_is_the_one_document_too(argv, error, hint):
    result = snapctl(*argv)
    assert result.returncode == ExitCode.BAD_INPUT
    document = json.loads(result.stdout)
    assert document["exit_code"] == ExitCode.BAD_INPUT and document["error"].startswith(error), document
    assert document["hint"].startswith("see `") and document["hint"].endswith(hint)
    # the person at the terminal gets the same error and hint, as one line and its hint
    assert result.stderr.splitlines() == [f"snapctl: error: {document['error']}", f"  hint: {document['hint']}"]


@pytest.mark.parametrize("argv", [["-i", "inventory.yaml", "status"], ["-o", "json", "backup", "--dry-run"]],
                         ids=["-i", "-o"])
def test_a_commands_option_given_before_the_command_says_where_it_goes(argv):
    # "Error: No such option: -i" and click's usage, as if snapctl had no such option at all.
    result = snapctl(*argv)
    assert result.returncode == ExitCode.BAD_INPUT
    command = next(arg for arg in argv if arg in ("status", "backup"))
    said = f"{argv[0]} is an option of each command: put it after the command, e.g. `snapctl {command} {argv[0]} ...`"
    assert f"  hint: {said}" in result.stderr.splitlines()
    if argv[0] == "-o":  # a script asked for json: its one document carries the hint
        assert json.loads(result.stdout)["hint"] == said


def test_with_a_later_text_output_a_usage_error_is_no_json_document():
    result = snapctl("list", "-o", "json", "-o", "text", "--bogus")  # the last -o wins, as when it parses
    assert result.returncode == ExitCode.BAD_INPUT and result.stdout == ""


def test_with_no_backups_list_and_latest_say_which_catalog_they_looked_in(tmp_path):
    # Without `catalog:` the catalog is per user: cron's user had backups, the operator's `snapctl list`
    # said "no backups yet" and `drill latest` "no succeeded backup ... in the catalog yet", naming none.
    (tmp_path / "inv.yaml").write_text("cluster: c\nprovider: {type: local, store: snaps}\nnodes:" + GOOD_NODE)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env.pop("XDG_STATE_HOME", None)
    where = tmp_path / "home" / ".local" / "state" / "snapctl" / "catalog"

    listed = subprocess.run([sys.executable, "-m", "snapctl.cli", "list", "-i", "inv.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    drilled = subprocess.run([sys.executable, "-m", "snapctl.cli", "drill", "latest", "-i", "inv.yaml"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60, check=False)

    assert listed.returncode == 0
    assert " ".join(listed.stdout.split()) == f"no backups yet in {where} (cluster c), which does not exist"
    where.mkdir(parents=True)  # made, but empty: no more to say
    listed = subprocess.run([sys.executable, "-m", "snapctl.cli", "list", "-i", "inv.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0 and listed.stdout.strip() == f"no backups yet in {where} (cluster c)"
    assert drilled.returncode == ExitCode.BAD_INPUT
    assert (f"snapctl: error: no succeeded backup of cluster c in the catalog at {where}, which does not exist"
            in drilled.stderr)
    assert "$XDG_STATE_HOME/snapctl/catalog of the user running snapctl" in drilled.stderr


def test_an_inventory_that_is_not_utf8_is_one_line_naming_the_line(tmp_path):
    # A comment saved as Latin-1 (or a binary file passed to -i) ended every command in a traceback, exit 1.
    (tmp_path / "inv.yaml").write_bytes(b"cluster: c\n# r\xe9sum\xe9 of the nodes\nprovider: {type: local}\nnodes:"
                                        + GOOD_NODE.encode())
    result = snapctl("list", "-i", "inv.yaml", "-o", "json", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert json.loads(result.stdout) == {"schema_version": 1, "error": "inv.yaml:2: not UTF-8 text (byte 0xe9)",
                                         "hint": "save the inventory as UTF-8", "exit_code": 2}
    assert "Traceback" not in result.stderr


def test_a_token_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    # `auth.token_file` pointing at a binary file (a key, a keytab) ended the command in a traceback.
    (tmp_path / "agent.key").write_bytes(b"\xff\xfe\x00secret")
    (tmp_path / "inv.yaml").write_text("cluster: c\nprovider: {type: local, store: snaps}\n"
                                       "auth: {token_file: agent.key}\nnodes:" + GOOD_NODE)
    result = snapctl("status", "-i", "inv.yaml", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert result.stderr.splitlines()[0] == (f"snapctl: error: inv.yaml: cannot read auth.token_file "
                                             f"{tmp_path / 'agent.key'}: not UTF-8 text")
    assert "Traceback" not in result.stderr


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    # A second `nodes:` appended to add a node: YAML kept the last alone, and `backup --dry-run`
    # planned a backup of n2 only, n1 silently dropped.
    (tmp_path / "inv.yaml").write_text("cluster: c\nprovider: {type: local}\nnodes:" + GOOD_NODE
                                       + "nodes:" + GOOD_NODE.replace("n1", "n2"))
    result = snapctl("backup", "--dry-run", "-i", "inv.yaml", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "snapctl: error: inv.yaml:7: invalid YAML: duplicate key 'nodes' (first at line 3): only the last would count",
        "  hint: merge the two 'nodes' entries into one, or remove one"]


@pytest.mark.parametrize(("argv", "error", "hint"), [
    (["backup", "--consistency", "per_node"], "--consistency 'per_node' is not one of: cluster, per-node",
     "e.g. --consistency cluster"),
    (["list", "-o", "yaml"], "--output 'yaml' is not one of: text, json", "-o json for scripts, or leave it out"),
    (["trigger", "--timeout", "nan"], "--timeout nan: the timeout must be a number of seconds more than zero",
     "e.g. --timeout 600 (the default)"),
], ids=["consistency", "output", "trigger-timeout-nan"])
def test_a_bad_flag_value_says_what_to_give_instead(tmp_path, argv, error, hint):
    # These said what was wrong with no hint; `trigger --timeout nan` waited for nothing and failed
    # every node ("no result within nans", exit 1) instead of refusing the flag.
    (tmp_path / "inv.yaml").write_text("cluster: c\nprovider: {type: local, store: snaps}\nnodes:"
                                       + GOOD_NODE.replace("volumes: [data]", "volumes: []"))
    result = snapctl(*argv, "-i", "inv.yaml", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"snapctl: error: {error}", f"  hint: {hint}"]


@pytest.mark.parametrize(("argv", "error", "hint"), [
    (["trigger", "--timeout", "1e308"], "--timeout 1e308: at most 315360000 seconds (ten years)",
     "e.g. --timeout 600 (the default)"),
    (["trigger", "--timeout", "x"], "--timeout x: the timeout must be a number of seconds more than zero",
     "e.g. --timeout 600 (the default)"),
    (["status", "--watch", "1e308"], "--watch 1e308: at most 86400 seconds (a day) between refreshes",
     "e.g. --watch 5, or a bare --watch for every 2 seconds"),
    (["list", "--limit", "nan"], "--limit nan: give a number of runs, or 0 for every run", "e.g. --limit 20"),
    (["list", "--limit", "1.5"], "--limit 1.5: give a number of runs, or 0 for every run", "e.g. --limit 20"),
    (["list", "--limit", "9" * 23], f"--limit {'9' * 23}: at most 1000000 runs (0: every run)", "e.g. --limit 20"),
], ids=["trigger-timeout-huge", "trigger-timeout-word", "watch-huge", "limit-nan", "limit-fraction", "limit-huge"])
@pytest.mark.parametrize("output", ["text", "json"])
def test_a_number_flag_refuses_what_is_no_number_or_past_its_ceiling_while_parsing(tmp_path, argv, error, hint,
                                                                                    output):
    # `trigger --timeout 1e308` was a 91-line OverflowError traceback (the transport's deadline),
    # with -o json no document; `status --watch 1e308` printed once and never again; `--limit nan`
    # got click's three lines of usage and no hint, and a 23-digit --limit passed. No agent is asked.
    (tmp_path / "inv.yaml").write_text("cluster: c\nprovider: {type: local, store: snaps}\nnodes:"
                                       + GOOD_NODE.replace("7701", "7883").replace("volumes: [data]", "volumes: []"))
    result = snapctl(*argv, "-i", "inv.yaml", "-o", output, cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"snapctl: error: {error}", f"  hint: {hint}"]
    if output == "json":
        assert json.loads(result.stdout) == {"schema_version": 1, "error": error, "hint": hint,
                                             "exit_code": ExitCode.BAD_INPUT}


@pytest.mark.parametrize("args", [("restore", "latest", "--to", ""), ("drill", "--junit", " "),
                                  ("backup", "--textfile", ""), ("status", "--textfile", "")],
                         ids=["restore-to", "drill-junit", "backup-textfile", "status-textfile"])
def test_an_empty_path_flag_is_refused_not_taken_for_no_flag(tmp_path, args):
    # `--to ""` acted as if it were missing (each node's restore.path), `--junit ""` wrote the
    # default report, `--textfile ""` wrote none: a script's unset variable went unnoticed.
    (tmp_path / "data").mkdir()
    (tmp_path / "inv.yaml").write_text("cluster: c\nprovider: {type: local, store: snaps}\nnodes:" + GOOD_NODE)
    result = snapctl(*args, "-i", "inv.yaml", "-o", "json", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_INPUT, result.stdout + result.stderr
    document = json.loads(result.stdout)
    flag = args[-2]
    assert document["error"] == f"{flag} '': give a path, not an empty string"
    assert document["hint"].startswith(f"e.g. {flag} ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "inv.yaml"]  # nothing written anywhere


@pytest.mark.parametrize("args", [("list",), ("status",), ("demo", "up"), ("list", "--inventory")],
                         ids=["list", "status", "demo-up", "list-long-flag"])
def test_an_empty_inventory_flag_is_refused_not_taken_for_no_flag(tmp_path, args):
    # `-i ""` (a script's unset variable) fell back to $SNAPCTL_INVENTORY, else ./inventory.yaml: the
    # command ran on a cluster nobody named. `--to ""` and the other path flags were refused already.
    (tmp_path / "data").mkdir()
    (tmp_path / "inv.yaml").write_text("cluster: c\nprovider: {type: local, store: snaps}\nnodes:" + GOOD_NODE)
    (tmp_path / "inventory.yaml").write_text((tmp_path / "inv.yaml").read_text())
    (tmp_path / "inventory.example.yaml").write_text((tmp_path / "inv.yaml").read_text())
    flag = "--inventory" if args[-1] == "--inventory" else "-i"
    argv = [*args, *([] if flag == "--inventory" else ["-i"]), "", "-o", "json"]
    result = subprocess.run([sys.executable, "-m", "snapctl.cli", *argv], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "SNAPCTL_INVENTORY": str(tmp_path / "inv.yaml")}, timeout=60,
                            check=False)
    assert result.returncode == ExitCode.BAD_INPUT, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["error"] == "-i '': give a path, not an empty string"
    assert document["hint"].startswith("e.g. -i ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "inv.yaml", "inventory.example.yaml",
                                                          "inventory.yaml"]  # nothing made: no demo state


@pytest.mark.parametrize(("module", "prog"), [("snapctl.cli", "snapctl"), ("node_agent.main", "snapctl-agent")])
def test_version_is_the_installed_distributions(module, prog):
    # Bug reports and mixed fleets (an agent upgraded before its control host) start from this line:
    # it must be the version pip installed, not a constant that drifted from pyproject.toml.
    from importlib.metadata import version

    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{prog} {version('snapctl')}"
