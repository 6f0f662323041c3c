"""``snapctl-agent``: serve one node's engine over HTTP(S) until SIGTERM/SIGINT.

Whatever stops the agent (a signal, a crash of the server loop), a held lease is completed before
the process exits: the database is never left frozen behind a dead agent.
"""

from __future__ import annotations

import argparse
import gc
import logging
import re
import signal
import socket
import ssl
import sys
from pathlib import Path
from types import FrameType

from node_agent.config import AgentConfig, load_agent_config
from node_agent.engines.base import Engine, load_engine_factory
from node_agent.exclusive import claim_database
from node_agent.hold_record import HoldRecords, UnwritableStateDir, engine_record_paths, ready_state_dir
from node_agent.left_hold import release_before_refusing
from snapctl import __version__
from snapctl.config import is_loopback
from snapctl.errors import BadInputError, ExitCode, SnapctlError, os_reason
from snapctl.yaml_errors import NAME_IN_WORDS, NAME_PATTERN

log = logging.getLogger("snapctl.agent")

_NODE_NAME = re.compile(NAME_PATTERN)
# Guessing at the rate limit's 20 a second, a token of 16 random hex characters lasts beyond any
# deployment; snapctl's docs generate 64 (openssl rand -hex 32).
MIN_TOKEN_CHARS = 16


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if level != "debug":
        # httpx logs every request the engine adapters make at INFO: a line per status poll and
        # per /metrics scrape, which buried what the agent itself had to say.
        for chatty in ("httpx", "httpcore"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _load_config(args)
    except SnapctlError as exc:
        return _fail(exc)
    configure_logging(config.log_level)
    # Everything that can stop the agent at start is checked before it serves, and said the same
    # way: one line, exit 2 for what the operator must fix.
    try:
        token = config.read_token()
        metrics_token = config.read_metrics_token()
        if metrics_token is not None and metrics_token == token:
            # The scraper's token then opens every endpoint: whoever reads /metrics can freeze the database.
            log.warning("%s: the metrics token is the agent's own token, so /metrics' scraper can also hold "
                        "the database; give metrics_token_file a token of its own", config.source)
        if token is None and not is_loopback(config.listen):
            hint = f"set token_file in {config.source} or pass --token-file FILE"
            if config.token_env:  # null: the agent reads no variable, and "$None" misled
                hint = f"set token_file in {config.source}, pass --token-file FILE, or set ${config.token_env}"
            raise BadInputError(f"refusing to listen on {config.listen} without a token", hint=hint)
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            _short_token(config)
        config.check_tls_files()
        config.warn_if_engine_password_open()
        sock = _bind(config.listen, config.port)
    except SnapctlError as exc:
        return _fail(exc)
    settings = config.engine_settings
    try:
        engine = load_engine_factory(settings.type)(settings, base_dir=config.base_dir)
        claim_database(engine, config.source)  # before serving: a second agent would undo the first's holds
    except SnapctlError as exc:
        sock.close()
        return _fail(exc)
    try:
        state_dir = ready_state_dir(config.state_directory(), config.source)
    except UnwritableStateDir as exc:
        refusal = _release_left_in(config, engine, exc)
        engine.close()
        sock.close()
        return _fail(refusal)
    except SnapctlError as exc:
        engine.close()
        sock.close()
        return _fail(exc)
    records = _hold_records(config, engine, state_dir)
    try:
        records.lock(config.source)  # before the record is loaded (AgentService): it may be a live agent's
    except SnapctlError as exc:
        engine.close()
        sock.close()
        return _fail(exc)
    records.warn_of_others()
    return _serve(config, token, metrics_token, engine, sock, records)


def _hold_records(config: AgentConfig, engine: Engine, state_dir: Path) -> HoldRecords:
    return HoldRecords(state_dir, config.node, config.engine_settings.type, engine_record_paths(engine))


def _release_left_in(config: AgentConfig, engine: Engine, refusal: UnwritableStateDir) -> UnwritableStateDir:
    """What a killed agent's record in the agent's own state_dir, unwritable now, names, released
    before the refusal (the engine is never left held because the agent cannot start); the refusal,
    with what was done. One hint: each error's own is folded into it, not repeated after it."""
    records = _hold_records(config, engine, config.state_directory())
    try:
        there = records.path.exists()
    except OSError as exc:  # a mode without x for its user: no record can be read there either
        return UnwritableStateDir(f"{refusal.message}; whether a hold record is there cannot be told: "
                                  f"{os_reason(exc)}", hint=refusal.hint)
    if not there:
        return refusal
    try:
        records.lock(config.source)  # a live agent's record is its own to release; another user's, none's
    except SnapctlError as exc:
        return UnwritableStateDir(f"{refusal.message}; the hold record {records.path} there is not acted on: "
                                  f"{exc.message}", hint=f"{exc.hint}; {refusal.hint}" if exc.hint else refusal.hint)
    said = release_before_refusing(records, engine)
    return UnwritableStateDir(f"{refusal.message}; {said}", hint=refusal.hint) if said else refusal


def _short_token(config: AgentConfig) -> None:
    """Refuse a token too short to resist guessing on an agent others can reach; warn on loopback."""
    if config.token_file:
        file = config.resolve(config.token_file)
        where, fix = f"{config.source}: token_file {file}", f"(umask 077 && openssl rand -hex 32 > {file})"
    else:
        where, fix = f"${config.token_env}", f"set ${config.token_env} to the output of openssl rand -hex 32"
    said = f"{where} holds a token shorter than {MIN_TOKEN_CHARS} characters"
    if not is_loopback(config.listen):
        raise BadInputError(f"{said}: refusing to listen on {config.listen} with a token that short",
                            hint=f"generate a long random one: {fix}")
    # Warned, not refused, on loopback: such agents run today and would not start after an upgrade.
    log.warning("%s, which any local user could guess (the rate limit only slows guessing down); "
                "generate a long random one: %s", said, fix)


def _fail(exc: SnapctlError) -> int:
    print(f"snapctl-agent: error: {exc}", file=sys.stderr)
    return int(exc.exit_code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapctl-agent", description="snapctl node agent: one database engine behind a small HTTP API."
    )
    parser.add_argument("--version", action="version", version=f"snapctl-agent {__version__}")
    parser.add_argument("--config", required=True, metavar="FILE", help="agent config file (YAML), see docs/agent.md")
    parser.add_argument("--listen", metavar="HOST", help="address to bind (default from the config: 127.0.0.1)")
    parser.add_argument("--port", type=_port, metavar="PORT", help="port to bind (default from the config: 7700)")
    parser.add_argument("--node", type=_node, metavar="NAME", help="this node's name (overrides the config)")
    parser.add_argument("--token-file", metavar="FILE", help="file holding the bearer token (overrides the config)")
    return parser


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0-65535)")
    return int(value)


def _node(value: str) -> str:
    if not _NODE_NAME.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not {NAME_IN_WORDS}")  # as the config's node: says
    return value


def _load_config(args: argparse.Namespace) -> AgentConfig:
    config = load_agent_config(args.config)
    overrides = {"listen": args.listen, "port": args.port, "node": args.node}
    if args.token_file:
        overrides["token_file"] = _absolute(args.token_file)  # relative to where the operator typed it
    return config.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _serve(config: AgentConfig, token: str | None, metrics_token: str | None, engine: Engine,
           sock: socket.socket, records: HoldRecords) -> int:
    import uvicorn

    from node_agent.app import create_app
    from node_agent.ratelimit import guarded_http, quiet_refusals
    from node_agent.service import AgentService

    settings = config.engine_settings
    service = AgentService(config.node, engine, allow_restore_prepare=config.restore_target,
                           restore_root=config.resolve(config.restore_root) if config.restore_root else None,
                           engine_type=settings.type, hold_records=records)
    try:
        tls = _tls_context(config) if config.uses_tls else None
    except (OSError, ssl.SSLError) as exc:  # check_tls_files() passed, so only if a file changed since
        service.close()
        sock.close()
        reason = (exc.reason or str(exc)).lower() if isinstance(exc, ssl.SSLError) else os_reason(exc)
        return _fail(BadInputError(f"{config.source}: cannot load the tls files: {reason}",
                                   hint="check tls.cert_file, tls.key_file and tls.client_ca_file"))
    uv_config = uvicorn.Config(
        create_app(service, token, max_body_bytes=config.max_body_bytes, rate_per_s=config.rate_per_s,
                   burst=config.burst, metrics_token=metrics_token),
        log_config=None,  # keep our logging setup: one format, no token anywhere
        log_level=config.log_level,
        lifespan="off",
        server_header=False,
        # Half-sent requests and TLS handshakes are timed out, and connections per client bounded
        # from their TCP connect on: so the protocol does TLS, and uvicorn is given no ssl settings.
        http=guarded_http(tls=tls, client_names=frozenset(config.tls.client_names)
                          if config.tls and config.tls.client_names else None),
        # uvloop (which uvicorn picks when it is installed) reads a new connection before the
        # protocol can pause it: the ClientHello reached HTTP, and the handshake stalled.
        loop="asyncio" if tls else "auto",
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
    )
    server = uvicorn.Server(uv_config)
    logging.getLogger("uvicorn.access").addFilter(quiet_refusals)  # the rate limit logs them summed up
    uv_config.load()  # here, not in server.run: what it loads is frozen out of the collector's scans below
    try:
        def stop(signum: int, _frame: FrameType | None) -> None:
            # Before uvicorn takes the signals over, and after it hands them back (it re-raises
            # the one it caught): either way, just ask the server to stop; `finally` releases.
            server.should_exit = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if tls else "http"
        log.info("snapctl-agent %s listening on %s://%s:%d engine=%s", config.node, scheme, shown, port, settings.type)
        if token is None:  # allowed on loopback only (main refuses otherwise), and still worth a word
            log.warning("no token configured: any user or process on this host can hold the engine; "
                        "set token_file in %s (docs/security.md)", config.source)
        elif tls is None and not is_loopback(config.listen):
            # Warned, not refused: agents on a private network over http run today, and would not
            # start after an upgrade. But whoever can watch that network can take the token.
            log.warning("serving plain http on %s: the token crosses the network in clear with every request; "
                        "set tls.cert_file and tls.key_file in %s (docs/security.md)", config.listen, config.source)
        # What the agent loaded to serve (its imports, the app, the engine's client) lives as long as
        # it does. Frozen out of the collector's scans, a full collection during a hold no longer
        # adds its ~13 ms (48,000 objects after the imports) to the node's freeze.
        gc.collect()
        gc.freeze()
        server.run(sockets=[sock])
    finally:
        still_held = service.close()
        sock.close()
        if still_held is None:
            log.info("snapctl-agent %s stopped; nothing held", config.node)
        else:
            log.error("snapctl-agent %s stopped; its engine is still held for run %s", config.node, still_held)
    return int(ExitCode.OK if still_held is None else ExitCode.RUN_FAILED)


def _tls_context(config: AgentConfig) -> ssl.SSLContext:
    """The server side of TLS, as uvicorn made it from its ssl settings, but with Python's default
    ciphers (TLS 1.2 and up) and never a passphrase prompt (check_tls_files refused encrypted keys)."""
    assert config.tls is not None and config.tls.cert_file and config.tls.key_file
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.resolve(config.tls.cert_file), config.resolve(config.tls.key_file), password="")
    if config.tls.client_ca_file:
        context.load_verify_locations(config.resolve(config.tls.client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise BadInputError(f"cannot resolve listen address {host!r}: {os_reason(exc)}") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise BadInputError(
            f"cannot listen on {host}:{port}: {os_reason(exc)}", hint="pick another --port, or stop what uses it"
        ) from exc
    return sock


if __name__ == "__main__":
    sys.exit(main())
