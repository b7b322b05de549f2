"""The ``tunoffload`` command line: ``info``, ``bench`` and ``wireguard``.

Everything heavy is imported lazily: ``tunoffload info`` must work (and report the
problem) even when the native module does not load, and ``tunoffload bench`` is an
optional subpackage, ``tunoffload.bench`` (its command in ``tunoffload.bench.cli``), that
may not be present.
"""

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

PROG = "tunoffload"

_BENCH_PACKAGE = "tunoffload.bench"
_BENCH_MODULE = "tunoffload.bench.cli"


def _version_string() -> str:
    from . import _sysinfo

    version = _sysinfo.package_info()["version"]
    return f"{PROG} {version if version is not None else 'unknown'}"


class _VersionAction(argparse.Action):
    """``--version`` that looks the version up only when asked (lazy import)."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str = argparse.SUPPRESS,
        default: Any = argparse.SUPPRESS,
        help: str | None = "show the tunoffload version and exit",
    ) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(_version_string())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for ``tunoffload`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Linux TUN devices with GSO/GRO offload through the virtio_net_hdr. "
            "This command reports what the system supports and runs the benchmark."
        ),
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser(
        "info",
        help="show what this kernel and process support",
        description=(
            "Report the kernel version, whether /dev/net/tun exists, whether this process "
            "has CAP_NET_ADMIN, and whether the kernel accepts TUNSETOFFLOAD with TSO "
            "(CSUM|TSO4|TSO6) and USO (USO4|USO6). The offload probe creates a throwaway "
            "TUN device inside a temporary network namespace in a child process, so "
            "nothing is left behind. Also shows the tunoffload version and whether its "
            "native module loaded."
        ),
    )
    info.add_argument("--json", action="store_true", help="print one JSON object instead")
    info.add_argument(
        "--no-probe",
        action="store_true",
        help="skip the TUN offload probe (its results are reported as unknown)",
    )

    wg = sub.add_parser(
        "wireguard",
        help="run a WireGuard interface, as wireguard-go does",
        description=(
            "Create the TUN device IFNAME in this network namespace and run a WireGuard "
            "peer on it, configured with wg and wg-quick through "
            "/var/run/wireguard/IFNAME.sock, as 'wireguard-go [-f] IFNAME' does. Detaches "
            "unless -f (or WG_PROCESS_FOREGROUND=1); LOG_LEVEL=verbose|error|silent. "
            "SIGTERM, SIGINT, 'ip link del IFNAME' or removing the socket stops it."
        ),
    )
    wg.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground (do not detach)"
    )
    wg.add_argument(
        "--version",
        action=_VersionAction,
        help="show the version and exit (first line: 'tunoffload VERSION', as wireguard-go's)",
    )
    wg.add_argument("ifname", metavar="IFNAME", help="the interface to create, e.g. wg0")

    sub.add_parser(
        "bench",
        help="run the GSO/GRO performance demonstration",
        description="Run the GSO/GRO performance demonstration.",
        add_help=False,  # the benchmark module parses its own options, --help included
    )
    return parser


# --------------------------------------------------------------------------------------
# info


def _yes_no(value: bool | None, yes: str = "yes", no: str = "no") -> str:
    if value is None:
        return "unknown"
    return yes if value else no


def _offload_text(value: bool | None, status: str) -> str:
    if value is None:
        return status if status.startswith("unknown") else "unknown"
    return "accepted" if value else "rejected"


def _switches_text(info: dict[str, Any]) -> str:
    """``tcp_segmentation=on udp_segmentation=on ...``, or why they are unknown."""
    switches = info.get("offload_switches")
    if not isinstance(switches, dict):
        return str(info.get("offload_switches_probe") or "unknown")
    return " ".join(f"{name}={'on' if on else 'off'}" for name, on in switches.items())


def format_info_table(info: dict[str, Any]) -> str:
    """Render the dict from :func:`tunoffload._sysinfo.collect` as an aligned table."""
    native = "loaded" if info["native_module"] else f"not loaded ({info['native_error']})"
    status = str(info["offload_probe"])
    rows = [
        ("tunoffload version", info["tunoffload_version"] or "unknown"),
        ("native module", native),
        ("python", f"{info['python']} ({info['python_implementation']})"),
        ("kernel", f"{info['system']} {info['kernel']} ({info['machine']})"),
        ("/dev/net/tun", _yes_no(info["tun_present"], "present", "missing")),
        ("CAP_NET_ADMIN", _yes_no(info["cap_net_admin"])),
        ("virtio header (IFF_VNET_HDR)", _offload_text(info["vnet_hdr"], status)),
        (
            f"TSO offload (0x{info['tso_flags']:x} CSUM|TSO4|TSO6)",
            _offload_text(info["offload_tso"], status),
        ),
        (
            f"USO offload (0x{info['uso_flags']:x} USO4|USO6)",
            _offload_text(info["offload_uso"], status),
        ),
        ("offload switches of a new device", _switches_text(info)),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def cmd_info(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``tunoffload info``: print the system's TUN/offload support; returns 0."""
    from . import _sysinfo

    out = out if out is not None else sys.stdout
    info = _sysinfo.collect(probe=not args.no_probe)
    if args.json:
        out.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
    else:
        out.write(format_info_table(info) + "\n")
    return 0


# --------------------------------------------------------------------------------------
# bench


def cmd_bench(argv: Sequence[str]) -> int:
    """``tunoffload bench``: hand over to ``tunoffload.bench.cli`` if it exists.

    Returns the benchmark's exit status, or 2 when the module is not available.
    """
    try:
        bench = importlib.import_module(_BENCH_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in (_BENCH_PACKAGE, _BENCH_MODULE):
            print(
                f"{PROG} bench: the benchmark needs a module that is not installed: {exc}",
                file=sys.stderr,
            )
            return 2
        print(
            f"{PROG} bench: the benchmark is not available in this installation "
            f"({exc.name} is missing).",
            file=sys.stderr,
        )
        return 2
    except ImportError as exc:
        print(f"{PROG} bench: cannot load the benchmark: {exc}", file=sys.stderr)
        return 2

    parser = argparse.ArgumentParser(
        prog=f"{PROG} bench", description="Run the GSO/GRO performance demonstration."
    )
    bench.add_arguments(parser)
    args = parser.parse_args(list(argv))
    return int(bench.run(args))


# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tunoffload`` command line with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status. Usage errors exit through ``SystemExit(2)`` as argparse does.
    """
    args_list = sys.argv[1:] if argv is None else list(argv)
    # The main parser has no option that takes a value, so the first argument that is not
    # an option is the command. ``bench`` gets everything after it untouched: its options
    # belong to the benchmark module, which is imported only when it runs.
    for i, arg in enumerate(args_list):
        if arg == "--":
            break
        if not arg.startswith("-"):
            if arg == "bench":
                leading = args_list[:i]
                if leading:
                    build_parser().parse_args(leading)  # --help / --version / errors
                return cmd_bench(args_list[i + 1 :])
            break
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "info":
        return cmd_info(args)
    if args.command == "wireguard":
        from .wireguard.daemon import run

        return run(args.ifname, foreground=args.foreground)
    parser.print_help(sys.stderr)
    return 2
