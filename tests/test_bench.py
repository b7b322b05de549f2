"""`tunoffload bench` end to end, short: it builds its namespaces, forwards real traffic,
reports it, and leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from _netns import can_use_netns

pytestmark = pytest.mark.skipif(can_use_netns() is not None, reason=str(can_use_netns()))


def _netns_of(pid: int) -> set[str]:
    """The namespaces the benchmark process `pid` made (tunoff-bench-{a,b}-<pid>-<tag>);
    other benchmarks and tests may create and delete theirs meanwhile on a shared machine."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    return {n for n in names if n.startswith((f"tunoff-bench-a-{pid}-", f"tunoff-bench-b-{pid}-"))}


def _bench_json(*args: str, timeout: float) -> tuple[list[dict], int]:
    """Runs ``python -m tunoffload bench --json *args`` (killed after ``timeout`` seconds:
    a hang guard); asserts it succeeded and returns its rows and its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunoffload", "bench", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    return json.loads(stdout), proc.pid


def test_bench_json_forwards_super_packets_and_cleans_up():
    out, pid = _bench_json(
        "--duration",
        "1",
        "--streams",
        "1",
        "--modes",
        "split+coalesce",
        "plain",
        "--no-iperf",
        timeout=120,
    )
    rows = {(x["mode"], x["traffic"]): x for x in out}
    split, plain = rows[("split+coalesce", "TCP")], rows[("plain", "TCP")]
    udp = rows[("split+coalesce", "UDP")]
    for row in (split, plain, udp):
        assert row["error"] == ""
        assert row["gbit_s"] > 0
        assert row["generator"] == "built-in"
    # With offload the forwarder really read super-packets and wrote coalesced ones;
    # without it, one packet per system call.
    assert split["pkts_per_read_ab"] > 4 and split["pkts_per_write_ab"] > 4
    assert plain["pkts_per_read_ab"] == 1.0
    assert udp["pkts_per_read_ab"] > 4  # UDP_SEGMENT traffic arrives as USO super-packets
    assert _netns_of(pid) == set(), "the benchmark left its namespaces behind"


def test_bench_table_and_help():
    r = subprocess.run(
        [sys.executable, "-m", "tunoffload", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "--duration" in r.stdout and "--json" in r.stdout


def test_bench_tunnel_rows_cross_two_processes_and_clean_up():
    """The tunnel rows: one tunnel process per namespace, joined by veth; with TunDevice
    offload + UdpSocket the batches stay whole on both sides, and the vpn row carries the
    same traffic encrypted."""
    modes = ["tunnel-plain", "tunnel", "tunnel+vpn"]
    out, pid = _bench_json(
        *("--duration", "1", "--streams", "1", "--no-udp", "--no-iperf", "--modes", *modes),
        timeout=180,
    )
    rows = {x["mode"]: x for x in out}
    assert sorted(rows) == sorted(modes)
    for row in rows.values():
        assert row["error"] == "" and row["gbit_s"] > 0 and row["traffic"] == "TCP"
        a, b = row["extra"]["peer_a"], row["extra"]["peer_b"]
        # what A read from its TUN device crossed the underlay and went into B's
        assert a["tun_packets"] > 0 and b["udp_datagrams"] > 0
    plain = rows["tunnel-plain"]
    assert plain["pkts_per_read_ab"] == 1.0 and plain["pkts_per_write_ab"] == 1.0
    for mode in modes[1:]:
        # super-packets split on A's side, datagrams coalesced again on B's
        assert rows[mode]["pkts_per_read_ab"] > 4 and rows[mode]["pkts_per_write_ab"] > 4
    if "tunnel+vpn" in rows:
        b = rows["tunnel+vpn"]["extra"]["peer_b"]
        assert b["dropped_forged"] == b["dropped_replayed"] == b["dropped_malformed"] == 0
    assert _netns_of(pid) == set(), "the benchmark left its namespaces behind"


@pytest.mark.skipif(shutil.which("wg") is None, reason="the wireguard row needs wg")
def test_bench_wireguard_row_runs_our_daemons_and_cleans_up():
    """The wireguard row: two `python -m tunoffload wireguard` daemons, configured with
    wg in the benchmark's namespaces, carry TCP and UDP; the CPU is theirs."""
    out, pid = _bench_json(
        *("--duration", "1", "--streams", "1", "--no-iperf", "--modes", "wireguard"),
        timeout=180,
    )
    rows = {x["traffic"]: x for x in out}
    assert sorted(rows) == ["TCP", "UDP"] and {x["mode"] for x in out} == {"wireguard"}
    for row in rows.values():
        assert row["error"] == "" and row["gbit_s"] > 0 and row["generator"] == "built-in"
        assert row["cpu_s"] > 0 and row["extra"]["cpu_pct_a"] > 0 and row["extra"]["cpu_pct_b"] > 0
    assert _netns_of(pid) == set(), "the benchmark left its namespaces behind"


def test_bench_wireguard_row_without_wg_is_left_out_saying_why(monkeypatch, capsys):
    from tunoffload.bench import cli

    def missing(tun: bool = True, tools: tuple[str, ...] = ()) -> str | None:
        return "the `wg` command is missing" if "wg" in tools else None

    monkeypatch.setattr(cli, "missing_requirements", missing)
    assert cli.main(["--modes", "wireguard"]) == 2  # nothing else asked for: nothing run
    err = capsys.readouterr().err
    assert "the wireguard row is left out: the `wg` command is missing" in err


def test_bench_compares_wireguard_with_the_tunnel():
    from tunoffload.bench.cli import _comparisons
    from tunoffload.bench.report import Result, format_table

    rows = [
        Result("tunnel", "TCP", 1, gbit_s=4.0, pps=3e5, cpu_s=1.0, pkts_per_read_ab=45.0),
        Result("wireguard", "TCP", 1, gbit_s=3.0, cpu_s=1.5),
    ]
    assert _comparisons(rows, [1]) == [
        ["wireguard vs tunnel, TCP x1: 0.75x (our WireGuard daemons, configured with wg)"]
    ]
    wg_line = format_table(rows).splitlines()[-1].split()
    # the daemons' CPU time is shown; their packets are not counted
    assert wg_line[:5] == ["wireguard", "TCP", "1", "3.00", "-"] and wg_line[5] == "1.50"
    assert wg_line[7:] == ["-"] * 4


def test_tunnel_peers_that_fail_to_start_leave_no_process_behind(tmp_path, monkeypatch):
    """When the second tunnel process cannot start (its TUN name is taken by a veth
    link), the first, already running, is stopped too: TunnelPeers raises and leaves no
    process and no key file behind."""
    import tempfile

    from tunoffload.bench.peers import TUNNEL_DEV, UNDERLAY_A, UNDERLAY_B, TunnelPeers
    from tunoffload.bench.topology import Topology

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the key file goes
    with Topology() as topo:
        topo.veth(UNDERLAY_A, UNDERLAY_B)
        topo.b.ip("link", "add", TUNNEL_DEV, "type", "veth", "peer", "tunl0p")
        with pytest.raises(RuntimeError, match="tunnel process did not start"):
            TunnelPeers(topo, "vpn")
        # the processes run as `ip netns exec <ns> python -m tunoffload.bench.tunnel ...`
        out = subprocess.run(["ip", "netns", "pids", topo.a.name], capture_output=True, text=True)
        assert out.stdout.split() == [], "peer A was left running"
        assert list(tmp_path.glob("tunoff-key-*")) == [], "the key file was left behind"


def test_topology_that_fails_half_way_deletes_the_namespace_it_made(monkeypatch):
    """When making namespace B fails, namespace A (made already) is deleted too."""
    from tunoffload import testing
    from tunoffload.bench.topology import Topology

    real_ip, made = testing.ip, []

    def ip(*args: str, ns: str | None = None, check: bool = True):
        if args[:2] == ("netns", "add"):
            if made:
                raise subprocess.CalledProcessError(1, ["ip", *args])
            made.append(args[2])
        return real_ip(*args, ns=ns, check=check)

    monkeypatch.setattr(testing, "ip", ip)
    with pytest.raises(subprocess.CalledProcessError):
        Topology()
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert len(made) == 1 and made[0] not in out, (made, out)
