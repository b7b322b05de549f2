//! [`Tun`]: one queue (file descriptor) of a Linux TUN/TAP device.

use std::ffi::{c_int, c_ulong, c_void, CStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::netlink::{IfAddr, Netlink};
use super::netns::{fd_id, in_netns, open_current, Netns};
use super::offload::Offloads;
use super::sys::*;
use super::{invalid, last_error, Error};
use crate::engine::ErrorKind as K;
use crate::hooks::locked;
use crate::udp::Wait;

/// The size of the virtio header tunoffload uses (`struct virtio_net_hdr`, not `_mrg_rxbuf`).
pub const VNET_HDR_LEN: usize = 10;

const TUN_PATH: &CStr = c"/dev/net/tun";

/// How to create or open a device.
#[derive(Debug, Clone, Default)]
pub struct TunOptions {
    /// Interface name; `None` lets the kernel pick (`tun%d` / `tap%d`).
    pub name: Option<String>,
    /// A TAP (Ethernet) device instead of TUN (IP).
    pub tap: bool,
    /// `IFF_MULTI_QUEUE`: more queues can be attached with [`Tun::clone_queue`].
    pub multi_queue: bool,
    /// Keep the 4-byte packet information prefix (no `IFF_NO_PI`).
    pub packet_information: bool,
    /// Virtio header plus checksum/TSO (and USO where the kernel has it) offload.
    pub offload: bool,
    /// Make the device persistent (`TUNSETPERSIST 1`).
    pub persist: bool,
    /// `TUNSETOWNER`.
    pub owner: Option<u32>,
    /// `TUNSETGROUP`.
    pub group: Option<u32>,
    /// Set this MTU after opening.
    pub mtu: Option<u32>,
    /// Bring the interface up after opening.
    pub up: bool,
    /// Create (or open) the device in this network namespace instead of the calling
    /// thread's.
    pub netns: Option<Arc<Netns>>,
}

/// Counters of one queue's reads and writes (each read or write is one packet or
/// super-packet, virtio header included in the byte counts), and of the packets the batch
/// calls moved (`rx_packets` out of `recv_multiple` after splitting, `tx_packets` into
/// `send_multiple` before coalescing).
#[derive(Debug, Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub max_read: AtomicU64,
    pub writes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub max_write: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    /// TCP super-packets the kernel refused (`EINVAL`) and that were written again as
    /// their segments (TCP coalescing then turned off: see [`super::offload`]).
    pub tcp_coalescing_fallbacks: AtomicU64,
    /// The same for UDP super-packets.
    pub udp_coalescing_fallbacks: AtomicU64,
}

impl Counters {
    fn count(n: usize, count: &AtomicU64, bytes: &AtomicU64, max: &AtomicU64) {
        count.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        max.fetch_max(n as u64, Ordering::Relaxed);
    }

    /// Every counter by name, as of now.
    pub fn items(&self) -> [(&'static str, u64); 10] {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("reads", c(&self.reads)),
            ("read_bytes", c(&self.read_bytes)),
            ("max_read", c(&self.max_read)),
            ("writes", c(&self.writes)),
            ("write_bytes", c(&self.write_bytes)),
            ("max_write", c(&self.max_write)),
            ("rx_packets", c(&self.rx_packets)),
            ("tx_packets", c(&self.tx_packets)),
            (
                "tcp_coalescing_fallbacks",
                c(&self.tcp_coalescing_fallbacks),
            ),
            (
                "udp_coalescing_fallbacks",
                c(&self.udp_coalescing_fallbacks),
            ),
        ]
    }
}

/// Sockets for interface configuration, opened in the device's network namespace and
/// shared by all queues of a device, with the device's ifindex there.
#[derive(Debug)]
struct Control {
    sock: OwnedFd,
    nl: Mutex<Netlink>,
    netns: Option<OwnedFd>,
    /// `(st_dev, st_ino)` of the namespace the sockets are in.
    netns_id: (u64, u64),
    ifindex: u32,
}

/// One open queue of a TUN/TAP device.
///
/// The descriptor is always in non-blocking mode; blocking reads wait in `poll(2)` on the
/// descriptor and on an eventfd that [`Tun::shutdown`] signals, so another thread can
/// wake a blocked reader. The descriptor itself is closed only when the `Tun` is dropped,
/// so no thread can ever use a recycled descriptor number.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    wake: OwnedFd,
    closed: AtomicBool,
    /// Replaced when the device is found in another namespace than this one's sockets.
    ctl: Mutex<Arc<Control>>,
    flags: i16,
    udp_gso: bool,
    /// The device's offload switches, shared by its queues.
    pub(super) offloads: Arc<Offloads>,
    /// Write faults armed for tests (see [`Tun::inject_write_faults`]); 0: none.
    pub(super) faults: AtomicU64,
    /// Read and write counters (shared, so they can outlive the queue).
    pub counters: Arc<Counters>,
}

fn check_name(name: &str) -> Result<(), Error> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Err(invalid(K::BadName, "interface name must not be empty"));
    }
    if b.len() > IFNAMSIZ - 1 {
        return Err(invalid(
            K::BadName,
            format!(
                "interface name {name:?} is {} bytes long; Linux allows at most {}",
                b.len(),
                IFNAMSIZ - 1
            ),
        ));
    }
    if name == "."
        || name == ".."
        || b.iter()
            .any(|&c| c == b'/' || c == b':' || c == 0 || c.is_ascii_whitespace())
    {
        return Err(invalid(
            K::BadName,
            format!(
            "interface name {name:?} is not valid (no '/', ':', NUL or whitespace, not '.' or '..')"
        ),
        ));
    }
    Ok(())
}

fn ioctl_ptr<T>(fd: RawFd, req: c_ulong, arg: *mut T) -> c_int {
    // SAFETY: every caller passes a request whose argument is a pointer to a `T` of the
    // size the kernel expects (`ifreq` or `int`), valid for reads and writes.
    unsafe { libc::ioctl(fd, req as _, arg as *mut c_void) }
}

fn ioctl_val(fd: RawFd, req: c_ulong, arg: c_ulong) -> c_int {
    // SAFETY: the TUN requests used with this helper take their argument by value.
    unsafe { libc::ioctl(fd, req as _, arg) }
}

fn open_node() -> Result<OwnedFd, Error> {
    // SAFETY: `TUN_PATH` is a NUL-terminated string; the result is checked.
    let fd = unsafe {
        libc::open(
            TUN_PATH.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        let e = last_error("opening /dev/net/tun");
        return Err(match e.errno() {
            Some(libc::ENOENT) => Error::Os {
                errno: libc::ENOENT,
                msg: "/dev/net/tun does not exist: load the tun module (modprobe tun) or \
                      create the node (mknod /dev/net/tun c 10 200)"
                    .into(),
            },
            Some(errno @ (libc::EACCES | libc::EPERM)) => Error::Os {
                errno,
                msg: "permission denied opening /dev/net/tun: TUN devices need \
                      CAP_NET_ADMIN (run as root or grant the capability)"
                    .into(),
            },
            _ => e,
        });
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_iff(fd: &OwnedFd, name: &[u8], flags: i16) -> Result<(), Error> {
    let mut req = IfReq::new(name);
    req.set_flags(flags);
    if ioctl_ptr(fd.as_raw_fd(), TUNSETIFF, &mut req) == 0 {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(name).into_owned();
    let what = if shown.is_empty() {
        "creating a TUN device".to_string()
    } else {
        format!("creating or opening TUN device {shown:?}")
    };
    let e = last_error(&what);
    Err(match e.errno() {
        Some(errno @ (libc::EPERM | libc::EACCES)) => Error::Os {
            errno,
            msg: format!(
                "{what}: operation not permitted: this needs CAP_NET_ADMIN \
                 (run as root or grant the capability), or the device belongs to another user"
            ),
        },
        Some(libc::EINVAL) => Error::Os {
            errno: libc::EINVAL,
            msg: format!(
                "{what}: invalid argument: an interface of that name exists but is not a \
                 TUN/TAP device of the requested kind (tun/tap, multi_queue, ...)"
            ),
        },
        Some(libc::EBUSY) => Error::Os {
            errno: libc::EBUSY,
            msg: format!(
                "{what}: device or resource busy: the device is already open (it is not \
                 multi-queue, or all its queues are taken)"
            ),
        },
        _ => e,
    })
}

fn get_iff(fd: RawFd) -> Result<IfReq, Error> {
    let mut req = IfReq::new(b"");
    if ioctl_ptr(fd, TUNGETIFF, &mut req) != 0 {
        return Err(last_error("TUNGETIFF"));
    }
    Ok(req)
}

/// Sets the virtio header size and the offload mask; returns whether UDP GSO is on.
fn configure_offload(fd: RawFd, vnet_hdr: bool) -> Result<bool, Error> {
    if !vnet_hdr {
        if ioctl_val(fd, TUNSETOFFLOAD, 0) != 0 {
            return Err(last_error("clearing the offload mask (TUNSETOFFLOAD 0)"));
        }
        return Ok(false);
    }
    let mut sz: c_int = VNET_HDR_LEN as c_int;
    if ioctl_ptr(fd, TUNSETVNETHDRSZ, &mut sz) != 0 {
        return Err(last_error(
            "setting the virtio header size to 10 (TUNSETVNETHDRSZ)",
        ));
    }
    let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    if ioctl_val(fd, TUNSETOFFLOAD, tso | TUN_F_USO4 | TUN_F_USO6) == 0 {
        return Ok(true);
    }
    if ioctl_val(fd, TUNSETOFFLOAD, tso) == 0 {
        return Ok(false);
    }
    Err(last_error(
        "turning on checksum and TCP segmentation offload (TUNSETOFFLOAD CSUM|TSO4|TSO6)",
    ))
}

/// The network namespace of the device behind `fd` (`TUNGETDEVNETNS`), if the kernel says.
fn device_netns(fd: RawFd) -> Option<OwnedFd> {
    let ns = ioctl_val(fd, TUNGETDEVNETNS, 0);
    if ns < 0 {
        return None;
    }
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(ns) })
}

fn new_eventfd() -> Result<OwnedFd, Error> {
    // SAFETY: plain eventfd(2); the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(last_error("creating an eventfd"));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Control {
    /// Opens the sockets in `netns` (the calling thread's namespace for `None`) and finds
    /// the ifindex of interface `name` there.
    fn open(netns: Option<OwnedFd>, name: &[u8]) -> Result<Self, Error> {
        let netns_id = match &netns {
            Some(ns) => fd_id(ns.as_raw_fd())?,
            None => fd_id(open_current()?.as_raw_fd())?,
        };
        let (sock, nl) = in_netns(netns.as_ref(), || {
            let mut fd = -1;
            for family in [libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK] {
                let ty = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC;
                let proto = if family == libc::AF_NETLINK {
                    libc::NETLINK_ROUTE
                } else {
                    0
                };
                // SAFETY: plain socket(2); the result is checked.
                fd = unsafe { libc::socket(family, ty, proto) };
                if fd >= 0 {
                    break;
                }
            }
            if fd < 0 {
                return Err(last_error("opening a socket for interface ioctls"));
            }
            // SAFETY: a fresh descriptor that nothing else owns.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok((sock, Netlink::open()?))
        })?;
        let mut ir = IfReq::new(name);
        if ioctl_ptr(sock.as_raw_fd(), SIOCGIFINDEX, &mut ir) != 0 {
            return Err(last_error("reading the interface index (SIOCGIFINDEX)"));
        }
        Ok(Control {
            sock,
            nl: Mutex::new(nl),
            netns,
            netns_id,
            ifindex: ir.int() as u32,
        })
    }

    fn netlink(&self) -> std::sync::MutexGuard<'_, Netlink> {
        // A panic cannot happen while the lock is held (no indexing without checks), but
        // recover from poisoning anyway rather than panic.
        locked(&self.nl)
    }
}

/// Both headers at once is a framing the batch I/O does not read: the kernel puts the
/// 4-byte packet information before the virtio header.
const VNET_WITH_PI: &str = "offload=True cannot be combined with packet_information=True \
     (the kernel would put the 4-byte packet information before the virtio header)";

impl Tun {
    /// Creates the device `opts.name` (or opens the existing one) in the calling thread's
    /// network namespace and configures it as `opts` says.
    pub fn open(opts: &TunOptions) -> Result<Tun, Error> {
        let name = opts.name.as_deref().unwrap_or("");
        if opts.name.is_some() {
            check_name(name)?;
        }
        if let Some(mtu) = opts.mtu {
            check_mtu(mtu)?;
        }
        if opts.offload && opts.tap {
            return Err(invalid(
                K::IncompatibleOptions,
                "offload=True is for TUN devices (IP packets); tap=True carries Ethernet frames",
            ));
        }
        if opts.offload && opts.packet_information {
            return Err(invalid(K::IncompatibleOptions, VNET_WITH_PI));
        }
        let mut flags = if opts.tap { IFF_TAP } else { IFF_TUN };
        if !opts.packet_information {
            flags |= IFF_NO_PI;
        }
        if opts.offload {
            flags |= IFF_VNET_HDR;
        }
        if opts.multi_queue {
            flags |= IFF_MULTI_QUEUE;
        }
        // The device is created in the namespace of the thread that opens the node; the
        // configuration sockets are opened while still there (Control::open then needs
        // no second switch).
        let (fd, ctl) = {
            let _inside = opts.netns.as_deref().map(Netns::enter_scoped).transpose()?;
            let fd = open_node()?;
            set_iff(&fd, name.as_bytes(), flags)?;
            let ctl = Control::open(
                device_netns(fd.as_raw_fd()),
                get_iff(fd.as_raw_fd())?.name_bytes(),
            )?;
            (fd, Arc::new(ctl))
        };
        let tun = Tun::finish(fd, ctl, true)?;
        if opts.offload && !tun.vnet_hdr() {
            return Err(Error::Os {
                errno: libc::EINVAL,
                msg: "the kernel did not turn on IFF_VNET_HDR for this device".into(),
            });
        }
        if let Some(uid) = opts.owner {
            tun.set_owner(uid)?;
        }
        if let Some(gid) = opts.group {
            tun.set_group(gid)?;
        }
        if let Some(mtu) = opts.mtu {
            tun.set_mtu(mtu)?;
        }
        if opts.up {
            tun.set_up(true)?;
        }
        if opts.persist {
            tun.set_persist(true)?;
        }
        Ok(tun)
    }

    /// Adopts a descriptor that is already attached to a TUN/TAP device (it is duplicated;
    /// the caller keeps its own). The open file is switched to non-blocking mode. A device
    /// with a virtio header gets tunoffload's header size and offload mask.
    pub fn from_fd(fd: RawFd) -> Result<Tun, Error> {
        // SAFETY: F_DUPFD_CLOEXEC on a caller-given number; failure is checked.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(last_error("duplicating the descriptor"));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        if let Err(e) = get_iff(dup.as_raw_fd()) {
            return Err(invalid(
                K::WrongFileType,
                format!("descriptor {fd} is not attached to a TUN/TAP device ({e})"),
            ));
        }
        // SAFETY: F_GETFL/F_SETFL on our own descriptor.
        unsafe {
            let fl = libc::fcntl(dup.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(dup.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(last_error("setting O_NONBLOCK"));
            }
        }
        let ctl = Arc::new(Control::open(
            device_netns(dup.as_raw_fd()),
            get_iff(dup.as_raw_fd())?.name_bytes(),
        )?);
        Tun::finish(dup, ctl, false)
    }

    /// Reads the flags back, sets up the virtio header and offloads.
    fn finish(fd: OwnedFd, ctl: Arc<Control>, clear_offload: bool) -> Result<Tun, Error> {
        let req = get_iff(fd.as_raw_fd())?;
        let flags = req.flags();
        let vnet = flags & IFF_VNET_HDR != 0;
        if vnet && flags & IFF_NO_PI == 0 {
            // (an adopted descriptor: `open` refuses the combination before creating it)
            return Err(invalid(K::IncompatibleOptions, VNET_WITH_PI));
        }
        let udp_gso = if vnet || clear_offload {
            configure_offload(fd.as_raw_fd(), vnet)?
        } else {
            false
        };
        Ok(Tun {
            fd,
            wake: new_eventfd()?,
            closed: AtomicBool::new(false),
            ctl: Mutex::new(ctl),
            flags,
            udp_gso,
            offloads: Arc::new(Offloads::new(vnet, udp_gso)),
            faults: AtomicU64::new(0),
            counters: Arc::default(),
        })
    }

    /// Opens another queue of this multi-queue device, with the same flags and offloads.
    pub fn clone_queue(&self) -> Result<Tun, Error> {
        self.check_open()?;
        if self.flags & IFF_MULTI_QUEUE == 0 {
            return Err(invalid(
                K::IncompatibleOptions,
                "clone_queue needs a device created with multi_queue=True",
            ));
        }
        // The device's namespace now (it may have been moved since it was opened), so
        // that the name is looked up where the device is.
        let ctl = self.control()?;
        let name = self.name()?;
        let fd = in_netns(ctl.netns.as_ref(), || {
            let fd = open_node()?;
            let keep = IFF_TUN | IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
            set_iff(&fd, name.as_bytes(), self.flags & keep)?;
            Ok(fd)
        })?;
        let mut queue = Tun::finish(fd, ctl, true)?;
        if queue.vnet_hdr() {
            // The open set the full mask on the device: back to the switches as they are,
            // which the new queue shares.
            self.offloads.apply(queue.raw_fd())?;
            queue.offloads = self.offloads.clone();
            queue.udp_gso = self.udp_gso;
        }
        Ok(queue)
    }

    pub(super) fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The descriptor of this queue.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The flags the kernel reports for the device (`TUNGETIFF`), as at open.
    pub fn flags(&self) -> i16 {
        self.flags
    }

    /// Reads and writes carry a 10-byte virtio header.
    pub fn vnet_hdr(&self) -> bool {
        self.flags & IFF_VNET_HDR != 0
    }

    /// The kernel accepted UDP segmentation offload (USO4/USO6).
    pub fn udp_gso(&self) -> bool {
        self.udp_gso
    }

    /// The interface index, as last seen (see [`Tun::current_ifindex`]).
    pub fn ifindex(&self) -> u32 {
        self.ctl_slot().ifindex
    }

    /// The interface index in the namespace the device is in now (it changes when a
    /// move to another namespace finds the old one taken there).
    pub fn current_ifindex(&self) -> Result<u32, Error> {
        self.check_open()?;
        Ok(self.control()?.ifindex)
    }

    fn ctl_slot(&self) -> Arc<Control> {
        locked(&self.ctl).clone()
    }

    /// The configuration sockets, in the namespace the device is in now. A device moved
    /// to another namespace since (`ip link set DEV netns NS`) is followed there: new
    /// sockets are opened in its namespace. Where that cannot be done (no CAP_SYS_ADMIN
    /// for setns, say), the error says the device was moved.
    fn control(&self) -> Result<Arc<Control>, Error> {
        let cur = self.ctl_slot();
        // Without TUNGETDEVNETNS (old kernel, or no CAP_NET_ADMIN over the device's
        // namespace) a move cannot be seen here; ENODEV is then explained in ctl_ioctl.
        let Some(now) = device_netns(self.fd.as_raw_fd()) else {
            return Ok(cur);
        };
        if fd_id(now.as_raw_fd())? == cur.netns_id {
            return Ok(cur);
        }
        let name = self.name()?;
        let new = Control::open(Some(now), name.as_bytes()).map_err(|e| moved(&name, &e))?;
        let new = Arc::new(new);
        let mut slot = locked(&self.ctl);
        if slot.netns_id == cur.netns_id {
            *slot = new.clone();
            Ok(new)
        } else {
            // Another thread followed it first.
            Ok(slot.clone())
        }
    }

    /// The current interface name (re-read, so a rename is seen).
    pub fn name(&self) -> Result<String, Error> {
        self.check_open()?;
        let req = get_iff(self.fd.as_raw_fd())?;
        Ok(String::from_utf8_lossy(req.name_bytes()).into_owned())
    }

    fn ifreq(&self) -> Result<IfReq, Error> {
        Ok(IfReq::new(self.name()?.as_bytes()))
    }

    fn ctl_ioctl(&self, req: c_ulong, r: &mut IfReq, what: &str) -> Result<(), Error> {
        let ctl = self.control()?;
        if ioctl_ptr(ctl.sock.as_raw_fd(), req, r) != 0 {
            let e = last_error(what);
            if e.errno() == Some(libc::ENODEV) {
                // The descriptor is still attached (ifreq() read the name through it),
                // so the interface is somewhere else than the sockets.
                let name = String::from_utf8_lossy(r.name_bytes()).into_owned();
                return Err(moved(&name, &e));
            }
            return Err(e);
        }
        Ok(())
    }

    /// The MTU (`SIOCGIFMTU`).
    pub fn mtu(&self) -> Result<u32, Error> {
        let mut r = self.ifreq()?;
        self.ctl_ioctl(SIOCGIFMTU, &mut r, "reading the MTU")?;
        Ok(r.int() as u32)
    }

    /// Sets the MTU (`SIOCSIFMTU`), 68..=65535.
    pub fn set_mtu(&self, mtu: u32) -> Result<(), Error> {
        check_mtu(mtu)?;
        let mut r = self.ifreq()?;
        r.set_int(mtu as i32);
        self.ctl_ioctl(SIOCSIFMTU, &mut r, &format!("setting the MTU to {mtu}"))
    }

    fn if_flags(&self) -> Result<i16, Error> {
        let mut r = self.ifreq()?;
        self.ctl_ioctl(SIOCGIFFLAGS, &mut r, "reading the interface flags")?;
        Ok(r.flags())
    }

    /// Whether the interface is administratively up.
    pub fn is_up(&self) -> Result<bool, Error> {
        Ok(self.if_flags()? & IFF_UP != 0)
    }

    /// Whether the interface is running (up, with a queue attached).
    pub fn is_running(&self) -> Result<bool, Error> {
        Ok(self.if_flags()? & IFF_RUNNING != 0)
    }

    /// Brings the interface up or down (`SIOCSIFFLAGS`).
    pub fn set_up(&self, up: bool) -> Result<(), Error> {
        let mut r = self.ifreq()?;
        self.ctl_ioctl(SIOCGIFFLAGS, &mut r, "reading the interface flags")?;
        let f = r.flags();
        r.set_flags(if up { f | IFF_UP } else { f & !IFF_UP });
        let what = if up {
            "bringing the interface up"
        } else {
            "bringing the interface down"
        };
        self.ctl_ioctl(SIOCSIFFLAGS, &mut r, what)
    }

    /// The transmit queue length (`SIOCGIFTXQLEN`).
    pub fn tx_queue_len(&self) -> Result<u32, Error> {
        let mut r = self.ifreq()?;
        self.ctl_ioctl(SIOCGIFTXQLEN, &mut r, "reading the tx queue length")?;
        Ok(r.int() as u32)
    }

    /// Sets the transmit queue length (`SIOCSIFTXQLEN`).
    pub fn set_tx_queue_len(&self, len: u32) -> Result<(), Error> {
        if len > i32::MAX as u32 {
            return Err(invalid(
                K::OutOfRange,
                format!("tx queue length {len} is too large"),
            ));
        }
        let mut r = self.ifreq()?;
        r.set_int(len as i32);
        self.ctl_ioctl(SIOCSIFTXQLEN, &mut r, "setting the tx queue length")
    }

    /// The hardware (MAC) address: 6 bytes for a TAP device, `None` for TUN.
    pub fn mac(&self) -> Result<Option<[u8; 6]>, Error> {
        if self.flags & IFF_TAP == 0 {
            return Ok(None);
        }
        let mut r = self.ifreq()?;
        self.ctl_ioctl(SIOCGIFHWADDR, &mut r, "reading the MAC address")?;
        let mut mac = [0; 6];
        mac.copy_from_slice(&r.data[2..8]);
        Ok(Some(mac))
    }

    /// Sets a TAP device's MAC address (`SIOCSIFHWADDR`).
    pub fn set_mac(&self, mac: [u8; 6]) -> Result<(), Error> {
        if self.flags & IFF_TAP == 0 {
            return Err(invalid(
                K::IncompatibleOptions,
                "only a TAP device has a MAC address",
            ));
        }
        if mac[0] & 1 != 0 {
            return Err(invalid(
                K::BadMac,
                "a multicast MAC address cannot be assigned",
            ));
        }
        let mut r = self.ifreq()?;
        r.data[..2].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
        r.data[2..8].copy_from_slice(&mac);
        self.ctl_ioctl(SIOCSIFHWADDR, &mut r, "setting the MAC address")
    }

    /// Whether the device is persistent (re-read with `TUNGETIFF`).
    pub fn persist(&self) -> Result<bool, Error> {
        self.check_open()?;
        Ok(get_iff(self.fd.as_raw_fd())?.flags() & IFF_PERSIST != 0)
    }

    /// `TUNSETPERSIST`: a persistent device outlives its descriptors.
    pub fn set_persist(&self, on: bool) -> Result<(), Error> {
        self.check_open()?;
        if ioctl_val(self.fd.as_raw_fd(), TUNSETPERSIST, on as c_ulong) != 0 {
            return Err(last_error("TUNSETPERSIST"));
        }
        Ok(())
    }

    /// `TUNSETOWNER` (the uid itself is the argument; the kernel cannot unset it).
    pub fn set_owner(&self, uid: u32) -> Result<(), Error> {
        self.check_open()?;
        let v = uid as c_ulong;
        if ioctl_val(self.fd.as_raw_fd(), TUNSETOWNER, v) != 0 {
            return Err(last_error("setting the owner (TUNSETOWNER)"));
        }
        Ok(())
    }

    /// `TUNSETGROUP` (the gid itself is the argument; the kernel cannot unset it).
    pub fn set_group(&self, gid: u32) -> Result<(), Error> {
        self.check_open()?;
        let v = gid as c_ulong;
        if ioctl_val(self.fd.as_raw_fd(), TUNSETGROUP, v) != 0 {
            return Err(last_error("setting the group (TUNSETGROUP)"));
        }
        Ok(())
    }

    /// Runs `f` on the device's rtnetlink socket (in its current namespace) with its
    /// interface index.
    fn with_netlink<T>(
        &self,
        f: impl FnOnce(&mut Netlink, u32) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.check_open()?;
        let ctl = self.control()?;
        let r = f(&mut ctl.netlink(), ctl.ifindex);
        r
    }

    /// The owner and group, read back through rtnetlink.
    pub fn owner_group(&self) -> Result<(Option<u32>, Option<u32>), Error> {
        self.with_netlink(|nl, ifindex| nl.tun_owner_group(ifindex))
    }

    /// The most segments the kernel puts in one super-packet it hands to this device
    /// (`gso_max_segs`, read through rtnetlink; 65535 unless lowered).
    pub fn gso_max_segs(&self) -> Result<u32, Error> {
        self.with_netlink(|nl, ifindex| nl.gso_max_segs(ifindex))
    }

    /// Sets `gso_max_segs` (1..=65535; `ip link set DEV gso_max_segs N`): TCP then builds
    /// super-packets of at most `segs` segments for this device, and the kernel splits
    /// larger forwarded ones before they reach it. A tunnel sets it to the number of its
    /// datagrams one `UDP_SEGMENT` send can carry, so that one read fills one send.
    pub fn set_gso_max_segs(&self, segs: u32) -> Result<(), Error> {
        if !(1..=65535).contains(&segs) {
            return Err(invalid(
                K::OutOfRange,
                format!("gso_max_segs must be 1..65535, not {segs}"),
            ));
        }
        self.with_netlink(|nl, ifindex| nl.set_gso_max_segs(ifindex, segs))
    }

    /// Adds an IPv4 or IPv6 address (rtnetlink `RTM_NEWADDR`).
    pub fn add_address(&self, a: &IfAddr, nodad: bool) -> Result<(), Error> {
        self.with_netlink(|nl, ifindex| nl.add_address(ifindex, a, nodad))
    }

    /// Removes an address (rtnetlink `RTM_DELADDR`).
    pub fn remove_address(&self, a: &IfAddr) -> Result<(), Error> {
        self.with_netlink(|nl, ifindex| nl.remove_address(ifindex, a))
    }

    /// The interface's addresses, IPv4 and IPv6 (link-local ones included).
    pub fn addresses(&self) -> Result<Vec<IfAddr>, Error> {
        self.with_netlink(|nl, ifindex| nl.addresses(ifindex))
    }

    /// Marks the queue closed and wakes every thread waiting in [`Tun::read`] or
    /// [`Tun::wait_readable`]. The descriptor is closed when the `Tun` is dropped.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd. A failure (counter
        // overflow) still leaves the eventfd readable, which is all that matters.
        unsafe {
            libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Whether [`Tun::shutdown`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits until the device is readable (`events = POLLIN`) or writable (`POLLOUT`),
    /// or the queue is shut down, for at most `timeout_ms` (-1: as long as it takes; 0
    /// events after a timeout). `EINTR` is returned to the caller.
    fn wait(&self, events: i16, timeout_ms: c_int) -> Result<i16, Error> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if n < 0 {
            return Err(last_error("waiting for the device (poll)"));
        }
        if fds[1].revents != 0 || self.is_closed() {
            return Err(Error::Closed);
        }
        Ok(fds[0].revents)
    }

    /// Waits until a read would not block. `EINTR` comes back as an error.
    pub fn wait_readable(&self) -> Result<(), Error> {
        self.check_open()?;
        self.wait(libc::POLLIN, -1).map(|_| ())
    }

    /// Waits until a read would not block (`Ok(true)`; also when the descriptor is in
    /// error: the read says what) or until `until` passes (`Ok(false)`): for a caller
    /// that looks at its own state between the wait and the read. `EINTR` comes back as
    /// an error.
    pub fn wait_readable_until(&self, until: Instant) -> Result<bool, Error> {
        self.check_open()?;
        let Some(ms) = Wait::Until(until).poll_ms() else {
            return Ok(false);
        };
        Ok(self.wait(libc::POLLIN, ms)? != 0)
    }

    /// Reads one packet (with its virtio header when [`Tun::vnet_hdr`]) into `buf`.
    ///
    /// Blocking: waits for a packet or for [`Tun::shutdown`] (then `Error::Closed`).
    /// Non-blocking: `EAGAIN` when there is none. `EINTR` is returned, not retried, so
    /// that the caller can check for signals. A packet larger than `buf` is cut short by
    /// the kernel, which says nothing: a read that fills `buf` is checked against the IP
    /// header's length ([`check_truncation`](super::batch::check_truncation)) and a cut
    /// packet (lost) is `Error::Invalid`.
    pub fn read(&self, buf: &mut [u8], blocking: bool) -> Result<usize, Error> {
        self.read_waiting(buf, blocking.into())
    }

    /// [`read`](Self::read), waiting for a packet as `wait` says: as long as it takes
    /// (`Block`, as blocking), not at all (`NonBlocking`: `EAGAIN`) or until an instant
    /// (`Until`, then `ETIMEDOUT`).
    pub fn read_waiting(&self, buf: &mut [u8], wait: Wait) -> Result<usize, Error> {
        let mut after_err = false;
        loop {
            self.check_open()?;
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the descriptor is
            // ours and stays open while `self` lives.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                let n = n as usize;
                let c = &self.counters;
                Counters::count(n, &c.reads, &c.read_bytes, &c.max_read);
                if n == buf.len() {
                    let tap = self.flags & IFF_TAP != 0;
                    super::batch::check_truncation(buf, super::batch::header_len(self), tap)?;
                }
                return Ok(n);
            }
            let e = last_error("reading from the TUN device");
            match e.errno() {
                Some(libc::EAGAIN) if wait != Wait::NonBlocking => {
                    if after_err {
                        return Err(Error::from_errno(libc::EIO, "reading from the TUN device"));
                    }
                    let Some(ms) = wait.poll_ms() else {
                        let what = "waiting for a packet from the TUN device";
                        return Err(Error::from_errno(libc::ETIMEDOUT, what));
                    };
                    let rev = self.wait(libc::POLLIN, ms)?;
                    after_err = rev & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
                        && rev & libc::POLLIN == 0;
                }
                Some(libc::EBADFD) => {
                    return Err(Error::from_errno(
                        libc::EBADFD,
                        "reading from the TUN device (the device was deleted)",
                    ))
                }
                _ => return Err(e),
            }
        }
    }

    /// Writes one packet (with its virtio header when [`Tun::vnet_hdr`]). A TUN write
    /// practically never blocks; if it would, a blocking call waits for `POLLOUT`.
    pub fn write(&self, buf: &[u8], blocking: bool) -> Result<usize, Error> {
        loop {
            self.check_open()?;
            let armed = self.faults.load(Ordering::Relaxed);
            if armed != 0 {
                if let Some(e) = self.take_fault(armed, buf) {
                    return Err(e);
                }
            }
            // SAFETY: `buf` is valid for reads of `buf.len()` bytes; the descriptor is ours.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                let c = &self.counters;
                Counters::count(n as usize, &c.writes, &c.write_bytes, &c.max_write);
                return Ok(n as usize);
            }
            let e = last_error("writing to the TUN device");
            match e.errno() {
                Some(libc::EAGAIN) if blocking => {
                    self.wait(libc::POLLOUT, -1)?;
                }
                Some(libc::EBADFD) => {
                    return Err(Error::from_errno(
                        libc::EBADFD,
                        "writing to the TUN device (the device was deleted)",
                    ))
                }
                _ => return Err(e),
            }
        }
    }
}

/// The error for a device that is no longer in the namespace of its configuration
/// sockets and could not be followed; `e` is what failed.
fn moved(name: &str, e: &Error) -> Error {
    let msg = format!(
        "{name} was moved to another network namespace (ip link set {name} netns ...) after \
         it was opened, and its configuration cannot follow it there: {e}; configure it \
         from its new namespace (I/O on the descriptor still works)"
    );
    match e.errno() {
        Some(errno) => Error::Os { errno, msg },
        None => match e {
            Error::Invalid(e) => Error::Invalid(e.clone().with_message(msg)),
            _ => Error::State(msg),
        },
    }
}

fn check_mtu(mtu: u32) -> Result<(), Error> {
    if !(68..=65535).contains(&mtu) {
        return Err(invalid(
            K::OutOfRange,
            format!("MTU {mtu} is out of range (68..=65535)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_with_packet_information_is_refused_before_anything_opens() {
        let opts = TunOptions {
            offload: true,
            packet_information: true,
            ..Default::default()
        };
        assert!(
            matches!(Tun::open(&opts), Err(Error::Invalid(m)) if m.message().contains("virtio"))
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("tun0").is_ok());
        assert!(check_name("a-fifteen-bytes").is_ok());
        assert!(matches!(
            check_name("sixteen-bytes-xx"),
            Err(Error::Invalid(_))
        ));
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("..").is_err());
    }

    #[test]
    fn mtus_are_checked() {
        assert!(check_mtu(1500).is_ok());
        assert!(check_mtu(67).is_err());
        assert!(check_mtu(65536).is_err());
    }

    crate::root_test! {
        /// Needs root and /dev/net/tun (ignored otherwise, see build.rs). Works in a private
        /// network namespace, on a thread of its own so that the namespace goes away with
        /// the thread.
        fn open_configure_read_write() {
            std::thread::spawn(open_configure_read_write_in_new_netns)
                .join()
                .expect("test thread");
        }
    }

    fn open_configure_read_write_in_new_netns() {
        // SAFETY: unshare on this thread only affects this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "unshare(CLONE_NEWNET) as root: {}",
                std::io::Error::last_os_error()
            );
        }
        let tun = Tun::open(&TunOptions {
            offload: true,
            mtu: Some(1400),
            up: true,
            ..Default::default()
        })
        .expect("open");
        assert!(tun.vnet_hdr());
        assert!(tun.name().unwrap().starts_with("tun"));
        assert_eq!(tun.mtu().unwrap(), 1400);
        assert!(tun.is_up().unwrap());
        let a = super::super::parse_ifaddr("192.0.2.1/24").unwrap();
        tun.add_address(&a, false).unwrap();
        assert!(tun.addresses().unwrap().contains(&a));
        tun.remove_address(&a).unwrap();
        assert!(!tun.addresses().unwrap().contains(&a));
        let mut buf = vec![0u8; 70000];
        // Nothing is queued, or only IPv6 router solicitations; either way no error
        // other than EAGAIN.
        match tun.read(&mut buf, false) {
            Ok(n) => assert!(n >= VNET_HDR_LEN),
            Err(e) => assert!(e.is_eagain(), "{e}"),
        }
        tun.shutdown();
        assert_eq!(tun.read(&mut buf, true), Err(Error::Closed));
        assert!(tun.clone_queue().is_err());
    }
}
