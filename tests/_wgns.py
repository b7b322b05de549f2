"""Running WireGuard tools with a private ``/run/wireguard``, for the tests.

UAPI sockets live in ``/var/run/wireguard`` (= ``/run/wireguard``), which every network
namespace shares. Each command here runs in its own mount namespace (``unshare --mount``,
private propagation, so nothing leaks out) where a directory of the test's is
bind-mounted on ``/run/wireguard``: a daemon and the ``wg`` commands that talk to it see
that directory, and nothing else on the machine sees them. With ``netns`` the command
also runs in that network namespace (``ip netns exec``); without it, in a new network
namespace of its own (``unshare --net``), so that ``wg show`` lists no kernel interface.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

RUNDIR = "/run/wireguard"
_BIND = 'mkdir -p /run/wireguard && mount --bind "$0" /run/wireguard && exec "$@"'


def can_use_wg(need_wg: bool = True) -> str | None:
    """None when the isolated ``wg`` commands can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (mount and network namespaces)"
    for tool in ("unshare", "ip", "mount") + (("wg",) if need_wg else ()):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is missing"
    return None


def isolated(rundir: str, argv: Sequence[str], netns: str | None = None) -> list[str]:
    """``argv`` wrapped to run with ``rundir`` on ``/run/wireguard`` (see the module)."""
    inner = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _BIND, rundir]
    if netns is None:
        return ["unshare", "--net", *inner, *argv]
    return ["ip", "netns", "exec", netns, *inner, *argv]


def wg(
    rundir: str, *args: str, netns: str | None = None, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``wg ARGS`` against the sockets in ``rundir``."""
    proc = subprocess.run(
        isolated(rundir, ["wg", *args], netns),
        capture_output=True,
        text=True,
        timeout=30,
        input=stdin,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"wg {' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
    return proc


def genkey() -> tuple[str, str]:
    """A private key and its public key, base64, from ``wg genkey`` / ``wg pubkey``."""
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True)
    public = subprocess.run(
        ["wg", "pubkey"], input=private.stdout, capture_output=True, text=True, check=True
    )
    return private.stdout.strip(), public.stdout.strip()
