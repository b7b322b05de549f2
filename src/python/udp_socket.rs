//! The Python class `UdpSocket`: `crate::udp::UdpBatch` on a `socket.socket`, with Python
//! buffers, addresses, errors and the GIL. The system calls, the batching, the pending
//! queue and the address rules are all in `crate::udp`; this maps arguments and results.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyDict, PyList, PyTuple};

use super::batch::{filling_sizes, reuse, PyBufs, Seq, SizeReader, PY_BOOL};
use super::buffers::{Name, Views, PREALLOC};
use super::errors::{os_error, type_error, with_attrs};
use super::gil::Gil;
use crate::engine::buffer::{batch_len, non_negative, span};
use crate::engine::Buffers;
use crate::hooks::Hooks;
use crate::udp::{self, Dest, SendError, Stats, UdpBatch, Wait};

/// Locks `m`; if another thread holds it (with the GIL released, in a system call), waits
/// for it with the GIL released too, so that the holder can get the GIL back.
fn lock<'a, T: Send>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        match m.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => Gil(py).syscall(|| drop(m.lock())),
        }
    }
}

thread_local! {
    /// The senders a receive fills in, and the addresses a send parses, reused per thread.
    static SENDERS: Cell<Vec<Option<SocketAddr>>> = const { Cell::new(Vec::new()) };
    static DESTS: Cell<Vec<SocketAddr>> = const { Cell::new(Vec::new()) };
}

/// Each datagram's metadata from one ``UdpSocket.recv_multiple(..., meta=meta)``, kept in
/// Rust (no Python object per datagram): ``len(meta)`` datagrams, ``meta.source(i)`` the
/// sender of datagram *i* in the form ``socket.recvfrom`` gives it. Reusable; a
/// ``WireGuardDevice.decrypt`` permutes it along with the buffers.
#[pyclass(name = "RecvMeta", module = "tunoffload")]
#[derive(Default)]
pub(crate) struct PyRecvMeta {
    pub(crate) sources: Vec<Option<SocketAddr>>,
}

#[pymethods]
impl PyRecvMeta {
    #[new]
    #[pyo3(signature = (capacity=0))]
    fn new(capacity: usize) -> Self {
        let sources = Vec::with_capacity(capacity.min(super::buffers::PREALLOC));
        PyRecvMeta { sources }
    }

    fn __len__(&self) -> usize {
        self.sources.len()
    }

    /// The sender of datagram ``index`` (``None`` where the kernel gave none).
    fn source(&self, py: Python<'_>, index: usize) -> PyResult<Option<Py<PyAny>>> {
        let a = self.sources.get(index).ok_or_else(|| {
            let m = format!(
                "no datagram {index}: the last receive gave {}",
                self.sources.len()
            );
            crate::engine::Error::new(crate::engine::ErrorKind::OutOfRange, m)
        })?;
        a.as_ref().map(|a| addr_tuple(py, a)).transpose()
    }
}

/// The Python form of `a`, as `socket.recvfrom` gives it.
pub(crate) fn addr_tuple(py: Python<'_>, a: &SocketAddr) -> PyResult<Py<PyAny>> {
    let (host, port) = (udp::host_string(a), a.port());
    Ok(match a {
        SocketAddr::V4(_) => (host, port).into_pyobject(py)?.into_any().unbind(),
        SocketAddr::V6(v) => {
            let t = (host, port, v.flowinfo(), v.scope_id());
            t.into_pyobject(py)?.into_any().unbind()
        }
    })
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
    /// The wrapped ``socket.socket``.
    #[pyo3(get, name = "socket")]
    sock: Py<PyAny>,
    /// The socket's family (``socket.AF_INET`` or ``socket.AF_INET6``), as an int.
    #[pyo3(get)]
    family: i32,
    gso: AtomicBool,
    /// True if this ``UdpSocket`` turned ``UDP_GRO`` on for the socket (the kernel then
    /// hands over coalesced reads, which ``recv_multiple`` splits).
    #[pyo3(get)]
    gro: bool,
    rx: Mutex<UdpBatch>,
    tx: Mutex<UdpBatch>,
    /// What calls leave for later ones.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Counters and pending count as of the last call that ended: readable while another
    /// thread waits in a call (which holds `rx` or `tx` meanwhile).
    rx: Stats,
    tx: Stats,
    pending: usize,
    /// The last sender and its tuple (the same object while the sender stays the same),
    /// and the last address object a send parsed, with its address.
    sender: Option<(SocketAddr, Py<PyAny>)>,
    dest: Option<(Py<PyAny>, SocketAddr)>,
}

/// `sock.fileno()` now, or `OSError(EBADF)` if the socket is closed.
fn sock_fd(py: Python<'_>, sock: &Bound<'_, PyAny>) -> PyResult<i32> {
    let fd: i32 = sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?;
    if fd < 0 {
        return Err(os_error(udp::consts::EBADF, "the socket is closed".into()));
    }
    Ok(fd)
}

impl PyUdpSocket {
    /// How long a call may wait, from the socket's timeout.
    fn wait(&self, py: Python<'_>) -> PyResult<Wait> {
        let timeout = pyo3::intern!(py, "gettimeout");
        let t: Option<f64> = self.sock.bind(py).call_method0(timeout)?.extract()?;
        let t = t.map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX));
        Ok(Wait::from_timeout(t))
    }

    /// `obj` read as an address the way `socket.sendto` reads it (its shape here, its
    /// rules in `udp::parse_addr`), through a one-entry cache of the last object read
    /// (tuples are immutable, and the cache holds a reference, so identity is enough).
    fn parse_addr(
        &self,
        cache: &mut Option<(Py<PyAny>, SocketAddr)>,
        obj: &Bound<'_, PyAny>,
        what: Name<'_>,
    ) -> PyResult<SocketAddr> {
        if let Some((_, a)) = cache.as_ref().filter(|(o, _)| o.is(obj)) {
            return Ok(*a);
        }
        let v6 = self.family == udp::consts::AF_INET6;
        let parts = match obj.cast::<PyTuple>().map(|t| t.len()) {
            Ok(2) => obj
                .extract()
                .map(|(h, p): (String, i128)| (h, p, 0, 0))
                .ok(),
            Ok(3) if v6 => obj
                .extract()
                .map(|(h, p, f): (String, i128, i128)| (h, p, f, 0))
                .ok(),
            Ok(4) if v6 => obj.extract().ok(),
            _ => None,
        };
        let form = match v6 {
            true => "a tuple (host: str, port: int[, flowinfo: int[, scope_id: int]])",
            false => "a tuple (host: str, port: int) for an AF_INET socket",
        };
        let (host, port, flow, scope) = parts.ok_or_else(|| type_error(what, form, obj))?;
        let a = udp::parse_addr(&what, &host, port, flow, scope, self.family)?;
        *cache = Some((obj.clone().unbind(), a));
        Ok(a)
    }

    /// Sets `list[i]` to sender `i` in the form `socket.recvfrom` gives (one tuple object
    /// for consecutive datagrams from one sender, and across calls).
    fn store_senders(
        &self,
        py: Python<'_>,
        list: &Bound<'_, PyList>,
        senders: &[Option<SocketAddr>],
    ) -> PyResult<()> {
        let mut last = lock(py, &self.seen).sender.take();
        let r = (|| {
            for (i, a) in senders.iter().enumerate() {
                let obj = match (a, &last) {
                    (None, _) => py.None(),
                    (Some(a), Some((la, o))) if la == a => o.clone_ref(py),
                    (Some(a), _) => {
                        let o = addr_tuple(py, a)?;
                        last = Some((*a, o.clone_ref(py)));
                        o
                    }
                };
                list.set_item(i, obj)?;
            }
            Ok(())
        })();
        let old = std::mem::replace(&mut lock(py, &self.seen).sender, last);
        drop(old); // (a decref may run Python code: not under the lock)
        r
    }

    /// Sends `data` to `dest`, going on after signals (PEP 475); returns the count, or the
    /// exception with `datagrams_sent`.
    fn send_all(&self, py: Python<'_>, data: &[&[u8]], dest: Dest<'_>) -> PyResult<usize> {
        let wait = self.wait(py)?;
        let (mut gil, mut done) = (Gil(py), 0);
        let sent = |e: PyErr, done: usize| with_attrs(e, &[("datagrams_sent", done)]);
        loop {
            // Again after signal handlers: one may have closed the socket.
            let fd = sock_fd(py, self.sock.bind(py)).map_err(|e| sent(e, done))?;
            // SAFETY: as in `recv_multiple`: the descriptor as of now, for this call only.
            let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
            let (part, to) = (&data[done..], dest.skip(done));
            let r = {
                let mut guard = lock(py, &self.tx);
                let batch = &mut *guard;
                let r = gil.syscall(|| batch.send(bfd, part, to, wait));
                self.gso.store(batch.gso(), Ordering::Relaxed);
                lock(py, &self.seen).tx = batch.stats();
                r
            };
            match r {
                Ok(k) => return Ok(done + k),
                Err(SendError { sent: k, error }) => {
                    done += k;
                    if !matches!(error, udp::Error::Interrupted) {
                        return Err(sent(error.into(), done));
                    }
                    gil.interrupted().map_err(|e| sent(e, done))?;
                }
            }
        }
    }
}

#[pymethods]
impl PyUdpSocket {
    #[new]
    #[pyo3(signature = (sock, *, gso=true, gro=true))]
    fn new(py: Python<'_>, sock: &Bound<'_, PyAny>, gso: bool, gro: bool) -> PyResult<Self> {
        let socket_type = py.import("socket")?.getattr("socket")?;
        if !sock.is_instance(&socket_type)? {
            return Err(type_error("UdpSocket's sock", "a socket.socket", sock));
        }
        let fd = sock_fd(py, sock)?;
        // SAFETY: `fd` is the socket's open descriptor (just read from it); it is only
        // used during these calls, while `sock` is alive.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let rx = UdpBatch::with_offloads(bfd, false, gro)?;
        let tx = UdpBatch::with_offloads(bfd, gso, false)?;
        Ok(PyUdpSocket {
            sock: sock.clone().unbind(),
            family: rx.family(),
            gso: AtomicBool::new(tx.gso()),
            gro: rx.gro(),
            rx: Mutex::new(rx),
            tx: Mutex::new(tx),
            seen: Mutex::default(),
        })
    }

    /// The most datagrams one ``UDP_SEGMENT`` send carries (64, what every kernel takes).
    #[classattr]
    const MAX_SEGMENTS: usize = udp::MAX_SEGMENTS_PER_SEND;

    /// True while runs of equal-size datagrams go out as single ``UDP_SEGMENT`` sends.
    /// False if the kernel lacks ``UDP_SEGMENT``, with ``gso=False``, or once the kernel
    /// refused a segmented send with ``EIO`` (then it stays off for this ``UdpSocket``).
    #[getter]
    fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// ``max_segments(size) -> int``: how many datagrams of ``size`` bytes one
    /// ``UDP_SEGMENT`` send carries (the kernel's limits: 64 segments, 65507 bytes), as
    /// ``send_multiple`` groups them, whether or not ``gso`` is on. A tunnel sets its
    /// ``TunDevice.gso_max_segs`` to this for its datagram size, so that one super-packet
    /// read from the device leaves in one send. ``ValueError`` for a size no datagram can
    /// have (below 1 or above 65527).
    #[staticmethod]
    fn max_segments(size: i64) -> PyResult<usize> {
        Ok(udp::max_segments(size)?)
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
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let seen = lock(py, &self.seen);
        seen.rx.items(&seen.tx).into_py_dict(py)
    }

    /// The socket's file descriptor (``sock.fileno()``: -1 once it is closed).
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.sock
            .bind(py)
            .call_method0(pyo3::intern!(py, "fileno"))?
            .extract()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let (gso, gro) = (
            PY_BOOL[usize::from(self.gso())],
            PY_BOOL[usize::from(self.gro)],
        );
        let sock = self.sock.bind(py).repr()?;
        Ok(format!("<UdpSocket gso={gso} gro={gro} sock={sock}>"))
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
    #[pyo3(signature = (bufs, sizes, offset=0, addrs=None, *, meta=None))]
    fn recv_multiple(
        &self,
        py: Python<'_>,
        bufs: &Bound<'_, PyAny>,
        sizes: &Bound<'_, PyAny>,
        offset: i64,
        addrs: Option<&Bound<'_, PyAny>>,
        mut meta: Option<PyRefMut<'_, PyRecvMeta>>,
    ) -> PyResult<usize> {
        let offset = non_negative(offset, "offset")?;
        let mut b = PyBufs::new(bufs, "bufs", true)?;
        let addrs = match addrs.filter(|a| !a.is_none()) {
            Some(a) => Some(
                a.cast::<PyList>()
                    .map_err(|_| type_error("addrs", "a list or None", a))?,
            ),
            None => None,
        };
        let nb = b.count();
        udp::check_recv_args(nb, sizes.len()?, addrs.map(|a| a.len()))?;
        b.bufs(nb, false, usize::MAX)?; // converted before anything is received
        let (wait, gil) = (self.wait(py)?, &mut Gil(py));
        reuse(&SENDERS, |senders| {
            let want = addrs.is_some() || meta.is_some();
            senders.resize(if want { nb } else { 0 }, None);
            let out = &mut *senders;
            // (Takes the buffers, to let go of them before the sizes are stored.)
            let n = filling_sizes(sizes, move |sz| {
                // No Python code runs while the lock is held (a signal handler or a destructor
                // could call this object again).
                let n = loop {
                    // Read again after signal handlers: one may have closed the socket.
                    let fd = sock_fd(py, self.sock.bind(py))?;
                    // SAFETY: the socket's descriptor as of now, used only during this call.
                    // (As with the socket's own methods, another thread may close it while the
                    // GIL is released: the calls then fail with EBADF, or reach whatever reuses
                    // the number; no memory of this process depends on it.)
                    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
                    let mut rx = lock(py, &self.rx);
                    let out = want.then_some(&mut out[..]);
                    let r = rx.recv_with(bfd, &mut b, sz, offset, out, wait, gil)?;
                    let mut seen = lock(py, &self.seen);
                    (seen.rx, seen.pending) = (rx.stats(), rx.pending());
                    drop(seen);
                    match r {
                        Ok(n) => break n,
                        Err(udp::Error::Interrupted) => {
                            drop(rx);
                            gil.interrupted()?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                Ok(n)
            });
            if let Some(m) = meta.as_deref_mut() {
                senders.truncate(*n.as_ref().unwrap_or(&0));
                m.sources.clone_from(senders); // (addrs below reads them too)
            }
            let n = n?;
            if let Some(list) = addrs {
                self.store_senders(py, list, &senders[..n])?;
            }
            Ok(n)
        })
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
        offset: i64,
        sizes: Option<&Bound<'_, PyAny>>,
        count: Option<i64>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let offset = non_negative(offset, "offset")?;
        let count = count.map(|c| non_negative(c, "count")).transpose()?;
        let bufs = Seq::of(bufs, "bufs", "a sequence of bytes-like objects")?;
        let sizes = sizes.filter(|s| !s.is_none());
        let sizes = sizes
            .map(|s| Seq::of(s, "sizes", "a sequence of int"))
            .transpose()?;
        let have = bufs.len()?;
        let n = batch_len(
            have,
            sizes.map(Seq::len).transpose()?,
            Some(count.unwrap_or(have)),
        )?;
        let mut views = Views::with_capacity(py, n);
        let mut data: Vec<&[u8]> = Vec::with_capacity(n.min(PREALLOC));
        let mut reader = SizeReader::default();
        // Each datagram is exported before its size is read: an `__index__` that resizes
        // a buffer of this call then fails, instead of moving it under the send.
        for i in 0..n {
            let obj = bufs.get(i, "bufs")?.0;
            // SAFETY: the export is held by `views` until the send is over; nothing writes
            // to these bytes meanwhile (the send only reads them).
            let b = unsafe { views.export(&obj, false, Name("bufs", Some(i)))?.slice() };
            let size = match sizes {
                Some(s) => Some(reader.read(s.get(i, "sizes")?.0, i)?),
                None => None,
            };
            data.push(&b[offset..span(i, b.len(), offset, size, true)?]);
        }
        let Some(addr) = addr.filter(|a| !a.is_none()) else {
            return self.send_all(py, &data, Dest::Connected);
        };
        // Addresses are parsed outside the locks (parsing may run Python code), with the
        // cache taken out and handed back afterwards.
        let mut cache = lock(py, &self.seen).dest.take();
        let result = reuse(&DESTS, |dests| {
            let dest = match addr.cast::<PyList>() {
                Ok(list) => {
                    for i in 0..n.min(list.len()) {
                        let o = Seq::List(list).get(i, "addr")?.0;
                        dests.push(self.parse_addr(&mut cache, &o, Name("addr", Some(i)))?);
                    }
                    Dest::Each(dests)
                }
                Err(_) => Dest::One(self.parse_addr(&mut cache, addr, Name("addr", None))?),
            };
            self.send_all(py, &data, dest)
        });
        let old = std::mem::replace(&mut lock(py, &self.seen).dest, cache);
        drop(old); // (a decref may run Python code: not under the lock)
        drop(views);
        result
    }
}
