"""``polc bench``: ns per packet for a flow file (kernel; skips without root)."""

from __future__ import annotations

import json
import os

import pytest

from polc.cli import main

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "starwars")
pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def starwars_object(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench") / "starwars.o")
    assert main(["compile", os.path.join(EXAMPLE, "policy.yaml"), "--cluster",
                 os.path.join(EXAMPLE, "cluster.yaml"), "-o", out]) == 0
    return out


def _bench(obj, capsys, *extra):
    code = main(["bench", obj, os.path.join(EXAMPLE, "flows.yaml"), "--cluster",
                 os.path.join(EXAMPLE, "cluster.yaml"), "--repeat", "200", *extra])
    return code, capsys.readouterr()


@pytest.mark.skipif(os.geteuid() != 0, reason="BPF_PROG_TEST_RUN needs root")
def test_bench_json_reports_ns_and_verdicts(starwars_object, capsys):
    code, out = _bench(starwars_object, capsys, "--json")
    assert code == 0
    records = json.loads(out.out)
    assert records and all(r["repeat"] == 200 for r in records)
    for r in records:
        assert r["verdict"] in ("allow", "deny")
        assert r["runs"] and all(x["ns_per_packet"] > 0 for x in r["runs"])
        assert r["ns_per_packet"] == sum(x["ns_per_packet"] for x in r["runs"])
    assert {r["verdict"] for r in records} == {"allow", "deny"}


@pytest.mark.skipif(os.geteuid() != 0, reason="BPF_PROG_TEST_RUN needs root")
def test_bench_text(starwars_object, capsys):
    code, out = _bench(starwars_object, capsys)
    assert code == 0
    assert "ns/packet" in out.out and "200 runs per program" in out.out


def test_bench_rejects_bad_repeat(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "x.o", "f.yaml", "--repeat", "0"])
    assert e.value.code == 2
