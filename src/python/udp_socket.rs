//! The Python class `UdpSocket`: `crate::udp::UdpBatch` on a `socket.socket`, with Python
//! buffers, addresses, errors and the GIL. The system calls, the batching, the pending
//! queue and the address rules are all in `crate::udp`; this maps arguments and results.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use super::batch::{sizes_list, store_sizes, PyBufs, Seq, SizeReader};
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

/// Receive side: its batch, the arrays the delivery fills, and the last sender's tuple.
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
        return Err(os_error(udp::consts::EBADF, "the socket is closed".into()));
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
        let timeout = pyo3::intern!(py, "gettimeout");
        let t: Option<f64> = self.sock.bind(py).call_method0(timeout)?.extract()?;
        let t = t.map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX));
        Ok(Wait::from_timeout(t))
    }

    /// The Python form of `a`, as `socket.recvfrom` gives it.
    fn addr_tuple(py: Python<'_>, a: &SocketAddr) -> PyResult<Py<PyAny>> {
        let host = PyString::new(py, &udp::host_string(a)).into_any();
        let port = a.port().into_pyobject(py)?.into_any();
        let t = match a {
            SocketAddr::V4(_) => PyTuple::new(py, [host, port])?,
            SocketAddr::V6(v) => {
                let flow = v.flowinfo().into_pyobject(py)?.into_any();
                PyTuple::new(
                    py,
                    [host, port, flow, v.scope_id().into_pyobject(py)?.into_any()],
                )?
            }
        };
        Ok(t.into_any().unbind())
    }

    /// Reads an address as `socket.sendto` does (the shape here, the rules in
    /// `udp::parse_addr`).
    fn parse_addr(&self, obj: &Bound<'_, PyAny>, what: Name<'_>) -> PyResult<SocketAddr> {
        let v6 = self.family == udp::consts::AF_INET6;
        let form = match v6 {
            true => "a tuple (host, port[, flowinfo[, scope_id]]) for an AF_INET6 socket",
            false => "a tuple (host, port) for an AF_INET socket",
        };
        let t = (obj.cast::<PyTuple>().ok())
            .filter(|t| (2..=if v6 { 4 } else { 2 }).contains(&t.len()))
            .ok_or_else(|| type_error(&what.to_string(), form, obj))?;
        let host = t.get_item(0)?;
        let host = (host.cast::<PyString>())
            .map_err(|_| type_error(&format!("{what}: the host"), "a str", &host))?;
        let int = |i: usize, name: &str| -> PyResult<i128> {
            let Ok(v) = t.get_item(i) else { return Ok(0) };
            v.extract()
                .map_err(|_| type_error(&format!("{what}: the {name}"), "an int", &v))
        };
        let (port, flow, scope) = (int(1, "port")?, int(2, "flowinfo")?, int(3, "scope_id")?);
        let what = what.to_string();
        Ok(udp::parse_addr(
            &what,
            host.to_str()?,
            port,
            flow,
            scope,
            self.family,
        )?)
    }

    /// `addr` parsed, through a one-entry cache of the last address object (tuples are
    /// immutable, and the cache holds a reference, so identity is enough).
    fn parse_cached(
        &self,
        cache: &mut Option<(Py<PyAny>, SocketAddr)>,
        obj: &Bound<'_, PyAny>,
        what: Name<'_>,
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

    /// Sends `data` to `dest`, going on after signals (PEP 475); returns the count, or the
    /// exception with `datagrams_sent`.
    fn send_all(&self, py: Python<'_>, data: &[&[u8]], dest: Dest<'_>) -> PyResult<usize> {
        let wait = self.wait(py)?;
        let (mut gil, mut done) = (Gil(py), 0);
        let sent = |e: PyErr, done: usize| with_attrs(e, &[("datagrams_sent", done)]);
        loop {
            // Again after signal handlers: one may have closed the socket.
            let fd = self.fd(py).map_err(|e| sent(e, done))?;
            // SAFETY: as in `recv_multiple`: the descriptor as of now, for this call only.
            let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
            let (part, to) = (&data[done..], dest.skip(done));
            let r = {
                let mut guard = lock(py, &self.tx);
                let batch = &mut guard.batch;
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
        Ok(udp::max_segments(size)?)
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
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (r, t) = {
            let seen = lock(py, &self.seen);
            (seen.rx, seen.tx)
        };
        let d = PyDict::new(py);
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
        offset: i64,
        addrs: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let offset = non_negative(offset, "offset")?;
        let mut b = PyBufs::new(bufs, "bufs", true)?;
        let sizes = sizes_list(sizes)?;
        let addrs = match addrs.filter(|a| !a.is_none()) {
            Some(a) => Some(
                a.cast::<PyList>()
                    .map_err(|_| type_error("addrs", "a list or None", a))?,
            ),
            None => None,
        };
        let nb = b.count();
        udp::check_recv_args(nb, sizes.len(), addrs.map(|a| a.len()))?;
        b.bufs(nb, false, usize::MAX)?; // new bytes all zeroed
        let wait = self.wait(py)?;
        let mut gil = Gil(py);
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
            let filled = match batch.pending() {
                0 => gil.syscall(|| batch.fill(bfd, nb, wait)),
                n => Ok(n),
            };
            side.sizes.resize(nb, 0);
            side.addrs
                .resize(if addrs.is_some() { nb } else { 0 }, None);
            let out = addrs.is_some().then_some(&mut side.addrs[..]);
            let bufs = b.bufs(nb, false, usize::MAX)?;
            let r = match filled.and_then(|_| side.batch.make_room(bufs, offset)) {
                // A large delivery (a coalesced read) is copied with the GIL released, each
                // bytearray it fills pinned by an export meanwhile (an exact one: its
                // export runs no Python code, which must not run while the lock is held).
                Ok((n, bytes)) if gil.worth_releasing(bytes) => {
                    let (batch, sizes) = (&mut side.batch, &mut side.sizes[..]);
                    b.pinned(n, |w| gil.work(|| batch.copy_out(w, sizes, offset, out)))?
                }
                Ok((n, _)) => side
                    .batch
                    .copy_out(&mut bufs[..n], &mut side.sizes, offset, out),
                Err(e) => Err(e),
            };
            {
                let mut seen = lock(py, &self.seen);
                seen.rx = side.batch.stats();
                seen.pending = side.batch.pending();
            }
            match r {
                Ok(n) => {
                    let taken = (
                        std::mem::take(&mut side.sizes),
                        std::mem::take(&mut side.addrs),
                    );
                    break (n, taken.0, taken.1, side.last_addr.take());
                }
                Err(udp::Error::Interrupted) => {
                    drop(guard);
                    gil.interrupted()?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        drop(b);
        let written = (|| -> PyResult<()> {
            store_sizes(sizes, &out_sizes[..n])?;
            let Some(list) = addrs else { return Ok(()) };
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
            let b = unsafe { views.read(&obj, Name("bufs", Some(i)))?.slice() };
            let size = match sizes {
                Some(s) => Some(reader.read(s.get(i, "sizes")?.0, i)?),
                None => None,
            };
            data.push(&b[offset..span(i, b.len(), offset, size, true)?]);
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
                    for i in 0..n.min(list.len()) {
                        let o = Seq::List(list).get(i, "addr")?.0;
                        parsed.push(self.parse_cached(&mut cache, &o, Name("addr", Some(i)))?);
                    }
                    Dest::Each(&parsed)
                }
                Err(_) => Dest::One(self.parse_cached(&mut cache, addr, Name("addr", None))?),
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
