//! The Python class `TunDevice`: `crate::device::Tun` with Python buffers, errors and the
//! GIL. Every system call runs with the GIL released, on buffers exported (pinned) for
//! the length of the call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PySequence};

use super::buffers::{list_item, resize_bytearray, scan_bytearrays, seq_item, Views, PREALLOC};
use super::engine::{
    gro_py, kind_error, non_negative, set_sizes, split_args, split_to_py, PyGroTable,
};
use super::gil;
use crate::device::batch::{self, RecvState, Sent, Split};
use crate::device::{self as dev, parse_ifaddr, Tun, TunOptions};
use crate::engine::{ErrorKind, VIRTIO_NET_HDR_LEN};

/// `OSError(errno, msg)`: Python picks the subclass (`PermissionError`,
/// `FileNotFoundError`, `BlockingIOError`, ...) from the errno.
pub(crate) fn os_error(py: Python<'_>, errno: i32, msg: String) -> PyErr {
    match py.get_type::<PyOSError>().call1((errno, msg)) {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

pub(crate) fn to_py(py: Python<'_>, e: dev::Error) -> PyErr {
    match e {
        dev::Error::Invalid(m) => PyValueError::new_err(m),
        dev::Error::Engine(e) => super::engine::value_error(e),
        dev::Error::Os { errno, msg } => os_error(py, errno, msg),
        // EBADF, with the device's own message.
        e => os_error(py, e.errno().unwrap_or_default(), e.to_string()),
    }
}

/// Runs `f` with the GIL released; on `EINTR` runs the signal handlers (which may raise,
/// e.g. `KeyboardInterrupt`) and tries again, as PEP 475 asks.
fn retrying<T: Send>(
    py: Python<'_>,
    mut f: impl FnMut() -> Result<T, dev::Error> + Send,
) -> PyResult<T> {
    loop {
        match gil::syscall(py, &mut f) {
            Err(e) if e.is_eintr() => py.check_signals()?,
            r => return r.map_err(|e| to_py(py, e)),
        }
    }
}

/// A Linux TUN (or TAP) device, optionally with the kernel's offloads.
///
/// ``TunDevice(name=None, *, offload=False, tap=False, multi_queue=False,
/// packet_information=False, mtu=None, persist=False, owner=None, group=None,
/// nonblocking=False, up=False, netns=None)`` creates the device (or opens the existing
/// one of that name) in the calling thread's network namespace, or in ``netns`` (a name
/// under ``/run/netns``, a path to a namespace file, or a descriptor of one). ``name=None`` lets the kernel pick
/// (``tun0``, ``tun1``...); a name longer than 15 bytes is a ``ValueError``.
///
/// With ``offload=True`` the device carries a 10-byte ``virtio_net_hdr`` before every
/// packet (``IFF_VNET_HDR``) and the kernel may hand over TCP (and, where it can, UDP)
/// super-packets up to 64 KiB: checksum, TSO4/TSO6 and USO4/USO6 offload. ``recv`` and
/// ``send`` then include that header; ``recv_multiple`` splits super-packets into
/// MTU-sized ones and ``send_multiple`` coalesces packets into super-packets.
///
/// Errors: no CAP_NET_ADMIN gives ``PermissionError``, a missing ``/dev/net/tun``
/// ``FileNotFoundError``, a non-blocking read with nothing to read ``BlockingIOError``,
/// any call on a closed device ``OSError(EBADF)``. Every system call runs with the GIL
/// released. ``close()`` wakes a thread blocked in ``recv`` (it raises ``OSError``).
///
/// Configuration (``mtu``, ``up()``, ``add_address()`` ...) uses sockets opened in the
/// device's network namespace at creation, so it works from any thread afterwards. A
/// device moved to another namespace later (``ip link set DEV netns NS``) is followed
/// there (that needs CAP_SYS_ADMIN for setns; without it the error says it was moved).
#[pyclass(name = "TunDevice", module = "tunoffload", frozen)]
pub(crate) struct PyTunDevice {
    tun: Mutex<Option<Arc<Tun>>>,
    blocking: AtomicBool,
    last_name: Mutex<String>,
    offload: bool,
    udp_gso: bool,
    tap: bool,
    multi_queue: bool,
    packet_information: bool,
    /// The queue's read/write counters (kept after close).
    counters: Arc<dev::Counters>,
    /// Packets out of `recv_multiple` (after splitting).
    rx_packets: AtomicU64,
    /// Packets into `send_multiple` (before coalescing).
    tx_packets: AtomicU64,
    /// A packet read by a `recv_multiple` whose buffers could not take it, for the next.
    recv_state: RecvState,
}

impl PyTunDevice {
    fn wrap(tun: Tun, blocking: bool) -> Self {
        let flags = tun.flags();
        let name = tun.name().unwrap_or_default();
        PyTunDevice {
            counters: tun.counters.clone(),
            offload: tun.vnet_hdr(),
            udp_gso: tun.udp_gso(),
            tap: flags & dev::sys::IFF_TAP != 0,
            multi_queue: flags & dev::sys::IFF_MULTI_QUEUE != 0,
            packet_information: flags & dev::sys::IFF_NO_PI == 0,
            tun: Mutex::new(Some(Arc::new(tun))),
            blocking: AtomicBool::new(blocking),
            last_name: Mutex::new(name),
            rx_packets: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            recv_state: RecvState::new(),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Tun>>> {
        self.tun.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open queue, or `OSError(EBADF)`.
    fn get(&self, py: Python<'_>) -> PyResult<Arc<Tun>> {
        match &*self.slot() {
            Some(t) => Ok(t.clone()),
            None => Err(to_py(py, dev::Error::Closed)),
        }
    }

    fn is_blocking(&self) -> bool {
        self.blocking.load(Ordering::Relaxed)
    }

    /// Writes `packets` in order with the GIL released (`batch::write_packets`: a
    /// refused packet does not stop the others); on `EINTR` runs the signal handlers and
    /// goes on. Returns the bytes written, or the exception with what was written. The
    /// writes wait for room even in non-blocking mode, so the batch goes out whole (an
    /// `EAGAIN` would otherwise count as a refused packet and lose it).
    fn write_all(&self, py: Python<'_>, tun: &Tun, packets: &[&[u8]]) -> PyResult<usize> {
        let mut sent = Sent::new();
        loop {
            let r = gil::syscall(py, || batch::write_packets(tun, packets, true, &mut sent));
            let err = match r {
                Ok(()) => return Ok(sent.bytes),
                Err(e) if e.is_eintr() => match py.check_signals() {
                    Ok(()) => continue,
                    Err(sig) => sig,
                },
                Err(e) => to_py(py, e),
            };
            return Err(with_counts(py, err, sent.packets, sent.bytes));
        }
    }
}

/// More than any one read from a TUN/TAP device returns (virtio header or packet
/// information, an Ethernet header and a 64 KiB packet).
const MAX_READ: usize = 1 << 17;

/// `send_multiple`'s `sizes`: the first `count` (default all) entries, each > 0 and with
/// `offset + size` in range.
fn sizes_of(s: &Bound<'_, PyAny>, count: Option<usize>, offset: usize) -> PyResult<Vec<usize>> {
    let s = s
        .cast::<PySequence>()
        .map_err(|_| PyTypeError::new_err("sizes must be a list of int"))?;
    let have_sizes = s.len()?;
    let n = count.unwrap_or(have_sizes);
    if n > have_sizes {
        // Checked before allocating: a huge count must not abort the process.
        return Err(kind_error(
            ErrorKind::SizesTooShort,
            None,
            format!("count is {n} but sizes has {have_sizes} entries"),
        ));
    }
    let mut v = Vec::with_capacity(n.min(PREALLOC));
    let list = s.cast::<PyList>().ok();
    // The int object last converted and its value: recv_multiple stores one shared int
    // for equal sizes, so a list it filled converts one or two objects, not 45.
    let mut known: Option<(Bound<'_, PyAny>, usize)> = None;
    for i in 0..n {
        let item = match list.and_then(|l| list_item(l, i)) {
            Some(o) => o,
            None => s.get_item(i)?,
        };
        let size = match &known {
            Some((o, v)) if o.is(&item) => *v,
            _ => {
                let v = item.extract::<usize>()?;
                known = Some((item, v));
                v
            }
        };
        // (No buffer holds isize::MAX bytes; `offset` is below it too.)
        if size > isize::MAX as usize || offset.checked_add(size).is_none() {
            return Err(PyValueError::new_err(format!(
                "offset + sizes[{i}] overflows: sizes[{i}] is {size}"
            )));
        }
        if size == 0 {
            return Err(kind_error(
                ErrorKind::NoPacketAfterOffset,
                Some(i),
                format!("sizes[{i}] is 0: no packet"),
            ));
        }
        v.push(size);
    }
    Ok(v)
}

/// What `recv_multiple` can check of its outputs before it reads: each of `bufs[..have]`
/// is a bytearray (it grows as needed) or a writable buffer with room after `offset`,
/// and none is `original` (the buffer the read goes into).
fn check_outputs(
    py: Python<'_>,
    bufs: &Bound<'_, PyAny>,
    have: usize,
    offset: usize,
    original: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let same_as = original.map_or(std::ptr::null_mut(), |o| o.as_ptr());
    let list = bufs.cast::<PyList>().ok();
    let mut i = 0;
    while i < have {
        // A list of bytearrays (the usual case) is passed over without references taken.
        if let Some(l) = list {
            match scan_bytearrays(l, i, same_as) {
                Some(j) => i = j,
                None => break,
            }
        }
        let obj = seq_item(bufs, i)?;
        if original.is_some_and(|o| o.is(&obj)) {
            return Err(PyValueError::new_err(format!(
                "bufs[{i}] is original_buffer: the packet read would be overwritten"
            )));
        }
        if !obj.is_exact_instance_of::<PyByteArray>() {
            let mut views = Views::with_capacity(py, 1);
            let r = views.write(&obj, &|| format!("bufs[{i}]"))?;
            if r.len() <= offset {
                return Err(PyValueError::new_err(format!(
                    "bufs[{i}] holds {} bytes and cannot grow (not a bytearray): no room \
                     after offset {offset}",
                    r.len()
                )));
            }
        }
        i += 1;
    }
    Ok(())
}

/// Attaches `packets_sent` and `bytes_sent` to the exception.
fn with_counts(py: Python<'_>, err: PyErr, packets: usize, bytes: usize) -> PyErr {
    let v = err.value(py);
    let _ = v.setattr("packets_sent", packets);
    let _ = v.setattr("bytes_sent", bytes);
    err
}

#[pymethods]
impl PyTunDevice {
    #[new]
    #[pyo3(signature = (
        name=None, *, offload=false, tap=false, multi_queue=false, packet_information=false,
        mtu=None, persist=false, owner=None, group=None, nonblocking=false, up=false,
        netns=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: Option<String>,
        offload: bool,
        tap: bool,
        multi_queue: bool,
        packet_information: bool,
        mtu: Option<u32>,
        persist: bool,
        owner: Option<u32>,
        group: Option<u32>,
        nonblocking: bool,
        up: bool,
        netns: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if offload && tap {
            return Err(PyValueError::new_err(
                "offload=True is for TUN devices (IP packets); tap=True carries Ethernet frames",
            ));
        }
        let opts = TunOptions {
            name,
            tap,
            multi_queue,
            packet_information,
            offload,
            persist,
            owner,
            group,
            mtu,
            up,
            netns: match netns {
                Some(t) if !t.is_none() => Some(Arc::new(super::netns::open(py, t)?)),
                _ => None,
            },
        };
        let tun = py.detach(|| Tun::open(&opts)).map_err(|e| to_py(py, e))?;
        Ok(Self::wrap(tun, !nonblocking))
    }

    /// ``TunDevice.from_fd(fd, *, nonblocking=False)``: adopts a descriptor already
    /// attached to a TUN/TAP device (for example one passed from a privileged helper).
    ///
    /// The descriptor is duplicated (the caller still owns and must close ``fd``); the
    /// open file is switched to non-blocking mode, which tunoffload needs internally. If
    /// the device carries a virtio header, offload is on: the header size is set to 10
    /// and the offload mask to checksum/TSO (and USO where the kernel has it).
    #[staticmethod]
    #[pyo3(signature = (fd, *, nonblocking=false))]
    fn from_fd(py: Python<'_>, fd: i32, nonblocking: bool) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!("bad file descriptor {fd}")));
        }
        let tun = py.detach(|| Tun::from_fd(fd)).map_err(|e| to_py(py, e))?;
        Ok(Self::wrap(tun, !nonblocking))
    }

    /// Opens another queue of this multi-queue device (``multi_queue=True``), with the
    /// same offload settings and blocking mode, as a new ``TunDevice``. Each queue gets
    /// its own share of the traffic (the kernel hashes flows over queues).
    fn clone_queue(&self, py: Python<'_>) -> PyResult<Self> {
        let tun = self.get(py)?;
        let new = py.detach(|| tun.clone_queue()).map_err(|e| to_py(py, e))?;
        Ok(Self::wrap(new, self.is_blocking()))
    }

    /// The interface name, as the kernel has it now (the last known name once closed).
    #[getter]
    fn name(&self, py: Python<'_>) -> PyResult<String> {
        let Some(tun) = self.slot().clone() else {
            return Ok(self
                .last_name
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone());
        };
        let name = py.detach(|| tun.name()).map_err(|e| to_py(py, e))?;
        name.clone_into(&mut self.last_name.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(name)
    }

    /// The interface index.
    #[getter]
    fn ifindex(&self, py: Python<'_>) -> PyResult<u32> {
        let tun = self.get(py)?;
        py.detach(|| tun.current_ifindex())
            .map_err(|e| to_py(py, e))
    }

    /// True when reads and writes carry the 10-byte virtio header (``offload=True``).
    #[getter]
    fn offload(&self) -> bool {
        self.offload
    }

    /// True when the kernel accepted UDP segmentation offload (USO4/USO6): it may then
    /// hand over UDP super-packets, and ``send_multiple`` coalesces UDP flows too.
    #[getter]
    fn udp_gso(&self) -> bool {
        self.udp_gso
    }

    /// True for a TAP (Ethernet) device.
    #[getter]
    fn tap(&self) -> bool {
        self.tap
    }

    /// True for a multi-queue device (``clone_queue()`` works).
    #[getter]
    fn multi_queue(&self) -> bool {
        self.multi_queue
    }

    /// True when every packet starts with the 4-byte packet information header.
    #[getter]
    fn packet_information(&self) -> bool {
        self.packet_information
    }

    /// True once ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.slot().is_none()
    }

    /// The file descriptor of this queue, or -1 once closed (as ``socket.fileno()``).
    /// The descriptor is in non-blocking mode.
    fn fileno(&self) -> i32 {
        self.slot().as_ref().map_or(-1, |t| t.raw_fd())
    }

    /// Closes the device (this queue). Idempotent. A thread blocked in ``recv`` or
    /// ``recv_multiple`` on this device wakes at once and raises ``OSError(EBADF)``; the
    /// descriptor itself is closed when the last such call has returned, so its number is
    /// never reused under a running call. A non-persistent device disappears when its
    /// last queue is closed.
    fn close(&self) {
        let taken = self.slot().take();
        if let Some(tun) = taken {
            tun.shutdown();
        }
    }

    /// Returns the device itself (``with TunDevice(...) as dev:``).
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the device; exceptions propagate.
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    /// ``<TunDevice name='tun0' offload=True closed=False>``.
    fn __repr__(&self, py: Python<'_>) -> String {
        let name = self.name(py).unwrap_or_default();
        format!(
            "<TunDevice name={name:?} offload={} closed={}>",
            if self.offload { "True" } else { "False" },
            if self.closed() { "True" } else { "False" }
        )
    }

    /// ``setblocking(flag)``: in blocking mode (the default) ``recv`` waits for a packet;
    /// in non-blocking mode it raises ``BlockingIOError`` when there is none.
    fn setblocking(&self, flag: bool) {
        self.blocking.store(flag, Ordering::Relaxed);
    }

    /// True in blocking mode.
    fn getblocking(&self) -> bool {
        self.is_blocking()
    }

    /// The MTU; assign to change it (68..=65535).
    #[getter]
    fn get_mtu(&self, py: Python<'_>) -> PyResult<u32> {
        let tun = self.get(py)?;
        retrying(py, || tun.mtu())
    }

    #[setter]
    fn set_mtu(&self, py: Python<'_>, mtu: u32) -> PyResult<()> {
        let tun = self.get(py)?;
        retrying(py, || tun.set_mtu(mtu))
    }

    /// Brings the interface up (``ip link set NAME up``).
    fn up(&self, py: Python<'_>) -> PyResult<()> {
        let tun = self.get(py)?;
        retrying(py, || tun.set_up(true))
    }

    /// Brings the interface down.
    fn down(&self, py: Python<'_>) -> PyResult<()> {
        let tun = self.get(py)?;
        retrying(py, || tun.set_up(false))
    }

    /// True when the interface is administratively up.
    #[getter]
    fn is_up(&self, py: Python<'_>) -> PyResult<bool> {
        let tun = self.get(py)?;
        retrying(py, || tun.is_up())
    }

    /// ``add_address(address, *, nodad=False)``: adds an IPv4 or IPv6 address given as
    /// ``"10.0.0.1/24"``, ``"fd00::1/64"`` (a bare address gets /32 or /128) or an
    /// ``ipaddress.IPv4Interface``/``IPv6Interface``. ``nodad`` skips IPv6 duplicate
    /// address detection. An address already present: ``FileExistsError``.
    #[pyo3(signature = (address, *, nodad=false))]
    fn add_address(&self, py: Python<'_>, address: &Bound<'_, PyAny>, nodad: bool) -> PyResult<()> {
        let a = parse_ifaddr(&address.str()?.to_cow()?).map_err(|e| to_py(py, e))?;
        let tun = self.get(py)?;
        retrying(py, || tun.add_address(&a, nodad))
    }

    /// ``remove_address(address)``: removes an address given as for ``add_address``.
    /// An address not present: ``OSError(EADDRNOTAVAIL)``.
    fn remove_address(&self, py: Python<'_>, address: &Bound<'_, PyAny>) -> PyResult<()> {
        let a = parse_ifaddr(&address.str()?.to_cow()?).map_err(|e| to_py(py, e))?;
        let tun = self.get(py)?;
        retrying(py, || tun.remove_address(&a))
    }

    /// The interface's IPv4 and IPv6 addresses as ``"address/prefix"`` strings, IPv6
    /// link-local ones included.
    #[getter]
    fn addresses(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let tun = self.get(py)?;
        let v = retrying(py, || tun.addresses())?;
        Ok(v.iter()
            .map(|a| format!("{}/{}", a.addr, a.prefix))
            .collect())
    }

    /// Whether the device is persistent (outlives its descriptors); assign to change.
    #[getter]
    fn get_persist(&self, py: Python<'_>) -> PyResult<bool> {
        let tun = self.get(py)?;
        retrying(py, || tun.persist())
    }

    #[setter]
    fn set_persist(&self, py: Python<'_>, on: bool) -> PyResult<()> {
        let tun = self.get(py)?;
        retrying(py, || tun.set_persist(on))
    }

    /// The uid allowed to attach to the device (``TUNSETOWNER``), or None if unset;
    /// assign a uid to change it (the kernel offers no way back to unset).
    #[getter]
    fn get_owner(&self, py: Python<'_>) -> PyResult<Option<u32>> {
        let tun = self.get(py)?;
        Ok(retrying(py, || tun.owner_group())?.0)
    }

    #[setter]
    fn set_owner(&self, py: Python<'_>, uid: u32) -> PyResult<()> {
        let tun = self.get(py)?;
        retrying(py, || tun.set_owner(uid))
    }

    /// The gid allowed to attach to the device (``TUNSETGROUP``), or None if unset;
    /// assign a gid to change it (the kernel offers no way back to unset).
    #[getter]
    fn get_group(&self, py: Python<'_>) -> PyResult<Option<u32>> {
        let tun = self.get(py)?;
        Ok(retrying(py, || tun.owner_group())?.1)
    }

    #[setter]
    fn set_group(&self, py: Python<'_>, gid: u32) -> PyResult<()> {
        let tun = self.get(py)?;
        retrying(py, || tun.set_group(gid))
    }

    /// A TAP device's MAC address as ``"aa:bb:cc:dd:ee:ff"`` (None for TUN); assign a
    /// string of that form or 6 bytes to change it.
    #[getter]
    fn get_mac(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let tun = self.get(py)?;
        let mac = retrying(py, || tun.mac())?;
        Ok(mac.map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        }))
    }

    #[setter]
    fn set_mac(&self, py: Python<'_>, mac: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes: Vec<u8> = if let Ok(s) = mac.extract::<String>() {
            let parts: Vec<_> = s.split([':', '-']).collect();
            let parsed: Option<Vec<u8>> = parts
                .iter()
                .map(|p| u8::from_str_radix(p, 16).ok())
                .collect();
            match parsed {
                Some(v) if parts.len() == 6 && parts.iter().all(|p| p.len() == 2) => v,
                _ => return Err(PyValueError::new_err(format!("not a MAC address: {s:?}"))),
            }
        } else {
            mac.extract::<Vec<u8>>()
                .map_err(|_| PyTypeError::new_err("mac must be a str or 6 bytes"))?
        };
        let arr: [u8; 6] = bytes
            .try_into()
            .map_err(|_| PyValueError::new_err("a MAC address has 6 bytes"))?;
        let tun = self.get(py)?;
        retrying(py, || tun.set_mac(arr))
    }

    /// The transmit queue length (``txqueuelen``); assignable.
    #[getter]
    fn get_tx_queue_len(&self, py: Python<'_>) -> PyResult<u32> {
        let tun = self.get(py)?;
        retrying(py, || tun.tx_queue_len())
    }

    #[setter]
    fn set_tx_queue_len(&self, py: Python<'_>, len: u32) -> PyResult<()> {
        let tun = self.get(py)?;
        retrying(py, || tun.set_tx_queue_len(len))
    }

    /// The most segments the kernel puts in one super-packet for this device
    /// (``gso_max_segs``, 65535 unless lowered); assignable, 1..65535. A tunnel sets it to
    /// ``UdpSocket.max_segments(datagram size)`` so each super-packet read from the device
    /// leaves in one ``UDP_SEGMENT`` send and arrives as one coalesced read.
    #[getter]
    fn get_gso_max_segs(&self, py: Python<'_>) -> PyResult<u32> {
        let tun = self.get(py)?;
        retrying(py, || tun.gso_max_segs())
    }

    #[setter]
    fn set_gso_max_segs(&self, py: Python<'_>, segs: u32) -> PyResult<()> {
        let tun = self.get(py)?;
        retrying(py, || tun.set_gso_max_segs(segs))
    }

    /// ``recv(buf) -> int``: reads one packet into the writable buffer ``buf`` and returns
    /// its length. With ``offload=True`` the data starts with the 10-byte virtio header
    /// and may be a super-packet of up to 64 KiB (use ``recv_multiple`` to split it).
    /// A packet larger than ``buf`` is truncated by the kernel (and so lost):
    /// ``ValueError``.
    /// Blocking mode waits; non-blocking mode raises ``BlockingIOError``.
    fn recv(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        let tun = self.get(py)?;
        let mut views = Views::with_capacity(py, 1);
        let r = views.write(buf, &|| "buf".to_owned())?;
        let blocking = self.is_blocking();
        // SAFETY: the writable export is held by `views` until after the read; this is
        // the only reference to those bytes.
        let data = unsafe { r.slice_mut() };
        retrying(py, || self.recv_state.read(&tun, data, blocking))
    }

    /// ``read(size=65545) -> bytes``: reads one packet and returns it as ``bytes``
    /// (allocates; ``recv`` into a reused buffer does not). Same header rule as ``recv``.
    #[pyo3(signature = (size=65545))]
    fn read<'py>(&self, py: Python<'py>, size: usize) -> PyResult<Bound<'py, PyBytes>> {
        let tun = self.get(py)?;
        let blocking = self.is_blocking();
        // No read returns more than MAX_READ: a larger `size` must not become a huge
        // allocation, whose failure would abort the process.
        let mut v = vec![0u8; size.min(MAX_READ)];
        let n = retrying(py, || self.recv_state.read(&tun, &mut v, blocking))?;
        Ok(PyBytes::new(py, &v[..n]))
    }

    /// ``send(buf) -> int``: writes one packet (any bytes-like object) and returns the
    /// number of bytes written. With ``offload=True`` it must start with a 10-byte virtio
    /// header (``bytes(VirtioNetHdr())`` for a plain packet). ``write`` is an alias.
    fn send(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        let tun = self.get(py)?;
        let mut views = Views::with_capacity(py, 1);
        let r = views.read(buf, &|| "buf".to_owned())?;
        let blocking = self.is_blocking();
        // SAFETY: the export is held by `views` until after the write.
        let data = unsafe { r.slice() };
        retrying(py, || tun.write(data, blocking))
    }

    /// Alias of ``send`` (python-pytun's name).
    fn write(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.send(py, buf)
    }

    /// ``recv_multiple(original_buffer, bufs, sizes, offset=0, *, fit=False) -> int``
    ///
    /// One read from the device, then the packet(s) into ``bufs``: packet *i* lands in
    /// ``bufs[i][offset:offset + sizes[i]]`` and ``sizes[i]`` is set (``sizes`` is a
    /// list at least as long as the number of packets); returns the number of packets.
    ///
    /// With offload, ``original_buffer`` (writable, ideally ``VIRTIO_NET_HDR_LEN +
    /// 65535`` bytes) receives the virtio header and the possibly 64 KiB super-packet,
    /// which is split exactly as ``gso_split`` does. Without offload one packet is read
    /// straight into ``bufs[0][offset:]`` and ``original_buffer`` is not used.
    ///
    /// Zero-copy forwarding: hand the same ``bufs`` and ``sizes`` to another device's
    /// ``send_multiple(gro_table, bufs, offset, sizes=sizes, count=n)``; nothing is
    /// copied, resized or allocated per packet (see ``docs/forwarding.md``)::
    ///
    ///     n = src.recv_multiple(original, bufs, sizes, offset)
    ///     dst.send_multiple(gro_table, bufs, offset, sizes=sizes, count=n)
    ///
    /// ``fit=True`` instead resizes each filled ``bytearray`` in ``bufs`` to exactly
    /// ``offset + sizes[i]`` (for code that wants exact-length packets, e.g. plain
    /// ``send_multiple(gro_table, bufs[:n], offset)``), and such a loop just works: a
    /// ``bytearray`` too small for its packet is grown (with or without ``fit``).
    ///
    /// Blocking mode waits for a packet; non-blocking raises ``BlockingIOError``.
    /// Arguments wrong whatever arrives (types, a negative offset, empty ``bufs`` or
    /// ``sizes``, a read-only or too small ``original_buffer``, an output that is not a
    /// writable buffer or, not being a ``bytearray``, has no room after ``offset``, an
    /// output that is ``original_buffer``) raise before anything is read. Too few or too
    /// small ``bufs`` for the packet that came: ``ValueError``, and the packet is kept
    /// for the next call. A malformed super-packet: ``ValueError`` (that packet is lost).
    /// The GIL is released during the read, and during the split of 16 KiB or more into
    /// ``bytearray`` outputs large enough while another thread is in a system call of
    /// this module (each output exported meanwhile; see ``docs/forwarding.md``).
    #[pyo3(signature = (original_buffer, bufs, sizes, offset=0, *, fit=false))]
    fn recv_multiple(
        &self,
        py: Python<'_>,
        original_buffer: &Bound<'_, PyAny>,
        bufs: &Bound<'_, PyAny>,
        sizes: &Bound<'_, PyAny>,
        offset: isize,
        fit: bool,
    ) -> PyResult<usize> {
        let offset = non_negative(offset, "offset")?;
        let tun = self.get(py)?;
        let sizes_list = split_args(bufs, sizes, "bufs")?;
        let have = bufs.len()?;
        // As gso_split refuses them (the split's own kinds).
        if have == 0 {
            let m = "bufs must not be empty".to_owned();
            return Err(kind_error(ErrorKind::TooFewOutBufs, None, m));
        }
        if sizes_list.is_empty() {
            let m = "sizes must not be empty".to_owned();
            return Err(kind_error(ErrorKind::SizesTooShort, None, m));
        }
        let orig_obj = self.offload.then_some(original_buffer);
        check_outputs(py, bufs, have, offset, orig_obj)?;
        let blocking = self.is_blocking();
        if !self.offload {
            let first = seq_item(bufs, 0)?;
            let ba = first
                .cast::<PyByteArray>()
                .ok()
                .filter(|b| b.is_exact_instance_of::<PyByteArray>());
            let want = offset + batch::max_read(&tun);
            if let Some(b) = ba {
                if b.len() <= offset || (fit && b.len() < want) {
                    // With `fit` the bytes after the packet are cut off again at once.
                    resize_bytearray(b, want, if fit { offset } else { want })?;
                }
            }
            let n = {
                let mut views = Views::with_capacity(py, 1);
                let r = views.write(&first, &|| "bufs[0]".to_owned())?;
                let len = r.len();
                // SAFETY: the writable export is held by `views` until after the read;
                // this is the only reference to those bytes.
                let data = unsafe { r.slice_mut() }
                    .get_mut(offset..)
                    .filter(|d| !d.is_empty())
                    // This export, not check_outputs' (a __buffer__ may give another).
                    .ok_or_else(|| {
                        PyValueError::new_err(format!(
                            "bufs[0] holds {len} bytes and cannot grow (not a bytearray): \
                             no room after offset {offset}"
                        ))
                    })?;
                retrying(py, || self.recv_state.read(&tun, data, blocking))?
            };
            set_sizes(sizes_list, 1, n, n)?; // no new int when the entry holds n already
            self.rx_packets.fetch_add(1, Ordering::Relaxed);
            if let (true, Some(b)) = (fit, ba) {
                if b.len() != offset + n {
                    b.resize(offset + n)?;
                }
            }
            return Ok(1);
        }
        let mut views = Views::with_capacity(py, 1);
        let orig = views.write(original_buffer, &|| "original_buffer".to_owned())?;
        batch::check_original(orig.len(), "original_buffer").map_err(|e| to_py(py, e))?;
        let n = {
            // SAFETY: the writable export is held by `views` until after the read; this
            // is the only reference to those bytes while it lives.
            let data = unsafe { orig.slice_mut() };
            retrying(py, || self.recv_state.read(&tun, data, blocking))?
        };
        // SAFETY: the export is still held; the read is over, nothing writes to it now
        // (split_to_py checks that the outputs do not overlap it).
        let read = &unsafe { orig.slice() }[..n];
        // Everything goes through the engine: super-packets are split, a plain packet
        // (GSO_NONE without NEEDS_CSUM) is copied across as it is, whatever it holds.
        let split = Split::plan(read).map_err(|e| to_py(py, e.error))?;
        let packet = &read[VIRTIO_NET_HDR_LEN..];
        let count = split_to_py(
            py, &split, packet, bufs, sizes_list, offset, true, fit, true, "bufs",
        )
        .map_err(|f| {
            if !f.keep {
                return f.err;
            }
            self.recv_state.hold(read);
            if f.err.is_instance_of::<PyValueError>(py) {
                // The message says so; the exception itself (its `kind` and `index`) stays.
                let v = f.err.value(py);
                let m = format!("{v} (the packet is kept for the next call)");
                if let Ok(args) = pyo3::types::PyTuple::new(py, [m]) {
                    let _ = v.setattr(pyo3::intern!(py, "args"), args);
                }
            }
            f.err
        })?;
        drop(views);
        self.rx_packets.fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }

    /// ``send_multiple(gro_table, bufs, offset, *, sizes=None, count=None) -> int``
    ///
    /// Writes the packets ``bufs[i][offset:]`` to the device and returns the number of
    /// bytes written (virtio headers included), as tun-rs does.
    ///
    /// With offload, ``offset >= VIRTIO_NET_HDR_LEN`` and the packets are first coalesced
    /// exactly as ``handle_gro`` does (``bufs`` is then a list of ``bytearray``, which may
    /// grow, and whose entries may be swapped); each resulting packet is written with its
    /// virtio header. Without offload each packet is written as it is.
    ///
    /// ``sizes``: packet *i* is ``bufs[i][offset:offset + sizes[i]]`` instead (the bytes
    /// after it are ignored), so the ``bufs`` and ``sizes`` that ``recv_multiple`` filled
    /// go straight in, with no resizing and no copy. ``count``: only the first ``count``
    /// packets (default: ``len(sizes)``, or all of ``bufs``). See ``docs/forwarding.md``.
    ///
    /// On a TUN device every packet to write is checked first as the kernel would refuse
    /// it (IP version, IPv4 header length, total or payload length against the buffer):
    /// a bad one is a ``ValueError`` naming its index, raised before anything is
    /// written. A packet the kernel still refuses does not stop the others; at the end
    /// the first error is raised. Any exception raised after writing started carries
    /// ``packets_sent`` and ``bytes_sent`` attributes (what was written before it). The
    /// batch is written whole even in non-blocking mode (a TUN write does not block in
    /// practice). The GIL is released during the writes, and during the coalescing of 16
    /// KiB or more with ``sizes=`` when every buffer holds ``offset + 65535`` bytes and
    /// another thread is in a system call of this module (each buffer exported
    /// meanwhile).
    #[pyo3(signature = (gro_table, bufs, offset, *, sizes=None, count=None))]
    fn send_multiple(
        &self,
        py: Python<'_>,
        mut gro_table: PyRefMut<'_, PyGroTable>,
        bufs: &Bound<'_, PyAny>,
        offset: isize,
        sizes: Option<&Bound<'_, PyAny>>,
        count: Option<usize>,
    ) -> PyResult<usize> {
        let offset = non_negative(offset, "offset")?;
        let tun = self.get(py)?;
        let seq = bufs
            .cast::<PySequence>()
            .map_err(|_| PyTypeError::new_err("bufs must be a list of bytearray"))?;
        let have = seq.len()?;
        let sizes: Option<Vec<usize>> = match sizes {
            None => None,
            Some(s) => Some(sizes_of(s, count, offset)?),
        };
        let n = count.or(sizes.as_ref().map(Vec::len)).unwrap_or(have);
        if n > have {
            return Err(PyValueError::new_err(format!(
                "count is {n} but bufs has {have} entries"
            )));
        }
        if self.offload && offset < VIRTIO_NET_HDR_LEN {
            return Err(kind_error(
                ErrorKind::OffsetTooSmall,
                None,
                format!(
                    "offset {offset} leaves no room for the {VIRTIO_NET_HDR_LEN}-byte virtio \
                     header"
                ),
            ));
        }
        if n == 0 {
            return Ok(0);
        }
        self.tx_packets.fetch_add(n as u64, Ordering::Relaxed);
        // Each packet to write is `bufs[i][start..end]`: its virtio header (with offload)
        // and the packet. (i, end) of each; an end of usize::MAX is the buffer's end.
        let hdr = if self.offload { VIRTIO_NET_HDR_LEN } else { 0 };
        let start = offset - hdr;
        let spans: Vec<(usize, usize)> = if self.offload {
            let list = bufs
                .cast::<PyList>()
                .map_err(|_| PyTypeError::new_err("bufs must be a list of bytearray"))?;
            let whole_lens: Vec<usize>;
            let lens: Option<&[usize]> = match &sizes {
                Some(v) => Some(&v[..n]),
                None if n == have => None,
                None => {
                    whole_lens = (0..n)
                        .map(|i| Ok(seq_item(bufs, i)?.len()?.saturating_sub(offset)))
                        .collect::<PyResult<_>>()?;
                    Some(&whole_lens)
                }
            };
            let udp = self.udp_gso;
            gro_py(py, list, offset, lens, &mut gro_table.inner, udp)?
        } else {
            Vec::new() // every buffer in order: spans made as they are read, below
        };
        let count = if self.offload { spans.len() } else { n };
        let span = |k: usize| match self.offload {
            true => spans[k],
            false => (k, sizes.as_ref().map_or(usize::MAX, |v| offset + v[k])),
        };
        let mut views = Views::with_capacity(py, count);
        let mut packets: Vec<&[u8]> = Vec::with_capacity(count.min(PREALLOC));
        for k in 0..count {
            let (i, end) = span(k);
            let obj = seq_item(bufs, i)?;
            let r = views.read(&obj, &|| format!("bufs[{i}]"))?;
            let end = if end == usize::MAX { r.len() } else { end };
            if end > r.len() {
                return Err(PyValueError::new_err(format!(
                    "bufs[{i}] holds {} bytes, less than offset + sizes[{i}] = {end}",
                    r.len()
                )));
            }
            if end <= offset {
                return Err(kind_error(
                    ErrorKind::NoPacketAfterOffset,
                    Some(i),
                    format!(
                        "bufs[{i}] holds {} bytes: no packet after offset {offset}",
                        r.len()
                    ),
                ));
            }
            // SAFETY: the export is held by `views` until the writes are done; nothing
            // writes to these bytes meanwhile (the GIL-free part only reads them).
            packets.push(&unsafe { r.slice() }[start..end]);
        }
        if !self.tap && !self.packet_information {
            batch::check_packets(&packets, self.offload, |k| span(k).0)
                .map_err(|e| to_py(py, e))?;
        }
        self.write_all(py, &tun, &packets)
    }

    /// Counters of this queue since it was opened (still readable after close), as a dict: ``reads``, ``read_bytes``,
    /// ``max_read`` (system calls and sizes, virtio headers included: a ``max_read``
    /// above the MTU means super-packets came in), ``rx_packets`` (packets out of
    /// ``recv_multiple`` after splitting), and the same for writes (``tx_packets``: packets
    /// into ``send_multiple`` before coalescing).
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let d = pyo3::types::PyDict::new(py);
        {
            let c = &self.counters;
            for (k, v) in [
                ("reads", &c.reads),
                ("read_bytes", &c.read_bytes),
                ("max_read", &c.max_read),
                ("writes", &c.writes),
                ("write_bytes", &c.write_bytes),
                ("max_write", &c.max_write),
            ] {
                d.set_item(k, v.load(Ordering::Relaxed))?;
            }
        }
        d.set_item("rx_packets", self.rx_packets.load(Ordering::Relaxed))?;
        d.set_item("tx_packets", self.tx_packets.load(Ordering::Relaxed))?;
        Ok(d)
    }

    /// Waits (GIL released) until a packet can be read, then returns; blocking even in
    /// non-blocking mode. ``OSError(EBADF)`` if the device is closed meanwhile.
    fn wait_readable(&self, py: Python<'_>) -> PyResult<()> {
        let tun = self.get(py)?;
        retrying(py, || tun.wait_readable())
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTunDevice>()?;
    Ok(())
}
