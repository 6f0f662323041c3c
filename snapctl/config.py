"""The inventory: one YAML file describing a cluster, validated once, here.

Every error names the file, the line and the field; unknown keys list the valid ones.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from snapctl.errors import InventoryError, RefusedValue, SnapctlError, os_reason
from snapctl.input_files import MAX_CONFIG_BYTES, UnfitInputFile, read_regular
from snapctl.policy import Duration, Policy, Retention, Strict, parse_duration, positive_duration
from snapctl.printable import SHOWN_PATH, printable
from snapctl.yaml_errors import (
    NAME_PATTERN,
    URL_PATTERN,
    Given,
    describe,
    describe_not_utf8,
    describe_yaml_error,
    dotted,
    explain,
    first_error,
    gc_paused,
    hint_of,
    line_of,
    load_yaml_with_nodes,
    mistyped_scalar,
)

if TYPE_CHECKING:
    from node_agent.engines.base import EngineSettings

log = logging.getLogger(__name__)

DEFAULT_INVENTORY = "inventory.yaml"
SNAPCTL_TAG_PREFIX = "snapctl-"  # snapctl.providers' TAG_* keys all start so
INVENTORY_ENV = "SNAPCTL_INVENTORY"


def _plain(key: str) -> str:
    """``key`` without snapctl's prefix: what to rename a tag named like snapctl's to."""
    return key[len(SNAPCTL_TAG_PREFIX):].strip("-") or "team"


class CatalogConfig(Strict):
    """Where manifests live: a local directory (default under $XDG_STATE_HOME) or s3://bucket/prefix."""

    path: Given | None = None
    url: Given | None = None  # s3://bucket/prefix for a shared catalog
    endpoint_url: str | None = Field(default=None, pattern=URL_PATTERN)  # S3-compatible endpoint (tests: moto)
    region: str | None = None
    # `snapctl status`'s catalog reads, all told (each refresh's, with --watch): past it the catalog
    # is reported unreadable, which is critical. Its own setting: a slow but healthy S3 store is
    # no agent, and 3 x policy.agent_timeout_s (30 s) failed CI's status step on one.
    status_timeout_s: Duration = 120.0


class AgentAuth(Strict):
    """How snapctl authenticates to agents: never a plain-text token in the inventory."""

    token_file: Given | None = None
    token_env: str | None = "SNAPCTL_AGENT_TOKEN"
    ca_file: Given | None = None  # verify agents' TLS certificates with this CA
    client_cert_file: Given | None = None  # mTLS
    client_key_file: Given | None = None


_AGENT_ADDRESS = re.compile(r"^https?://(?:\[(?P<ipv6>[^\]/\s]+)\]|[^/\s:\[\]]+)(?::(?P<port>\d{1,5}))?/?$")


def _agent_address(value: str, usage: str = "http(s)://host:port") -> str:
    if "@" in value:  # not repeated: what is before the @ may well be the token
        raise ValueError("an agent address takes no user or password (user:secret@host): the agent's token "
                         "goes in a file, auth.token_file or the node's token_file")
    match = _AGENT_ADDRESS.match(value)
    if not match:
        if value.count(":") > 2 and "[" not in value:  # http://fd00::1:7700: which colon starts the port?
            raise ValueError(f"{value!r} is not an agent address: put an IPv6 address in brackets "
                             "(http://[fd00::1]:7700)")
        raise ValueError(f"{value!r} is not an agent address (use {usage})")
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            raise ValueError(f"{value!r}: {match['ipv6']!r} in brackets is not an IPv6 address") from None
    if match["port"] is not None and not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{value!r}: port {int(match['port'])} is not between 1 and 65535")
    return value.rstrip("/")


def is_loopback(host: str) -> bool:
    """``host`` (a name, an address, an IPv6 address in brackets) is this machine itself."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


class NodeRestoreConfig(Strict):
    """Where a restore or drill of one node goes. Local providers restore into ``path/<volume>``;
    cloud providers make new volumes in ``zone``, attached to ``instance`` when asked. With
    ``agent``, a scratch agent beside the restored disks runs restore-prepare and verify."""

    path: str | None = None  # local: this node's volumes go to <path>/<volume>
    zone: str | None = None  # cloud: where the new volumes are made
    instance: str | None = None  # cloud: attach the new volumes to this instance (restore --attach, drills)
    device: str | None = None  # the device name when the node has one volume
    devices: dict[str, str] = Field(default_factory=dict)  # volume name -> device name
    agent: str | None = None  # http(s)://host:port of a scratch agent that runs the restored engine
    agent_path: str | None = None  # passed to that agent's restore-prepare (default: its engine's data path)
    options: dict[str, Any] = Field(default_factory=dict)  # provider options for new volumes (e.g. volume_type)

    @field_validator("agent")
    @classmethod
    def _agent(cls, value: str | None) -> str | None:
        return None if value is None else _agent_address(value)

    @field_validator("agent_path")
    @classmethod
    def _agent_path(cls, value: str | None) -> str | None:
        # A path on the scratch agent's host, which refuses any other (docs/restore.md): said here,
        # before anything is restored, not by the agent once the volumes are made.
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path, as the scratch agent sees it")
        return value


class DrillConfig(Strict):
    """How `snapctl drill` runs: where local restores go, how long everything may take."""

    scratch_dir: str | None = None  # default: a new temporary directory per drill
    timeout_s: Duration = 1800.0  # the whole drill, restores included; past it the drill fails
    start_timeout_s: Duration = 120.0  # one engine coming up on restored data
    junit: str | None = None  # where the JUnit XML report goes (default: ./snapctl-drill.xml)
    # `snapctl status` is degraded when the newest drill that passed is older (null: never). Eight
    # days: a nightly or weekly drill passes it with a day to spare. Judged only once the catalog
    # holds a drill, unless set here: a cluster that never drilled is not degraded by surprise.
    max_age_s: float | None = 8 * 86400.0

    @field_validator("max_age_s", mode="before")
    @classmethod
    def _max_age(cls, value: Any) -> float | None:
        return None if value is None else positive_duration(value)


class Node(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    agent: str  # http(s)://host:port, or "embedded"
    engine: dict[str, Any] = Field(default_factory=dict)  # validated by the engine adapter
    volumes: list[Any] = Field(default_factory=list)  # validated by the provider
    restore: NodeRestoreConfig = Field(default_factory=NodeRestoreConfig)  # where restores and drills of this node go
    # This node's own agent token (a file, relative to the inventory), for agents that do not all
    # share auth.token_file: a token stolen from one host then opens only that host's agent.
    token_file: Given | None = None

    @field_validator("agent")
    @classmethod
    def _agent(cls, value: str) -> str:
        return value if value == "embedded" else _agent_address(value, "http(s)://host:port or 'embedded'")

    @model_validator(mode="after")
    def _embedded_needs_engine(self) -> Node:
        if self.agent == "embedded" and not self.engine:
            raise ValueError("an embedded agent needs an 'engine' block (e.g. {type: sqlite, path: ...})")
        if self.agent == "embedded" and self.token_file:
            raise ValueError("an embedded agent runs inside snapctl and takes no token: remove its token_file")
        return self


class Inventory(Strict):
    cluster: str = Field(pattern=NAME_PATTERN)
    provider: dict[str, Any]  # validated by the provider plugin
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    auth: AgentAuth = Field(default_factory=AgentAuth)
    policy: Policy = Field(default_factory=Policy)
    retention: Retention = Field(default_factory=Retention)
    drill: DrillConfig = Field(default_factory=DrillConfig)
    rpo: float = 86400.0
    tags: dict[str, str] = Field(default_factory=dict)  # extra tags on every snapshot
    nodes: list[Node] = Field(min_length=1)

    # Not part of the file: where it was read from, so relative paths resolve against it, and its
    # text and each node's place in it, so that errors in blocks checked later (a provider's
    # settings, an engine's, a node's volumes) name file:line like the rest.
    model_config = ConfigDict(extra="forbid")
    _base_dir: Path = Path(".")
    _source: str = "<memory>"
    _text: str | None = None
    _node_index: dict[str, int] = {}

    @field_validator("rpo", mode="before")
    @classmethod
    def _rpo(cls, value: Any) -> float:
        seconds = parse_duration(value)
        if seconds <= 0:  # every status would be critical, "over the RPO of 0ms"
            raise ValueError("must be greater than zero (the age the newest backup may reach, e.g. 24h)")
        return seconds

    @field_validator("tags")
    @classmethod
    def _not_snapctls(cls, tags: dict[str, str]) -> dict[str, str]:
        # find, prune, gc and drills go by snapctl's own tags: one of the inventory's named like
        # them (snapctl-restored-from) made find() skip every snapshot of every run. Any case:
        # Azure's tag names ignore it. Only those: other `snapctl-*` keys ran before this check,
        # and refusing them stopped every command (list, restore, prune), not only backups; they
        # get a warning at load (``parse_inventory``).
        from snapctl.providers import OWN_TAG_KEYS  # here: config's other users need no provider module

        for key in tags:
            if key.lower() in OWN_TAG_KEYS:
                raise RefusedValue(f"{key!r} is one of snapctl's own tags (find, prune and gc go by them)",
                                   hint=f"rename the key, e.g. to {_plain(key)!r}")
        return tags

    @field_validator("nodes")
    @classmethod
    def _unique_names(cls, nodes: list[Node]) -> list[Node]:
        seen: set[str] = set()
        for index, node in enumerate(nodes):
            if node.name in seen:
                raise ValueError(f"duplicate node name {node.name!r} (nodes[{index}]); node names must be unique")
            seen.add(node.name)
        return nodes

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """A path from the inventory, relative to the inventory file's directory."""
        p = Path(os.path.expanduser(str(path)))
        return p if p.is_absolute() else (self._base_dir / p)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise InventoryError(f"no node named {name!r} in {self._source}", hint="nodes: " + ", ".join(n.name for n in self.nodes))

    def select(self, names: list[str] | None) -> list[Node]:
        return [self.node(n) for n in names] if names else list(self.nodes)

    # -- blocks the plugins validate, with errors that name file:line -------------------------

    def where(self, *loc: str | int) -> str:
        """``file:line`` of the key ``loc`` reaches (e.g. "provider", "region"), or of the deepest
        part of it the file has. The text is parsed again for it: only errors need lines."""
        root = None
        if self._text is not None:
            try:
                root = yaml.compose(self._text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            except yaml.YAMLError:
                pass  # it parsed when it was loaded; a line is a nicety here
        line = line_of(root, loc) if root is not None else None
        return f"{self._source}:{line}" if line else self._source

    def node_loc(self, name: str) -> tuple[str | int, ...]:
        """Where node ``name`` is in the file: ("nodes", index), whatever subset of nodes this is."""
        index = self._node_index.get(name)
        return ("nodes", index) if index is not None else ("nodes",)

    def located(self, exc: SnapctlError, *loc: str | int) -> InventoryError:
        """``exc``, raised checking the block at ``loc`` (a plugin's own message), naming file:line."""
        return InventoryError(f"{self.where(*loc)}: {exc.message}", hint=exc.hint)

    def check_block(self, model: type[BaseModel], raw: dict[str, Any], loc: tuple[str | int, ...], what: str) -> Any:
        """``raw``, the block at ``loc``, validated by ``model`` (a plugin's); ``what`` begins every
        error (e.g. "provider aws"), after the file:line of the key at fault."""
        mistyped = mistyped_scalar(model, raw)
        if mistyped is not None:
            at, message = mistyped
            raise InventoryError(f"{self.where(*loc, *at)}: {what}: {dotted(at)}: {message}")
        try:
            return model.model_validate(dict(raw))
        except ValidationError as exc:
            err = first_error(exc)
            hint = None
            if err["type"] == "missing":
                hint = f"add {dotted(tuple(err['loc']))}: to the {dotted(loc)} block"
            else:
                hint = hint_of(err, model)
            raise InventoryError(f"{self.where(*loc, *err['loc'])}: {what}: {explain(err, model)}",
                                 hint=hint) from exc

    def plugin_block(self, raw: dict[str, Any], loc: tuple[str | int, ...], load: Callable[[str], Any], *,
                     whose: str = "", example: str) -> tuple[Any, Any]:
        """A plugin's block (a provider's, an engine's) at ``loc``: the factory ``load`` finds for its
        ``type``, and the block validated by that factory's ``settings_model``. Errors name
        file:line, begin with ``whose`` (e.g. "node db1: "), and a missing type hints ``example``."""
        block = loc[-1]
        kind = raw.get("type")
        if not isinstance(kind, str):
            raise InventoryError(f"{self.where(*loc)}: {whose}the {block} block needs a 'type'", hint=f"e.g. {example}")
        try:
            factory = load(kind)
        except SnapctlError as exc:
            raise self.located(exc, *loc, "type") from exc
        return factory, self.check_block(factory.settings_model, raw, loc, f"{whose}{block} {kind}")

    def check_engine_blocks(self, names: Collection[str] | None = None) -> None:
        """Every node's engine block (only those of ``names``, if given), validated by its adapter;
        errors name file:line. A node whose agent runs elsewhere needs none, but the block it has is
        what its restores and drills start the engine from: a mistake in it is bad input for every
        command that reads the inventory to act, found then, not once a restore is under way.

        Without ``names`` (backup, status) a block whose type no engine installed here knows is
        left to its agent: an engine plugin may be installed on the database hosts alone, and only
        a restore or a drill starts engines on this host (they name their nodes, and refuse it)."""
        from node_agent.engines.base import available_engines

        checked: set[str] = set()  # a block like one that passed passes: 1000 nodes often share one
        for node in self.nodes:
            if not node.engine or (names is not None and node.name not in names):
                continue
            if names is None and node.engine.get("type") not in available_engines():
                continue
            if (block := repr(node.engine)) not in checked:
                self.engine_settings(node)
                checked.add(block)

    def engine_settings(self, node: Node) -> EngineSettings:
        """``node``'s engine block, validated by its adapter; errors name file:line."""
        from node_agent.engines.base import load_engine_factory

        _, settings = self.plugin_block(node.engine, (*self.node_loc(node.name), "engine"), load_engine_factory,
                                        whose=f"node {node.name}: ",
                                        example="engine: {type: sqlite, path: /var/lib/app/app.db}")
        return settings


def inventory_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get(INVENTORY_ENV) or DEFAULT_INVENTORY)


def load_inventory(path: str | os.PathLike[str] | None = None, *, from_env: bool = False) -> Inventory:
    """``from_env``: ``path`` is $SNAPCTL_INVENTORY's (as the CLI's option reads it), not -i's."""
    from_env = from_env or (not path and bool(os.environ.get(INVENTORY_ENV)))
    file = inventory_path(str(path) if path else None)
    shown = printable(str(file), SHOWN_PATH)  # every message names it: one line, not a page
    try:
        data, _ = read_regular(file, MAX_CONFIG_BYTES, "an inventory")
        text = data.decode("utf-8")  # YAML is UTF-8 text: not whatever the locale says (cron's may be C)
    except FileNotFoundError:
        where = "" if file.is_absolute() else f" in {Path.cwd()}"  # cron's and CI's cwd is rarely the one meant
        # "set SNAPCTL_INVENTORY", to one who had, sent them looking elsewhere.
        hint = (f"fix ${INVENTORY_ENV}, or unset it to use ./{DEFAULT_INVENTORY}; -i FILE overrides it" if from_env
                else "pass -i FILE, set SNAPCTL_INVENTORY, or copy inventory.example.yaml to inventory.yaml")
        raise InventoryError(f"{shown}: inventory file not found{where}" + (f" (from ${INVENTORY_ENV})" if from_env
                                                                           else ""), hint=hint) from None
    except OSError as exc:
        raise InventoryError(f"{shown}: cannot read inventory: {os_reason(exc)}",
                             hint=exc.hint if isinstance(exc, UnfitInputFile) else None) from exc
    except UnicodeDecodeError as exc:
        raise InventoryError(describe_not_utf8(data, exc, shown), hint="save the inventory as UTF-8") from None
    return parse_inventory(text, source=shown, base_dir=file.resolve().parent)


def parse_inventory(text: str, *, source: str = "<inventory>", base_dir: Path | None = None) -> Inventory:
    with gc_paused():  # the YAML node tree is ~7 objects per line, all alive until validated: no cycles to find
        try:
            root, data = load_yaml_with_nodes(text)
        except yaml.YAMLError as exc:
            raise InventoryError(describe_yaml_error(exc, text, source), hint=getattr(exc, "hint", None)) from exc
        if not isinstance(data, dict):
            raise InventoryError(f"{source}:1: the inventory must be a mapping with 'cluster', 'provider' and 'nodes'")
        try:
            inventory = Inventory.model_validate(data)
        except ValidationError as exc:
            raise InventoryError(describe(exc, root, source, Inventory), hint=hint_of(first_error(exc), Inventory)) from exc
    inventory._base_dir = base_dir or Path.cwd()
    inventory._source = source
    inventory._text = text
    inventory._node_index = {node.name: index for index, node in enumerate(inventory.nodes)}
    _warn_snapctl_named_tags(inventory, root)
    return inventory


_WARNED_TAGS: set[tuple[str, str]] = set()


def _warn_snapctl_named_tags(inventory: Inventory, root: yaml.Node) -> None:
    """A warning (once per file and key) for each of the inventory's tags named like snapctl's own
    but not one of them (those are refused): a later snapctl may write a tag of that name."""
    for key in inventory.tags:
        if key.lower().startswith(SNAPCTL_TAG_PREFIX) and (inventory.source, key) not in _WARNED_TAGS:
            _WARNED_TAGS.add((inventory.source, key))
            line = line_of(root, ("tags", key))
            log.warning("%s: tags: %r starts with %r, as snapctl's own tags do: it may clash with a tag a later "
                        "snapctl writes; hint: rename it, e.g. to %r", f"{inventory.source}:{line}" if line
                        else inventory.source, key, SNAPCTL_TAG_PREFIX, _plain(key))
