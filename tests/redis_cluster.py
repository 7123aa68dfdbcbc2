"""A throwaway Redis Cluster on loopback ports: 3 masters and 3 replicas, for the cluster online store's tests.

Each node is a ``redis-server --cluster-enabled yes`` process of its own (no persistence, its nodes.conf in a
temporary folder); ``redis-cli --cluster create`` assigns the slots and the replicas. ``NODE_TIMEOUT_MS`` is short so
that a failover (a master killed, its replica promoted) takes a few seconds, not the default 15.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

NODE_TIMEOUT_MS = 2000
NODES = 6  # 3 masters, each with 1 replica


class ClusterUnavailable(Exception):
    """redis-server or redis-cli is missing: the tests that need a cluster skip with this reason."""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports free now, whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 < 65536 and port not in ports and _port_free(port + 10000):
            ports.append(port)
    return ports


def _info(port: int, *command: str) -> str:
    """A command's reply from one node, through redis-cli ('' when the node does not answer)."""
    cli = shutil.which("redis-cli") or "redis-cli"
    done = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), *command], capture_output=True, text=True,
                          timeout=10, check=False)
    return done.stdout if done.returncode == 0 else ""


class LocalCluster:
    """Six redis-server processes made into one cluster; ``url`` names every master (any one would do)."""

    def __init__(self, folder: Path) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise ClusterUnavailable("the Redis Cluster tests need redis-server and redis-cli on PATH "
                                     "(apt-get install redis-server)")
        self.server, self.cli, self.folder = server, cli, folder
        self.ports = _free_ports(NODES)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> LocalCluster:
        try:
            for port in self.ports:
                self.start_node(port)
            for port in self.ports:
                self._wait_reachable(port)
            created = subprocess.run(
                [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "1",
                 "--cluster-yes"], capture_output=True, text=True, timeout=60, check=False)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}{created.stderr}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, port: int) -> None:
        """Start (or restart, with its nodes.conf: it rejoins as it was, or as a replica) one node."""
        self.procs[port] = subprocess.Popen(
            [self.server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--save", "", "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no",
             # a replica's first sync starts at once, not after the default 5 s wait for more replicas
             "--repl-diskless-sync-delay", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait_reachable(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while _info(port, "PING").strip() != "PONG":
            if time.monotonic() > deadline or self.procs[port].poll() is not None:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every running node says cluster_state:ok and agrees on three masters with their slots."""
        deadline = time.monotonic() + timeout
        while True:
            live = [p for p, proc in self.procs.items() if proc.poll() is None]
            states = [_info(p, "CLUSTER", "INFO") for p in live]
            if all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s for s in states) and len(
                    self.masters()) == 3:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster on ports {self.ports} did not reach cluster_state:ok")
            time.sleep(0.1)

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Until each master's replica has everything it was sent (replica offset = master offset): a failover
        then loses nothing. (WAIT would only cover the writes of its own connection.)"""
        deadline = time.monotonic() + timeout
        for port in self.masters():
            while True:
                info = dict(line.split(":", 1) for line in _info(port, "INFO", "replication").split()
                            if ":" in line)
                offset = info.get("master_repl_offset")
                replica = dict(part.split("=") for part in info.get("slave0", "").split(",") if "=" in part)
                if replica.get("state") == "online" and replica.get("offset") == offset:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica of the master on port {port} did not catch up: {info}")
                time.sleep(0.05)

    def masters(self) -> list[int]:
        """The ports of the masters serving slots, as a running node sees them."""
        for port, proc in self.procs.items():
            if proc.poll() is None:
                nodes = _info(port, "CLUSTER", "NODES")
                if nodes:
                    return sorted(int(line.split()[1].split(":")[1].split("@")[0]) for line in nodes.splitlines()
                                  if "master" in line.split()[2] and "fail" not in line.split()[2]
                                  and len(line.split()) > 8)
        return []

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    def kill(self, port: int) -> None:
        """kill -9 one node."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
