"""Real L7 servers and clients for the end-to-end tests in network namespaces.

``SERVER`` is a small HTTP/1.1 server (keep-alive, pipelining, ``Content-Length`` bodies)
and DNS responder (UDP and TCP, A records for a fixed table) run with ``python -c`` inside a
pod's namespace.  It writes one line per request it *received* to a log file before it
answers — ``HTTP <request line>`` or ``DNS udp|tcp <name>`` — so a test can prove that a
denied request never reached it.

The clients run in threads of the test process, with their socket made inside the
client pod's namespace (:func:`netns.pod_socket`).  Each returns what the application saw:
a response, a reset (with how long after the last send it came), a timeout.
"""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

from netns import Node, Pod, pod_socket

SERVER = r"""
import os, socket, struct, sys, threading
log_path, http_port, dns_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
records = dict(r.split("=") for r in sys.argv[4:])  # name=IPv4
parent = os.getppid()
lock = threading.Lock()
logf = open(log_path, "a", buffering=1)

def log(line):
    with lock:
        logf.write(line + "\n"); logf.flush()

def http_conn(c):
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            log("HTTP " + lines[0])
            length = 0
            for h in lines[1:]:
                k, _, v = h.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            while len(buf) < length:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            buf = buf[length:]
            body = ("served " + lines[0] + "\n").encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    except OSError:
        pass
    finally:
        c.close()

def dns_answer(q, how):
    qid, flags, qd = struct.unpack("!HHH", q[:6])
    pos, labels = 12, []
    while q[pos]:
        labels.append(q[pos + 1:pos + 1 + q[pos]].decode("ascii", "replace")); pos += 1 + q[pos]
    qtype = struct.unpack("!H", q[pos + 1:pos + 3])[0]
    question = q[12:pos + 5]
    name = ".".join(labels)
    log("DNS %s %s" % (how, name))
    addr = records.get(name.lower())
    if addr and qtype == 1:
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(addr)
        return struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, 1, 0, 0) + question + rr
    return struct.pack("!HHHHHH", qid, 0x8183 | (flags & 0x0100), 1, 0, 0, 0) + question  # NXDOMAIN

def dns_tcp_conn(c):
    try:
        while True:
            hdr = c.recv(2, socket.MSG_WAITALL)
            if len(hdr) < 2:
                return
            n = struct.unpack("!H", hdr)[0]
            q = c.recv(n, socket.MSG_WAITALL)
            a = dns_answer(q, "tcp")
            c.sendall(struct.pack("!H", len(a)) + a)
    except (OSError, IndexError, struct.error):
        pass
    finally:
        c.close()

def serve_tcp(port, handler):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(128)
    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=handler, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()

def serve_udp(port):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", port))
    def loop():
        while True:
            q, a = u.recvfrom(4096)
            try:
                u.sendto(dns_answer(q, "udp"), a)
            except (IndexError, struct.error):
                pass
    threading.Thread(target=loop, daemon=True).start()

if http_port:
    serve_tcp(http_port, http_conn)
if dns_port:
    serve_tcp(dns_port, dns_tcp_conn)
    serve_udp(dns_port)
print("ready", flush=True)
while os.getppid() == parent:  # die with the test
    threading.Event().wait(1.0)
"""


def start_server(node: Node, pod: Pod, log_path: str, http_port: int = 0, dns_port: int = 0,
                 records: dict[str, str] | None = None) -> None:
    """Run ``SERVER`` in ``pod``'s namespace; the node stops it in :meth:`Node.close`."""
    args = [f"{k}={v}" for k, v in (records or {}).items()]
    proc = subprocess.Popen(["ip", "netns", "exec", pod.netns, sys.executable, "-c", SERVER, log_path,
                             str(http_port), str(dns_port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    node.servers.append(proc)
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        raise RuntimeError(f"L7 server in {pod.ref} did not start: {proc.stderr.read1(4096)!r}")


# --- HTTP client ------------------------------------------------------------------------------


def http_head(method: str = "GET", target: str = "/", headers: tuple[str, ...] = (), host: str = "echo") -> bytes:
    """A request head: request line, Host, the given header lines, the empty line."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Outcome:
    """What a client saw: ``responses`` (status lines, in order) and how it ended.

    ``end`` is ``"ok"`` (every expected response came), ``"reset"`` (ECONNRESET/EPIPE),
    ``"timeout"`` (nothing within the timeout: a silent drop) or ``"closed"`` (EOF early).
    ``latency`` is the time from the last send to the end (the reset) in seconds.
    """

    end: str
    responses: list[str]
    latency: float
    detail: str = ""


def _read_response(sock: socket.socket, buf: bytes) -> tuple[str, bytes]:
    """One HTTP response off ``sock`` (``buf``: bytes already read); its status line and the rest."""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            raise EOFError("connection closed before a response")
        buf += d
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(h.split(":", 1)[1]) for h in lines[1:] if h.lower().startswith("content-length:")), 0)
    while len(buf) < length:
        d = sock.recv(65536)
        if not d:
            raise EOFError("connection closed inside a response body")
        buf += d
    return lines[0], buf[length:]


def http_exchange(src: Pod, dst_ip: str, port: int, steps: list[tuple[bytes, int]], pause: float = 0.05,
                  timeout: float = 1.0) -> Outcome:
    """Connect from ``src`` and run ``steps``: each ``(bytes to send, responses to await)``.

    Bytes of one step go out in one ``send`` with ``TCP_NODELAY``: one segment.  A step
    that awaits no response is followed by ``pause`` seconds (so the next step's bytes
    travel in a segment of their own).
    """
    s = pod_socket(src.netns, socket.SOCK_STREAM)
    responses: list[str] = []
    t_send = time.monotonic()
    try:
        s.settimeout(timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s.connect((dst_ip, port))
        except TimeoutError:
            return Outcome("timeout", [], timeout, "connect timed out (SYN dropped)")
        buf = b""
        for data, want in steps:
            t_send = time.monotonic()
            s.sendall(data)
            if not want:
                time.sleep(pause)
            for _ in range(want):
                status, buf = _read_response(s, buf)
                responses.append(status)
        return Outcome("ok", responses, time.monotonic() - t_send)
    except (ConnectionResetError, BrokenPipeError) as e:
        return Outcome("reset", responses, time.monotonic() - t_send, type(e).__name__)
    except TimeoutError:
        return Outcome("timeout", responses, time.monotonic() - t_send, "no response")
    except EOFError as e:
        return Outcome("closed", responses, time.monotonic() - t_send, str(e))
    finally:
        s.close()


# --- DNS client -------------------------------------------------------------------------------

RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}


def dns_query(name: str, qid: int, qtype: int = 1) -> bytes:
    """A standard query (RD set) for ``name`` with an EDNS OPT record, as resolvers send."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1) + qname + struct.pack("!HH", qtype, 1) + opt


@dataclass
class DNSAnswer:
    """A parsed answer: rcode name, the A records, and whether the header echoes the query."""

    rcode: str
    addresses: list[str]
    matches_query: bool
    latency: float


def parse_answer(msg: bytes, query: bytes, latency: float) -> DNSAnswer:
    qid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    qend = query.index(b"\0", 12) + 5
    pos = qend if msg[12:qend] == query[12:qend] else None
    addrs = []
    for _ in range(an if pos is not None else 0):
        if msg[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while msg[pos]:
                pos += 1 + msg[pos]
            pos += 1
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[pos:pos + 4]))
        pos += rdlen
    ok = qid == struct.unpack("!H", query[:2])[0] and bool(flags & 0x8000) and qd == 1 and pos is not None
    return DNSAnswer(RCODES.get(flags & 0xF, str(flags & 0xF)), addrs, ok, latency)


def dns_udp(src: Pod, server_ip: str, name: str, qid: int, timeout: float = 1.0) -> DNSAnswer | str:
    """Ask over UDP; the parsed answer, or ``"timeout"``."""
    q = dns_query(name, qid)
    s = pod_socket(src.netns, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.connect((server_ip, 53))
        t0 = time.monotonic()
        s.send(q)
        msg = s.recv(4096)
        return parse_answer(msg, q, time.monotonic() - t0)
    except TimeoutError:
        return "timeout"
    finally:
        s.close()


def dns_tcp(src: Pod, server_ip: str, name: str, qid: int, timeout: float = 1.0) -> DNSAnswer | Outcome:
    """Ask over TCP (length-prefixed, one segment); the parsed answer, or how it failed."""
    got = dns_tcp_session(src, server_ip, [name], qid, timeout)
    return got[0] if got else Outcome("closed", [], 0.0)


def dns_tcp_session(src: Pod, server_ip: str, names: list[str], qid: int, timeout: float = 1.0,
                    split_prefix: bool = False) -> list[DNSAnswer | Outcome]:
    """Ask for ``names`` one after another on one TCP connection.

    Each query goes out with its length prefix in one segment, or with ``split_prefix`` the
    two prefix bytes first and the message 50 ms later.  One entry per query asked: its
    answer, or (last) how the connection failed.
    """
    s = pod_socket(src.netns, socket.SOCK_STREAM)
    out: list[DNSAnswer | Outcome] = []
    t0 = time.monotonic()
    try:
        s.settimeout(timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((server_ip, 53))
        for i, name in enumerate(names):
            q = dns_query(name, qid + i)
            t0 = time.monotonic()
            if split_prefix:
                s.sendall(struct.pack("!H", len(q)))
                time.sleep(0.05)
                s.sendall(q)
            else:
                s.sendall(struct.pack("!H", len(q)) + q)
            hdr = s.recv(2, socket.MSG_WAITALL)
            if len(hdr) < 2:
                out.append(Outcome("closed", [], time.monotonic() - t0))
                return out
            msg = s.recv(struct.unpack("!H", hdr)[0], socket.MSG_WAITALL)
            out.append(parse_answer(msg, q, time.monotonic() - t0))
        return out
    except (ConnectionResetError, BrokenPipeError) as e:
        out.append(Outcome("reset", [], time.monotonic() - t0, type(e).__name__))
        return out
    except TimeoutError:
        out.append(Outcome("timeout", [], time.monotonic() - t0))
        return out
    finally:
        s.close()


def read_log(path: str) -> list[str]:
    """The lines a server logged so far."""
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        return []


# --- checksum offload -------------------------------------------------------------------------

SIOCETHTOOL = 0x8946
ETHTOOL_SRXCSUM, ETHTOOL_STXCSUM = 0x15, 0x17


def set_checksum_offload(netns: str, ifname: str, on: bool) -> None:
    """Turn rx and tx checksum offload of ``ifname`` in ``netns`` on or off (``ethtool -K rx/tx``).

    Off on both ends of a veth, every checksum is computed and verified in software: a
    reset or answer built with a wrong checksum is then dropped by the receiver instead of
    being trusted as ``CHECKSUM_PARTIAL``/``CHECKSUM_UNNECESSARY``.
    """
    import ctypes
    import fcntl

    from polc.runtime.attach import in_netns

    with in_netns(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for cmd in (ETHTOOL_SRXCSUM, ETHTOOL_STXCSUM):
            value = (ctypes.c_uint32 * 2)(cmd, int(on))  # struct ethtool_value {cmd, data}
            ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value))
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    finally:
        s.close()
