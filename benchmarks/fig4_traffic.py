"""Figure 4: real traffic through veths between namespaces, polc against iptables and nftables.

    sudo python3 benchmarks/fig4_traffic.py [--sizes 100,1000,10000] [--seconds 3] [--runs 3] [--json F]

Topology (``tests/netns.py``): a node namespace routes between two pod namespaces, ``bench/sender``
(198.18.4.10) and ``bench/receiver`` (198.18.4.20), each behind a veth whose host side stays in
the node.  A small C sender (compiled with gcc into a temp dir at start) floods UDP datagrams
(18-byte payload, 60-byte frames) with ``sendmmsg`` from one socket to 198.18.4.20:5201 for a fixed
time; a C sink drains them with ``recvmmsg``.  The sender is pinned to CPU 0 and the sink to CPU 1.
Everything between the sender's ``sendmmsg`` and the receiver's socket queue (both veths, the
node's forwarding and the filter) runs in softirq on the sender's CPU, so the rate is set by the
per-packet cost of that path.

Counted at the receiver: the delta of ``Udp: InDatagrams + RcvbufErrors + NoPorts`` in the
receiver namespace's ``/proc/net/snmp``, i.e. every datagram that got past the filter and reached
UDP, whether or not the sink kept up.  CPU: busy time of CPUs 0 and 1 (``/proc/stat``) over the
run divided by the packets counted (the machine may be shared: other load shows up here).

Rule sets, N = 100, 1,000, 10,000; the flood's packet matches only the last rule:

* ``polc``: one CiliumNetworkPolicy selecting the receiver, N-1 ingress items
  ``fromCIDR: [198.19.x.y/32]`` with one UDP port each, then ``fromEndpoints: app=sender`` on
  5201/UDP.  Compiled with the real CLI against a two-pod inventory, ``polc load --node``,
  ``polc attach`` to the receiver's host-side veth (tcx egress = packets entering the receiver).
* ``iptables``: the same N rules as a linear ``FORWARD`` chain in the node namespace
  (``-s 198.19.x.y/32 -d 198.18.4.20/32 -p udp --dport P -j ACCEPT`` ..., policy DROP), once with
  ``iptables-legacy`` (x_tables) and once with ``iptables-nft`` (the same rules as nf_tables rules).
* ``nftables``: one rule ``ip daddr 198.18.4.20 ip saddr . udp dport @allowed accept`` with a
  hash set of N ``addr . port`` elements, chain policy drop, in the node's forward hook.
* ``none``: no filter at all.

Each point gets fresh namespaces (an x_tables table, once created in a namespace, stays on its
hooks), 3 runs; the table shows median [min-max].  Everything is removed in ``finally``:
``polc unload``, the namespaces (and with them every iptables/nft rule, which live only there).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml
from common import ROOT, Target, machine, median_spread, save_json, table

sys.path.insert(0, os.path.join(ROOT, "tests"))
from netns import Node, run

SENDER_IP, RECEIVER_IP, PORT = "198.18.4.10", "198.18.4.20", 5201
PODS = {"bench/sender": SENDER_IP, "bench/receiver": RECEIVER_IP}
NODE_NAME, NODE_IP = "node-1", "198.18.0.1"
FILTERS = ("none", "polc", "iptables-legacy", "iptables-nft", "nftables-set")

SENDER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#define BATCH 64
/* sender IP PORT SECONDS CPU: flood one UDP flow, print the datagrams the kernel took. */
int main(int argc, char **argv) {
    cpu_set_t set; CPU_ZERO(&set); CPU_SET(atoi(argv[4]), &set); sched_setaffinity(0, sizeof set, &set);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 2; }
    char payload[18] = "polc-fig4-traffic";
    struct iovec iov = {payload, sizeof payload};
    struct mmsghdr m[BATCH]; memset(m, 0, sizeof m);
    for (int i = 0; i < BATCH; i++) { m[i].msg_hdr.msg_iov = &iov; m[i].msg_hdr.msg_iovlen = 1; }
    struct timespec t0, t; clock_gettime(CLOCK_MONOTONIC, &t0);
    double limit = atof(argv[3]); unsigned long long sent = 0, errors = 0;
    for (unsigned n = 0;; n++) {
        int r = sendmmsg(s, m, BATCH, 0);
        if (r > 0) sent += r; else errors++;
        if ((n & 15) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >= limit) break;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t);
    printf("%llu %llu %.6f\n", sent, errors, (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
"""

SINK_C = r"""
#define _GNU_SOURCE
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#define BATCH 64
/* sink PORT SECONDS CPU: drain datagrams until SECONDS pass without stopping early. */
int main(int argc, char **argv) {
    cpu_set_t set; CPU_ZERO(&set); CPU_SET(atoi(argv[3]), &set); sched_setaffinity(0, sizeof set, &set);
    int s = socket(AF_INET, SOCK_DGRAM, 0), big = 8 << 20;
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (bind(s, (struct sockaddr *)&a, sizeof a)) { perror("bind"); return 2; }
    struct timeval tv = {0, 200000}; setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    static char buf[BATCH][64]; struct iovec iov[BATCH]; struct mmsghdr m[BATCH];
    memset(m, 0, sizeof m);
    for (int i = 0; i < BATCH; i++) { iov[i].iov_base = buf[i]; iov[i].iov_len = 64;
        m[i].msg_hdr.msg_iov = &iov[i]; m[i].msg_hdr.msg_iovlen = 1; }
    printf("ready\n"); fflush(stdout);
    alarm(atoi(argv[2]));
    unsigned long long got = 0;
    for (;;) { int r = recvmmsg(s, m, BATCH, 0, NULL); if (r > 0) got += r; }
}
"""


def build_tools(tmp: str) -> dict[str, str]:
    """Compile the sender and the sink with gcc into ``tmp``."""
    out = {}
    for name, src in (("sender", SENDER_C), ("sink", SINK_C)):
        path = os.path.join(tmp, f"{name}.c")
        with open(path, "w") as f:
            f.write(src)
        out[name] = os.path.join(tmp, name)
        run("gcc", "-O2", "-o", out[name], path)
    return out


# -- the rules, three ways ----------------------------------------------------------------------


def other_rules(n: int) -> list[tuple[str, int]]:
    """The N-1 (source /32, UDP port) pairs the flood does not match: 198.19.0.1 onwards."""
    return [(f"198.19.{(i + 1) >> 8}.{(i + 1) & 255}", 1024 + i % 4000) for i in range(n - 1)]


def write_polc_inputs(n: int, directory: str) -> tuple[str, str]:
    """cluster.yaml (namespace, two pods, the node) and policy.yaml with ``n`` ingress rules."""
    objs = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_NAME},
             "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}},
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "bench", "labels": {"kubernetes.io/metadata.name": "bench"}}}]
    for ref, ip in PODS.items():
        ns, name = ref.split("/")
        objs.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns,
                                                                      "labels": {"app": name}},
                     "spec": {"nodeName": NODE_NAME, "containers": [{"name": "main"}]},
                     "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
    ingress = [{"fromCIDR": [f"{src}/32"], "toPorts": [{"ports": [{"port": str(port), "protocol": "UDP"}]}]}
               for src, port in other_rules(n)]
    ingress.append({"fromEndpoints": [{"matchLabels": {"app": "sender"}}],
                    "toPorts": [{"ports": [{"port": str(PORT), "protocol": "UDP"}]}]})
    policy = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
              "metadata": {"name": f"fig4-{n}", "namespace": "bench"},
              "spec": {"endpointSelector": {"matchLabels": {"app": "receiver"}}, "ingress": ingress}}
    cluster, pol = os.path.join(directory, "cluster.yaml"), os.path.join(directory, f"policy-{n}.yaml")
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with open(cluster, "w") as f:
        yaml.dump_all(objs, f, Dumper=dumper, sort_keys=False)
    with open(pol, "w") as f:
        yaml.dump(policy, f, Dumper=dumper, sort_keys=False)
    return cluster, pol


def iptables_restore(n: int, out_if: str) -> str:
    """``iptables-restore`` input: a linear FORWARD chain of ``n`` rules, policy DROP."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f"-A FORWARD -o {out_if} -s {src}/32 -d {RECEIVER_IP}/32 -p udp --dport {port} -j ACCEPT"
              for src, port in other_rules(n)]
    lines.append(f"-A FORWARD -o {out_if} -s {SENDER_IP}/32 -d {RECEIVER_IP}/32 -p udp --dport {PORT} -j ACCEPT")
    return "\n".join(lines + ["COMMIT", ""])


def nft_script(n: int) -> str:
    """``nft -f`` input: one rule with a hash set of ``n`` ``saddr . dport`` elements."""
    elems = [f"{src} . {port}" for src, port in other_rules(n)] + [f"{SENDER_IP} . {PORT}"]
    return "\n".join([
        "table ip polcfig4 {",
        "  set allowed {",
        "    type ipv4_addr . inet_service",
        f"    elements = {{ {', '.join(elems)} }}",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        f"    ip daddr {RECEIVER_IP} ip saddr . udp dport @allowed accept",
        "  }",
        "}", ""])


def polc_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "polc.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"polc {' '.join(args[:2])} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc


# -- one measurement ----------------------------------------------------------------------------


def udp_passed(netns: str) -> int:
    """Datagrams that reached UDP in ``netns`` (delivered, queue-full or no socket)."""
    text = run("ip", "netns", "exec", netns, "cat", "/proc/net/snmp").stdout
    head, vals = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")][:2]
    row = dict(zip(head, map(int, vals)))
    return row["InDatagrams"] + row["RcvbufErrors"] + row["NoPorts"]


def cpu_busy(cpus=(0, 1)) -> float:
    """Busy seconds (everything but idle and iowait) of ``cpus`` since boot."""
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name in {f"cpu{c}" for c in cpus}:
                v = list(map(int, vals))
                busy += sum(v) - v[3] - v[4]
    return busy / tick


def flood(node: Node, tools: dict[str, str], seconds: float, port: int = PORT) -> dict:
    """One run: sink up on PORT, sender floods ``port`` for ``seconds``, counted at the receiver."""
    sender, receiver = node.pods["bench/sender"], node.pods["bench/receiver"]
    sink = subprocess.Popen(["ip", "netns", "exec", receiver.netns, tools["sink"], str(PORT),
                             str(int(seconds) + 4), "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if sink.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"sink did not start: {sink.stderr.read()!r}")
        before, busy0 = udp_passed(receiver.netns), cpu_busy()
        out = run("ip", "netns", "exec", sender.netns, tools["sender"], RECEIVER_IP, str(port), str(seconds), "0",
                  timeout=seconds + 30).stdout.split()
        busy1 = cpu_busy()
        time.sleep(0.3)  # let the sink drain its queue
        passed = udp_passed(receiver.netns) - before
    finally:
        if sink.poll() is None:
            sink.kill()  # the sink we started, by its pid
        sink.communicate()
    sent, _errors, elapsed = int(out[0]), int(out[1]), float(out[2])
    return {"pps": passed / elapsed, "sent_pps": sent / elapsed, "passed": passed,
            "cpu_ns": (busy1 - busy0) / passed * 1e9 if passed else None}


def warm_up(node: Node, tools: dict[str, str]) -> None:
    """Resolve neighbours (and create polc's CT entry) before the timed runs."""
    flood(node, tools, 0.3)


# -- one point (fresh namespaces) ---------------------------------------------------------------


def measure_point(kind: str, n: int | None, tools, objects, runs: int, seconds: float) -> dict:
    node = Node.create(PODS, ports=())
    name = None
    try:
        recv_if = node.pods["bench/receiver"].host_if
        if kind == "polc":
            name = f"fig4-{node.tag}"
            polc_cli("load", objects[n], "--name", name, "--node", NODE_NAME)
            polc_cli("attach", name, recv_if, "--netns", node.netns)
        elif kind.startswith("iptables"):
            tool = f"{kind}-restore"
            proc = subprocess.run(["ip", "netns", "exec", node.netns, tool], input=iptables_restore(n, recv_if),
                                  capture_output=True, text=True, timeout=120, check=False)
            if proc.returncode:
                raise RuntimeError(f"{tool}: {proc.stderr.strip()}")
            count = run("ip", "netns", "exec", node.netns, kind, "-S", "FORWARD").stdout.count("-j ACCEPT")
            assert count == n, f"{kind}: {count} rules loaded, wanted {n}"
        elif kind == "nftables-set":
            proc = subprocess.run(["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input=nft_script(n),
                                  capture_output=True, text=True, timeout=120, check=False)
            if proc.returncode:
                raise RuntimeError(f"nft: {proc.stderr.strip()[-500:]}")
        warm_up(node, tools)
        # The filter must really filter: a flood to a port no rule allows gets nothing through.
        leaked = flood(node, tools, 0.3, port=PORT + 1)["passed"]
        if kind != "none" and leaked:
            raise RuntimeError(f"{kind}: {leaked} packets to the unallowed port {PORT + 1} got through")
        samples = [flood(node, tools, seconds) for _ in range(runs)]
        return {"filter": kind, "rules": n, "runs": samples}
    finally:
        if name:
            subprocess.run([sys.executable, "-m", "polc.cli", "unload", name], capture_output=True, timeout=60,
                           cwd=ROOT, check=False)
        node.close()


def fmt_pps(xs: list[float]) -> str:
    m, lo, hi = median_spread(xs)
    return f"{m / 1e3:,.0f} [{lo / 1e3:,.0f}–{hi / 1e3:,.0f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--filters", default=",".join(FILTERS))
    ap.add_argument("--json")
    ap.add_argument("--cache", help="ignored (run_all.py passes it)")
    ap.add_argument("--quick", action="store_true", help="one run of 2 s per point")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("figure 4 needs root (namespaces, veths, bpf, iptables)", file=sys.stderr)
        return 2
    sizes = [int(x) for x in a.sizes.split(",")]
    filters = [f for f in a.filters.split(",") if f]
    runs, seconds = (1, 2.0) if a.quick else (a.runs, a.seconds)
    tmp = tempfile.mkdtemp(prefix="polc-fig4-")
    t0 = time.time()
    results = []
    try:
        tools = build_tools(tmp)
        objects, compile_s = {}, {}
        if "polc" in filters:
            for n in sizes:
                cluster, pol = write_polc_inputs(n, tmp)
                objects[n] = os.path.join(tmp, f"fig4-{n}.o")
                c0 = time.time()
                polc_cli("compile", pol, "--cluster", cluster, "-o", objects[n])
                compile_s[n] = time.time() - c0
        if "none" in filters:
            results.append(measure_point("none", None, tools, objects, runs, seconds))
            print(f"# none: {fmt_pps([r['pps'] for r in results[-1]['runs']])} kpps", file=sys.stderr)
        for n in sizes:
            for kind in filters:
                if kind == "none":
                    continue
                try:
                    results.append(measure_point(kind, n, tools, objects, runs, seconds))
                except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as e:  # keep the other points
                    results.append({"filter": kind, "rules": n, "error": f"{type(e).__name__}: {e}"})
                r = results[-1]
                print(f"# {kind} {n}: " + (fmt_pps([x['pps'] for x in r['runs']]) + " kpps" if "runs" in r
                                          else r["error"]), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(results, sizes, filters, runs, seconds, compile_s, time.time() - t0))
    if a.json:
        save_json(a.json, results)
    return 0


def _pps_of(results, kind, n):
    for r in results:
        if r["filter"] == kind and r["rules"] == n:
            return r
    return None


def report(results, sizes, filters, runs, seconds, compile_s, total) -> str:
    ipt = run("iptables-legacy", "-V").stdout.strip()
    out = ["### Figure 4: UDP packets per second through veths, polc vs iptables vs nftables\n",
           (f"Machine: {machine()}. {ipt}; {run('nft', '-v').stdout.strip()}. "
           f"Median [min–max] of {runs} runs of {seconds:g} s per point, thousands of packets per second "
           "counted at the receiver (one UDP flow, 60-byte frames, sender pinned to CPU 0; every packet "
           "matches only the last of the N rules).\n")]
    base = _pps_of(results, "none", None)
    cols = [f for f in filters if f != "none"]
    rows = []
    for n in sizes:
        row = [f"{n:,}", fmt_pps([x["pps"] for x in base["runs"]]) if base else "—"]
        for kind in cols:
            r = _pps_of(results, kind, n)
            row.append(fmt_pps([x["pps"] for x in r["runs"]]) if r and "runs" in r else
                       f"failed: {r['error']}" if r else "—")
        rows.append(row + [_ratio(results, n)])
    out.append(table(["rules", "none kpps"] + [f"{k} kpps" for k in cols] + ["polc / iptables-legacy"], rows))
    out.append("\nCPU (CPUs 0 and 1 busy time over the run) per packet received, ns, median of the runs:\n")
    crow = []
    for n in sizes:
        row = [f"{n:,}", _cpu(base)]
        row += [_cpu(_pps_of(results, k, n)) for k in cols]
        crow.append(row)
    out.append(table(["rules", "none"] + cols, crow))
    if compile_s:
        out.append("\npolc compile time of the rule sets: " +
                   ", ".join(f"{n:,} rules {s:.1f} s" for n, s in compile_s.items()) + ".")
    out.append("")
    out.append(_target(results, sizes).line())
    out.append(f"\nTotal run time: {total:.0f} s.")
    return "\n".join(out)


def _cpu(r) -> str:
    if not r or "runs" not in r:
        return "—"
    xs = [x["cpu_ns"] for x in r["runs"] if x["cpu_ns"]]
    return f"{median_spread(xs)[0]:.0f}" if xs else "—"


def _ratio(results, n) -> str:
    p, i = _pps_of(results, "polc", n), _pps_of(results, "iptables-legacy", n)
    if not (p and i and "runs" in p and "runs" in i):
        return "—"
    return f"{median_spread([x['pps'] for x in p['runs']])[0] / median_spread([x['pps'] for x in i['runs']])[0]:.1f}x"


def _target(results, sizes) -> Target:
    name = "at 10,000 rules, at least 10x the packet rate of the linear iptables chain"
    if 10000 not in sizes:
        return Target(name, None, "10,000 rules not in this run")
    p, i = _pps_of(results, "polc", 10000), _pps_of(results, "iptables-legacy", 10000)
    if not (p and i and "runs" in p and "runs" in i):
        return Target(name, None, "a point failed")
    pm = median_spread([x["pps"] for x in p["runs"]])[0]
    im = median_spread([x["pps"] for x in i["runs"]])[0]
    detail = f"polc {pm / 1e3:,.0f} kpps vs iptables-legacy {im / 1e3:,.0f} kpps = {pm / im:.1f}x"
    n = _pps_of(results, "iptables-nft", 10000)
    if n and "runs" in n:
        nm = median_spread([x["pps"] for x in n["runs"]])[0]
        detail += f" (iptables-nft {nm / 1e3:,.0f} kpps: {pm / nm:.1f}x)"
    return Target(name, pm >= 10 * im, detail)


if __name__ == "__main__":
    sys.exit(main())
