"""The credentials snapctl shows its agents: bearer tokens (the inventory's, or a node's own
``token_file``) and the TLS context (a private CA, a client certificate for agents that require
one). Each secret file is read once per command, and one that other users can read is warned
about: whoever reads it can freeze every database of the cluster.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from snapctl.config import Inventory, Node
from snapctl.errors import InventoryError, os_reason
from snapctl.input_files import UnfitInputFile, check_regular
from snapctl.secret_files import (
    UNFIT_TOKEN,
    UNFIT_TOKEN_HINT,
    in_clear_beyond_this_host,
    read_first_line,
    unfit_token,
    warn_if_open,
)

log = logging.getLogger("snapctl.auth")

TOKEN_HINT = "set auth.token_file in the inventory (or {env}) to the token the agent was started with"
NODE_TOKEN_HINT = "the node's token_file ({path}) must hold the token its agent was started with"

_WARNED: set[tuple[str, ...]] = set()
# Below this a token may be a word or a short phrase someone chose: guessable, rate limit or not.
SHORTEST_TOKEN = 16
_WARNED_SHORT: set[tuple[str, str]] = set()


def load_agent_token(inventory: Inventory) -> str | None:
    """The bearer token for agents: ``auth.token_file`` (relative to the inventory), else ``$auth.token_env``."""
    auth = inventory.auth
    if auth.token_file:
        return _read_token(inventory, auth.token_file, "auth.token_file")
    if auth.token_env:
        token = os.environ.get(auth.token_env, "").strip() or None
        if token and unfit_token(token):
            raise InventoryError(f"${auth.token_env} {UNFIT_TOKEN}", hint=UNFIT_TOKEN_HINT)
        if token:
            _warn_if_short(inventory, f"${auth.token_env}", token)
        return token
    return None


class AgentTokens:
    """Each node's bearer token: its own ``token_file``, else the inventory's (``load_agent_token``).
    Every file is read once, however many nodes name it; the shared token only if a node uses it."""

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory
        self._files: dict[str, str] = {}
        shared_needed = any(not node.token_file and node.agent != "embedded" for node in inventory.nodes)
        self._shared = load_agent_token(inventory) if shared_needed else None

    def of(self, node: Node) -> str | None:
        if not node.token_file:
            return self._shared
        if node.token_file not in self._files:
            self._files[node.token_file] = _read_token(self._inventory, node.token_file,
                                                       f"the token_file of node {node.name}")
        return self._files[node.token_file]

    def hint(self, node: Node) -> str:
        if node.token_file:
            return NODE_TOKEN_HINT.format(path=self._inventory.resolve(node.token_file))
        return TOKEN_HINT.format(env="$" + (self._inventory.auth.token_env or "SNAPCTL_AGENT_TOKEN"))


def _read_token(inventory: Inventory, path: str, setting: str) -> str:
    file = inventory.resolve(path)
    try:
        # The first line, as the agent reads its own: a second line (a note, a rotated token) must not
        # go out inside the Authorization header, where it broke the request into an HTTP 400.
        token, mode = read_first_line(file)
    except (OSError, UnicodeDecodeError) as exc:  # not UTF-8: not a token file (a traceback, before)
        why = os_reason(exc) if isinstance(exc, OSError) else "not UTF-8 text"
        raise InventoryError(f"{inventory.source}: cannot read {setting} {file}: {why}",
                             hint=exc.hint if isinstance(exc, UnfitInputFile)
                             else "create it with the agent's token, readable only by you") from exc
    # Whoever reads it can freeze every database of the cluster.
    warn_if_open(log, inventory.source, setting, file, mode, "snapctl's user")
    if not token:
        raise InventoryError(f"{inventory.source}: {setting} {file} is empty")
    if unfit_token(token):
        raise InventoryError(f"{inventory.source}: {setting} {file} {UNFIT_TOKEN}", hint=UNFIT_TOKEN_HINT)
    _warn_if_short(inventory, f"{setting} {file}", token)
    return token


def _warn_if_short(inventory: Inventory, where: str, token: str) -> None:
    """Warn, once a process for each source (`status --watch` reads the tokens every refresh), when
    the token is short: its length only, never the token. Warned, not refused: agents run with it today."""
    said = (str(inventory.source), where)
    if len(token) >= SHORTEST_TOKEN or said in _WARNED_SHORT:
        return
    _WARNED_SHORT.add(said)
    log.warning("%s: %s holds a token shorter than %d characters, which can be guessed; give the agents and "
                "snapctl a long random one, e.g. (umask 077 && openssl rand -hex 32 > FILE) (docs/security.md)",
                inventory.source, where, SHORTEST_TOKEN)


def tls_context(inventory: Inventory) -> ssl.SSLContext:
    """One TLS context for every agent: building one loads a CA store (milliseconds each)."""
    import httpx

    auth = inventory.auth
    if auth.ca_file or auth.client_cert_file:
        files = {setting: inventory.resolve(path) for setting, path in (
            ("auth.ca_file", auth.ca_file), ("auth.client_cert_file", auth.client_cert_file),
            ("auth.client_key_file", auth.client_key_file)) if path}
        # ssl's own errors name no file ("[Errno 2] No such file or directory"): each is opened
        # here first, so that the error says which setting to fix.
        for setting, file in files.items():
            try:
                check_regular(file)
                file.open("rb").close()
            except OSError as exc:
                raise InventoryError(f"{inventory.source}: cannot read {setting} {file}: {os_reason(exc)}",
                                     hint=f"set {setting} to the PEM file it names, readable by snapctl's user"
                                     ) from exc
        ca = files.get("auth.ca_file")
        try:
            verify = ssl.create_default_context(cafile=str(ca) if ca else None)
        except (OSError, ssl.SSLError) as exc:
            raise InventoryError(f"{inventory.source}: auth.ca_file {ca} holds no usable CA certificate: {exc}",
                                 hint="it must hold the PEM certificate of the CA that signed the agents' "
                                      "certificates") from exc
        if auth.client_cert_file:
            cert, key = files["auth.client_cert_file"], files.get("auth.client_key_file")
            try:
                verify.load_cert_chain(str(cert), str(key) if key else None)
            except (OSError, ssl.SSLError) as exc:
                pair = f"auth.client_cert_file {cert}" + (f" and auth.client_key_file {key}" if key else "")
                raise InventoryError(f"{inventory.source}: cannot load the client certificate from {pair}: {exc}",
                                     hint="give the PEM certificate and its own private key (a key that does "
                                          "not match the certificate is refused)") from exc
            # Whoever reads the key can be snapctl to every agent that requires client certificates.
            setting = "auth.client_key_file" if key else "auth.client_cert_file (which holds the key)"
            _warn_if_key_open(inventory, setting, key or cert)
        return verify
    return httpx.create_ssl_context(verify=True, trust_env=False)


def _warn_if_key_open(inventory: Inventory, setting: str, file: Path) -> None:
    try:
        mode = file.stat().st_mode
    except OSError:  # it was just loaded: gone since, nothing to warn about
        return
    warn_if_open(log, inventory.source, setting, file, mode, "snapctl's user")


def warn_if_sent_in_clear(inventory: Inventory, tokens: AgentTokens) -> None:
    """One warning for every agent reached over plain http beyond this host with a token: whoever
    can watch that network can take the token, and with it hold every database of the cluster.
    Warned, not refused, as the agent does: agents on a private network over http run today."""
    exposed = [node for node in inventory.nodes if in_clear_beyond_this_host(node.agent) and tokens.of(node)]
    said = (str(inventory.source), *(node.agent for node in exposed))
    if exposed and said not in _WARNED:  # once a process: `status --watch` opens the agents every refresh
        _WARNED.add(said)
        first = exposed[0]
        more = f" and {len(exposed) - 1} more" if len(exposed) > 1 else ""
        log.warning("%s: the agent token crosses the network in clear to node %s (%s)%s; serve the agents over "
                    "https (tls.cert_file in their config) and use https:// addresses (docs/security.md)",
                    inventory.source, first.name, first.agent, more)
