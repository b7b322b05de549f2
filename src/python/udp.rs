//! The Python class `UdpSocket`: `crate::udp::UdpBatch` on a `socket.socket`, with Python
//! buffers, addresses, errors and the GIL. The system calls, the batching and the pending
//! queue are all in `crate::udp`; this maps arguments and results.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use pyo3::exceptions::{PyOverflowError, PyTimeoutError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList, PyString, PyTuple};

use super::buffers::{list_item, resize_bytearray, with_fixed, Fixed, Region, Views};
use super::device::os_error;
use super::engine::{non_negative, DETACH_BYTES};
use super::gil;
use crate::engine::{self as eng, ExpandBuffer};
use crate::udp::{self, Dest, SendError, Stats, UdpBatch, Wait};

/// `ValueError`: the list `what` has `have` entries, fewer than the `need` `of`.
#[cold]
fn too_few(what: &str, have: usize, need: usize, of: &str) -> PyErr {
    PyValueError::new_err(format!(
        "{what} has {have} entries, fewer than the {need} {of}"
    ))
}

fn to_py(py: Python<'_>, e: udp::Error) -> PyErr {
    match e {
        udp::Error::Os { errno, msg } => os_error(py, errno, msg),
        udp::Error::Invalid(m) => PyValueError::new_err(m),
        e @ udp::Error::BufferTooSmall { .. } => PyValueError::new_err(e.to_string()),
        e @ udp::Error::Timeout => PyTimeoutError::new_err(e.to_string()),
        // WouldBlock and Interrupted: their errno and the C library's words for it.
        e => os_error(py, e.errno().unwrap_or_default(), e.to_string()),
    }
}

/// Locks `m`; if another thread holds it (with the GIL released, in a system call), waits
/// for it with the GIL released too, so that the holder can get the GIL back.
fn lock<'a, T: Send>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        match m.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => gil::syscall(py, || drop(m.lock())),
        }
    }
}

/// A buffer of `recv_multiple`: a `bytearray` (grown when a datagram needs it) or another
/// writable buffer, exported for the call. Used only with the GIL held: no Python code
/// runs while a slice of it is alive, so nothing can resize or free it meanwhile. The
/// bytes are looked up afresh on every access (a resize may move them).
enum RecvBuf<'py> {
    Array(Bound<'py, PyByteArray>),
    Fixed(Region),
}

impl RecvBuf<'_> {
    /// Whether pinning this buffer with an export runs no Python code: an exact bytearray,
    /// or a buffer exported already.
    fn pins_silently(&self) -> bool {
        match self {
            RecvBuf::Array(b) => b.is_exact_instance_of::<PyByteArray>(),
            RecvBuf::Fixed(_) => true,
        }
    }
}

impl ExpandBuffer for RecvBuf<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: GIL held, no Python code runs while the slice lives (see the type).
            RecvBuf::Array(b) => unsafe { b.as_bytes() },
            // SAFETY: the export is held by the call's `Views`.
            RecvBuf::Fixed(r) => unsafe { r.slice() },
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: as above; `deliver` holds one buffer's slice at a time, so this is
            // the only live reference even when a bytearray is in `bufs` twice.
            RecvBuf::Array(b) => unsafe { b.as_bytes_mut() },
            // SAFETY: a writable export held by the call's `Views`. Two of `bufs` may be
            // views of one buffer, but `deliver` holds one buffer's slice at a time.
            RecvBuf::Fixed(r) => unsafe { r.slice_mut() },
        }
    }

    fn max_len(&self) -> usize {
        match self {
            RecvBuf::Array(_) => isize::MAX as usize,
            RecvBuf::Fixed(r) => r.len(),
        }
    }

    fn resize(&mut self, new_len: usize) -> eng::Result<()> {
        match self {
            // The new bytes are whatever the allocator had: zero them, so that none of the
            // heap shows through before `offset`.
            RecvBuf::Array(b) => resize_bytearray(b, new_len, new_len).map_err(|e| {
                eng::Error::new(
                    eng::ErrorKind::BufferCannotGrow,
                    format!("the bytearray cannot grow: {e}"),
                )
            }),
            RecvBuf::Fixed(_) => Err(eng::Error::fixed(
                eng::ErrorKind::BufferCannotGrow,
                "a fixed-size buffer cannot grow",
            )),
        }
    }
}

/// Receive side: its batch, the arrays `deliver` fills, and the last sender's tuple.
struct RxSide {
    batch: UdpBatch,
    sizes: Vec<usize>,
    addrs: Vec<Option<SocketAddr>>,
    last_addr: Option<(SocketAddr, Py<PyAny>)>,
}

/// Send side: its batch, the parsed addresses, and the last address object parsed.
struct TxSide {
    batch: UdpBatch,
    addrs: Vec<SocketAddr>,
    last_addr: Option<(Py<PyAny>, SocketAddr)>,
}

/// Batched UDP on a ``socket.socket``, with the kernel's segmentation (``UDP_SEGMENT``)
/// and coalescing (``UDP_GRO``) offloads.
///
/// ``UdpSocket(sock, *, gso=True, gro=True)`` wraps an ``AF_INET`` or ``AF_INET6``,
/// ``SOCK_DGRAM`` socket, bound or not, connected or not; anything else is a
/// ``TypeError`` (not a socket) or ``ValueError`` (another family, type or protocol). It
/// keeps a reference to ``sock`` and never closes it; every call re-reads
/// ``sock.fileno()`` (a closed socket: ``OSError(EBADF)``) and ``sock.gettimeout()``:
/// blocking (``None``) waits, non-blocking (``0.0``) raises ``BlockingIOError``, a timeout
/// waits that long and raises ``TimeoutError``, as the socket's own calls do.
///
/// It turns ``UDP_GRO`` on for the socket where the kernel has it (``gro=False``: it does
/// not). Note that this changes the socket for every reader: a plain ``sock.recv`` may then
/// return several coalesced datagrams at once. ``gso`` and ``gro`` say whether the
/// offloads are in use; ``gso`` turns off for good if the kernel refuses a segmented send
/// with ``EIO`` (a route whose device lacks checksum offload).
///
/// Several ``UdpSocket`` may wrap one socket (say one per thread). One ``UdpSocket`` may
/// receive in one thread while it sends in another; two calls of the same kind on one
/// ``UdpSocket`` take turns. Datagrams one ``UdpSocket`` received but has not delivered yet
/// (*pending*) are delivered by that ``UdpSocket`` only.
#[pyclass(name = "UdpSocket", module = "tunoffload", frozen)]
pub(crate) struct PyUdpSocket {
    sock: Py<PyAny>,
    family: i32,
    gso: AtomicBool,
    gro: bool,
    rx: Mutex<RxSide>,
    tx: Mutex<TxSide>,
    /// Counters and pending count as of the last call that ended: readable while another
    /// thread waits in a call (which holds `rx` or `tx` meanwhile).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    rx: Stats,
    tx: Stats,
    pending: usize,
}

/// `sock.fileno()` now, or `OSError(EBADF)` if the socket is closed.
fn sock_fd(py: Python<'_>, sock: &Bound<'_, PyAny>) -> PyResult<i32> {
    let fd: i32 = sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?;
    if fd < 0 {
        return Err(os_error(
            py,
            udp::consts::EBADF,
            "the socket is closed".into(),
        ));
    }
    Ok(fd)
}

impl PyUdpSocket {
    /// The socket's descriptor now, or `OSError(EBADF)` if it is closed.
    fn fd(&self, py: Python<'_>) -> PyResult<i32> {
        sock_fd(py, self.sock.bind(py))
    }

    /// How long a call may wait, from the socket's timeout.
    fn wait(&self, py: Python<'_>) -> PyResult<Wait> {
        let t: Option<f64> = self
            .sock
            .bind(py)
            .call_method0(pyo3::intern!(py, "gettimeout"))?
            .extract()?;
        Ok(Wait::from_timeout(t.map(|s| {
            Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
        })))
    }

    /// The Python form of `a`, as `socket.recvfrom` gives it.
    fn addr_tuple(py: Python<'_>, a: &SocketAddr) -> PyResult<Py<PyAny>> {
        let host = PyString::new(py, &udp::host_string(a));
        let t = match a {
            SocketAddr::V4(v) => PyTuple::new(
                py,
                [host.into_any(), v.port().into_pyobject(py)?.into_any()],
            )?,
            SocketAddr::V6(v) => PyTuple::new(
                py,
                [
                    host.into_any(),
                    v.port().into_pyobject(py)?.into_any(),
                    v.flowinfo().into_pyobject(py)?.into_any(),
                    v.scope_id().into_pyobject(py)?.into_any(),
                ],
            )?,
        };
        Ok(t.into_any().unbind())
    }

    /// Reads an address as `socket.sendto` does (IP literals only; see the class docs).
    fn parse_addr(
        &self,
        obj: &Bound<'_, PyAny>,
        what: &dyn Fn() -> String,
    ) -> PyResult<SocketAddr> {
        let v6 = self.family == udp::consts::AF_INET6;
        let form = if v6 {
            "(host, port[, flowinfo[, scope_id]])"
        } else {
            "(host, port)"
        };
        let bad_form = || {
            PyTypeError::new_err(format!(
                "{} must be a tuple {form} for an {} socket, not {}",
                what(),
                if v6 { "AF_INET6" } else { "AF_INET" },
                obj.get_type()
                    .name()
                    .map_or_else(|_| "?".into(), |n| n.to_string())
            ))
        };
        let t = obj.cast::<PyTuple>().map_err(|_| bad_form())?;
        let n = t.len();
        if n < 2 || n > if v6 { 4 } else { 2 } {
            return Err(bad_form());
        }
        let host = t.get_item(0)?;
        let host = host
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err(format!("{}: the host must be a str", what())))?;
        let int = |i: usize, name: &str, max: u64| -> PyResult<u64> {
            let v: i128 = t.get_item(i)?.extract().map_err(|_| {
                PyTypeError::new_err(format!("{}: the {name} must be an int", what()))
            })?;
            u64::try_from(v).ok().filter(|&v| v <= max).ok_or_else(|| {
                PyValueError::new_err(format!("{}: {name} must be 0-{max}, got {v}", what()))
            })
        };
        let port = int(1, "port", 65535)? as u16;
        let flowinfo = if n > 2 {
            int(2, "flowinfo", 0xf_ffff)? as u32
        } else {
            0
        };
        let scope_id = if n > 3 {
            int(3, "scope_id", u32::MAX as u64)? as u32
        } else {
            0
        };
        let (ip, scope) = udp::parse_host(host.to_str()?, self.family)
            .map_err(|e| PyValueError::new_err(format!("{}: {e}", what())))?;
        match ip {
            std::net::IpAddr::V4(a) => Ok(SocketAddr::V4(SocketAddrV4::new(a, port))),
            std::net::IpAddr::V6(a) if v6 => Ok(SocketAddr::V6(SocketAddrV6::new(
                a,
                port,
                flowinfo,
                if scope_id != 0 {
                    scope_id
                } else {
                    scope.unwrap_or(0)
                },
            ))),
            std::net::IpAddr::V6(a) => Err(PyValueError::new_err(format!(
                "{}: {a} is an IPv6 address, but the socket is AF_INET",
                what()
            ))),
        }
    }

    /// `addr` parsed, through a one-entry cache of the last address object (tuples are
    /// immutable, and the cache holds a reference, so identity is enough).
    fn parse_cached(
        &self,
        cache: &mut Option<(Py<PyAny>, SocketAddr)>,
        obj: &Bound<'_, PyAny>,
        what: &dyn Fn() -> String,
    ) -> PyResult<SocketAddr> {
        if let Some((o, a)) = cache {
            if o.is(obj) {
                return Ok(*a);
            }
        }
        let a = self.parse_addr(obj, what)?;
        *cache = Some((obj.clone().unbind(), a));
        Ok(a)
    }
}

/// A list or tuple argument, read item by item (no copy of its items per call).
#[derive(Clone, Copy)]
enum Seq<'a, 'py> {
    List(&'a Bound<'py, PyList>),
    Tuple(&'a Bound<'py, PyTuple>),
}

impl<'a, 'py> Seq<'a, 'py> {
    /// `obj` as a list or tuple, or `TypeError` naming it `what`.
    fn of(obj: &'a Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(l) = obj.cast::<PyList>() {
            return Ok(Seq::List(l));
        }
        if let Ok(t) = obj.cast::<PyTuple>() {
            return Ok(Seq::Tuple(t));
        }
        Err(PyTypeError::new_err(format!(
            "{what} must be a list or tuple, not {}",
            obj.get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        )))
    }

    fn len(self) -> usize {
        match self {
            Seq::List(l) => l.len(),
            Seq::Tuple(t) => t.len(),
        }
    }

    /// Item `i` (a new reference), or `ValueError` if a list got shorter than `i` during
    /// the call (Python code run meanwhile may change it; `what` names it).
    #[inline(always)]
    fn get(self, i: usize, what: &str) -> PyResult<Bound<'py, PyAny>> {
        let item = match self {
            Seq::List(l) => list_item(l, i),
            Seq::Tuple(t) => t.get_item(i).ok(),
        };
        match item {
            Some(o) => Ok(o),
            None => Err(shorter(what, i)),
        }
    }
}

#[cold]
fn shorter(what: &str, i: usize) -> PyErr {
    PyValueError::new_err(format!("{what} got shorter during the call (no item {i})"))
}

/// Attaches `datagrams_sent` to an exception raised after sending started.
fn with_sent(py: Python<'_>, err: PyErr, sent: usize) -> PyErr {
    let _ = err.value(py).setattr("datagrams_sent", sent);
    err
}

#[pymethods]
impl PyUdpSocket {
    #[new]
    #[pyo3(signature = (sock, *, gso=true, gro=true))]
    fn new(py: Python<'_>, sock: &Bound<'_, PyAny>, gso: bool, gro: bool) -> PyResult<Self> {
        let socket_type = py.import("socket")?.getattr("socket")?;
        if !sock.is_instance(&socket_type)? {
            return Err(PyTypeError::new_err(format!(
                "UdpSocket wraps a socket.socket, not {}",
                sock.get_type().name()?
            )));
        }
        let family: i32 = sock.getattr("family")?.extract()?;
        if family != udp::consts::AF_INET && family != udp::consts::AF_INET6 {
            return Err(PyValueError::new_err(format!(
                "UdpSocket needs an AF_INET or AF_INET6 socket, not {}",
                sock.getattr("family")?.repr()?
            )));
        }
        let ty: i32 = sock.getattr("type")?.extract()?;
        if ty != udp::consts::SOCK_DGRAM {
            return Err(PyValueError::new_err(format!(
                "UdpSocket needs a SOCK_DGRAM (UDP) socket, not {}",
                sock.getattr("type")?.repr()?
            )));
        }
        let fd = sock_fd(py, sock)?;
        // SAFETY: `fd` is the socket's open descriptor (just read from it); it is only
        // used during these calls, while `sock` is alive.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let rx = UdpBatch::with_offloads(bfd, false, gro).map_err(|e| to_py(py, e))?;
        let tx = UdpBatch::with_offloads(bfd, gso, false).map_err(|e| to_py(py, e))?;
        Ok(PyUdpSocket {
            sock: sock.clone().unbind(),
            family,
            gso: AtomicBool::new(tx.gso()),
            gro: rx.gro(),
            rx: Mutex::new(RxSide {
                batch: rx,
                sizes: Vec::new(),
                addrs: Vec::new(),
                last_addr: None,
            }),
            tx: Mutex::new(TxSide {
                batch: tx,
                addrs: Vec::new(),
                last_addr: None,
            }),
            seen: Mutex::default(),
        })
    }

    /// True while runs of equal-size datagrams go out as single ``UDP_SEGMENT`` sends.
    /// False if the kernel lacks ``UDP_SEGMENT``, with ``gso=False``, or once the kernel
    /// refused a segmented send with ``EIO`` (then it stays off for this ``UdpSocket``).
    #[getter]
    fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// True if this ``UdpSocket`` turned ``UDP_GRO`` on for the socket (the kernel then
    /// hands over coalesced reads, which ``recv_multiple`` splits).
    #[getter]
    fn gro(&self) -> bool {
        self.gro
    }

    /// ``max_segments(size) -> int``: how many datagrams of ``size`` bytes one
    /// ``UDP_SEGMENT`` send carries (the kernel's limits: 64 segments, 65507 bytes), as
    /// ``send_multiple`` groups them, whether or not ``gso`` is on. A tunnel sets its
    /// ``TunDevice.gso_max_segs`` to this for its datagram size, so that one super-packet
    /// read from the device leaves in one send. ``ValueError`` for a size no datagram can
    /// have (below 1 or above 65527).
    #[staticmethod]
    fn max_segments(size: i64) -> PyResult<usize> {
        usize::try_from(size)
            .ok()
            .and_then(crate::udp::segments_per_send)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "size must be a datagram size, 1..{}, not {size}",
                    crate::udp::MAX_PAYLOAD_V6
                ))
            })
    }

    /// The wrapped ``socket.socket``.
    #[getter]
    fn socket(&self, py: Python<'_>) -> Py<PyAny> {
        self.sock.clone_ref(py)
    }

    /// The socket's family (``socket.AF_INET`` or ``socket.AF_INET6``), as an int.
    #[getter]
    fn family(&self) -> i32 {
        self.family
    }

    /// Datagrams received and not yet delivered: the next ``recv_multiple`` returns them
    /// first, without waiting. (As of the last call that ended: reading it never waits
    /// for a call another thread is in, nor do ``stats``.)
    #[getter]
    fn pending(&self, py: Python<'_>) -> usize {
        lock(py, &self.seen).pending
    }

    /// Counters of this ``UdpSocket`` since it was made, as a dict: ``recv_calls``
    /// (``recvmmsg`` calls that returned data), ``recv_messages`` (reads: a coalesced read
    /// counts once), ``recv_datagrams`` (after splitting), ``send_calls`` (``sendmmsg``
    /// calls), ``send_messages`` (a ``UDP_SEGMENT`` run counts once), ``send_datagrams``,
    /// ``fallbacks`` (segmented messages the kernel refused, re-sent one by one) and
    /// ``truncated`` (reads cut short by the kernel; practically always 0).
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let (r, t) = {
            let seen = lock(py, &self.seen);
            (seen.rx, seen.tx)
        };
        let d = pyo3::types::PyDict::new(py);
        for (k, v) in [
            ("recv_calls", r.recv_calls),
            ("recv_messages", r.recv_messages),
            ("recv_datagrams", r.recv_datagrams),
            ("send_calls", t.send_calls),
            ("send_messages", t.send_messages),
            ("send_datagrams", t.send_datagrams),
            ("fallbacks", t.fallbacks),
            ("truncated", r.truncated),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// The socket's file descriptor (``sock.fileno()``: -1 once it is closed).
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.sock
            .bind(py)
            .call_method0(pyo3::intern!(py, "fileno"))?
            .extract()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "<UdpSocket gso={} gro={} sock={}>",
            if self.gso() { "True" } else { "False" },
            if self.gro { "True" } else { "False" },
            self.sock.bind(py).repr()?
        ))
    }

    /// ``recv_multiple(bufs, sizes, offset=0, addrs=None) -> int``
    ///
    /// Waits for at least one datagram (GIL released), then takes every datagram already
    /// queued, up to ``len(bufs)``, in one ``recvmmsg``; a coalesced read (``UDP_GRO``) is
    /// split at its segment size. Datagram *i* lands in ``bufs[i][offset:offset +
    /// sizes[i]]`` (``sizes`` is a list, at least as long as ``bufs``; its first *n* entries
    /// are set); returns *n* >= 1. ``bufs`` is a list or tuple of writable buffers: a
    /// ``bytearray`` too short for its datagram is grown (never shrunk); any other buffer
    /// too short is a ``ValueError`` naming it and the sizes, raised before anything is
    /// copied, with the datagram kept for the next call. ``addrs``: a list, at least as
    /// long as ``bufs``, whose entry *i* is set to datagram *i*'s sender as
    /// ``socket.recvfrom`` gives it (one tuple object for consecutive datagrams from one
    /// sender).
    ///
    /// No datagram is cut short or lost: datagrams received beyond ``len(bufs)`` (a
    /// coalesced read can hold up to 64) are kept *pending* and returned first by the next
    /// call, at once. Argument errors are raised before anything is received.
    #[pyo3(signature = (bufs, sizes, offset=0, addrs=None))]
    fn recv_multiple(
        &self,
        py: Python<'_>,
        bufs: &Bound<'_, PyAny>,
        sizes: &Bound<'_, PyAny>,
        offset: isize,
        addrs: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let offset = non_negative(offset, "offset")?;
        let bufs = Seq::of(bufs, "bufs")?;
        let nb = bufs.len();
        if nb == 0 {
            return Err(PyValueError::new_err("bufs must not be empty"));
        }
        let sizes = sizes
            .cast::<PyList>()
            .map_err(|_| PyTypeError::new_err("sizes must be a list"))?;
        if sizes.len() < nb {
            return Err(too_few("sizes", sizes.len(), nb, "bufs"));
        }
        let addrs = match addrs {
            Some(a) if !a.is_none() => {
                let l = a
                    .cast::<PyList>()
                    .map_err(|_| PyTypeError::new_err("addrs must be a list or None"))?;
                if l.len() < nb {
                    return Err(too_few("addrs", l.len(), nb, "bufs"));
                }
                Some(l)
            }
            _ => None,
        };
        let mut views = Views::with_capacity(py, nb);
        let mut rbufs: Vec<RecvBuf<'_>> = Vec::with_capacity(nb);
        for i in 0..nb {
            let obj = bufs.get(i, "bufs")?;
            rbufs.push(match obj.cast_into::<PyByteArray>() {
                Ok(b) => RecvBuf::Array(b),
                Err(e) => RecvBuf::Fixed(views.write(&e.into_inner(), &|| format!("bufs[{i}]"))?),
            });
        }
        let wait = self.wait(py)?;
        let want_addrs = addrs.is_some();
        // No Python code runs while the lock is held (a signal handler or a destructor
        // could call this object again): results are taken out of it first.
        let (n, out_sizes, out_addrs, mut last_addr) = loop {
            // Read again after signal handlers: one may have closed the socket.
            let fd = self.fd(py)?;
            // SAFETY: the socket's descriptor as of now, used only during this call. (As
            // with the socket's own methods, another thread may close it while the GIL is
            // released: the calls then fail with EBADF, or reach whatever reuses the
            // number; no memory of this process depends on it.)
            let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
            let mut guard = lock(py, &self.rx);
            let side = &mut *guard;
            let batch = &mut side.batch;
            // Datagrams already pending need no system call, so no GIL hand-off either.
            let filled = if batch.pending() > 0 {
                Ok(0)
            } else {
                gil::syscall(py, || batch.fill(bfd, nb, wait))
            };
            side.sizes.resize(nb, 0);
            if want_addrs {
                side.addrs.resize(nb, None);
            }
            let addrs = if want_addrs {
                Some(&mut side.addrs[..nb])
            } else {
                None
            };
            let room = filled.and_then(|_| side.batch.make_room(&mut rbufs, offset));
            let r = match room {
                // A large delivery (a coalesced read) is copied with the GIL released, each
                // bytearray it fills pinned by an export meanwhile (an exact one: its export
                // runs no Python code, which must not run while the lock is held).
                Ok((n, bytes))
                    if bytes >= DETACH_BYTES
                        && gil::others_in_syscalls()
                        && rbufs[..n].iter().all(RecvBuf::pins_silently) =>
                {
                    with_fixed(|fixed| -> PyResult<_> {
                        for (i, b) in rbufs[..n].iter().enumerate() {
                            fixed.push(Fixed::whole(match b {
                                RecvBuf::Array(a) => views.write(a, &|| format!("bufs[{i}]"))?,
                                RecvBuf::Fixed(r) => *r,
                            }));
                        }
                        let sizes = &mut side.sizes[..nb];
                        let batch = &mut side.batch;
                        Ok(py.detach(|| batch.copy_out(fixed, sizes, offset, addrs)))
                    })?
                }
                Ok((n, _)) => {
                    side.batch
                        .copy_out(&mut rbufs[..n], &mut side.sizes[..nb], offset, addrs)
                }
                Err(e) => Err(e),
            };
            {
                let mut seen = lock(py, &self.seen);
                seen.rx = side.batch.stats();
                seen.pending = side.batch.pending();
            }
            match r {
                Ok(n) => {
                    break (
                        n,
                        std::mem::take(&mut side.sizes),
                        std::mem::take(&mut side.addrs),
                        side.last_addr.take(),
                    )
                }
                Err(udp::Error::Interrupted) => {
                    drop(guard);
                    py.check_signals()?;
                }
                Err(e) => {
                    drop(guard);
                    return Err(to_py(py, e));
                }
            }
        };
        drop(rbufs);
        drop(views);
        let written = (|| -> PyResult<()> {
            let mut last: Option<(usize, Bound<'_, PyAny>)> = None;
            for (i, &s) in out_sizes[..n].iter().enumerate() {
                let obj = match &last {
                    Some((v, o)) if *v == s => o.clone(),
                    _ => s.into_pyobject(py)?.into_any(),
                };
                sizes.set_item(i, &obj)?;
                last = Some((s, obj));
            }
            if let Some(list) = addrs {
                for (i, a) in out_addrs[..n].iter().enumerate() {
                    let obj = match a {
                        None => py.None(),
                        Some(a) => match &last_addr {
                            Some((la, o)) if la == a => o.clone_ref(py),
                            _ => {
                                let o = Self::addr_tuple(py, a)?;
                                last_addr = Some((*a, o.clone_ref(py)));
                                o
                            }
                        },
                    };
                    list.set_item(i, obj)?;
                }
            }
            Ok(())
        })();
        // Hand the arrays back for the next call (keeping their capacity).
        {
            let mut guard = lock(py, &self.rx);
            guard.sizes = out_sizes;
            guard.addrs = out_addrs;
            if guard.last_addr.is_none() {
                guard.last_addr = last_addr.take();
            }
        }
        drop(last_addr);
        written.map(|()| n)
    }

    /// ``send_multiple(bufs, offset=0, *, sizes=None, count=None, addr=None) -> int``
    ///
    /// Sends datagram *i* = ``bufs[i][offset:]`` (with ``sizes``: ``bufs[i][offset:offset +
    /// sizes[i]]``) for the first ``count`` of ``bufs`` (default: all), in order, to
    /// ``addr`` (one address, or a list of one per datagram) or, with ``addr=None``, the
    /// connected peer. ``bufs`` is a list or tuple of bytes-like objects (read-only ones
    /// too). Runs of consecutive equal-size datagrams to one address (the last of a run may
    /// be shorter) go out as one ``UDP_SEGMENT`` message each, without copying, and the
    /// whole batch in one ``sendmmsg`` where the kernel takes it. Returns the number of
    /// datagrams sent: all of them, unless an exception is raised.
    ///
    /// Addresses are what ``socket.sendto`` takes, for IP literals only: ``(host, port)``
    /// on ``AF_INET``, ``(host, port[, flowinfo[, scope_id]])`` on ``AF_INET6``, where an
    /// IPv4 host is sent to as its v4-mapped address (``::ffff:a.b.c.d``); a host name is
    /// a ``ValueError`` (resolve it first with ``socket.getaddrinfo``).
    ///
    /// Bad arguments (a datagram over 65507 bytes to IPv4 or 65527 to IPv6, a bad offset,
    /// too few ``sizes`` or addresses, ``count`` out of range, a bad address): ``ValueError``
    /// or ``TypeError``, before anything is sent. If the kernel refuses a segmented send
    /// (``EIO``, ``EINVAL`` or ``EMSGSIZE``), its datagrams go out one by one instead (and
    /// after ``EIO`` ``gso`` turns off); nothing is lost or sent twice.
    ///
    /// When a non-blocking socket would block (``BlockingIOError``), its timeout passes
    /// (``TimeoutError``) or the system refuses a datagram (``OSError``), the exception
    /// carries ``datagrams_sent``: how many of the batch went out before it (in order);
    /// the rest were not sent. The return value is always the whole count.
    #[pyo3(signature = (bufs, offset=0, *, sizes=None, count=None, addr=None))]
    fn send_multiple(
        &self,
        py: Python<'_>,
        bufs: &Bound<'_, PyAny>,
        offset: isize,
        sizes: Option<&Bound<'_, PyAny>>,
        count: Option<isize>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let offset = non_negative(offset, "offset")?;
        let bufs = Seq::of(bufs, "bufs")?;
        let nb = bufs.len();
        let n = match count {
            None => nb,
            Some(c) => {
                let c = non_negative(c, "count")?;
                if c > nb {
                    return Err(PyValueError::new_err(format!(
                        "count is {c} but bufs has {nb} entries"
                    )));
                }
                c
            }
        };
        let sizes = match sizes {
            Some(s) if !s.is_none() => {
                let s = Seq::of(s, "sizes")?;
                if s.len() < n {
                    return Err(too_few("sizes", s.len(), n, "datagrams to send"));
                }
                Some(s)
            }
            _ => None,
        };
        let mut views = Views::with_capacity(py, n);
        let mut data: Vec<&[u8]> = Vec::with_capacity(n);
        for i in 0..n {
            let r = views.read(&bufs.get(i, "bufs")?, &|| format!("bufs[{i}]"))?;
            // SAFETY: the export is held by `views` until the send is over; nothing
            // writes to these bytes meanwhile (the send only reads them).
            let b = unsafe { r.slice() };
            let end = match &sizes {
                Some(s) => {
                    let sz: isize = match s.get(i, "sizes")?.extract() {
                        Ok(sz) => sz,
                        Err(e) if e.is_instance_of::<PyOverflowError>(py) => {
                            return Err(PyValueError::new_err(format!(
                                "sizes[{i}] is too large: {e}"
                            )))
                        }
                        Err(e) if e.is_instance_of::<PyTypeError>(py) => {
                            return Err(PyTypeError::new_err(format!("sizes[{i}] must be an int")))
                        }
                        // What an `__index__` raised (say the BufferError of resizing a
                        // buffer of this call, which the export refuses).
                        Err(e) => return Err(e),
                    };
                    let sz = match usize::try_from(sz) {
                        Ok(sz) => sz,
                        Err(_) => non_negative(sz, &format!("sizes[{i}]"))?,
                    };
                    match offset.checked_add(sz) {
                        Some(end) if end <= b.len() => end,
                        _ => {
                            return Err(PyValueError::new_err(format!(
                                "bufs[{i}] holds {} bytes, less than offset + sizes[{i}] = \
                                 {offset} + {sz}",
                                b.len()
                            )))
                        }
                    }
                }
                None => {
                    if offset > b.len() {
                        return Err(PyValueError::new_err(format!(
                            "bufs[{i}] holds {} bytes, less than offset {offset}",
                            b.len()
                        )));
                    }
                    b.len()
                }
            };
            data.push(&b[offset..end]);
        }
        let Some(addr) = addr.filter(|a| !a.is_none()) else {
            return self.send_all(py, &data, Dest::Connected);
        };
        // Addresses are parsed outside the lock (parsing may run Python code), with the
        // arrays and the cache taken out of it and handed back afterwards.
        let (mut parsed, mut cache) = {
            let mut guard = lock(py, &self.tx);
            (std::mem::take(&mut guard.addrs), guard.last_addr.take())
        };
        parsed.clear();
        let result = (|| {
            let dest = match addr.cast::<PyList>() {
                Ok(list) => {
                    if list.len() < n {
                        return Err(too_few("addr", list.len(), n, "datagrams to send"));
                    }
                    for i in 0..n {
                        let o = Seq::List(list).get(i, "addr")?;
                        parsed.push(self.parse_cached(&mut cache, &o, &|| format!("addr[{i}]"))?);
                    }
                    Dest::Each(&parsed)
                }
                Err(_) => Dest::One(self.parse_cached(&mut cache, addr, &|| "addr".to_owned())?),
            };
            self.send_all(py, &data, dest)
        })();
        {
            let mut guard = lock(py, &self.tx);
            guard.addrs = parsed;
            if guard.last_addr.is_none() {
                guard.last_addr = cache.take();
            }
        }
        drop(cache);
        drop(views);
        result
    }
}

impl PyUdpSocket {
    /// Sends `data` to `dest`, going on after signals (PEP 475); returns the count, or the
    /// exception with `datagrams_sent`.
    fn send_all(&self, py: Python<'_>, data: &[&[u8]], dest: Dest<'_>) -> PyResult<usize> {
        let wait = self.wait(py)?;
        let mut done = 0;
        loop {
            // Again after signal handlers: one may have closed the socket.
            let fd = self.fd(py).map_err(|e| with_sent(py, e, done))?;
            // SAFETY: as in `recv_multiple`: the descriptor as of now, for this call only.
            let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
            let part = &data[done..];
            let to = dest.skip(done);
            let r = {
                let mut guard = lock(py, &self.tx);
                let batch = &mut guard.batch;
                let r = gil::syscall(py, || batch.send(bfd, part, to, wait));
                self.gso.store(batch.gso(), Ordering::Relaxed);
                lock(py, &self.seen).tx = batch.stats();
                r
            };
            match r {
                Ok(k) => return Ok(done + k),
                Err(SendError {
                    sent,
                    error: udp::Error::Interrupted,
                }) => {
                    done += sent;
                    py.check_signals().map_err(|e| with_sent(py, e, done))?;
                }
                Err(SendError { sent, error }) => {
                    done += sent;
                    return Err(with_sent(py, to_py(py, error), done));
                }
            }
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyUdpSocket>()?;
    Ok(())
}
