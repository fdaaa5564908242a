"""Sockets made in another namespace without a helper process (csrc/nssock.c).

This file owns the checks that a socket the engine makes through its
short-lived clone() child belongs to the target network namespace (its
SIOCGSKNS namespace is that one, and it can bind an address that exists
only there), with and without joining a user namespace first, that the
caller's own namespaces never change, and that a spliced forward given the
namespace fds (Engine.set_ns_fds) relays a connection with no helper
process, through more than one refill of its socket pool. The target is a
namespace this test makes (`unshare`), gone with its holder process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import NamedTuple

import pytest

from slirpy.config import NetworkModel
from slirpy.engine import (
    PROTO_TCP,
    Engine,
    EngineError,
    ns_loopback_socket_at,
    ns_tcp_sockets,
)
from tests.helpers.wait import wait_until

SIOCGSKNS = 0x894C  # <linux/sockios.h>: a socket's network namespace as an fd
ONLY_THERE = "192.0.2.77"  # an address on the target namespace's loopback only


class Target(NamedTuple):
    netfd: int
    userfd: int | None
    ino: int  # the target network namespace's inode
    holder: int  # the PID of the process that keeps it


def _netns_ino(path: str) -> int:
    return os.stat(path).st_ino


@contextlib.contextmanager
def _namespace(with_userns: bool) -> Iterator[Target]:
    flags = ["-Urn"] if with_userns else ["--net"]
    setup = (f"ip link set lo up && ip addr add {ONLY_THERE}/32 dev lo && "
             "echo ok && exec sleep 120")
    holder = subprocess.Popen(["unshare", *flags, "sh", "-c", setup], stdout=subprocess.PIPE)
    fds: list[int] = []
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ok\n"
        netfd = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(netfd)
        userfd = None
        if with_userns:
            userfd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            fds.append(userfd)
        yield Target(netfd, userfd, os.fstat(netfd).st_ino, holder.pid)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        holder.kill()
        holder.wait()


@pytest.fixture(params=[False, True], ids=["netns", "userns+netns"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    with _namespace(request.param) as t:
        yield t


def _sock_netns_ino(fd: int) -> int:
    nsfd = fcntl.ioctl(fd, SIOCGSKNS)
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


def _own_namespaces() -> tuple[str, str]:
    return os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/user")


def test_sockets_are_made_in_the_target_namespace(target: Target) -> None:
    own = _own_namespaces()
    assert target.ino != _netns_ino("/proc/self/ns/net")
    for family in (4, 6):
        fds = ns_tcp_sockets(target.netfd, target.userfd, family, 8)
        try:
            assert len(fds) == 8
            for fd in fds:
                assert _sock_netns_ino(fd) == target.ino
                assert os.get_blocking(fd) is False
                assert not os.get_inheritable(fd)
        finally:
            for fd in fds:
                os.close(fd)
    assert _own_namespaces() == own  # only the short-lived child joined


def test_a_socket_binds_an_address_that_exists_only_there(target: Target) -> None:
    with socket.socket() as mine, pytest.raises(OSError) as e:
        mine.bind((ONLY_THERE, 0))
    assert e.value.errno == errno.EADDRNOTAVAIL
    (fd,) = ns_tcp_sockets(target.netfd, target.userfd, 4, 1)
    with socket.socket(fileno=fd) as theirs:
        theirs.bind((ONLY_THERE, 0))
        assert theirs.getsockname()[0] == ONLY_THERE


def test_loopback_listener_listens_in_the_target_namespace(target: Target) -> None:
    fd = ns_loopback_socket_at(target.netfd, target.userfd, PROTO_TCP, 4, 0)
    with socket.socket(fileno=fd) as lst:
        assert _sock_netns_ino(lst.fileno()) == target.ino
        assert lst.getsockname()[0] == "127.0.0.1"


def test_bad_namespace_fd_is_refused_and_stays_the_callers() -> None:
    r, w = os.pipe()
    e = Engine(NetworkModel())
    try:
        with pytest.raises(EngineError) as err:
            e.set_ns_fds(r, None)
        assert err.value.errno == errno.EINVAL  # setns() on a pipe
        os.fstat(r)  # not closed by the engine
    finally:
        e.close()
        os.close(r)
        os.close(w)


def _children() -> list[int]:
    out: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def test_spliced_forward_without_helper_process(target: Target) -> None:
    # "The guest": a server in the target namespace, on its own address.
    (sfd,) = ns_tcp_sockets(target.netfd, target.userfd, 4, 1)
    srv = socket.socket(fileno=sfd)
    srv.setblocking(True)
    srv.bind((ONLY_THERE, 0))
    srv.listen(32)
    gport = srv.getsockname()[1]
    peers: list[str] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                c, peer = srv.accept()
                with c:
                    peers.append(peer[0])
                    c.sendall(c.recv(100).upper())

    threading.Thread(target=serve, daemon=True).start()
    e = Engine(NetworkModel())
    lst = socket.socket()
    try:
        e.set_ns_fds(os.dup(target.netfd),
                     None if target.userfd is None else os.dup(target.userfd))
        lst.bind(("127.0.0.1", 0))
        lst.listen(32)
        hport = lst.getsockname()[1]
        e.add_listener(lst.detach(), PROTO_TCP, IPv4Address(ONLY_THERE), gport, 1,
                       mode="splice")
        n = 20  # more than two refills of the engine's pool (8 a batch)
        for i in range(n):
            got = bytearray()
            cl = socket.create_connection(("127.0.0.1", hport), timeout=5)
            cl.sendall(b"hello %d" % i)

            def read(cl: socket.socket = cl, got: bytearray = got) -> None:
                while d := cl.recv(100):
                    got.extend(d)

            t = threading.Thread(target=read, daemon=True)
            t.start()
            deadline = time.monotonic() + 10
            while t.is_alive() and time.monotonic() < deadline:
                e.poll(time.monotonic_ns(), 64)
                time.sleep(0.001)
            cl.close()
            assert bytes(got) == b"HELLO %d" % i
        assert [p for p in _children() if p != target.holder] == []
        assert wait_until(lambda: len(peers) == n, 5)
        assert set(peers) == {ONLY_THERE}  # made in the namespace: its own address
        assert e.counters()["splice_opened"] == n
    finally:
        e.close()
        with contextlib.suppress(OSError):
            srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() of serve()
        srv.close()
        lst.close()
