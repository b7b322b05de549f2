"""What this kernel and this process support, for ``tunoffload info``.

Pure standard library: nothing here imports the native module, so ``tunoffload info``
still works (and says so) when the extension failed to load.

The offload probe creates a throwaway TUN device with ``IFF_VNET_HDR`` and asks the
kernel to accept ``TUNSETOFFLOAD`` flags. It does so in a short-lived child process that
first moves into a new network namespace (``unshare(CLONE_NEWNET)``), so the device never
exists in the caller's namespace and disappears with the child. A second child does the
same with the native module, where it loads: a ``TunDevice(offload=True)`` whose four
offload switches (what such a device starts with here) ``info`` shows.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import sys
from typing import Any

TUN_PATH = "/dev/net/tun"

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21

CLONE_NEWNET = 0x40000000

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8

IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

#: The flags tunoffload asks for with ``offload=True`` (TCP segmentation offload).
TSO_FLAGS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
#: UDP segmentation offload (Linux 6.2+). The kernel only takes the USO bits together
#: with ``TUN_F_CSUM``, so they are probed on top of the TSO flags.
USO_FLAGS = TUN_F_USO4 | TUN_F_USO6

VNET_HDR_LEN = 10

UNKNOWN_NEEDS_CAP = "unknown (needs CAP_NET_ADMIN)"

#: The offload switches of a ``TunDevice`` (its properties and ``stats`` keys).
SWITCHES = ("tcp_segmentation", "udp_segmentation", "tcp_coalescing", "udp_coalescing")

_PROBE_TIMEOUT = 15.0


def capabilities_from_status(status_text: str, field: str = "CapEff") -> int | None:
    """Return the capability mask of ``field`` in the text of ``/proc/<pid>/status``.

    Returns None when the field is absent or unreadable.
    """
    prefix = field + ":"
    for line in status_text.splitlines():
        if line.startswith(prefix):
            try:
                return int(line[len(prefix) :].strip(), 16)
            except ValueError:
                return None
    return None


def effective_capabilities() -> int | None:
    """Return this process's effective capability mask (CapEff), or None if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            return capabilities_from_status(f.read())
    except OSError:
        return None


def has_capability(cap: int, mask: int | None = None) -> bool | None:
    """Whether capability number ``cap`` is in ``mask`` (default: this process's CapEff).

    None when the mask cannot be read.
    """
    if mask is None:
        mask = effective_capabilities()
    if mask is None:
        return None
    return bool(mask >> cap & 1)


def tun_present() -> bool:
    """Whether the TUN clone device ``/dev/net/tun`` exists."""
    return os.path.exists(TUN_PATH)


def kernel_release() -> str:
    """The running kernel's release string, as ``uname -r`` prints it."""
    return os.uname().release


def kernel_version_tuple(release: str | None = None) -> tuple[int, ...]:
    """The leading numeric part of a kernel release: ``"6.2.0-39-generic"`` -> ``(6, 2, 0)``."""
    if release is None:
        release = kernel_release()
    parts: list[int] = []
    for piece in release.split("-", 1)[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


# --------------------------------------------------------------------------------------
# The child side of the probe. Runs as ``python -I -S _sysinfo.py --probe-child`` and
# prints one JSON object on stdout.


def _netns_id() -> str | None:
    """This process's network namespace, e.g. ``"net:[4026531840]"``; None if unknown."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None


def os_or_libc(name: str, *args: int) -> None:
    """``os.NAME(*args)`` where this Python has it (``unshare`` and ``setns`` came in
    3.12), else the C library's ``NAME``; ``OSError`` with its errno on failure."""
    call = getattr(os, name, None)
    if call is not None:
        call(*args)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def unshare_netns() -> None:
    """Moves the calling thread (in a single-threaded process: the process) into a new
    network namespace of its own, which disappears with it. Needs CAP_SYS_ADMIN."""
    os_or_libc("unshare", CLONE_NEWNET)


def _child_probe() -> dict[str, Any]:
    """Probe the TUN offload flags; must run in a process that may change namespaces."""
    import fcntl
    import struct

    result: dict[str, Any] = {
        "vnet_hdr": None,
        "tso": None,
        "uso": None,
        "stage": None,
        "errno": None,
        "error": None,
        "netns": None,
    }

    def failed(stage: str, exc: OSError) -> dict[str, Any]:
        result["stage"] = stage
        result["errno"] = exc.errno
        result["error"] = str(exc)
        return result

    try:
        unshare_netns()
    except OSError as exc:
        return failed("unshare", exc)
    result["netns"] = _netns_id()
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return failed("open", exc)
    try:
        ifreq = struct.pack("16sH22x", b"tunoffprobe0", IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifreq)
        except OSError as exc:
            return failed("TUNSETIFF", exc)
        try:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            result["vnet_hdr"] = True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                return failed("TUNSETVNETHDRSZ", exc)
            result["vnet_hdr"] = False
        # TUNSETOFFLOAD takes the flags as the ioctl argument itself, not a pointer.
        for key, flags in (("tso", TSO_FLAGS), ("uso", TSO_FLAGS | USO_FLAGS)):
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
                result[key] = True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    return failed("TUNSETOFFLOAD", exc)
                result[key] = False
        result["stage"] = "done"
        return result
    finally:
        os.close(fd)


def _child_switches(package_parent: str) -> dict[str, Any]:
    """The switches of a ``TunDevice(offload=True)`` made in a namespace of this child's
    own, with the ``tunoffload`` found in ``package_parent`` (the caller's)."""
    result: dict[str, Any] = {"switches": None, "error": None, "netns": None}
    try:
        unshare_netns()
        result["netns"] = _netns_id()
        sys.path.insert(0, package_parent)
        from tunoffload import TunDevice

        with TunDevice("tunoffprobe1", offload=True) as dev:
            result["switches"] = {k: bool(getattr(dev, k)) for k in SWITCHES}
    except Exception as exc:  # whatever went wrong is what info reports
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


# --------------------------------------------------------------------------------------
# The parent side.


def _describe_failure(child: dict[str, Any], cap_net_admin: bool | None) -> str:
    err = child.get("errno")
    stage = child.get("stage")
    if err in (errno.EPERM, errno.EACCES):
        if stage == "unshare" and cap_net_admin:
            return "unknown (needs CAP_SYS_ADMIN to create a network namespace)"
        return UNKNOWN_NEEDS_CAP
    if stage == "open" and err == errno.ENOENT:
        return f"unknown ({TUN_PATH} is missing)"
    return f"unknown ({stage} failed: {child.get('error')})"


def probe_offload(timeout: float = _PROBE_TIMEOUT) -> dict[str, Any]:
    """Ask the kernel which TUN offloads it accepts, inside a throwaway network namespace.

    Returns a dict with keys ``vnet_hdr``, ``tso`` and ``uso`` (True, False or None when
    unknown) and ``status``: ``"ok"`` or a string beginning with ``"unknown ("`` that says
    why the probe could not run. Nothing is created in the caller's network namespace.
    """
    cap_net_admin = has_capability(CAP_NET_ADMIN)
    out: dict[str, Any] = {"vnet_hdr": None, "tso": None, "uso": None, "status": ""}
    if not tun_present():
        out["status"] = f"unknown ({TUN_PATH} is missing)"
        return out
    if cap_net_admin is False:
        out["status"] = UNKNOWN_NEEDS_CAP
        return out

    script = os.path.abspath(__file__)
    # -I: ignore PYTHON* variables, the user's site-packages and the script's directory;
    # -S: no site import. The child needs only the standard library.
    argv = [sys.executable, "-I", "-S", script, "--probe-child"]
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        out["status"] = f"unknown (probe could not run: {exc})"
        return out
    try:
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        if not isinstance(child, dict):
            raise ValueError("not an object")
    except (ValueError, IndexError):
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        out["status"] = f"unknown (probe failed: {detail})"
        return out

    for key in ("vnet_hdr", "tso", "uso"):
        value = child.get(key)
        out[key] = value if isinstance(value, bool) else None
    if child.get("stage") != "done":
        out["status"] = _describe_failure(child, cap_net_admin)
    elif child.get("netns") is None or child.get("netns") == _netns_id():
        # Never report results from a probe that could have touched our namespace.
        out.update(vnet_hdr=None, tso=None, uso=None)
        out["status"] = "unknown (the probe did not run in a separate network namespace)"
    else:
        out["status"] = "ok"
    return out


def probe_switches(timeout: float = _PROBE_TIMEOUT) -> dict[str, Any]:
    """The offload switches a ``TunDevice(offload=True)`` starts with here, from a device
    made in a child process in a throwaway network namespace: ``{"switches": {name: bool}
    or None, "status": "ok" or "unknown (...)"}``. Needs the native module, root (or
    CAP_NET_ADMIN and CAP_SYS_ADMIN) and ``/dev/net/tun``; nothing is created in the
    caller's namespace."""
    out: dict[str, Any] = {"switches": None, "status": ""}
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, "-I", "-S", os.path.abspath(__file__), "--switches-child"]
    try:
        proc = subprocess.run(
            [*argv, package_parent],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        if not isinstance(child, dict):
            raise ValueError("not an object")
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        out["status"] = f"unknown (probe failed: {exc})"
        return out
    switches = child.get("switches")
    if child.get("error") or not isinstance(switches, dict):
        out["status"] = f"unknown ({child.get('error')})"
    elif child.get("netns") is None or child.get("netns") == _netns_id():
        out["status"] = "unknown (the probe did not run in a separate network namespace)"
    else:
        out.update(switches={k: switches.get(k) is True for k in SWITCHES}, status="ok")
    return out


def package_info() -> dict[str, Any]:
    """The installed tunoffload version and whether its native module imports.

    Imports ``tunoffload`` and ``tunoffload._native`` lazily and tolerates either failing.
    """
    import importlib

    version: str | None = None
    try:
        pkg = importlib.import_module("tunoffload")
        v = getattr(pkg, "__version__", None)
        version = str(v) if v is not None else None
    except Exception:  # a broken install is exactly what info reports
        pass
    if version is None:
        try:
            from importlib.metadata import PackageNotFoundError
            from importlib.metadata import version as dist_version

            try:
                version = dist_version("tunoffload")
            except PackageNotFoundError:
                version = None
        except ImportError:
            version = None

    native_error: str | None = None
    try:
        importlib.import_module("tunoffload._native")
        native = True
    except Exception as exc:
        native = False
        native_error = f"{type(exc).__name__}: {exc}"
    return {"version": version, "native_module": native, "native_error": native_error}


def collect(probe: bool = True) -> dict[str, Any]:
    """Everything ``tunoffload info`` reports, as a JSON-serialisable dict.

    With ``probe=False`` the offload probe is skipped and its results are None.
    """
    uname = os.uname()
    cap_net_admin = has_capability(CAP_NET_ADMIN)
    pkg = package_info()
    if probe:
        off = probe_offload()
    else:
        off = {"vnet_hdr": None, "tso": None, "uso": None, "status": "unknown (not probed)"}
    if not probe or off["status"] != "ok":
        sw: dict[str, Any] = {"switches": None, "status": off["status"]}
    elif not pkg["native_module"]:
        sw = {"switches": None, "status": "unknown (the native module does not load)"}
    else:
        sw = probe_switches()
    return {
        "tunoffload_version": pkg["version"],
        "native_module": pkg["native_module"],
        "native_error": pkg["native_error"],
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "system": uname.sysname,
        "machine": uname.machine,
        "kernel": uname.release,
        "kernel_version": list(kernel_version_tuple(uname.release)),
        "tun_present": tun_present(),
        "cap_net_admin": cap_net_admin,
        "vnet_hdr": off["vnet_hdr"],
        "offload_tso": off["tso"],
        "offload_uso": off["uso"],
        "offload_probe": off["status"],
        "offload_switches": sw["switches"],
        "offload_switches_probe": sw["status"],
        "tso_flags": TSO_FLAGS,
        "uso_flags": USO_FLAGS,
    }


if __name__ == "__main__" and sys.argv[1:] == ["--probe-child"]:
    print(json.dumps(_child_probe()))
elif __name__ == "__main__" and sys.argv[1:2] == ["--switches-child"] and len(sys.argv) == 3:
    print(json.dumps(_child_switches(sys.argv[2])))
