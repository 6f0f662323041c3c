"""``socket:`` in the Tarantool and etcd engine blocks: a socket is the one address the engine
reaches, so whatever could make it reach the default TCP address instead is refused when the
block is read, in one line that says what to change."""

from __future__ import annotations

import pytest

from node_agent.engines.base import validate_engine_settings
from snapctl.errors import BadInputError

TARANTOOL = {"type": "tarantool", "work_dir": "data"}
ETCD = {"type": "etcd", "backup_dir": "backups"}


def refusal(settings: dict) -> str:
    with pytest.raises(BadInputError) as refused:
        validate_engine_settings(settings)
    assert "\n" not in refused.value.message
    return refused.value.message


# A templated inventory whose socket variable came out empty would otherwise back up whatever
# listens on 127.0.0.1:3301 / http://127.0.0.1:2379 instead of the instance meant.
@pytest.mark.parametrize("settings", [{**TARANTOOL, "socket": ""}, {**TARANTOOL, "socket": "  "},
                                      {**ETCD, "socket": ""}], ids=["tarantool", "tarantool-blank", "etcd"])
def test_an_empty_socket_is_refused_not_taken_for_the_default_tcp_address(settings):
    message = refusal(settings)

    assert "socket is empty: give the socket's path, or leave socket out" in message


@pytest.mark.parametrize("address", [{"host": "127.0.0.1"}, {"port": 3301}, {"host": "127.0.0.1", "port": 3301}])
def test_tarantool_host_or_port_written_out_with_their_defaults_beside_a_socket_is_refused(address):
    message = refusal({**TARANTOOL, "socket": "tt.sock", **address})

    assert "give socket or host/port, not both" in message
    assert f"remove {' and '.join(sorted(address))} or socket" in message


def test_etcd_endpoint_written_out_with_its_default_beside_a_socket_is_refused():
    message = refusal({**ETCD, "socket": "etcd:2379", "endpoint": "http://127.0.0.1:2379"})

    assert "give socket or endpoint, not both" in message and "remove endpoint or socket" in message


@pytest.mark.parametrize("settings", [{**TARANTOOL, "socket": "tt.sock"}, {**ETCD, "socket": "etcd:2379"},
                                      {**TARANTOOL, "host": "127.0.0.1", "port": 3301},
                                      {**ETCD, "endpoint": "http://127.0.0.1:2379"}])
def test_a_socket_alone_or_an_address_alone_is_accepted(settings):
    validate_engine_settings(settings)
