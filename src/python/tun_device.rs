//! The Python class `TunDevice`: `crate::device::Tun` with Python buffers, errors and the
//! GIL. Every system call runs with the GIL released, on buffers exported (pinned) for
//! the length of the call.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyBytes, PyDict, PyTuple};

use super::batch::{filling_sizes, PyBufs, Seq};
use super::buffers::Views;
use super::errors::{py_bool, type_error};
use super::gil::Gil;
use super::gro::PyGroTable;
use super::netns;
use crate::device::batch::{self, MAX_READ};
use crate::device::{format_mac, mac_from_bytes, parse_ifaddr, parse_mac};
use crate::device::{Queue, Tun, TunOptions};
use crate::engine::buffer::{batch_len, non_negative, Name};
use crate::engine::Buffers;
use crate::hooks::retry;

/// A Linux TUN (or TAP) device, optionally with the kernel's offloads.
///
/// ``TunDevice(name=None, *, offload=False, tap=False, multi_queue=False,
/// packet_information=False, mtu=None, persist=False, owner=None, group=None,
/// nonblocking=False, up=False, netns=None)`` creates the device (or opens the existing
/// one of that name) in the calling thread's network namespace, or in ``netns`` (a name
/// under ``/run/netns``, a path to a namespace file, or a descriptor of one).
/// ``name=None`` lets the kernel pick (``tun0``, ``tun1``...); a name longer than 15
/// bytes is a ``ValueError``.
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
    /// The queue (a `WireGuardDevice`'s loops run on it).
    pub(crate) q: Queue,
}

/// The class's methods, with a property for each of the queue's
/// [`QueueInfo`](crate::device::QueueInfo) flags (known after close too), and for each
/// `get` (and its `set`ter) that is one call of the open queue (`|tun| ...`).
macro_rules! methods_with_properties {
    ({ $($(#[$idoc:meta])* $info:ident;)* }
     { $($(#[$doc:meta])* $get:ident -> $t:ty = |$tun:ident| $g:expr
        $(, $set:ident($v:ident: $vt:ty) = $s:expr)?;)* } $($method:item)*) => {
        #[pymethods]
        impl PyTunDevice {
            $(
                $(#[$idoc])*
                #[getter]
                fn $info(&self) -> bool {
                    self.q.info.$info
                }
            )*
            $(
                $(#[$doc])*
                #[getter]
                fn $get(&self, py: Python<'_>) -> PyResult<$t> {
                    self.q.on(&mut Gil(py), |$tun| $g)
                }
                $(
                    #[setter]
                    fn $set(&self, py: Python<'_>, $v: $vt) -> PyResult<()> {
                        self.q.on(&mut Gil(py), |$tun| $s)
                    }
                )?
            )*
            $($method)*
        }
    };
}

methods_with_properties! {
    {
        /// True when reads and writes carry the 10-byte virtio header (``offload=True``).
        offload;
        /// True when the kernel accepted UDP segmentation offload (USO4/USO6): it may then
        /// hand over UDP super-packets, and ``send_multiple`` coalesces UDP flows too.
        udp_gso;
        /// True for a TAP (Ethernet) device.
        tap;
        /// True for a multi-queue device (``clone_queue()`` works).
        multi_queue;
        /// True when every packet starts with the 4-byte packet information header.
        packet_information;
    }
    {
        /// The interface index.
        ifindex -> u32 = |tun| tun.current_ifindex();
        /// The MTU; assign to change it (68..=65535).
        mtu -> u32 = |tun| tun.mtu(), set_mtu(mtu: u32) = tun.set_mtu(mtu);
        /// True when the interface is administratively up.
        is_up -> bool = |tun| tun.is_up();
        /// The interface's IPv4 and IPv6 addresses as ``"address/prefix"`` strings, IPv6
        /// link-local ones included.
        addresses -> Vec<String> =
            |tun| tun.addresses().map(|v| v.iter().map(ToString::to_string).collect());
        /// Whether the device is persistent (outlives its descriptors); assign to change.
        persist -> bool = |tun| tun.persist(),
            set_persist(on: bool) = tun.set_persist(on);
        /// The uid allowed to attach to the device (``TUNSETOWNER``), or None if unset;
        /// assign a uid to change it (the kernel offers no way back to unset).
        owner -> Option<u32> = |tun| tun.owner_group().map(|g| g.0),
            set_owner(uid: u32) = tun.set_owner(uid);
        /// The gid allowed to attach to the device (``TUNSETGROUP``), or None if unset;
        /// assign a gid to change it (the kernel offers no way back to unset).
        group -> Option<u32> = |tun| tun.owner_group().map(|g| g.1),
            set_group(gid: u32) = tun.set_group(gid);
        /// A TAP device's MAC address as ``"aa:bb:cc:dd:ee:ff"`` (None for TUN); assign a
        /// string of that form or 6 bytes to change it.
        mac -> Option<String> = |tun| tun.mac().map(|m| m.as_ref().map(format_mac));
        /// The transmit queue length (``txqueuelen``); assignable.
        tx_queue_len -> u32 = |tun| tun.tx_queue_len(),
            set_tx_queue_len(len: u32) = tun.set_tx_queue_len(len);
        /// The most segments the kernel puts in one super-packet for this device
        /// (``gso_max_segs``, 65535 unless lowered); assignable, 1..65535. A tunnel sets it to
        /// ``UdpSocket.max_segments(datagram size)`` so each super-packet read from the device
        /// leaves in one ``UDP_SEGMENT`` send and arrives as one coalesced read.
        gso_max_segs -> u32 = |tun| tun.gso_max_segs(),
            set_gso_max_segs(segs: u32) = tun.set_gso_max_segs(segs);
        /// Whether the kernel may hand this device TCP super-packets (TSO4/TSO6; on by
        /// default with offload); assign to switch it for the whole device (every queue).
        /// Off, the kernel segments before the device. False without offload, where
        /// assigning is an ``InputError`` (``incompatible_options``).
        tcp_segmentation -> bool = |tun| Ok(tun.offload_state().tcp_segmentation),
            set_tcp_segmentation(on: bool) = tun.set_tcp_segmentation(on);
        /// The same for UDP super-packets (USO4/USO6; on by default where the kernel has
        /// it: ``udp_gso``). Turning it on where the kernel has none: ``OSError(EINVAL)``.
        udp_segmentation -> bool = |tun| Ok(tun.offload_state().udp_segmentation),
            set_udp_segmentation(on: bool) = tun.set_udp_segmentation(on);
        /// Whether ``send_multiple`` merges TCP segments into super-packets (on by default
        /// with offload); assignable, for the whole device. Turned off by itself, and
        /// counted in ``stats``, when the kernel refuses a TCP super-packet (``EINVAL``).
        tcp_coalescing -> bool = |tun| Ok(tun.offload_state().tcp_coalescing),
            set_tcp_coalescing(on: bool) = tun.set_tcp_coalescing(on);
        /// The same for UDP datagrams (on by default where the kernel took USO).
        udp_coalescing -> bool = |tun| Ok(tun.offload_state().udp_coalescing),
            set_udp_coalescing(on: bool) = tun.set_udp_coalescing(on);
    }

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
        let netns = netns.map(|t| netns::open(py, t).map(Arc::new)).transpose()?;
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
            netns,
        };
        let tun = retry(&mut Gil(py), || Tun::open(&opts))?;
        Ok(PyTunDevice { q: Queue::new(tun, !nonblocking) })
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
        non_negative(fd, "fd")?;
        let tun = retry(&mut Gil(py), || Tun::from_fd(fd))?;
        Ok(PyTunDevice { q: Queue::new(tun, !nonblocking) })
    }

    /// Opens another queue of this multi-queue device (``multi_queue=True``), with the
    /// same offload settings and blocking mode, as a new ``TunDevice``. Each queue gets
    /// its own share of the traffic (the kernel hashes flows over queues).
    fn clone_queue(&self, py: Python<'_>) -> PyResult<Self> {
        let new = self.q.on(&mut Gil(py), |tun| tun.clone_queue())?;
        Ok(PyTunDevice { q: Queue::new(new, self.q.blocking()) })
    }

    /// The interface name, as the kernel has it now (the last known name once closed).
    #[getter]
    fn name(&self, py: Python<'_>) -> PyResult<String> {
        self.q.name(&mut Gil(py))
    }

    /// True once ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.q.is_closed()
    }

    /// The file descriptor of this queue, or -1 once closed (as ``socket.fileno()``).
    /// The descriptor is in non-blocking mode.
    fn fileno(&self) -> i32 {
        self.q.raw_fd()
    }

    /// Closes the device (this queue). Idempotent. A thread blocked in ``recv`` or
    /// ``recv_multiple`` on this device wakes at once and raises ``OSError(EBADF)``; the
    /// descriptor itself is closed when the last such call has returned, so its number is
    /// never reused under a running call. A non-persistent device disappears when its
    /// last queue is closed.
    fn close(&self) {
        self.q.close();
    }

    /// Returns the device itself (``with TunDevice(...) as dev:``).
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the device; exceptions propagate.
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    /// ``<TunDevice name='tun0' offload=True closed=False>``.
    fn __repr__(&self, py: Python<'_>) -> String {
        let name = self.name(py).unwrap_or_default();
        let (offload, closed) = (py_bool(self.q.info.offload), py_bool(self.closed()));
        format!("<TunDevice name={name:?} offload={offload} closed={closed}>")
    }

    /// ``setblocking(flag)``: in blocking mode (the default) ``recv`` waits for a packet;
    /// in non-blocking mode it raises ``BlockingIOError`` when there is none.
    fn setblocking(&self, flag: bool) {
        self.q.set_blocking(flag);
    }

    /// True in blocking mode.
    fn getblocking(&self) -> bool {
        self.q.blocking()
    }

    /// Brings the interface up (``ip link set NAME up``).
    fn up(&self, py: Python<'_>) -> PyResult<()> {
        self.q.on(&mut Gil(py), |tun| tun.set_up(true))
    }

    /// Brings the interface down.
    fn down(&self, py: Python<'_>) -> PyResult<()> {
        self.q.on(&mut Gil(py), |tun| tun.set_up(false))
    }

    /// ``add_address(address, *, nodad=False)``: adds an IPv4 or IPv6 address given as
    /// ``"10.0.0.1/24"``, ``"fd00::1/64"`` (a bare address gets /32 or /128) or an
    /// ``ipaddress.IPv4Interface``/``IPv6Interface``. ``nodad`` skips IPv6 duplicate
    /// address detection. An address already present: ``FileExistsError``.
    #[pyo3(signature = (address, *, nodad=false))]
    fn add_address(&self, py: Python<'_>, address: &Bound<'_, PyAny>, nodad: bool) -> PyResult<()> {
        let a = parse_ifaddr(&address.str()?.to_cow()?)?;
        self.q.on(&mut Gil(py), |tun| tun.add_address(&a, nodad))
    }

    /// ``remove_address(address)``: removes an address given as for ``add_address``.
    /// An address not present: ``OSError(EADDRNOTAVAIL)``.
    fn remove_address(&self, py: Python<'_>, address: &Bound<'_, PyAny>) -> PyResult<()> {
        let a = parse_ifaddr(&address.str()?.to_cow()?)?;
        self.q.on(&mut Gil(py), |tun| tun.remove_address(&a))
    }

    #[setter]
    fn set_mac(&self, py: Python<'_>, mac: &Bound<'_, PyAny>) -> PyResult<()> {
        let mac = match (mac.extract::<String>(), mac.extract::<Vec<u8>>()) {
            (Ok(s), _) => parse_mac(&s)?,
            (_, Ok(b)) => mac_from_bytes(&b)?,
            _ => return Err(type_error("mac", "a str or 6 bytes", mac)),
        };
        self.q.on(&mut Gil(py), |tun| tun.set_mac(mac))
    }

    /// ``recv(buf) -> int``: reads one packet into the writable buffer ``buf`` and returns
    /// its length. With ``offload=True`` the data starts with the 10-byte virtio header
    /// and may be a super-packet of up to 64 KiB (use ``recv_multiple`` to split it).
    /// A packet larger than ``buf`` is truncated by the kernel (and so lost):
    /// ``ValueError``.
    /// Blocking mode waits; non-blocking mode raises ``BlockingIOError``.
    fn recv(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut views = Views::new(py);
        // SAFETY: the writable export is held by `views` until after the read; this is
        // the only reference to those bytes.
        let data = unsafe { views.export(buf, true, Name("buf", None))?.as_mut() };
        self.q.recv(&mut Gil(py), data)
    }

    /// ``read(size=65545) -> bytes``: reads one packet and returns it as ``bytes``
    /// (allocates; ``recv`` into a reused buffer does not). Same header rule as ``recv``.
    #[pyo3(signature = (size=65545))]
    fn read<'py>(&self, py: Python<'py>, size: usize) -> PyResult<Bound<'py, PyBytes>> {
        // No read returns more than MAX_READ: a larger `size` must not become a huge
        // allocation, whose failure would abort the process.
        let mut v = vec![0u8; size.min(MAX_READ)];
        let n = self.q.recv(&mut Gil(py), &mut v)?;
        Ok(PyBytes::new(py, &v[..n]))
    }

    /// ``send(buf) -> int``: writes one packet (any bytes-like object) and returns the
    /// number of bytes written. With ``offload=True`` it must start with a 10-byte virtio
    /// header (``bytes(VirtioNetHdr())`` for a plain packet). ``write`` is an alias.
    fn send(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut views = Views::new(py);
        // SAFETY: the export is held by `views` until after the write.
        let data = unsafe { views.export(buf, false, Name("buf", None))?.as_ref() };
        self.q.send(&mut Gil(py), data)
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
        offset: i64,
        fit: bool,
    ) -> PyResult<usize> {
        let offset = non_negative(offset, "offset")?;
        let tun = self.q.get()?;
        let mut outs = PyBufs::new(bufs, "bufs", true, false)?;
        let mut views = Views::new(py);
        let original: &mut [u8] = match self.q.info.offload {
            // SAFETY: the writable export is held by `views` until the split is done; the
            // core checks that no output is this buffer.
            true => unsafe {
                let what = Name("original_buffer", None);
                views.export(original_buffer, true, what)?.as_mut()
            },
            false => &mut [],
        };
        let (state, blocking) = (&self.q.recv_state, self.q.blocking());
        filling_sizes(sizes, move |sz| {
            let gil = &mut Gil(py);
            let (o, b) = (offset, blocking);
            let r = batch::recv_multiple_with(&tun, state, original, &mut outs, sz, o, b, fit, gil);
            drop(views);
            r
        })
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
        offset: i64,
        sizes: Option<&Bound<'_, PyAny>>,
        count: Option<i64>,
    ) -> PyResult<usize> {
        let offset = non_negative(offset, "offset")?;
        let count = count.map(|c| non_negative(c, "count")).transpose()?;
        let tun = self.q.get()?;
        // Coalescing swaps entries: a list then.
        let mut b = PyBufs::new(bufs, "bufs", true, self.q.info.offload)?;
        let sizes = sizes.map(Seq::sizes).transpose()?;
        let n = batch_len(b.count(), sizes.map(Seq::len).transpose()?, count)?;
        let sizes = sizes.map(|s| s.read_sizes(n)).transpose()?;
        let (t, sz) = (&mut gro_table.0, sizes.as_deref());
        Ok(batch::send_multiple_with(&tun, t, &mut b, offset, sz, count, true, &mut Gil(py))?)
    }

    /// Counters of this queue since it was opened (still readable after close), as a
    /// dict: ``reads``, ``read_bytes``,
    /// ``max_read`` (system calls and sizes, virtio headers included: a ``max_read``
    /// above the MTU means super-packets came in), ``rx_packets`` (packets out of
    /// ``recv_multiple`` after splitting), and the same for writes (``tx_packets``: packets
    /// into ``send_multiple`` before coalescing); ``tcp_coalescing_fallbacks`` and
    /// ``udp_coalescing_fallbacks`` (super-packets the kernel refused, written again as
    /// their segments); and the device's four switches (``tcp_segmentation``,
    /// ``udp_segmentation``, ``tcp_coalescing``, ``udp_coalescing``: bools).
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.q.counters.items().into_py_dict(py)?;
        stats.update(self.q.offload_state().items().into_py_dict(py)?.as_mapping())?;
        Ok(stats)
    }

    /// ``_inject_write_faults(errno, count, *, coalesced_only=True)``: **testing only**.
    /// The next ``count`` writes of this queue (with ``coalesced_only``, of super-packets
    /// only) fail with ``errno`` before reaching the kernel, as if it had refused them;
    /// ``count=0`` disarms. ``errno <= 0``: ``InputError`` (``out_of_range``).
    #[pyo3(signature = (errno, count, *, coalesced_only=true))]
    fn _inject_write_faults(&self, errno: i32, count: u32, coalesced_only: bool) -> PyResult<()> {
        Ok(self.q.get()?.inject_write_faults(errno, count, coalesced_only)?)
    }

    /// Waits (GIL released) until a packet can be read, then returns; blocking even in
    /// non-blocking mode. ``OSError(EBADF)`` if the device is closed meanwhile.
    fn wait_readable(&self, py: Python<'_>) -> PyResult<()> {
        self.q.on(&mut Gil(py), |tun| tun.wait_readable())
    }
}
