"""The ``tunoffload`` command line: ``info``, ``bench`` dispatch, ``--help``, ``--version``.

Most tests run ``python -m tunoffload`` in a subprocess, as a user would, and check the
output against facts the test finds out by itself (``os.uname``, ``/proc/self/status``,
the kernel version).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CAP_NET_ADMIN = 12

INFO_KEYS = {
    "tunoffload_version",
    "native_module",
    "native_error",
    "python",
    "python_implementation",
    "system",
    "machine",
    "kernel",
    "kernel_version",
    "tun_present",
    "cap_net_admin",
    "vnet_hdr",
    "offload_tso",
    "offload_uso",
    "offload_probe",
    "offload_switches",
    "offload_switches_probe",
    "tso_flags",
    "uso_flags",
}


def run_cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "tunoffload", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def info_json(*extra: str, prefix: tuple[str, ...] = ()) -> dict:
    proc = run_cli("info", "--json", *extra, prefix=prefix)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data, dict)
    return data


def own_cap_net_admin() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << CAP_NET_ADMIN))
    raise AssertionError("no CapEff line in /proc/self/status")


def own_kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()))


@pytest.fixture(scope="module")
def info() -> dict:
    return info_json()


def test_info_json_keys_and_types(info: dict) -> None:
    assert set(info) >= INFO_KEYS
    assert isinstance(info["native_module"], bool)
    assert isinstance(info["tun_present"], bool)
    assert info["cap_net_admin"] in (True, False)
    for key in ("vnet_hdr", "offload_tso", "offload_uso"):
        assert info[key] in (True, False, None), key
    assert info["tso_flags"] == 0x1 | 0x2 | 0x4
    assert info["uso_flags"] == 0x20 | 0x40


def test_info_json_facts(info: dict) -> None:
    uname = os.uname()
    assert info["kernel"] == uname.release
    assert info["system"] == uname.sysname
    assert info["machine"] == uname.machine
    assert tuple(info["kernel_version"][:2]) == own_kernel_version()
    assert info["tun_present"] == os.path.exists("/dev/net/tun")
    assert info["cap_net_admin"] == own_cap_net_admin()
    assert info["python"].startswith(".".join(map(str, sys.version_info[:3])))


def test_info_json_package(info: dict) -> None:
    native_ok = True
    try:
        import tunoffload._native  # noqa: F401
    except ImportError:
        native_ok = False
    assert info["native_module"] is native_ok
    assert (info["native_error"] is None) is native_ok
    import tunoffload

    version = getattr(tunoffload, "__version__", None)
    if version is not None:
        assert info["tunoffload_version"] == version
    assert info["tunoffload_version"], "no version found"


def test_info_offload_probe_consistency(info: dict) -> None:
    status = info["offload_probe"]
    if status == "ok":
        assert info["offload_tso"] is not None and info["offload_uso"] is not None
    else:
        assert status.startswith("unknown (")
        assert info["offload_tso"] is None and info["offload_uso"] is None
    if not info["tun_present"]:
        assert status == "unknown (/dev/net/tun is missing)"
    elif not info["cap_net_admin"]:
        assert status == "unknown (needs CAP_NET_ADMIN)"


@pytest.mark.skipif(os.geteuid() != 0, reason="the offload probe needs root")
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")
def test_info_offload_as_root(info: dict) -> None:
    # Every kernel this package supports accepts TSO; USO arrived in Linux 6.2.
    assert info["offload_probe"] == "ok"
    assert info["vnet_hdr"] is True
    assert info["offload_tso"] is True
    assert info["offload_uso"] is (own_kernel_version() >= (6, 2))


@pytest.mark.skipif(os.geteuid() != 0, reason="the offload probe needs root")
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")
def test_info_offload_switches_as_root(info: dict) -> None:
    """The switches of a TunDevice(offload=True) made for the probe: TCP on, UDP where
    the kernel takes USO; as a device made here has them."""
    assert info["offload_switches_probe"] == "ok"
    uso = own_kernel_version() >= (6, 2)
    want = {"tcp_segmentation": True, "udp_segmentation": uso}
    want.update(tcp_coalescing=True, udp_coalescing=uso)
    assert info["offload_switches"] == want
    import tunoffload as t
    from tunoffload.testing import Netns

    with Netns("tunoff-info") as ns, ns.entered(), t.TunDevice("probe0", offload=True) as dev:
        assert {k: dev.stats[k] for k in want} == want
    table = run_cli("info")
    assert table.returncode == 0, table.stderr
    on = {True: "on", False: "off"}
    assert " ".join(f"{k}={on[v]}" for k, v in want.items()) in table.stdout


def test_info_switches_unknown_without_the_probe() -> None:
    data = info_json("--no-probe")
    assert data["offload_switches"] is None
    assert data["offload_switches_probe"].startswith("unknown (")


def test_probe_refuses_results_from_the_callers_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A probe child that reports our own network namespace must not be believed."""
    from tunoffload import _sysinfo

    child = {"vnet_hdr": True, "tso": True, "uso": True, "stage": "done", "errno": None}
    child["error"] = None
    child["netns"] = "net:[1234]"

    def fake_run(argv, **kwargs):  # type: ignore[no-untyped-def]
        assert "--probe-child" in argv
        return subprocess.CompletedProcess(argv, 0, json.dumps(child) + "\n", "")

    monkeypatch.setattr(_sysinfo, "tun_present", lambda: True)
    monkeypatch.setattr(_sysinfo, "has_capability", lambda cap, mask=None: True)
    monkeypatch.setattr(_sysinfo.subprocess, "run", fake_run)
    monkeypatch.setattr(_sysinfo, "_netns_id", lambda: "net:[1234]")
    same = _sysinfo.probe_offload()
    assert same["status"] == "unknown (the probe did not run in a separate network namespace)"
    assert same["tso"] is None and same["uso"] is None
    monkeypatch.setattr(_sysinfo, "_netns_id", lambda: "net:[999]")
    other = _sysinfo.probe_offload()
    assert other == {"vnet_hdr": True, "tso": True, "uso": True, "status": "ok"}


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping capabilities with setpriv needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_info_without_cap_net_admin() -> None:
    # Root without CAP_NET_ADMIN and CAP_SYS_ADMIN: the probe must say why it cannot run.
    drop = ("setpriv", "--inh-caps=-all", "--bounding-set=-net_admin,-sys_admin")
    data = info_json(prefix=drop)
    assert data["cap_net_admin"] is False
    assert data["vnet_hdr"] is None
    assert data["offload_tso"] is None
    assert data["offload_uso"] is None
    if data["tun_present"]:
        assert data["offload_probe"] == "unknown (needs CAP_NET_ADMIN)"
    table = run_cli("info", prefix=drop)
    assert table.returncode == 0, table.stderr
    assert "unknown (needs CAP_NET_ADMIN)" in table.stdout or not data["tun_present"]


def test_info_no_probe(info: dict) -> None:
    data = info_json("--no-probe")
    assert data["offload_probe"] == "unknown (not probed)"
    assert data["offload_tso"] is None
    assert data["kernel"] == info["kernel"]


def test_info_table(info: dict) -> None:
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").splitlines()
    rows = dict(line.split("  ", 1) for line in lines)
    rows = {label.strip(): value.strip() for label, value in rows.items()}
    assert os.uname().release in rows["kernel"]
    assert rows["/dev/net/tun"] == ("present" if os.path.exists("/dev/net/tun") else "missing")
    assert rows["CAP_NET_ADMIN"] == ("yes" if own_cap_net_admin() else "no")
    assert rows["tunoffload version"] == info["tunoffload_version"]
    assert rows["native module"].startswith("loaded" if info["native_module"] else "not loaded")
    tso = next(value for label, value in rows.items() if label.startswith("TSO offload"))
    if info["offload_tso"] is None:
        assert tso.startswith("unknown")
    else:
        assert tso == ("accepted" if info["offload_tso"] else "rejected")
    # Aligned: every value starts in the same column.
    columns = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in lines}
    assert len(columns) == 1, proc.stdout


def test_help() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: tunoffload")
    assert "info" in proc.stdout and "bench" in proc.stdout and "--version" in proc.stdout
    info_help = run_cli("info", "--help")
    assert info_help.returncode == 0
    assert "--json" in info_help.stdout and "network namespace" in info_help.stdout


def test_version(info: dict) -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"tunoffload {info['tunoffload_version']}"
    # `wireguard-go --version` answers before it looks for an interface name; so does ours
    # (the benchmarks and wg-quick's users read it), and it creates nothing
    wg = run_cli("wireguard", "--version")
    assert wg.returncode == 0, wg.stderr
    assert wg.stdout.strip() == f"tunoffload {info['tunoffload_version']}"


def test_unknown_subcommand() -> None:
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    assert proc.stdout == ""


def test_unknown_option() -> None:
    proc = run_cli("info", "--frobnicate")
    assert proc.returncode == 2
    assert "--frobnicate" in proc.stderr


def test_no_command() -> None:
    proc = run_cli()
    assert proc.returncode == 2
    assert "usage: tunoffload" in proc.stderr


def test_bench_dispatch() -> None:
    if importlib.util.find_spec("tunoffload.bench") is None:
        proc = run_cli("bench")
        assert proc.returncode == 2
        assert "not available" in proc.stderr
    else:
        proc = run_cli("bench", "--help")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage: tunoffload bench")


def test_console_script(info: dict) -> None:
    script = Path(sys.executable).parent / "tunoffload"
    if not script.exists():
        pytest.skip("the tunoffload console script is not installed beside this Python")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"tunoffload {info['tunoffload_version']}"


def test_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    from tunoffload.__main__ import main

    assert main(["info", "--json", "--no-probe"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kernel"] == os.uname().release
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


# ---------------------------------------------------------------------------------------
# _sysinfo helpers


def test_capabilities_from_status() -> None:
    from tunoffload import _sysinfo

    status = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n"
    mask = _sysinfo.capabilities_from_status(status)
    assert mask == 0x1000
    assert _sysinfo.has_capability(CAP_NET_ADMIN, mask) is True
    assert _sysinfo.has_capability(CAP_NET_ADMIN, 0x000001FFFFFFEFFF) is False
    assert _sysinfo.has_capability(CAP_NET_ADMIN, 0x000001FFFFFFFFFF) is True
    assert _sysinfo.capabilities_from_status("Name:\tx\n") is None
    assert _sysinfo.capabilities_from_status("CapEff:\tzz\n") is None
    with open("/proc/self/status") as f:
        assert (
            _sysinfo.has_capability(CAP_NET_ADMIN, _sysinfo.capabilities_from_status(f.read()))
            is own_cap_net_admin()
        )


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("6.2.0-39-generic", (6, 2, 0)),
        ("6.18.44-fc-v669", (6, 18, 44)),
        ("5.15.153.1-microsoft-standard-WSL2", (5, 15, 153, 1)),
        ("6.10.0-rc1", (6, 10, 0)),
        ("4.19", (4, 19)),
        ("6.1rc7", (6, 1)),
    ],
)
def test_kernel_version_tuple(release: str, expected: tuple[int, ...]) -> None:
    from tunoffload import _sysinfo

    assert _sysinfo.kernel_version_tuple(release) == expected


def test_probe_unshares_before_opening_tun(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child must enter its own namespace before it touches /dev/net/tun."""
    from tunoffload import _sysinfo

    opened: list[str] = []
    real_open = os.open

    def fake_unshare() -> None:
        raise PermissionError(1, "Operation not permitted")

    def spy_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(_sysinfo, "unshare_netns", fake_unshare)
    monkeypatch.setattr(os, "open", spy_open)
    result = _sysinfo._child_probe()
    assert result["stage"] == "unshare"
    assert result["tso"] is None
    assert "/dev/net/tun" not in opened
    assert _sysinfo._describe_failure(result, cap_net_admin=False) == (
        "unknown (needs CAP_NET_ADMIN)"
    )
