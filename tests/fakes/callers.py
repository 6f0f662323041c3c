"""Which processes sent a request, as the server sees it while the client waits for the answer:
the kernel lists each TCP socket with its two addresses and its inode (``/proc/net/tcp``), and
each process's descriptors name the inodes of the sockets it holds (``/proc/PID/fd``). A test
asks this where it cares which process made a call (snapctl itself, or its provider worker) and
the call is an SDK's, whose own code it should not have to change to say so.

Linux only, IPv4 loopback (the fakes and moto listen on 127.0.0.1); the server's process must be
able to read the client's ``/proc/PID/fd``: the same user, or root."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path


def _hex_address(address: tuple[str, int]) -> str:
    host, port = address
    # /proc/net/tcp prints the address as the 32-bit number in memory, in host byte order.
    return f"{struct.unpack('=I', socket.inet_aton(host))[0]:08X}:{port:04X}"


def _socket_inode(client: tuple[str, int], server: tuple[str, int]) -> str | None:
    local, remote = _hex_address(client), _hex_address(server)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return fields[9]
    return None


def _lineage(pid: int) -> tuple[int, ...]:
    line = [pid]
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # it ended meanwhile: the line stops where it is known
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        line.append(pid)
    return tuple(line)


def senders(client: tuple[str, int], server: tuple[str, int]) -> list[tuple[int, ...]]:
    """The processes that hold the client's end of the connection from ``client`` to ``server``,
    each as its line of descent (its pid, its parent's, ... up to 1): a process started by a
    test's subprocess has the test's pid third. Empty when the connection is already gone."""
    inode = _socket_inode(client, server)
    if inode is None or inode == "0":
        return []
    wanted = f"socket:[{inode}]"
    holders = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd.path) == wanted for fd in os.scandir(f"/proc/{entry.name}/fd")):
                holders.append(int(entry.name))
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return sorted(_lineage(pid) for pid in holders)
