//! The Python class `UdpSocket`: `crate::udp::UdpBatch` on a `socket.socket`, with Python
//! buffers, addresses, errors and the GIL. The system calls, the batching, the pending
//! queue and the address rules are all in `crate::udp`; this maps arguments and results.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyDict, PyList, PyTuple};
use pyo3::{intern, IntoPyObjectExt};

use super::batch::{filling_sizes, list, read_size, PyBufs, Seq, PREALLOC};
use super::errors::{os_error, py_bool, type_error, with_attrs};
use super::gil::{python_ran, Gil};
use crate::engine::buffer::{batch_len, non_negative, packets, reuse, Name};
use crate::engine::Buffers;
use crate::hooks::{lock, Hooks};
use crate::udp::{self, Dest, PerDatagram, Shared, TxMetas, Wait};
use crate::wireguard::PumpSocket;

thread_local! {
    /// The senders a receive fills in, and the addresses a send parses, reused per thread.
    static SENDERS: Cell<Vec<Option<SocketAddr>>> = const { Cell::new(Vec::new()) };
    static DESTS: Cell<Vec<SocketAddr>> = const { Cell::new(Vec::new()) };
}

/// Batched UDP on a ``socket.socket``, with the kernel's segmentation (``UDP_SEGMENT``)
/// and coalescing (``UDP_GRO``) offloads.
///
/// ``UdpSocket(sock, *, gso=True, gro=True, pktinfo=False, ecn=False,
/// dont_fragment=False)`` wraps an ``AF_INET`` or ``AF_INET6``,
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
/// ``pktinfo=True`` turns on packet information for the socket (``IP_PKTINFO``,
/// ``IPV6_RECVPKTINFO``): each received datagram's local address and interface, read
/// through ``recv_multiple(..., meta=)`` as ``RecvMeta.destination(i)`` and ``ifindex(i)``.
/// ``ecn=True`` turns on the received ECN codepoints (``IP_RECVTOS``,
/// ``IPV6_RECVTCLASS``): ``RecvMeta.ecn(i)``. ``dont_fragment=True`` turns on path MTU
/// discovery without fragmenting (``IP_PMTUDISC_DO``, and ``IPV6_DONTFRAG``): a datagram
/// over the path MTU is an ``OSError(EMSGSIZE)`` whose message names the MTU, also
/// its ``mtu`` attribute. An option the kernel refuses is an ``OSError``. ``False``
/// leaves a socket option as it is. Sending with ``ecn=`` and ``src=`` needs none of them.
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
    /// True if this ``UdpSocket`` turned ``UDP_GRO`` on for the socket (the kernel then
    /// hands over coalesced reads, which ``recv_multiple`` splits).
    #[pyo3(get)]
    gro: bool,
    /// True if this ``UdpSocket`` turned packet information on (``pktinfo=True``).
    #[pyo3(get)]
    pktinfo: bool,
    /// True if this ``UdpSocket`` turned the received ECN codepoints on (``ecn=True``).
    #[pyo3(get)]
    ecn: bool,
    /// True if this ``UdpSocket`` turned don't-fragment on (``dont_fragment=True``).
    #[pyo3(get)]
    dont_fragment: bool,
    batch: Shared,
    /// The last sender and its tuple (the same object while the sender stays the same).
    sender: Mutex<Option<(SocketAddr, Py<PyAny>)>>,
}

/// `sock.fileno()` now, or `OSError(EBADF)` if the socket is closed.
fn sock_fd(sock: &Bound<'_, PyAny>) -> PyResult<i32> {
    let fd: i32 = sock.call_method0(intern!(sock.py(), "fileno"))?.extract()?;
    python_ran(); // (`fileno` of a subclass is Python code)
    if fd < 0 {
        return Err(os_error(udp::consts::EBADF, "the socket is closed".into()));
    }
    Ok(fd)
}

/// Each datagram's metadata from one ``UdpSocket.recv_multiple(..., meta=meta)``, kept in
/// Rust (no Python object per datagram): ``len(meta)`` datagrams, ``meta.source(i)`` the
/// sender of datagram *i* in the form ``socket.recvfrom`` gives it, and with the options
/// of the receiving ``UdpSocket`` its local address, interface and ECN codepoint.
/// Reusable (it grows to the batch); a ``WireGuardDevice.decrypt`` permutes its senders
/// along with the buffers. An index past the last receive's datagrams: ``InputError``
/// (``out_of_range``).
#[pyclass(name = "RecvMeta", module = "tunoffload")]
pub(crate) struct PyRecvMeta(pub(crate) udp::RecvMeta);

#[pymethods]
impl PyRecvMeta {
    #[new]
    #[pyo3(signature = (capacity=0))]
    fn new(capacity: usize) -> Self {
        PyRecvMeta(udp::RecvMeta::new(capacity.min(PREALLOC)))
    }

    /// The datagrams of the last receive.
    fn __len__(&self) -> usize {
        self.0.filled()
    }

    /// The sender of datagram ``index`` (``None`` where the kernel gave none).
    fn source(&self, py: Python<'_>, index: usize) -> PyResult<Option<Py<PyAny>>> {
        let source = self.0.entry(index)?.source;
        source.map(|a| addr_tuple(py, &a)).transpose()
    }

    /// The local address datagram ``index`` was sent to, as ``socket.recvfrom`` writes
    /// hosts (``"::ffff:a.b.c.d"`` for IPv4 on an ``AF_INET6`` socket, ``%interface`` on
    /// an IPv6 link-local one): what ``send_multiple(..., src=)`` takes to answer from
    /// it. ``None`` unless the receiving ``UdpSocket`` has ``pktinfo``.
    fn destination(&self, index: usize) -> PyResult<Option<String>> {
        Ok(self.0.destination_host(index)?)
    }

    /// The index of the interface datagram ``index`` came in on (``None`` without
    /// ``pktinfo``).
    fn ifindex(&self, index: usize) -> PyResult<Option<u32>> {
        Ok(self.0.entry(index)?.ifindex)
    }

    /// The ECN codepoint of datagram ``index`` (0..3: ``ECN_NOT_ECT``, ``ECN_ECT1``,
    /// ``ECN_ECT0``, ``ECN_CE``; ``None`` unless the receiving ``UdpSocket`` has ``ecn``).
    fn ecn(&self, index: usize) -> PyResult<Option<u8>> {
        Ok(self.0.entry(index)?.ecn)
    }

    /// Exchanges the entries of datagrams ``i`` and ``j`` (to keep them with their
    /// buffers when a batch is reordered).
    fn swap(&mut self, i: usize, j: usize) -> PyResult<()> {
        Ok(self.0.swap(i, j)?)
    }
}

/// `obj` read as an address the way `socket.sendto` reads it for a socket of `family`
/// (`None`: the host's own, IPv6 if it has a colon): its shape here, its rules in
/// `udp::parse_addr`.
pub(crate) fn read_addr(
    obj: &Bound<'_, PyAny>,
    what: Name<'_>,
    family: Option<i32>,
) -> PyResult<SocketAddr> {
    let t = obj.cast::<PyTuple>().ok();
    let host = t.and_then(|t| t.get_item(0).ok()?.extract::<String>().ok());
    let family = family.unwrap_or_else(|| udp::host_family(host.as_deref()));
    let (form, most) = udp::addr_form(family);
    let bad = || type_error(what, form, obj);
    let t = t
        .filter(|t| (2..=most).contains(&t.len()))
        .ok_or_else(bad)?;
    let host = host.ok_or_else(bad)?;
    let n: Vec<i128> = t.get_slice(1, most).extract().map_err(|_| bad())?;
    let at = |k: usize| n.get(k).copied().unwrap_or(0);
    Ok(udp::parse_addr(&what, &host, at(0), at(1), at(2), family)?)
}

/// The Python form of `a`, as `socket.recvfrom` gives it.
pub(crate) fn addr_tuple(py: Python<'_>, a: &SocketAddr) -> PyResult<Py<PyAny>> {
    let host = udp::host_string(a);
    match a {
        SocketAddr::V4(_) => (host, a.port()).into_py_any(py),
        SocketAddr::V6(v) => (host, a.port(), v.flowinfo(), v.scope_id()).into_py_any(py),
    }
}

impl<'py> PyUdpSocket {
    /// The socket for a `WireGuardDevice`'s loop: its batches, its descriptor (duplicated,
    /// so that a close meanwhile leaves the loop's open) and its timeout now.
    pub(crate) fn pump_socket(&self, py: Python<'_>) -> PyResult<PumpSocket<'_>> {
        let sock = self.sock.bind(py);
        let timeout = sock.call_method0(intern!(py, "gettimeout"))?.extract()?;
        // SAFETY: the socket's open descriptor, duplicated at once (no Python code runs
        // in between that could close it).
        let fd = unsafe { BorrowedFd::borrow_raw(sock_fd(sock)?) };
        Ok(PumpSocket::new(&self.batch, fd, timeout)?)
    }

    /// How long a call may wait, from the socket's timeout.
    fn wait(&self, py: Python<'_>) -> PyResult<Wait> {
        let t = self.sock.bind(py).call_method0(intern!(py, "gettimeout"))?;
        Ok(Wait::from_secs(t.extract()?))
    }

    /// Runs `attempt` on the socket's descriptor, read again for each attempt (a signal
    /// handler may have closed the socket), until no signal interrupts it; the signal
    /// handlers run in between (PEP 475). The outer error is one that stops the call at
    /// once, the inner one the socket's.
    fn retrying<T>(
        &self,
        py: Python<'_>,
        mut attempt: impl FnMut(BorrowedFd<'_>, &mut Gil<'_>) -> PyResult<udp::Result<T>>,
    ) -> PyResult<T> {
        let mut gil = Gil(py);
        loop {
            let fd = sock_fd(self.sock.bind(py))?;
            // SAFETY: the socket's descriptor as of now, used only during this attempt. (As
            // with the socket's own methods, another thread may close it while the GIL is
            // released: the calls then fail with EBADF, or reach whatever reuses the
            // number; no memory of this process depends on it.)
            match attempt(unsafe { BorrowedFd::borrow_raw(fd) }, &mut gil)? {
                Err(udp::Error::Interrupted) => gil.interrupted()?,
                r => return Ok(r?),
            }
        }
    }

    /// `obj` read as an address the way `socket.sendto` reads it (its shape here, its
    /// rules in `udp::parse_addr`), through a one-entry cache of the last object read
    /// (tuples are immutable, and the cache holds a reference, so identity is enough).
    fn parse_addr(
        &self,
        cache: &mut Option<(Bound<'py, PyAny>, SocketAddr)>,
        obj: &Bound<'py, PyAny>,
        what: Name<'_>,
    ) -> PyResult<SocketAddr> {
        if let Some((_, a)) = cache.as_ref().filter(|(o, _)| o.is(obj)) {
            return Ok(*a);
        }
        let a = read_addr(obj, what, Some(self.family))?;
        *cache = Some((obj.clone(), a));
        Ok(a)
    }

    /// Sends `data` to `to` with `meta`, going on after signals; returns the count, or the
    /// exception with `datagrams_sent`.
    fn send_all(&self, py: Python<'_>, data: &[&[u8]], to: Dest, meta: TxMetas) -> PyResult<usize> {
        let wait = self.wait(py)?;
        let mut done = 0;
        let r = self.retrying(py, |fd, gil| {
            let (part, to, m) = (&data[done..], to.skip(done), meta.skip(done));
            let r = self
                .batch
                .sending(gil, |tx| tx.send_meta(fd, part, to, m, wait));
            Ok(r.map(|k| done + k).map_err(|e| {
                done += e.sent;
                e.error
            }))
        });
        r.map_err(|e| with_attrs(e, &[("datagrams_sent", done)]))
    }
}

#[pymethods]
impl PyUdpSocket {
    #[new]
    #[pyo3(signature = (
        sock, *, gso=true, gro=true, pktinfo=false, ecn=false, dont_fragment=false
    ))]
    fn new(
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        gso: bool,
        gro: bool,
        pktinfo: bool,
        ecn: bool,
        dont_fragment: bool,
    ) -> PyResult<Self> {
        let socket_type = py.import("socket")?.getattr("socket")?;
        if !sock.is_instance(&socket_type)? {
            return Err(type_error("UdpSocket's sock", "a socket.socket", sock));
        }
        // SAFETY: the socket's open descriptor (just read from it), only used during these
        // calls, while `sock` is alive.
        let fd = unsafe { BorrowedFd::borrow_raw(sock_fd(sock)?) };
        let batch = Shared::new(
            fd,
            &udp::Options::new(gso, gro, pktinfo, ecn, dont_fragment),
        )?;
        Ok(PyUdpSocket {
            sock: sock.clone().unbind(),
            family: batch.family(),
            gro: batch.gro(),
            pktinfo,
            ecn,
            dont_fragment,
            batch,
            sender: Mutex::default(),
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
        self.batch.gso()
    }

    /// True while ECN codepoints go out (``send_multiple(..., ecn=)``): False once the
    /// kernel refused one (``EINVAL``/``EIO``: kernels before 3.13); the datagrams then go
    /// without it, counted in ``stats["ecn_fallbacks"]``.
    #[getter]
    fn send_ecn(&self) -> bool {
        self.batch.send_ecn()
    }

    /// ``_inject_send_faults(errno, count, *, on="any")``: **testing only**. The next
    /// ``count`` messages of a send that ``on`` hits (``"any"``, ``"segmented"``: with
    /// ``UDP_SEGMENT``, ``"ecn"``, ``"src"``) fail with ``errno`` without reaching the
    /// kernel; the fallbacks then run as for the kernel's refusal. ``count=0`` disarms.
    #[pyo3(signature = (errno, count, *, on="any"))]
    fn _inject_send_faults(
        &self,
        py: Python<'_>,
        errno: i32,
        count: u32,
        on: &str,
    ) -> PyResult<()> {
        let on = on.parse()?;
        Ok(self
            .batch
            .sending(&mut Gil(py), |tx| tx.inject_send_faults(errno, count, on))?)
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
    fn pending(&self) -> usize {
        self.batch.pending()
    }

    /// Counters of this ``UdpSocket`` since it was made, as a dict: ``recv_calls``
    /// (``recvmmsg`` calls that returned data), ``recv_messages`` (reads: a coalesced read
    /// counts once), ``recv_datagrams`` (after splitting), ``send_calls`` (``sendmmsg``
    /// calls), ``send_messages`` (a ``UDP_SEGMENT`` run counts once), ``send_datagrams``,
    /// ``fallbacks`` (segmented messages the kernel refused, re-sent one by one) and
    /// ``truncated`` (reads cut short by the kernel; practically always 0).
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.batch.stats().into_py_dict(py)
    }

    /// The socket's file descriptor (``sock.fileno()``: -1 once it is closed).
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        let sock = self.sock.bind(py);
        sock.call_method0(intern!(py, "fileno"))?.extract()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let (gso, gro) = (py_bool(self.gso()), py_bool(self.gro));
        let sock = self.sock.bind(py).repr()?;
        Ok(format!("<UdpSocket gso={gso} gro={gro} sock={sock}>"))
    }

    /// ``recv_multiple(bufs, sizes, offset=0, addrs=None, *, meta=None) -> int``
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
    /// sender). ``meta``: a ``RecvMeta``, grown to ``len(bufs)`` if it is smaller, whose
    /// entry *i* is datagram *i*'s sender and, with ``pktinfo`` / ``ecn``, local address,
    /// interface and ECN codepoint (the datagrams of a coalesced read share them).
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
        let mut b = PyBufs::new(bufs, "bufs", true, false)?;
        let addrs = addrs.map(|a| list(a, "addrs", "a list or None"));
        let addrs = addrs.transpose()?;
        let nb = b.count();
        udp::check_recv_args(nb, sizes.len()?, addrs.map(|a| a.len()))?;
        if let Some(m) = meta.as_deref_mut() {
            m.0.grow_to(nb); // (to the batch, at most what one receive holds)
        }
        let wait = self.wait(py)?; // (Python code: before the buffers are read)
        reuse(&SENDERS, |senders| {
            senders.resize(if addrs.is_some() { nb } else { 0 }, None);
            let out = &mut *senders;
            let mut inner = meta.as_deref_mut().map(|m| &mut m.0);
            // (Takes the buffers, to let go of them before the sizes are stored.)
            let n = filling_sizes(sizes, move |sz| {
                // No Python code runs while the lock is held (a signal handler or a
                // destructor could call this object again).
                self.retrying(py, |fd, gil| match inner.as_deref_mut() {
                    // (The metadata, or the senders for `addrs`: one or the other.)
                    Some(m) => self.batch.receiving(gil, |rx, gil| {
                        rx.recv_with(fd, &mut b, sz, offset, m, wait, gil)
                    }),
                    None => {
                        let out = addrs.is_some().then_some(&mut out[..]);
                        self.batch.receiving(gil, |rx, gil| {
                            rx.recv_with(fd, &mut b, sz, offset, out, wait, gil)
                        })
                    }
                })
            })?;
            let Some(list) = addrs else {
                return Ok(n);
            };
            let from = meta
                .as_deref()
                .map_or(&senders[..n], |m| &m.0.sources()[..n]);
            // Each sender in the form `socket.recvfrom` gives, one tuple object for
            // consecutive datagrams from one sender, and across calls.
            let mut last = lock(&mut Gil(py), &self.sender).take();
            for (i, a) in from.iter().enumerate() {
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
            let old = std::mem::replace(&mut *lock(&mut Gil(py), &self.sender), last);
            drop(old); // (a decref may run Python code: not under the lock)
            Ok(n)
        })
    }

    /// ``send_multiple(bufs, offset=0, *, sizes=None, count=None, addr=None, ecn=None,
    /// src=None) -> int``
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
    /// ``ecn``: an ECN codepoint (0..3, ``ECN_*``) for every datagram, or a list of one per
    /// datagram (``None`` entries: none), sent as ``IP_TOS`` / ``IPV6_TCLASS`` with the
    /// socket's DSCP bits. ``src``: the local address to send from (``IP_PKTINFO`` /
    /// ``IPV6_PKTINFO``), an IP literal as ``RecvMeta.destination`` gives it, or a list of
    /// one per datagram (``None`` entries: the address the route picks): a server with
    /// several addresses answers each client from the one it was reached on. Runs of
    /// equal size and equal ``ecn`` and ``src`` go out as one ``UDP_SEGMENT`` message.
    /// A codepoint outside 0..3 is ``out_of_range``, a source that is not a local
    /// address literal of the destination's family ``bad_address``. If the kernel refuses
    /// a source or an ECN codepoint, the datagrams go again without it (counted in
    /// ``stats``; ``send_ecn`` turns off after a refused codepoint).
    ///
    /// Bad arguments (a datagram over 65507 bytes to IPv4 or 65527 to IPv6, a bad offset,
    /// too few ``sizes`` or addresses, ``count`` out of range, a bad address): ``ValueError``
    /// or ``TypeError``, before anything is sent. If the kernel refuses a segmented send
    /// (``EIO``, ``EINVAL`` or ``EMSGSIZE``), its datagrams go out one by one instead (and
    /// after ``EIO`` ``gso`` turns off); nothing is lost or sent twice. A datagram over the
    /// path MTU on a socket that does not fragment: ``OSError(EMSGSIZE)`` naming the MTU,
    /// with ``mtu`` (``None`` where it cannot be read).
    ///
    /// When a non-blocking socket would block (``BlockingIOError``), its timeout passes
    /// (``TimeoutError``) or the system refuses a datagram (``OSError``), the exception
    /// carries ``datagrams_sent``: how many of the batch went out before it (in order);
    /// the rest were not sent. The return value is always the whole count.
    #[pyo3(signature = (bufs, offset=0, *, sizes=None, count=None, addr=None, ecn=None, src=None))]
    #[allow(clippy::too_many_arguments)]
    fn send_multiple(
        &self,
        py: Python<'_>,
        bufs: &Bound<'_, PyAny>,
        offset: i64,
        sizes: Option<&Bound<'_, PyAny>>,
        count: Option<i64>,
        addr: Option<&Bound<'_, PyAny>>,
        ecn: Option<&Bound<'_, PyAny>>,
        src: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let offset = non_negative(offset, "offset")?;
        let count = count.map(|c| non_negative(c, "count")).transpose()?;
        let mut b = PyBufs::new(bufs, "bufs", false, false)?;
        let sizes = sizes.map(Seq::sizes).transpose()?;
        let all = Some(count.unwrap_or(b.count()));
        let n = batch_len(b.count(), sizes.map(Seq::len).transpose()?, all)?;
        let mut known = None;
        let mut ends = Vec::with_capacity(if sizes.is_some() { n.min(PREALLOC) } else { 0 });
        // Each datagram is exported before its size is read: an `__index__` that resizes a
        // buffer of this call then fails, instead of moving it under the send.
        let whole = b.exports(0..n, |i| {
            if let Some(s) = sizes {
                ends.push(read_size(s, i, &mut known)?);
            }
            Ok(())
        })?;
        let data = packets(whole, offset, sizes.map(|_| &ends[..]), true)?;
        let (mut ecns, mut srcs, mut metas) = (Vec::new(), Vec::new(), Vec::new());
        let ecn = per_datagram(ecn, "ecn", n, &mut ecns, |o, _| o.extract())?;
        let src = per_datagram(src, "src", n, &mut srcs, |o, what| {
            Ok(udp::parse_source(what, &o.str()?.to_cow()?, self.family)?)
        })?;
        let meta = TxMetas::combine(ecn, src, n, &mut metas)?;
        let Some(addr) = addr else {
            return self.send_all(py, &data, Dest::Connected, meta);
        };
        // The last address object read, and its address.
        let mut cache = None;
        reuse(&DESTS, |dests| {
            let dest = match addr.cast::<PyList>() {
                Ok(list) => {
                    for i in 0..n.min(list.len()) {
                        let o = Seq::List(list).get(i, "addr")?;
                        dests.push(self.parse_addr(&mut cache, &o, Name("addr", Some(i)))?);
                    }
                    Dest::Each(dests)
                }
                Err(_) => Dest::One(self.parse_addr(&mut cache, addr, Name("addr", None))?),
            };
            self.send_all(py, &data, dest, meta)
        })
    }
}

/// A per-datagram argument of a send (``ecn=``, ``src=``): None, one value for every
/// datagram, or a list of one per datagram (the first `n` read into `each`; a None entry
/// stays None), each value read by `read`.
fn per_datagram<'a, 'py, T>(
    obj: Option<&Bound<'py, PyAny>>,
    what: &'static str,
    n: usize,
    each: &'a mut Vec<Option<T>>,
    mut read: impl FnMut(&Bound<'py, PyAny>, Name<'_>) -> PyResult<T>,
) -> PyResult<PerDatagram<'a, Option<T>>> {
    match obj.map(|o| (o, o.cast::<PyList>())) {
        None => Ok(PerDatagram::Unset),
        Some((o, Err(_))) => Ok(PerDatagram::All(Some(read(o, Name(what, None))?))),
        Some((_, Ok(list))) => {
            for (i, item) in list.iter().take(n).enumerate() {
                let value = (!item.is_none()).then(|| read(&item, Name(what, Some(i))));
                each.push(value.transpose()?);
            }
            Ok(PerDatagram::Each(each))
        }
    }
}
