"""A little Kubernetes node made of network namespaces, for end-to-end tests with real sockets.

One namespace plays the node (it routes, ``ip_forward=1``); each pod gets its own namespace
with ``eth0``, the peer of a veth ``pe-<ns><pod>`` that stays in the node namespace (the
endpoint-facing interface polc attaches to).  Routing is Calico's: the pod's default route
points at 169.254.1.1, an address every host-side veth carries; the node routes each pod
address (/32) to its veth.  Every pod runs one small server process answering TCP (echo)
and UDP (echo) on the given ports.

Probes run in threads of the test process: a thread enters the pod's namespace just long
enough to create its socket (sockets stay in the namespace they were made in).

Everything created is recorded and removed by :meth:`Node.close`, also after failures.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from polc.runtime.attach import in_netns

GATEWAY = "169.254.1.1"
PROBE = b"polc-probe"

SERVER = r"""
import os, selectors, socket, sys
ports = [int(p) for p in sys.argv[1:]]
parent = os.getppid()
sel = selectors.DefaultSelector()
for port in ports:
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port)); t.listen(512); t.setblocking(False)
    sel.register(t, selectors.EVENT_READ, "accept")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", port)); u.setblocking(False)
    sel.register(u, selectors.EVENT_READ, "udp")
print("ready", flush=True)
while os.getppid() == parent:  # die with the test
    for key, _ in sel.select(timeout=1.0):
        s = key.fileobj
        if key.data == "accept":
            try:
                c, _ = s.accept()
            except OSError:
                continue
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ, "conn")
        elif key.data == "udp":
            try:
                d, a = s.recvfrom(4096)
                s.sendto(d, a)
            except OSError:
                pass
        else:
            try:
                d = s.recv(65536)
                if d:
                    s.setblocking(True); s.sendall(d); s.setblocking(False)
            except OSError:
                d = b""
            if not d:
                sel.unregister(s); s.close()
"""


def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with its output."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class Pod:
    """One pod: its namespace, address and the host-side veth facing it."""

    ref: str  # namespace/name
    ip: str
    netns: str
    host_if: str


@dataclass
class Node:
    """The node namespace and its pods; build with :meth:`create`, always :meth:`close`."""

    tag: str
    netns: str
    pods: dict[str, Pod] = field(default_factory=dict)
    servers: list[subprocess.Popen] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, pods: dict[str, str], ports: tuple[int, ...] = (80, 81)) -> Node:
        """A node with one pod per ``{"x/a": "198.18.1.11", ...}`` entry, servers started."""
        tag = uuid.uuid4().hex[:6]
        node = cls(tag=tag, netns=f"polc-e2e-{tag}-node")
        try:
            node._add_netns(node.netns)
            node._sysctl(node.netns, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                         "net.ipv4.conf.default.rp_filter=0")
            for ref, ip in pods.items():
                node._add_pod(ref, ip)
            for pod in node.pods.values():
                node._start_server(pod, ports)
        except BaseException:
            node.close()
            raise
        return node

    def _add_netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    @staticmethod
    def _sysctl(netns: str, *settings: str) -> None:
        run("ip", "netns", "exec", netns, "sysctl", "-qw", *settings)

    def _add_pod(self, ref: str, ip: str) -> None:
        ipaddress.IPv4Address(ip)
        short = ref.replace("/", "").replace("-", "")[:8]
        pod = Pod(ref=ref, ip=ip, netns=f"polc-e2e-{self.tag}-{short}", host_if=f"pe-{short}")
        self._add_netns(pod.netns)
        n, p = self.netns, pod.netns
        run("ip", "-n", n, "link", "add", pod.host_if, "type", "veth", "peer", "name", "eth0", "netns", p)
        run("ip", "-n", n, "addr", "add", f"{GATEWAY}/32", "dev", pod.host_if)
        run("ip", "-n", n, "link", "set", pod.host_if, "up")
        run("ip", "-n", n, "route", "add", f"{ip}/32", "dev", pod.host_if)
        run("ip", "-n", p, "addr", "add", f"{ip}/32", "dev", "eth0")
        run("ip", "-n", p, "link", "set", "eth0", "up")
        run("ip", "-n", p, "route", "add", f"{GATEWAY}/32", "dev", "eth0", "scope", "link")
        run("ip", "-n", p, "route", "add", "default", "via", GATEWAY, "dev", "eth0")
        self.pods[ref] = pod

    def _start_server(self, pod: Pod, ports: tuple[int, ...]) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", pod.netns, sys.executable, "-c", SERVER,
                                 *map(str, ports)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        self.servers.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            raise RuntimeError(f"server in {pod.ref} did not start: {proc.stderr.read1(4096)!r}")

    @property
    def host_ifaces(self) -> list[str]:
        return [p.host_if for p in self.pods.values()]

    def close(self) -> None:
        """Stop the servers and delete every namespace (veths go with them)."""
        for proc in self.servers:
            if proc.poll() is None:
                proc.kill()  # a process we started, by its pid
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for f in (proc.stdout, proc.stderr):
                if f:
                    f.close()
        self.servers.clear()
        for name in reversed(self.namespaces):
            run("ip", "netns", "del", name, check=False)
        self.namespaces.clear()


# --- probes --------------------------------------------------------------------------------


def pod_socket(netns: str, kind: int) -> socket.socket:
    """A socket made inside ``netns``."""
    with in_netns(netns):
        return socket.socket(socket.AF_INET, kind)


def tcp_probe(src: Pod, dst: Pod, port: int, timeout: float) -> bool:
    """Connect and get an echo back: the handshake and the data need both directions."""
    s = pod_socket(src.netns, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((dst.ip, port))
        s.sendall(PROBE)
        got = b""
        while len(got) < len(PROBE):
            chunk = s.recv(64)
            if not chunk:
                break
            got += chunk
        return got == PROBE
    except OSError:
        return False
    finally:
        s.close()


def udp_probe(src: Pod, dst: Pod, port: int, timeout: float) -> bool:
    """Send a datagram and wait for its echo."""
    s = pod_socket(src.netns, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.connect((dst.ip, port))
        s.send(PROBE)
        return s.recv(64) == PROBE
    except OSError:
        return False
    finally:
        s.close()


PROBES = {"TCP": tcp_probe, "UDP": udp_probe}


def probe(src: Pod, dst: Pod, proto: str, port: int, timeout: float = 0.4, tries: int = 2) -> bool:
    """True when the flow got through; a silent drop is retried ``tries - 1`` times."""
    fn = PROBES[proto]
    for _ in range(tries):
        if fn(src, dst, port, timeout):
            return True
    return False


def probe_all(node: Node, flows: list[tuple[str, str, str, int]], workers: int = 48,
              timeout: float = 0.4) -> dict[tuple[str, str, str, int], bool]:
    """Probe many ``(from, to, proto, port)`` flows in parallel threads."""
    def one(flow):
        src, dst, proto, port = flow
        return flow, probe(node.pods[src], node.pods[dst], proto, port, timeout)

    with ThreadPoolExecutor(max_workers=min(workers, max(1, len(flows)))) as pool:
        return dict(pool.map(one, flows))


class Stream:
    """A TCP client that keeps sending small messages and reading their echo, timing each."""

    def __init__(self, src: Pod, dst: Pod, port: int, interval: float = 0.002):
        self.src, self.dst, self.port, self.interval = src, dst, port, interval
        self.sock = pod_socket(src.netns, socket.SOCK_STREAM)
        self.sock.settimeout(2.0)
        self.sock.connect((dst.ip, port))
        self.times: list[float] = []
        self.error: str | None = None
        self._stop = False
        import threading

        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop:
                msg = f"m{n:08d}".encode()
                self.sock.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = self.sock.recv(len(msg) - len(got))
                    if not chunk:
                        raise ConnectionError("closed by peer")
                    got += chunk
                if got != msg:
                    raise ConnectionError(f"echo mismatch: {got!r} != {msg!r}")
                self.times.append(time.monotonic())
                n += 1
                time.sleep(self.interval)
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"

    def max_gap(self, start: float, end: float) -> float:
        """The longest interval between echoes that overlaps ``[start, end]``."""
        ts = self.times
        gaps = [b - a for a, b in zip(ts, ts[1:]) if b >= start and a <= end]
        return max(gaps, default=float("inf"))

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


def free_ns_name_check() -> list[str]:
    """Namespaces our tests made and did not remove (for a final sanity check)."""
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith("polc-e2e-"))
    except FileNotFoundError:
        return []


# --- objects an update must refuse ------------------------------------------------------------


def bad_objects(good: str, directory: str) -> dict[str, str]:
    """Broken variants of the polc object ``good``: truncated, verifier-rejected, not polc.

    The verifier-rejected one reads an uninitialised register (r9) in its first
    instruction, which every kernel refuses (``R9 !read_ok``).
    """
    from elftools.elf.elffile import ELFFile

    data = open(good, "rb").read()
    out = {}
    out["truncated"] = os.path.join(directory, "truncated.o")
    with open(out["truncated"], "wb") as f:
        f.write(data[: len(data) // 3])
    with open(good, "rb") as f:
        sec = ELFFile(f).get_section_by_name("tc")
        offset = sec["sh_offset"]
    patched = bytearray(data)
    patched[offset:offset + 8] = bytes([0x79, 0x90, 0, 0, 0, 0, 0, 0])  # r0 = *(u64 *)(r9 + 0)
    out["verifier"] = os.path.join(directory, "verifier.o")
    with open(out["verifier"], "wb") as f:
        f.write(bytes(patched))
    out["not-elf"] = os.path.join(directory, "not-elf.o")
    with open(out["not-elf"], "w") as f:
        f.write("this is not an ELF object\n")
    return out
