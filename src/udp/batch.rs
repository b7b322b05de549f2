//! [`UdpBatch`]: the receive scratch and pending queue, the send run grouping, and the
//! `recvmmsg`/`sendmmsg` calls with their cmsgs.

use std::ffi::{c_int, c_uint, c_void};
use std::fmt;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::sys::{self, errno, SOL_UDP, UDP_GRO, UDP_SEGMENT};
use super::{
    invalid, Dest, Error, Result, Wait, MAX_PAYLOAD_V4, MAX_PAYLOAD_V6, MAX_SEGMENTS_PER_SEND,
    RECV_SLOTS, SLOT_SIZE,
};
use crate::engine::ErrorKind::{
    BadAddress, BufferTooSmall, DatagramTooLarge, TooFewAddresses, TooFewOutBufs, WrongFileType,
};
use crate::engine::{Buffers, ExpandBuffer};
use crate::hooks::Hooks;

/// Room for the control messages of one received datagram: `UDP_GRO` needs 24 bytes; the
/// rest leaves space for options the owner of the socket may have turned on (timestamps,
/// `IP_PKTINFO` ...), so that `UDP_GRO` is not cut off.
const RX_CTRL_WORDS: usize = 32;
/// Room for one `UDP_SEGMENT` control message (`CMSG_SPACE(2)` is 24 on 64-bit Linux).
const TX_CTRL_WORDS: usize = 4;

/// The result of a [`UdpBatch::send`] that stopped early: the first `sent` datagrams went
/// out (in order), the rest did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub sent: usize,
    pub error: Error,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (after {} datagrams were sent)",
            self.error, self.sent
        )
    }
}

impl std::error::Error for SendError {}

impl crate::hooks::Interruptible for SendError {
    fn is_interrupted(&self) -> bool {
        matches!(self.error, Error::Interrupted)
    }
}

/// Counters of a [`UdpBatch`] since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `recvmmsg` calls that returned messages.
    pub recv_calls: u64,
    /// Messages (reads) they returned; a coalesced read is one message.
    pub recv_messages: u64,
    /// Datagrams in those messages, after splitting.
    pub recv_datagrams: u64,
    /// `sendmmsg` calls that sent something.
    pub send_calls: u64,
    /// Messages sent; a `UDP_SEGMENT` run is one message.
    pub send_messages: u64,
    /// Datagrams in those messages.
    pub send_datagrams: u64,
    /// Segmented messages the kernel refused, whose datagrams were re-sent one by one.
    pub fallbacks: u64,
    /// Reads the kernel cut short (more than 64 KiB): their complete segments were
    /// delivered, a single datagram was dropped. Practically always 0.
    pub truncated: u64,
}

impl Stats {
    /// By name: the receive counters of `self`, the send counters of `tx` (one batch
    /// receiving and another sending on one socket).
    pub fn items(&self, tx: &Stats) -> [(&'static str, u64); 8] {
        [
            ("recv_calls", self.recv_calls),
            ("recv_messages", self.recv_messages),
            ("recv_datagrams", self.recv_datagrams),
            ("send_calls", tx.send_calls),
            ("send_messages", tx.send_messages),
            ("send_datagrams", tx.send_datagrams),
            ("fallbacks", tx.fallbacks),
            ("truncated", self.truncated),
        ]
    }
}

/// One message of the last `recvmmsg`: `len` bytes in slot `slot`, segments of `seg`
/// bytes (0: one datagram), the sender in the slot's name.
#[derive(Debug, Clone, Copy)]
struct RxMsg {
    slot: usize,
    len: usize,
    seg: usize,
    name_len: usize,
}

impl RxMsg {
    /// The length of the datagram at byte `off`.
    fn datagram_len(&self, off: usize) -> usize {
        if self.seg == 0 {
            self.len
        } else {
            self.seg.min(self.len - off)
        }
    }

    /// How many datagrams are left from byte `off`.
    fn remaining(&self, off: usize) -> usize {
        if self.seg == 0 {
            1
        } else {
            (self.len - off).div_ceil(self.seg)
        }
    }

    /// The cursor after the datagram at (`m`, `off`), which is `dlen` long.
    fn advance(&self, m: usize, off: usize, dlen: usize) -> (usize, usize) {
        let off = off + dlen;
        if self.seg == 0 || off >= self.len {
            (m + 1, 0)
        } else {
            (m, off)
        }
    }
}

/// Receive state: scratch slots (allocated on first use and kept), their `recvmmsg`
/// headers, and the messages of the last read still to deliver.
struct Rx {
    data: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; RX_CTRL_WORDS]>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    msgs: Vec<RxMsg>,
    /// The next datagram to deliver: message index and byte offset in it.
    next: usize,
    next_off: usize,
}

// SAFETY: the raw pointers in `iov` and `hdrs` point into this struct's own heap buffers
// (`data`, `names`, `ctrl`, `iov`), which are never reallocated once set up and move
// with the struct; nothing else holds them.
unsafe impl Send for Rx {}

/// Send state: the arrays of the last `sendmmsg`, kept for their capacity. Their pointers
/// are valid only during one `send` and are rewritten before every use.
struct Tx {
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    names: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; TX_CTRL_WORDS]>,
    msgs: Vec<TxMsg>,
}

// SAFETY: the raw pointers in `iov` and `hdrs` are only dereferenced (by the kernel)
// inside the `send` call that wrote them, while the borrows they come from are alive.
unsafe impl Send for Tx {}

/// One message to send: datagrams `first..first + count` in one `UDP_SEGMENT` message of
/// segment size `seg` (count 1: a plain datagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TxMsg {
    first: usize,
    count: usize,
    seg: usize,
}

/// Batched UDP I/O on a socket it does not own (see the [module docs](super)).
///
/// One per thread: receive and send state are separate, but both need `&mut self`.
pub struct UdpBatch {
    family: c_int,
    gso: bool,
    gro: bool,
    stats: Stats,
    rx: Rx,
    tx: Tx,
}

impl fmt::Debug for UdpBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpBatch")
            .field("family", &self.family)
            .field("gso", &self.gso)
            .field("gro", &self.gro)
            .field("pending", &self.pending())
            .finish()
    }
}

impl UdpBatch {
    /// Checks that `sock` is a UDP socket (`AF_INET`/`AF_INET6`, `SOCK_DGRAM`), finds
    /// whether the kernel has `UDP_SEGMENT`, and turns `UDP_GRO` on where it has that.
    pub fn new(sock: BorrowedFd<'_>) -> Result<Self> {
        Self::with_offloads(sock, true, true)
    }

    /// As [`new`](Self::new), with segmentation (`gso`) and coalescing (`gro`) each
    /// allowed or not. With `gro == false` the socket option is left as it is (another
    /// user of the socket may have turned it on; coalesced reads are split anyway).
    pub fn with_offloads(sock: BorrowedFd<'_>, gso: bool, gro: bool) -> Result<Self> {
        let fd = sock.as_raw_fd();
        let opt = |name, what: &str| {
            sys::getsockopt_int(fd, libc::SOL_SOCKET, name).map_err(|e| match e {
                libc::ENOTSOCK => {
                    invalid(WrongFileType, format!("descriptor {fd} is not a socket"))
                }
                e => Error::from_errno(e, what),
            })
        };
        let family = opt(libc::SO_DOMAIN, "reading the socket family (SO_DOMAIN)")?;
        if family != libc::AF_INET && family != libc::AF_INET6 {
            return Err(invalid(
                WrongFileType,
                format!("the socket's family is {family}, not AF_INET or AF_INET6"),
            ));
        }
        let ty = opt(libc::SO_TYPE, "reading the socket type (SO_TYPE)")?;
        if ty != libc::SOCK_DGRAM {
            return Err(invalid(
                WrongFileType,
                format!("the socket's type is {ty}, not SOCK_DGRAM"),
            ));
        }
        let proto = opt(
            libc::SO_PROTOCOL,
            "reading the socket protocol (SO_PROTOCOL)",
        )?;
        if proto != libc::IPPROTO_UDP && proto != libc::IPPROTO_UDPLITE {
            return Err(invalid(
                WrongFileType,
                format!(
                    "the socket's protocol is {proto}, not UDP (IPPROTO_UDP or IPPROTO_UDPLITE)"
                ),
            ));
        }
        let gso = gso && sys::getsockopt_int(fd, SOL_UDP, UDP_SEGMENT).is_ok();
        let gro = gro && sys::setsockopt_int(fd, SOL_UDP, UDP_GRO, 1).is_ok();
        Ok(UdpBatch {
            family,
            gso,
            gro,
            stats: Stats::default(),
            rx: Rx {
                data: Vec::new(),
                names: Vec::new(),
                ctrl: Vec::new(),
                iov: Vec::new(),
                hdrs: Vec::new(),
                msgs: Vec::new(),
                next: 0,
                next_off: 0,
            },
            tx: Tx {
                iov: Vec::new(),
                hdrs: Vec::new(),
                names: Vec::new(),
                ctrl: Vec::new(),
                msgs: Vec::new(),
            },
        })
    }

    /// `AF_INET` or `AF_INET6`.
    pub fn family(&self) -> c_int {
        self.family
    }

    /// Whether runs of datagrams go out as `UDP_SEGMENT` messages (off if the kernel lacks
    /// it, or after it refused one with `EIO`).
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Turns segmentation off (or back on, where the kernel has it: `on` is ignored
    /// otherwise). Returns the new state.
    pub fn set_gso(&mut self, on: bool, sock: BorrowedFd<'_>) -> bool {
        self.gso = on && sys::getsockopt_int(sock.as_raw_fd(), SOL_UDP, UDP_SEGMENT).is_ok();
        self.gso
    }

    /// Whether this batch turned `UDP_GRO` on.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// The largest payload of one datagram on this socket's family.
    pub fn max_payload(&self) -> usize {
        if self.family == libc::AF_INET6 {
            MAX_PAYLOAD_V6
        } else {
            MAX_PAYLOAD_V4
        }
    }

    /// Datagrams received and not yet delivered.
    pub fn pending(&self) -> usize {
        let rx = &self.rx;
        rx.msgs
            .iter()
            .enumerate()
            .skip(rx.next)
            .map(|(m, msg)| msg.remaining(if m == rx.next { rx.next_off } else { 0 }))
            .sum()
    }

    /// How many `recvmmsg` messages (reads, coalesced or not) the pending datagrams
    /// came in.
    #[cfg(test)]
    pub(crate) fn pending_reads(&self) -> usize {
        self.rx.msgs.len() - self.rx.next
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ----- receiving -------------------------------------------------------------------

    /// Receives into `bufs`: [`fill`](Self::fill) then [`deliver`](Self::deliver).
    /// Datagram `i` lands in `bufs[i][offset..offset + sizes[i]]` (a buffer that is too
    /// short is grown if it can be), `addrs[i]` is its sender. Returns n >= 1, at most
    /// the shortest of `bufs`, `sizes` and `addrs`.
    pub fn recv<B: ExpandBuffer>(
        &mut self,
        sock: BorrowedFd<'_>,
        bufs: &mut [B],
        sizes: &mut [usize],
        offset: usize,
        addrs: Option<&mut [Option<SocketAddr>]>,
        wait: Wait,
    ) -> Result<usize> {
        let mut max = bufs.len().min(sizes.len());
        if let Some(a) = &addrs {
            max = max.min(a.len());
        }
        if max == 0 {
            return Err(invalid(
                TooFewOutBufs,
                "no buffers to receive into (bufs, sizes and addrs must not be empty)",
            ));
        }
        self.fill(sock, max, wait)?;
        self.deliver(bufs, sizes, offset, addrs)
    }

    /// Makes datagrams available: returns the pending count at once if there are any
    /// (without a system call); otherwise waits as `wait` allows for at least one, then
    /// takes what is queued, up to `max` `recvmmsg` messages (each may be a coalesced
    /// read of many datagrams). Returns how many datagrams are pending. `max == 0`: no
    /// system call, returns the pending count.
    pub fn fill(&mut self, sock: BorrowedFd<'_>, max: usize, wait: Wait) -> Result<usize> {
        let pending = self.pending();
        if pending > 0 || max == 0 {
            return Ok(pending);
        }
        let fd = sock.as_raw_fd();
        self.rx.setup();
        let vlen = max.min(RECV_SLOTS);
        loop {
            let rx = &mut self.rx;
            for h in &mut rx.hdrs[..vlen] {
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_controllen = RX_CTRL_WORDS * 8;
                h.msg_hdr.msg_flags = 0;
                h.msg_len = 0;
            }
            // SAFETY: `hdrs[..vlen]` are set up (see `Rx::setup`) to point at this
            // struct's own slots, names and control buffers, with their sizes.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    rx.hdrs.as_mut_ptr(),
                    vlen as c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n > 0 {
                let truncated = rx.parse(n as usize);
                let pending = self.pending();
                let st = &mut self.stats;
                st.recv_calls += 1;
                st.recv_messages += n as u64;
                st.recv_datagrams += pending as u64;
                st.truncated += truncated;
                if pending > 0 {
                    return Ok(pending);
                }
                continue; // only truncated datagrams: look again
            }
            let e = if n == 0 { libc::EAGAIN } else { errno() };
            match e {
                libc::EAGAIN => sys::wait_fd(fd, libc::POLLIN, wait)?,
                libc::EINTR => return Err(Error::Interrupted),
                e => return Err(Error::from_errno(e, "receiving datagrams (recvmmsg)")),
            }
        }
    }

    /// Copies pending datagrams into `bufs`, in order, as many as there are buffers (and
    /// `sizes`, and `addrs` if given); returns how many (0 if none are pending). A
    /// coalesced read that would not fit whole into the buffers left after others is
    /// kept, whole, for the next call (segments that arrived together stay together, so
    /// TUN-side coalescing of them is not cut in two); one that fills every buffer on its
    /// own is delivered in parts.
    ///
    /// First every buffer is made long enough (grown with [`ExpandBuffer::resize`] where
    /// it is too short); if one cannot be, [`Error::BufferTooSmall`] and nothing is
    /// consumed. Then the datagrams are copied and leave the pending queue. Each buffer's
    /// bytes are borrowed only while that buffer is worked on, one buffer at a time (the
    /// Python binding relies on this: two of its buffers may share memory).
    pub fn deliver<B: ExpandBuffer>(
        &mut self,
        bufs: &mut [B],
        sizes: &mut [usize],
        offset: usize,
        addrs: Option<&mut [Option<SocketAddr>]>,
    ) -> Result<usize> {
        let mut k = bufs.len().min(sizes.len());
        if let Some(a) = &addrs {
            k = k.min(a.len());
        }
        let (n, _) = self.make_room(&mut bufs[..k], offset)?;
        self.copy_out(&mut bufs[..n], sizes, offset, addrs)
    }

    /// [`deliver`](Self::deliver)'s first pass: makes every buffer of `bufs` that will
    /// take a pending datagram long enough (growing it where it is too short); returns how
    /// many will take one and the bytes they will get. Nothing is consumed: hand the
    /// first ones to [`copy_out`](Self::copy_out) next, unchanged in length (the Python
    /// binding does that with the GIL released).
    pub fn make_room<B: ExpandBuffer>(
        &self,
        bufs: &mut [B],
        offset: usize,
    ) -> Result<(usize, usize)> {
        let k = bufs.len();
        let rx = &self.rx;
        let (mut m, mut off) = (rx.next, rx.next_off);
        let (mut n, mut bytes) = (0, 0);
        while n < k && m < rx.msgs.len() {
            let msg = rx.msgs[m];
            if n > 0 && off == 0 && msg.remaining(0) > k - n {
                break; // a coalesced read that would be cut: whole, next time
            }
            let dlen = msg.datagram_len(off);
            let buf = &mut bufs[n];
            let have = buf.bytes().len();
            let need = offset.checked_add(dlen).ok_or_else(|| {
                invalid(
                    BufferTooSmall,
                    format!("offset {offset} + datagram size {dlen} overflows"),
                )
            })?;
            if have < need {
                let too_small = |reason: String| Error::BufferTooSmall {
                    index: n,
                    need,
                    have,
                    reason,
                };
                if buf.max_len() < need {
                    return Err(too_small(if buf.max_len() == have {
                        "a fixed-size buffer cannot grow".into()
                    } else {
                        format!("it can grow to {} bytes at most", buf.max_len())
                    }));
                }
                buf.resize(need)
                    .map_err(|e| too_small(e.message().to_string()))?;
            }
            (m, off) = msg.advance(m, off, dlen);
            n += 1;
            bytes += dlen;
        }
        Ok((n, bytes))
    }

    /// [`deliver`](Self::deliver)'s second pass: copies the next `bufs.len()` pending
    /// datagrams (at most; see [`make_room`](Self::make_room), which must have made room
    /// in these buffers) into them and consumes them; returns how many.
    pub fn copy_out<B: ExpandBuffer>(
        &mut self,
        bufs: &mut [B],
        sizes: &mut [usize],
        offset: usize,
        mut addrs: Option<&mut [Option<SocketAddr>]>,
    ) -> Result<usize> {
        let rx = &mut self.rx;
        let mut n = bufs.len().min(sizes.len());
        if let Some(a) = &addrs {
            n = n.min(a.len());
        }
        let (mut m, mut off) = (rx.next, rx.next_off);
        let mut last: Option<(usize, Option<SocketAddr>)> = None;
        for i in 0..n {
            let Some(&msg) = rx.msgs.get(m) else {
                n = i; // fewer pending than buffers
                break;
            };
            let dlen = msg.datagram_len(off);
            let start = msg.slot * SLOT_SIZE + off;
            let src = &rx.data[start..start + dlen];
            let Some(dst) = bufs[i].bytes_mut().get_mut(offset..offset + dlen) else {
                // Only if a buffer shrank between the passes (it cannot): stop here, with
                // the rest still pending.
                rx.next = m;
                rx.next_off = off;
                if i == 0 {
                    return Err(Error::BufferTooSmall {
                        index: 0,
                        need: offset + dlen,
                        have: bufs[0].bytes().len(),
                        reason: "it shrank".into(),
                    });
                }
                return Ok(i);
            };
            dst.copy_from_slice(src);
            sizes[i] = dlen;
            if let Some(a) = addrs.as_deref_mut() {
                let addr = match last {
                    Some((slot, addr)) if slot == msg.slot => addr,
                    _ => sys::read_sockaddr(&rx.names[msg.slot], msg.name_len),
                };
                last = Some((msg.slot, addr));
                a[i] = addr;
            }
            (m, off) = msg.advance(m, off, dlen);
        }
        if m >= rx.msgs.len() {
            rx.msgs.clear();
            rx.next = 0;
            rx.next_off = 0;
        } else {
            rx.next = m;
            rx.next_off = off;
        }
        Ok(n)
    }

    /// [`recv`](Self::recv) on a caller's buffers and hooks (the Python binding's): the
    /// wait runs through [`Hooks::syscall`], a large delivery (a coalesced read) through
    /// [`Hooks::work`] on the buffers pinned. The outer error is the caller's (converting
    /// its buffers); the inner one the socket's, `Interrupted` included (check for signals
    /// and call again).
    #[allow(clippy::too_many_arguments)]
    pub fn recv_with<E, L, H>(
        &mut self,
        sock: BorrowedFd<'_>,
        bufs: &mut L,
        sizes: &mut [usize],
        offset: usize,
        addrs: Option<&mut [Option<SocketAddr>]>,
        wait: Wait,
        hooks: &mut H,
    ) -> std::result::Result<Result<usize>, E>
    where
        L: Buffers<E> + ?Sized,
        H: Hooks<E> + ?Sized,
    {
        let nb = bufs.count();
        if self.pending() == 0 {
            if let Err(e) = hooks.syscall(|| self.fill(sock, nb, wait)) {
                return Ok(Err(e));
            }
        }
        let (n, bytes) = match self.make_room(bufs.bufs(nb, false, usize::MAX)?, offset) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if hooks.worth_releasing(bytes) {
            return bufs.pinned(n, |w| hooks.work(|| self.copy_out(w, sizes, offset, addrs)));
        }
        let b = &mut bufs.bufs(nb, false, usize::MAX)?[..n];
        Ok(self.copy_out(b, sizes, offset, addrs))
    }

    // ----- sending ---------------------------------------------------------------------

    /// Sends `datagrams` in order to `to`, as few `sendmmsg` calls as the kernel allows:
    /// runs of equal-size datagrams to one address (the last may be shorter) go as one
    /// `UDP_SEGMENT` message. Returns `datagrams.len()`.
    ///
    /// Bad arguments (a datagram over the family's largest payload, too few addresses, an
    /// address of the wrong family) are an [`Error::Invalid`] before anything is sent.
    /// Where the kernel refuses a segmented message (`EIO`: a route without checksum
    /// offload, then segmentation stays off; `EINVAL`/`EMSGSIZE`: a segment size above the
    /// route's MTU), its datagrams are sent one by one instead. A wait that ends
    /// ([`Wait`]), a signal (`Interrupted`: check for signals and send the rest) or a
    /// system error stops the batch: [`SendError`] says how many went out.
    pub fn send<D: AsRef<[u8]>>(
        &mut self,
        sock: BorrowedFd<'_>,
        datagrams: &[D],
        to: Dest<'_>,
        wait: Wait,
    ) -> std::result::Result<usize, SendError> {
        let fd = sock.as_raw_fd();
        let n = datagrams.len();
        self.check_send(fd, datagrams, to)
            .map_err(|error| SendError { sent: 0, error })?;
        let mut start = 0;
        let mut plain_until = 0;
        'plan: loop {
            self.plan(datagrams, to, start, plain_until)
                .map_err(|error| SendError { sent: start, error })?;
            let tx = &mut self.tx;
            let mut m = 0;
            while m < tx.msgs.len() {
                let left = tx.msgs.len() - m;
                // SAFETY: `hdrs[m..]` were written by `plan` in this call; they point at
                // `iov`, `names` and `ctrl` (not changed since) and at the bytes of
                // `datagrams`, which are borrowed for this whole call.
                let rc = unsafe {
                    libc::sendmmsg(
                        fd,
                        tx.hdrs.as_mut_ptr().add(m),
                        left.min(c_uint::MAX as usize) as c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if rc > 0 {
                    let st = &mut self.stats;
                    st.send_calls += 1;
                    st.send_messages += rc as u64;
                    let sent = &tx.msgs[m..m + rc as usize];
                    st.send_datagrams += sent.iter().map(|s| s.count as u64).sum::<u64>();
                    m += rc as usize;
                    continue;
                }
                let e = if rc == 0 { libc::EAGAIN } else { errno() };
                let msg = tx.msgs[m];
                let stop = |error| SendError {
                    sent: msg.first,
                    error,
                };
                match e {
                    libc::EAGAIN => {
                        sys::wait_fd(fd, libc::POLLOUT, wait).map_err(stop)?;
                    }
                    libc::EINTR => return Err(stop(Error::Interrupted)),
                    libc::EIO if msg.count > 1 => {
                        // No checksum offload on this route: segmentation cannot work on
                        // this socket (wireguard-go turns it off for good, too).
                        self.gso = false;
                        self.stats.fallbacks += 1;
                        start = msg.first;
                        plain_until = n;
                        continue 'plan;
                    }
                    libc::EINVAL | libc::EMSGSIZE if msg.count > 1 => {
                        self.stats.fallbacks += 1;
                        start = msg.first;
                        plain_until = msg.first + msg.count;
                        continue 'plan;
                    }
                    e => return Err(stop(Error::from_errno(e, "sending datagrams (sendmmsg)"))),
                }
            }
            return Ok(n);
        }
    }

    /// The checks `send` makes before sending anything.
    fn check_send<D: AsRef<[u8]>>(&self, fd: RawFd, datagrams: &[D], to: Dest<'_>) -> Result<()> {
        let n = datagrams.len();
        let wrong_family = |a: &SocketAddr| a.is_ipv6() && self.family == libc::AF_INET;
        match to {
            Dest::Each(a) if a.len() < n => {
                return Err(invalid(
                    TooFewAddresses,
                    format!("{} addresses for {n} datagrams", a.len()),
                ))
            }
            Dest::Each(a) => {
                if let Some(i) = a[..n].iter().position(wrong_family) {
                    return Err(Error::Invalid(
                        crate::engine::Error::new(
                            BadAddress,
                            format!(
                                "address {i} ({}) is IPv6, but the socket is AF_INET (IPv4)",
                                a[i]
                            ),
                        )
                        .at(i),
                    ));
                }
            }
            Dest::One(a) if wrong_family(&a) => {
                return Err(invalid(
                    BadAddress,
                    format!("{a} is an IPv6 address, but the socket is AF_INET (IPv4)"),
                ))
            }
            _ => {}
        }
        let longest = datagrams
            .iter()
            .map(|d| d.as_ref().len())
            .max()
            .unwrap_or(0);
        if longest <= MAX_PAYLOAD_V4 {
            return Ok(());
        }
        // Over IPv4's limit: fine only for IPv6 destinations (not v4-mapped ones).
        let v4 = |a: &SocketAddr| match a {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
        };
        let connected_v4 = match to {
            Dest::Connected if self.family == libc::AF_INET6 => {
                sys::peer(fd).is_some_and(|a| v4(&a))
            }
            _ => self.family == libc::AF_INET,
        };
        for (i, d) in datagrams.iter().enumerate() {
            let len = d.as_ref().len();
            let over_v4 = match to {
                Dest::Connected => connected_v4,
                Dest::One(a) => v4(&a) || self.family == libc::AF_INET,
                Dest::Each(a) => v4(&a[i]) || self.family == libc::AF_INET,
            };
            let max = if over_v4 {
                MAX_PAYLOAD_V4
            } else {
                MAX_PAYLOAD_V6
            };
            if len > max {
                return Err(Error::Invalid(
                    crate::engine::Error::new(
                        DatagramTooLarge,
                        format!(
                            "datagram {i} is {len} bytes; the largest UDP payload over {} is {max}",
                            if over_v4 { "IPv4" } else { "IPv6" }
                        ),
                    )
                    .at(i),
                ));
            }
        }
        Ok(())
    }

    /// Groups `datagrams[start..]` into messages (those before `plain_until` one by one)
    /// and writes the `sendmmsg` arrays for them.
    fn plan<D: AsRef<[u8]>>(
        &mut self,
        datagrams: &[D],
        to: Dest<'_>,
        start: usize,
        plain_until: usize,
    ) -> Result<()> {
        let tx = &mut self.tx;
        group(&mut tx.msgs, datagrams, to, start, plain_until, self.gso);
        let nm = tx.msgs.len();
        tx.iov.clear();
        tx.iov.extend(datagrams[start..].iter().map(|d| {
            let d = d.as_ref();
            libc::iovec {
                iov_base: d.as_ptr().cast_mut().cast::<c_void>(),
                iov_len: d.len(),
            }
        }));
        let n_names = match to {
            Dest::Connected => 0,
            Dest::One(_) => 1,
            Dest::Each(_) => nm,
        };
        // SAFETY (both closures): all-zero is a valid value of these C structs.
        tx.names.resize_with(n_names, || unsafe { zeroed() });
        tx.ctrl.resize(nm, [0; TX_CTRL_WORDS]);
        tx.hdrs.clear();
        tx.hdrs.resize_with(nm, || unsafe { zeroed() });
        let mut name_len = 0;
        if let Dest::One(a) = to {
            name_len = sys::write_sockaddr(&a, self.family, &mut tx.names[0])?;
        }
        let iov = tx.iov.as_mut_ptr();
        for (m, msg) in tx.msgs.iter().enumerate() {
            let h = &mut tx.hdrs[m].msg_hdr;
            // SAFETY: msg.first - start < iov.len() (one iovec per datagram from start).
            h.msg_iov = unsafe { iov.add(msg.first - start) };
            h.msg_iovlen = msg.count;
            match to {
                Dest::Connected => {}
                Dest::One(_) => {
                    h.msg_name = tx.names.as_mut_ptr().cast();
                    h.msg_namelen = name_len;
                }
                Dest::Each(a) => {
                    h.msg_namelen =
                        sys::write_sockaddr(&a[msg.first], self.family, &mut tx.names[m])?;
                    h.msg_name = (&mut tx.names[m] as *mut libc::sockaddr_storage).cast();
                }
            }
            if msg.count > 1 {
                h.msg_control = tx.ctrl[m].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE/CMSG_LEN compute sizes only.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as c_uint) } as usize;
                // SAFETY: msg_control points at TX_CTRL_WORDS * 8 >= CMSG_SPACE(2) bytes,
                // 8-aligned, so CMSG_FIRSTHDR is a valid header with room for 2 data bytes.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as c_uint) as usize;
                    libc::CMSG_DATA(c)
                        .cast::<u16>()
                        .write_unaligned(msg.seg as u16);
                }
            }
        }
        Ok(())
    }
}

/// The run grouping: `datagrams[start..]` as messages. A run starts at a non-empty
/// datagram of size `s` and takes the following datagrams to the same address while they
/// are `s` bytes long (one shorter, non-empty datagram ends it), up to
/// [`MAX_SEGMENTS_PER_SEND`]
/// and [`MAX_PAYLOAD_V4`] bytes in all (IPv4's limit, also on IPv6 sockets, whose
/// destinations may be v4-mapped). Datagrams before `plain_until`, or all if `!gso`, go
/// one by one.
fn group<D: AsRef<[u8]>>(
    msgs: &mut Vec<TxMsg>,
    datagrams: &[D],
    to: Dest<'_>,
    start: usize,
    plain_until: usize,
    gso: bool,
) {
    msgs.clear();
    let n = datagrams.len();
    let mut i = start;
    while i < n {
        let seg = datagrams[i].as_ref().len();
        let mut count = 1;
        if gso && i >= plain_until && seg > 0 {
            let mut total = seg;
            while count < MAX_SEGMENTS_PER_SEND && i + count < n {
                let j = i + count;
                let len = datagrams[j].as_ref().len();
                if len == 0 || len > seg || total + len > MAX_PAYLOAD_V4 {
                    break;
                }
                if let Dest::Each(a) = to {
                    if a[j] != a[i] {
                        break;
                    }
                }
                count += 1;
                total += len;
                if len < seg {
                    break;
                }
            }
        }
        msgs.push(TxMsg {
            first: i,
            count,
            seg,
        });
        i += count;
    }
}

impl Rx {
    /// Allocates the slots (zeroed, so pages are only touched when used) and points the
    /// headers at them, once.
    fn setup(&mut self) {
        if !self.hdrs.is_empty() {
            return;
        }
        self.data = vec![0u8; RECV_SLOTS * SLOT_SIZE];
        // SAFETY (both closures): all-zero is a valid value of these C structs.
        self.names = (0..RECV_SLOTS).map(|_| unsafe { zeroed() }).collect();
        self.ctrl = vec![[0u64; RX_CTRL_WORDS]; RECV_SLOTS];
        let base = self.data.as_mut_ptr();
        self.iov = (0..RECV_SLOTS)
            .map(|i| libc::iovec {
                // SAFETY: i * SLOT_SIZE < data.len().
                iov_base: unsafe { base.add(i * SLOT_SIZE) }.cast(),
                iov_len: SLOT_SIZE,
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = (0..RECV_SLOTS).map(|_| unsafe { zeroed() }).collect();
        for (i, h) in hdrs.iter_mut().enumerate() {
            let m = &mut h.msg_hdr;
            m.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            m.msg_iov = &mut self.iov[i];
            m.msg_iovlen = 1;
            m.msg_control = self.ctrl[i].as_mut_ptr().cast();
        }
        self.hdrs = hdrs;
    }

    /// Reads the results of a `recvmmsg` of `n` messages; returns how many were cut
    /// short.
    fn parse(&mut self, n: usize) -> u64 {
        let mut truncated = 0;
        self.msgs.clear();
        self.next = 0;
        self.next_off = 0;
        for (slot, h) in self.hdrs[..n].iter().enumerate() {
            let mut len = h.msg_len as usize;
            let mut seg = 0usize;
            let mh = &h.msg_hdr;
            // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed cmsgs into
            // the control buffer; CMSG_FIRSTHDR/NXTHDR stay within it.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(mh);
                while !c.is_null() {
                    if (*c).cmsg_level == SOL_UDP
                        && (*c).cmsg_type == UDP_GRO
                        && (*c).cmsg_len as usize
                            >= libc::CMSG_LEN(size_of::<c_int>() as c_uint) as usize
                    {
                        let v = libc::CMSG_DATA(c).cast::<c_int>().read_unaligned();
                        seg = usize::try_from(v).unwrap_or(0);
                    }
                    c = libc::CMSG_NXTHDR(mh, c);
                }
            }
            if mh.msg_flags & libc::MSG_TRUNC != 0 {
                truncated += 1;
                if seg == 0 {
                    continue; // cut short: nothing of it can be delivered whole
                }
                len = (SLOT_SIZE / seg) * seg; // the complete segments
            }
            if seg >= len {
                seg = 0;
            }
            self.msgs.push(RxMsg {
                slot,
                len: len.min(SLOT_SIZE),
                seg,
                name_len: mh.msg_namelen as usize,
            });
        }
        truncated
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::udp::segments_per_send;

    fn runs(lens: &[usize], to: Dest<'_>, gso: bool) -> Vec<(usize, usize, usize)> {
        let data: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0; l]).collect();
        let mut msgs = Vec::new();
        group(&mut msgs, &data, to, 0, 0, gso);
        msgs.iter().map(|m| (m.first, m.count, m.seg)).collect()
    }

    #[test]
    fn equal_runs_become_one_message() {
        assert_eq!(runs(&[1400; 45], Dest::Connected, true), [(0, 45, 1400)]);
        assert_eq!(
            runs(&[1400, 1400, 900, 1400], Dest::Connected, true),
            [(0, 3, 1400), (3, 1, 1400)]
        );
        // A larger datagram ends the run before it.
        assert_eq!(
            runs(&[100, 100, 200, 200, 200], Dest::Connected, true),
            [(0, 2, 100), (2, 3, 200)]
        );
        // Empty datagrams go alone.
        assert_eq!(
            runs(&[0, 10, 0, 10, 10], Dest::Connected, true),
            [(0, 1, 0), (1, 1, 10), (2, 1, 0), (3, 2, 10)]
        );
        // No GSO: one by one.
        assert_eq!(
            runs(&[10, 10], Dest::Connected, false),
            [(0, 1, 10), (1, 1, 10)]
        );
    }

    #[test]
    fn segments_per_send_is_the_run_length_of_equal_datagrams() {
        for size in [
            1, 2, 100, 1023, 1024, 1420, 1472, 20000, 32753, 32754, 65507,
        ] {
            let run = runs(&vec![size; 200], Dest::Connected, true)[0].1;
            assert_eq!(segments_per_send(size), Some(run), "size {size}");
        }
        assert_eq!(segments_per_send(1420), Some(46));
        assert_eq!(segments_per_send(65527), Some(1));
        assert_eq!(segments_per_send(0), None);
        assert_eq!(segments_per_send(65528), None);
    }

    #[test]
    fn runs_respect_kernel_limits() {
        let r = runs(&[100; 130], Dest::Connected, true);
        assert_eq!(r, [(0, 64, 100), (64, 64, 100), (128, 2, 100)]);
        // 65507 bytes at most per message: 8972 * 7 = 62804, an eighth would exceed it.
        let r = runs(&[8972; 10], Dest::Connected, true);
        assert_eq!(r, [(0, 7, 8972), (7, 3, 8972)]);
        let r = runs(&[65507, 65507], Dest::Connected, true);
        assert_eq!(r, [(0, 1, 65507), (1, 1, 65507)]);
    }

    #[test]
    fn runs_break_at_address_changes() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let to = [a, a, b, b, a];
        assert_eq!(
            runs(&[10; 5], Dest::Each(&to), true),
            [(0, 2, 10), (2, 2, 10), (4, 1, 10)]
        );
        assert_eq!(runs(&[10; 5], Dest::One(a), true), [(0, 5, 10)]);
    }

    #[test]
    fn plain_until_forces_single_datagrams() {
        let data: Vec<Vec<u8>> = vec![vec![0; 10]; 6];
        let mut msgs = Vec::new();
        group(&mut msgs, &data, Dest::Connected, 1, 3, true);
        let got: Vec<_> = msgs.iter().map(|m| (m.first, m.count)).collect();
        assert_eq!(got, [(1, 1), (2, 1), (3, 3)]);
    }
}
