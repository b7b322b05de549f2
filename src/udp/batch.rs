//! [`UdpBatch`]: the receive scratch and pending queue, the send run grouping, and the
//! `recvmmsg`/`sendmmsg` calls with their cmsgs.

use std::ffi::{c_int, c_uint, c_void};
use std::fmt;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::cmsg::{self, RxInfo, TxMeta};
use super::meta::{Options, RecvMeta, TxMetas};
use super::sys::{self, errno, SOL_UDP, UDP_GRO, UDP_SEGMENT};
use super::{
    invalid, Dest, Error, Result, Wait, MAX_PAYLOAD_V4, MAX_PAYLOAD_V6, MAX_SEGMENTS_PER_SEND,
    RECV_SLOTS, SLOT_SIZE,
};
use crate::engine::buffer::{addr_range, check_identities, check_ranges};
use crate::engine::ErrorKind::{
    BadAddress, BufferTooSmall, DatagramTooLarge, OutOfRange, TooFewAddresses, TooFewOutBufs,
    UnknownOption, WrongFileType,
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
    /// Messages with an ECN cmsg the kernel refused (`EINVAL`/`EIO`), sent again
    /// without it; ECN cmsgs are then off for this batch ([`UdpBatch::send_ecn`]).
    pub ecn_fallbacks: u64,
    /// Messages with a source address the kernel refused (`EINVAL`, `EIO`,
    /// `ENETUNREACH`, `EADDRNOTAVAIL`: an address no longer on the host, mostly), sent
    /// again without it. Sources stay on: another may be good.
    pub src_fallbacks: u64,
}

impl Stats {
    /// By name: the receive counters of `self`, the send counters of `tx` (one batch
    /// receiving and another sending on one socket).
    pub fn items(&self, tx: &Stats) -> [(&'static str, u64); 10] {
        [
            ("recv_calls", self.recv_calls),
            ("recv_messages", self.recv_messages),
            ("recv_datagrams", self.recv_datagrams),
            ("send_calls", tx.send_calls),
            ("send_messages", tx.send_messages),
            ("send_datagrams", tx.send_datagrams),
            ("fallbacks", tx.fallbacks),
            ("truncated", self.truncated),
            ("ecn_fallbacks", tx.ecn_fallbacks),
            ("src_fallbacks", tx.src_fallbacks),
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
    /// Per message of `msgs`, what its cmsgs said (kept only with packet information or
    /// ECN on).
    info: Vec<RxInfo>,
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
    /// Each message's cmsgs, [`TX_CTRL_WORDS`] words apiece (without metadata) or
    /// [`cmsg::META_CTRL_WORDS`] (with).
    ctrl: Vec<u64>,
    msgs: Vec<TxMsg>,
    /// The messages that replace a refused one ([`UdpBatch::refit`]).
    spare: Vec<TxMsg>,
    /// Messages planned (grouped and written) in all, for the tests of the fallbacks' cost.
    #[cfg(test)]
    planned: u64,
}

// SAFETY: the raw pointers in `iov` and `hdrs` are only dereferenced (by the kernel)
// inside the `send` call that wrote them, while the borrows they come from are alive.
unsafe impl Send for Tx {}

/// One message to send: datagrams `first..first + count` in one `UDP_SEGMENT` message of
/// segment size `seg` (count 1: a plain datagram), with `meta`'s cmsgs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct TxMsg {
    first: usize,
    count: usize,
    seg: usize,
    meta: TxMeta,
}

/// A fault armed for tests ([`UdpBatch::inject_send_faults`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault {
    errno: i32,
    left: u32,
    on: FaultOn,
}

/// Which messages an injected send fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOn {
    /// Every message.
    Any,
    /// Messages with a `UDP_SEGMENT` cmsg (more than one datagram).
    Segmented,
    /// Messages with an ECN cmsg.
    Ecn,
    /// Messages with a source address cmsg.
    Source,
}

/// A fault target by the name `UdpSocket._inject_send_faults(..., on=)` takes: `"any"`,
/// `"segmented"`, `"ecn"` or `"src"` (else `unknown_option`).
impl std::str::FromStr for FaultOn {
    type Err = Error;

    fn from_str(on: &str) -> Result<Self> {
        match on {
            "any" => Ok(FaultOn::Any),
            "segmented" => Ok(FaultOn::Segmented),
            "ecn" => Ok(FaultOn::Ecn),
            "src" => Ok(FaultOn::Source),
            _ => Err(invalid(
                UnknownOption,
                format!("on must be \"any\", \"segmented\", \"ecn\" or \"src\", not {on:?}"),
            )),
        }
    }
}

impl FaultOn {
    fn hits(self, m: &TxMsg) -> bool {
        match self {
            FaultOn::Any => true,
            FaultOn::Segmented => m.count > 1,
            FaultOn::Ecn => m.meta.ecn.is_some(),
            FaultOn::Source => m.meta.src.is_some(),
        }
    }
}

/// Where a receive puts what it learns of each datagram besides its bytes: nothing, its
/// sender (`Some(&mut addrs[..])`: entry `i` is datagram `i`'s; `None`: nothing), or its
/// metadata (`&mut RecvMeta`: the sender, and with [`Options::pktinfo`] /
/// [`Options::ecn`] the local address, interface and ECN codepoint). A receive takes at
/// most as many datagrams as there are entries.
#[derive(Debug)]
pub enum Out<'a> {
    Nothing,
    Addrs(&'a mut [Option<SocketAddr>]),
    Meta(&'a mut RecvMeta),
}

impl<'a> From<Option<&'a mut [Option<SocketAddr>]>> for Out<'a> {
    fn from(a: Option<&'a mut [Option<SocketAddr>]>) -> Self {
        a.map_or(Out::Nothing, Out::Addrs)
    }
}

impl<'a> From<&'a mut RecvMeta> for Out<'a> {
    fn from(m: &'a mut RecvMeta) -> Self {
        Out::Meta(m)
    }
}

impl Out<'_> {
    /// The most datagrams it takes.
    fn limit(&self) -> usize {
        match self {
            Out::Nothing => usize::MAX,
            Out::Addrs(a) => a.len(),
            Out::Meta(m) => m.len(),
        }
    }
}

/// Batched UDP I/O on a socket it does not own (see the [module docs](super)).
///
/// One per thread: receive and send state are separate, but both need `&mut self`.
pub struct UdpBatch {
    family: c_int,
    gso: bool,
    gro: bool,
    /// The options asked for (`gso` and `gro` as asked, before the kernel had its say).
    opts: Options,
    /// ECN cmsgs go out (off after the kernel refused one).
    send_ecn: bool,
    /// The socket's TOS and traffic class bytes, read at the first send with ECN.
    tos: Option<(u8, u8)>,
    faults: Option<Fault>,
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
        Self::with_options(
            sock,
            &Options {
                gso,
                gro,
                ..Options::default()
            },
        )
    }

    /// As [`with_offloads`](Self::with_offloads), with the other [`Options`] too: the
    /// socket options they ask for are turned on here (an option the kernel refuses is an
    /// `OSError`; on an `AF_INET6` socket the IPv4 ones for v4-mapped peers are turned on
    /// where the kernel lets them).
    pub fn with_options(sock: BorrowedFd<'_>, opts: &Options) -> Result<Self> {
        let (gso, gro) = (opts.gso, opts.gro);
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
        sys::set_options(fd, family, opts)?;
        Ok(UdpBatch {
            family,
            gso,
            gro,
            opts: *opts,
            send_ecn: true,
            tos: None,
            faults: None,
            stats: Stats::default(),
            rx: Rx {
                data: Vec::new(),
                names: Vec::new(),
                ctrl: Vec::new(),
                iov: Vec::new(),
                hdrs: Vec::new(),
                msgs: Vec::new(),
                info: Vec::new(),
                next: 0,
                next_off: 0,
            },
            tx: Tx {
                iov: Vec::new(),
                hdrs: Vec::new(),
                names: Vec::new(),
                ctrl: Vec::new(),
                msgs: Vec::new(),
                spare: Vec::new(),
                #[cfg(test)]
                planned: 0,
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

    /// The options this batch was made with.
    pub fn options(&self) -> Options {
        self.opts
    }

    /// Whether ECN codepoints go out as cmsgs (off once the kernel refused one).
    pub fn send_ecn(&self) -> bool {
        self.send_ecn
    }

    /// The faults still armed (for tests).
    #[cfg(test)]
    pub(crate) fn faults_left(&self) -> u32 {
        self.faults.map_or(0, |f| f.left)
    }

    /// **Testing only.** The next `count` messages that `on` hits fail as if `sendmmsg`
    /// had refused them with `errno`, without reaching the kernel (this kernel takes what
    /// older ones refused); the fallbacks then run as for the kernel's refusal. `count`
    /// 0 disarms. Unset, a send pays one check of an `Option` per `sendmmsg`.
    pub fn inject_send_faults(&mut self, errno: i32, count: u32, on: FaultOn) -> Result<()> {
        if errno <= 0 {
            return Err(invalid(
                OutOfRange,
                format!("errno must be a positive error number, not {errno}"),
            ));
        }
        self.faults = (count > 0).then_some(Fault {
            errno,
            left: count,
            on,
        });
        Ok(())
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

    /// Messages planned so far ([`Tx::planned`]).
    #[cfg(test)]
    pub(crate) fn planned(&self) -> u64 {
        self.tx.planned
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
    pub fn recv<'a, B: ExpandBuffer>(
        &mut self,
        sock: BorrowedFd<'_>,
        bufs: &mut [B],
        sizes: &mut [usize],
        offset: usize,
        addrs: impl Into<Out<'a>>,
        wait: Wait,
    ) -> Result<usize> {
        let out = addrs.into();
        let max = bufs.len().min(sizes.len()).min(out.limit());
        if max == 0 {
            return Err(invalid(
                TooFewOutBufs,
                "no buffers to receive into (bufs, sizes and addrs must not be empty)",
            ));
        }
        self.fill(sock, max, wait)?;
        self.deliver(&mut bufs[..max], sizes, offset, out)
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
                let truncated = rx.parse(n as usize, self.opts.pktinfo || self.opts.ecn);
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
    /// First the buffers are checked distinct (the same object twice, or two views of
    /// shared memory: `overlapping_buffers`) and every buffer is made long enough (grown
    /// with [`ExpandBuffer::resize`] where it is too short); if one cannot be,
    /// [`Error::BufferTooSmall`]; either way nothing is consumed. Then the datagrams are
    /// copied and leave the pending queue.
    pub fn deliver<'a, B: ExpandBuffer>(
        &mut self,
        bufs: &mut [B],
        sizes: &mut [usize],
        offset: usize,
        addrs: impl Into<Out<'a>>,
    ) -> Result<usize> {
        let out = addrs.into();
        let k = (bufs.len().min(sizes.len()).min(out.limit())).min(self.pending());
        let (n, _) = self.make_room(&mut bufs[..k], offset)?;
        self.copy_out(&mut bufs[..n], sizes, offset, out)
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
        // The same object twice, refused before anything grows: growing moves a buffer,
        // and its second entry would keep the old address.
        let all_known = check_identities(bufs, "bufs")?;
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
        if !all_known {
            // Views into shared memory (memoryviews of one bytearray): the parts written.
            check_ranges(
                &bufs[..n],
                &|_, b| addr_range(b, 0, b.bytes().len()),
                "bufs",
            )?;
        }
        Ok((n, bytes))
    }

    /// [`deliver`](Self::deliver)'s second pass: copies the next `bufs.len()` pending
    /// datagrams (at most; see [`make_room`](Self::make_room), which must have made room
    /// in these buffers) into them and consumes them; returns how many.
    pub fn copy_out<'a, B: ExpandBuffer>(
        &mut self,
        bufs: &mut [B],
        sizes: &mut [usize],
        offset: usize,
        addrs: impl Into<Out<'a>>,
    ) -> Result<usize> {
        let mut out = addrs.into();
        let (pktinfo, ecn) = (self.opts.pktinfo, self.opts.ecn);
        if let Out::Meta(meta) = &mut out {
            meta.begin(pktinfo, ecn);
        }
        let rx = &mut self.rx;
        let mut n = bufs.len().min(sizes.len()).min(out.limit());
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
                if i == 0 {
                    rx.next = m;
                    rx.next_off = off;
                    return Err(Error::BufferTooSmall {
                        index: 0,
                        need: offset + dlen,
                        have: bufs[0].bytes().len(),
                        reason: "it shrank".into(),
                    });
                }
                n = i;
                break;
            };
            dst.copy_from_slice(src);
            sizes[i] = dlen;
            if !matches!(out, Out::Nothing) {
                let addr = match last {
                    Some((slot, addr)) if slot == msg.slot => addr,
                    _ => sys::read_sockaddr(&rx.names[msg.slot], msg.name_len),
                };
                last = Some((msg.slot, addr));
                match &mut out {
                    Out::Nothing => {}
                    Out::Addrs(a) => a[i] = addr,
                    Out::Meta(meta) => {
                        let info = rx.info.get(m).filter(|_| meta.wants_local());
                        meta.set(i, addr, info);
                    }
                }
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
        if let Out::Meta(meta) = &mut out {
            meta.end(n);
        }
        Ok(n)
    }

    /// [`recv`](Self::recv) on a caller's buffers and hooks (the Python binding's): the
    /// wait runs through [`Hooks::syscall`], a large delivery (a coalesced read) through
    /// [`Hooks::work`] on the buffers pinned. The outer error is the caller's (converting
    /// its buffers); the inner one the socket's, `Interrupted` included (check for signals
    /// and call again).
    #[allow(clippy::too_many_arguments)]
    pub fn recv_with<'a, E, L, H>(
        &mut self,
        sock: BorrowedFd<'_>,
        bufs: &mut L,
        sizes: &mut [usize],
        offset: usize,
        addrs: impl Into<Out<'a>>,
        wait: Wait,
        hooks: &mut H,
    ) -> std::result::Result<Result<usize>, E>
    where
        L: Buffers<E> + ?Sized,
        H: Hooks<E> + ?Sized,
    {
        let out = addrs.into();
        let nb = bufs.count().min(out.limit());
        // A buffer that might not take a datagram is refused before one is received: each
        // is converted, unless each is one that can take any (a growable bytearray).
        if bufs.next_limited(0, None) < nb {
            bufs.bufs(nb, false, usize::MAX)?;
        }
        let pending = match self.pending() {
            0 => match hooks.syscall(|| self.fill(sock, nb, wait)) {
                Ok(pending) => pending,
                Err(e) => return Ok(Err(e)),
            },
            pending => pending,
        };
        // No more buffers than datagrams pending: the others are not looked at.
        let nb = nb.min(pending);
        let (n, bytes) = match self.make_room(bufs.bufs(nb, false, usize::MAX)?, offset) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if hooks.worth_releasing(bytes) {
            return bufs.pinned(n, |w| hooks.work(|| self.copy_out(w, sizes, offset, out)));
        }
        let b = &mut bufs.bufs(nb, false, usize::MAX)?[..n];
        Ok(self.copy_out(b, sizes, offset, out))
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
    /// system error stops the batch: [`SendError`] says how many went out. A single
    /// datagram over the path MTU on a socket that does not fragment is
    /// [`Error::MessageTooLong`], which names the MTU.
    pub fn send<D: AsRef<[u8]>>(
        &mut self,
        sock: BorrowedFd<'_>,
        datagrams: &[D],
        to: Dest<'_>,
        wait: Wait,
    ) -> std::result::Result<usize, SendError> {
        self.send_with(sock, datagrams, to, TxMetas::None, wait)
    }

    /// [`send`](Self::send) with an ECN codepoint and a source address for each datagram
    /// (`meta`; nothing, the same for all, or one each): runs of equal size *and* equal
    /// metadata go as one `UDP_SEGMENT` message with the cmsgs of its metadata.
    ///
    /// Also refused before anything is sent: an ECN codepoint above 3 (`out_of_range`),
    /// fewer entries than datagrams, a source of another family than its destination
    /// (`bad_address`). Where the kernel refuses a message with a source (`EINVAL`, `EIO`,
    /// `ENETUNREACH`, `EADDRNOTAVAIL`: mostly an address no longer on the host), it is
    /// sent again without it (counted in [`Stats::src_fallbacks`]; sources stay on); one
    /// with an ECN codepoint (`EINVAL`, `EIO`: a kernel without the cmsg), again without
    /// it, and ECN cmsgs turn off for this batch ([`Stats::ecn_fallbacks`],
    /// [`send_ecn`](Self::send_ecn)). Segmentation is given up first, the source next,
    /// ECN last. Nothing is lost or sent twice.
    pub fn send_meta<D: AsRef<[u8]>>(
        &mut self,
        sock: BorrowedFd<'_>,
        datagrams: &[D],
        to: Dest<'_>,
        meta: TxMetas<'_>,
        wait: Wait,
    ) -> std::result::Result<usize, SendError> {
        // The plain send is compiled on its own, without metadata: a caller that passes
        // its arguments through (the Python binding) pays nothing for the options it does
        // not use.
        match meta {
            TxMetas::None => self.send(sock, datagrams, to, wait),
            meta => self.send_with(sock, datagrams, to, meta, wait),
        }
    }

    /// [`send_meta`](Self::send_meta)'s body, inlined into [`send`](Self::send) with no
    /// metadata.
    #[inline(always)]
    fn send_with<D: AsRef<[u8]>>(
        &mut self,
        sock: BorrowedFd<'_>,
        datagrams: &[D],
        to: Dest<'_>,
        meta: TxMetas<'_>,
        wait: Wait,
    ) -> std::result::Result<usize, SendError> {
        let fd = sock.as_raw_fd();
        let n = datagrams.len();
        let peer = self
            .check_send(fd, datagrams, to, meta)
            .map_err(|error| SendError { sent: 0, error })?;
        let mut r = Replan::default();
        let mut m = self
            .plan(fd, datagrams, to, meta, peer, &r, false)
            .map_err(|error| SendError { sent: 0, error })?;
        while m < self.tx.msgs.len() {
            let tx = &mut self.tx;
            let mut vlen = tx.msgs.len() - m;
            let mut injected = None;
            if let Some(f) = &mut self.faults {
                match tx.msgs[m..].iter().position(|x| f.on.hits(x)) {
                    Some(0) => {
                        injected = Some(f.errno);
                        f.left -= 1;
                        if f.left == 0 {
                            self.faults = None;
                        }
                    }
                    Some(k) => vlen = k, // up to the message it hits
                    None => {}
                }
            }
            let rc = match injected {
                Some(_) => -1,
                // SAFETY: `hdrs[m..]` were written by `plan` or `refit` in this call; they
                // point at `iov`, `names` and `ctrl` (not reallocated since) and at the
                // bytes of `datagrams`, which are borrowed for this whole call.
                None => unsafe {
                    libc::sendmmsg(
                        fd,
                        tx.hdrs.as_mut_ptr().add(m),
                        vlen.min(c_uint::MAX as usize) as c_uint,
                        libc::MSG_DONTWAIT,
                    )
                },
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
            let e = match (rc, injected) {
                (_, Some(e)) => e,
                (0, None) => libc::EAGAIN,
                _ => errno(),
            };
            let msg = tx.msgs[m];
            let stop = |error| SendError {
                sent: msg.first,
                error,
            };
            let st = &mut self.stats;
            let (seg, src, ecn) = (msg.count > 1, msg.meta.src.is_some(), msg.meta.ecn);
            // Whether only this message changes (and those it may now join): re-planned
            // in place. Segmentation or ECN off changes all after it: a full re-plan, once
            // a call at most.
            let local = match e {
                libc::EAGAIN => {
                    sys::wait_fd(fd, libc::POLLOUT, wait).map_err(stop)?;
                    continue;
                }
                libc::EINTR => return Err(stop(Error::Interrupted)),
                libc::EIO if seg => {
                    // No checksum offload on this route: segmentation cannot work on
                    // this socket (wireguard-go turns it off for good, too).
                    self.gso = false;
                    st.fallbacks += 1;
                    r.plain_until = n;
                    false
                }
                libc::EINVAL | libc::EMSGSIZE if seg => {
                    st.fallbacks += 1;
                    r.plain_until = r.plain_until.max(msg.first + msg.count);
                    true
                }
                libc::EINVAL | libc::EIO | libc::ENETUNREACH | libc::EADDRNOTAVAIL if src => {
                    st.src_fallbacks += 1;
                    r.nosrc = msg.first..msg.first + msg.count;
                    true
                }
                libc::EINVAL | libc::EIO if ecn.is_some() && self.send_ecn => {
                    self.send_ecn = false;
                    st.ecn_fallbacks += 1;
                    false
                }
                libc::EMSGSIZE => {
                    let to = match to {
                        Dest::Connected => None,
                        Dest::One(a) => Some(a),
                        Dest::Each(a) => Some(a[msg.first]),
                    };
                    let size = datagrams[msg.first].as_ref().len();
                    return Err(stop(self.too_long(fd, msg.first, size, to, peer)));
                }
                e => return Err(stop(Error::from_errno(e, "sending datagrams (sendmmsg)"))),
            };
            if local {
                if let Some(slot) = self
                    .refit(fd, datagrams, to, meta, peer, &r, m)
                    .map_err(stop)?
                {
                    m = slot;
                    continue;
                }
            }
            r.start = msg.first;
            m = (self.plan(fd, datagrams, to, meta, peer, &r, true)).map_err(stop)?;
        }
        Ok(n)
    }

    /// The error for datagram `i` of `size` bytes refused with `EMSGSIZE`: over the path
    /// MTU towards `to` (`None`: the connected `peer`), which it names where it can be
    /// read.
    #[cold]
    fn too_long(
        &self,
        fd: RawFd,
        i: usize,
        size: usize,
        to: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> Error {
        let mtu = sys::path_mtu(fd, self.family, to.as_ref());
        let dest = to.or(peer).or_else(|| sys::peer(fd));
        let v4 = self.family == libc::AF_INET || dest.is_some_and(|a| is_v4(&a));
        let (ip, overhead) = if v4 { ("IPv4", 28) } else { ("IPv6", 48) };
        let towards = dest.map_or(String::new(), |a| format!(" to {a}"));
        let msg = match mtu {
            Some(mtu) => format!(
                "sending datagrams (sendmmsg): Message too long: datagram {i} is {size} bytes, \
                 more than the {} bytes of UDP payload over {ip} that the path MTU of {mtu} \
                 bytes{towards} allows (the socket does not fragment)",
                mtu.saturating_sub(overhead)
            ),
            None => format!(
                "sending datagrams (sendmmsg): Message too long: datagram {i} is {size} bytes, \
                 more than the path MTU{towards} allows (the socket does not fragment); the \
                 MTU could not be read (it can on a connected socket, or with CAP_NET_ADMIN)"
            ),
        };
        Error::MessageTooLong { size, mtu, msg }
    }

    /// The checks `send` makes before sending anything; returns the connected peer where
    /// the metadata needs its family. (Inlined, as [`plan`](Self::plan): into the plain
    /// send, with no metadata to look at.)
    #[inline(always)]
    fn check_send<D: AsRef<[u8]>>(
        &self,
        fd: RawFd,
        datagrams: &[D],
        to: Dest<'_>,
        meta: TxMetas<'_>,
    ) -> Result<Option<SocketAddr>> {
        let n = datagrams.len();
        let peer = self.check_meta(fd, n, to, meta)?;
        self.check_sizes(fd, datagrams, to)?;
        Ok(peer)
    }

    /// The metadata's checks (see [`send_meta`](Self::send_meta)).
    fn check_meta(
        &self,
        fd: RawFd,
        n: usize,
        to: Dest<'_>,
        meta: TxMetas<'_>,
    ) -> Result<Option<SocketAddr>> {
        if meta.is_none() {
            return Ok(None);
        }
        meta.check(n)?;
        let peer = match to {
            Dest::Connected if self.family == libc::AF_INET6 => sys::peer(fd),
            _ => None,
        };
        for i in 0..n {
            let Some(src) = meta.get(i).src else {
                if matches!(meta, TxMetas::All(_)) {
                    break;
                }
                continue;
            };
            let dest_v4 = self.family == libc::AF_INET
                || match to {
                    Dest::Connected => peer.is_some_and(|a| is_v4(&a)),
                    Dest::One(a) => is_v4(&a),
                    Dest::Each(a) => a.get(i).is_some_and(is_v4),
                };
            if dest_v4 != src.v4().is_some() || (self.family == libc::AF_INET && src.ip.is_ipv6()) {
                let (s, d) = match dest_v4 {
                    true => ("IPv6", "IPv4"),
                    false => ("IPv4", "IPv6"),
                };
                let e = crate::engine::Error::new(
                    BadAddress,
                    format!(
                        "the source of datagram {i} ({}) is {s}, but it goes to an {d} destination",
                        src.ip
                    ),
                );
                return Err(Error::Invalid(e.at(i)));
            }
            if matches!(meta, TxMetas::All(_)) && !matches!(to, Dest::Each(_)) {
                break; // one source, one destination family
            }
        }
        Ok(peer)
    }

    /// The address and size checks of a send.
    #[inline(always)]
    fn check_sizes<D: AsRef<[u8]>>(&self, fd: RawFd, datagrams: &[D], to: Dest<'_>) -> Result<()> {
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
        let v4 = is_v4;
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

    /// Groups `datagrams[r.start..]` into messages (see [`group`]) and writes the
    /// `sendmmsg` arrays for them; returns the slot of the first. `aligned` (a re-plan):
    /// the messages take the last of one slot per datagram, so that no message's slot is
    /// below its first datagram's index from `r.start`, and a refused one re-planned with
    /// more messages has room in the slots before ([`refit`](Self::refit)).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn plan<D: AsRef<[u8]>>(
        &mut self,
        fd: RawFd,
        datagrams: &[D],
        to: Dest<'_>,
        meta: TxMetas<'_>,
        peer: Option<SocketAddr>,
        r: &Replan,
        aligned: bool,
    ) -> Result<usize> {
        let start = r.start;
        let tx = &mut self.tx;
        let send_ecn = self.send_ecn;
        group(&mut tx.msgs, datagrams, to, meta, r, self.gso, send_ecn);
        let nm = tx.msgs.len();
        let slots = if aligned { datagrams.len() - start } else { nm };
        let first = slots - nm;
        if first > 0 {
            tx.msgs.resize(slots, TxMsg::default());
            tx.msgs.copy_within(0..nm, first);
        }
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
            Dest::Each(_) => slots,
        };
        // SAFETY (both closures): all-zero is a valid value of these C structs.
        tx.names.resize_with(n_names, || unsafe { zeroed() });
        tx.ctrl.resize(slots * ctrl_words(meta), 0);
        tx.hdrs.clear();
        tx.hdrs.resize_with(slots, || unsafe { zeroed() });
        self.write_hdrs(fd, to, meta, peer, start, first..slots)?;
        Ok(first)
    }

    /// Re-plans after the kernel refused the message in slot `m` for its segmentation or
    /// its source (given up in `r`): only the messages from it to the first planned one
    /// that starts where a new one would (from there on the plan is the same), written
    /// into the slots before that one (those before `m` were sent). Returns the slot to
    /// go on from, or `None` where the new messages do not fit (not after an aligned
    /// [`plan`](Self::plan)).
    #[allow(clippy::too_many_arguments)]
    fn refit<D: AsRef<[u8]>>(
        &mut self,
        fd: RawFd,
        datagrams: &[D],
        to: Dest<'_>,
        meta: TxMetas<'_>,
        peer: Option<SocketAddr>,
        r: &Replan,
        m: usize,
    ) -> Result<Option<usize>> {
        let runs = Runs {
            datagrams,
            to,
            meta,
            r,
            gso: self.gso,
            send_ecn: self.send_ecn,
        };
        let tx = &mut self.tx;
        let end = regroup(&mut tx.spare, &tx.msgs, m, &runs);
        let Some(first) = end.checked_sub(tx.spare.len()) else {
            return Ok(None);
        };
        tx.msgs[first..end].copy_from_slice(&tx.spare);
        for h in &mut tx.hdrs[first..end] {
            // SAFETY: all-zero is a valid value of this C struct.
            *h = unsafe { zeroed() };
        }
        self.write_hdrs(fd, to, meta, peer, r.start, first..end)?;
        Ok(Some(first))
    }

    /// Writes the headers (zeroed) of the messages in `slots`, the cmsgs of their
    /// metadata included (`start`: the datagram of the first iovec; `peer`: the connected
    /// peer, for its family).
    #[inline(always)]
    fn write_hdrs(
        &mut self,
        fd: RawFd,
        to: Dest<'_>,
        meta: TxMetas<'_>,
        peer: Option<SocketAddr>,
        start: usize,
        slots: std::ops::Range<usize>,
    ) -> Result<()> {
        let tx = &mut self.tx;
        #[cfg(test)]
        {
            tx.planned += slots.len() as u64;
        }
        let words = ctrl_words(meta);
        let mut name_len = 0;
        if let Dest::One(a) = to {
            name_len = sys::write_sockaddr(&a, self.family, &mut tx.names[0])?;
        }
        let msgs = &tx.msgs[slots.clone()];
        if self.send_ecn && self.tos.is_none() && msgs.iter().any(|m| m.meta.ecn.is_some()) {
            self.tos = Some(sys::tos_bytes(fd, self.family));
        }
        let (tos4, tos6) = self.tos.unwrap_or_default();
        let v4_socket = self.family == libc::AF_INET;
        let plain = meta.is_none();
        let iov = tx.iov.as_mut_ptr();
        for m in slots {
            let msg = tx.msgs[m];
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
            let segment = (msg.count > 1).then_some(msg.seg as u16);
            if segment.is_none() && (plain || msg.meta == TxMeta::default()) {
                continue; // no cmsg at all (no UDP_SEGMENT on a single datagram)
            }
            let v4 = v4_socket
                || match to {
                    Dest::Connected => peer.is_some_and(|a| is_v4(&a)),
                    Dest::One(a) => is_v4(&a),
                    Dest::Each(a) => is_v4(&a[msg.first]),
                };
            let ctrl = &mut tx.ctrl[m * words..(m + 1) * words];
            let tos = if v4 { tos4 } else { tos6 };
            let len = cmsg::encode(ctrl, segment, &msg.meta, v4, tos);
            if len > 0 {
                h.msg_control = ctrl.as_mut_ptr().cast();
                h.msg_controllen = len;
            }
        }
        Ok(())
    }
}

/// Room for each message's cmsgs: `UDP_SEGMENT` alone, or with the metadata's.
fn ctrl_words(meta: TxMetas<'_>) -> usize {
    match meta {
        TxMetas::None => TX_CTRL_WORDS,
        _ => cmsg::META_CTRL_WORDS,
    }
}

/// Whether `a` is an IPv4 destination (or v4-mapped: the kernel sends it over IPv4).
fn is_v4(a: &SocketAddr) -> bool {
    match a {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    }
}

/// Where a send goes on after the kernel refused a message: from datagram `start`, the
/// datagrams before `plain_until` one by one (segmentation refused), those in `nosrc`
/// without their source address.
#[derive(Debug, Clone, Default)]
struct Replan {
    start: usize,
    plain_until: usize,
    nosrc: std::ops::Range<usize>,
}

/// The run grouping: `datagrams[r.start..]` as messages. A run starts at a non-empty
/// datagram of size `s` and takes the following datagrams to the same address, with the
/// same metadata, while they are `s` bytes long (one shorter, non-empty datagram ends
/// it), up to [`MAX_SEGMENTS_PER_SEND`] and [`MAX_PAYLOAD_V4`] bytes in all (IPv4's
/// limit, also on IPv6 sockets, whose destinations may be v4-mapped). Datagrams before
/// `r.plain_until`, or all if `!gso`, go one by one. Each message's metadata is its
/// datagrams' from `meta`, without the ECN codepoint unless `send_ecn`, without the source
/// in `r.nosrc`. (Inlined into each send, so that the plain one has no metadata to
/// compare.)
#[inline(always)]
fn group<D: AsRef<[u8]>>(
    msgs: &mut Vec<TxMsg>,
    datagrams: &[D],
    to: Dest<'_>,
    meta: TxMetas<'_>,
    r: &Replan,
    gso: bool,
    send_ecn: bool,
) {
    msgs.clear();
    let runs = Runs {
        datagrams,
        to,
        meta,
        r,
        gso,
        send_ecn,
    };
    let mut i = r.start;
    while i < datagrams.len() {
        let msg = runs.at(i);
        msgs.push(msg);
        i += msg.count;
    }
}

/// After the kernel refused `old[m]` (its segmentation or its source now given up in
/// `runs.r`): the messages in `new` that replace `old[m..end]`; `old[end..]` stand as
/// planned. Only the refused message's datagrams changed, so where a new message starts
/// with an old one after it, [`group`] would go on as before; returns `end` (`old.len()`:
/// none stands).
fn regroup<D: AsRef<[u8]>>(
    new: &mut Vec<TxMsg>,
    old: &[TxMsg],
    m: usize,
    runs: &Runs<'_, D>,
) -> usize {
    new.clear();
    let mut end = m + 1;
    let mut i = old[m].first;
    while i < runs.datagrams.len() {
        while end < old.len() && old[end].first < i {
            end += 1;
        }
        if end < old.len() && old[end].first == i {
            return end;
        }
        let msg = runs.at(i);
        new.push(msg);
        i += msg.count;
    }
    old.len()
}

/// What [`group`] groups by.
struct Runs<'a, D> {
    datagrams: &'a [D],
    to: Dest<'a>,
    meta: TxMetas<'a>,
    r: &'a Replan,
    gso: bool,
    send_ecn: bool,
}

impl<D: AsRef<[u8]>> Runs<'_, D> {
    /// Datagram `i`'s metadata as sent.
    #[inline(always)]
    fn meta_of(&self, i: usize) -> TxMeta {
        let mut m = self.meta.get(i);
        if !self.send_ecn {
            m.ecn = None;
        }
        if self.r.nosrc.contains(&i) {
            m.src = None;
        }
        m
    }

    /// The message that starts at datagram `i`.
    #[inline(always)]
    fn at(&self, i: usize) -> TxMsg {
        let (datagrams, n) = (self.datagrams, self.datagrams.len());
        let seg = datagrams[i].as_ref().len();
        let plain = self.meta.is_none();
        let m = if plain {
            TxMeta::default()
        } else {
            self.meta_of(i)
        };
        let mut count = 1;
        if self.gso && i >= self.r.plain_until && seg > 0 {
            let mut total = seg;
            while count < MAX_SEGMENTS_PER_SEND && i + count < n {
                let j = i + count;
                let len = datagrams[j].as_ref().len();
                if len == 0 || len > seg || total + len > MAX_PAYLOAD_V4 {
                    break;
                }
                if let Dest::Each(a) = self.to {
                    if a[j] != a[i] {
                        break;
                    }
                }
                if !plain && self.meta_of(j) != m {
                    break;
                }
                count += 1;
                total += len;
                if len < seg {
                    break;
                }
            }
        }
        TxMsg {
            first: i,
            count,
            seg,
            meta: m,
        }
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

    /// Reads the results of a `recvmmsg` of `n` messages, keeping what their cmsgs say
    /// with `keep_info`; returns how many were cut short.
    fn parse(&mut self, n: usize, keep_info: bool) -> u64 {
        let mut truncated = 0;
        self.msgs.clear();
        self.info.clear();
        self.next = 0;
        self.next_off = 0;
        for (slot, h) in self.hdrs[..n].iter().enumerate() {
            let mut len = h.msg_len as usize;
            let mh = &h.msg_hdr;
            // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed cmsgs into
            // the control buffer, which is 8-aligned.
            let info = unsafe { cmsg::decode(mh) };
            let mut seg = info.segment;
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
            if keep_info {
                self.info.push(info);
            }
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
        group(
            &mut msgs,
            &data,
            to,
            TxMetas::None,
            &Replan::default(),
            gso,
            true,
        );
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
        let r = Replan {
            start: 1,
            plain_until: 3,
            nosrc: 0..0,
        };
        group(
            &mut msgs,
            &data,
            Dest::Connected,
            TxMetas::None,
            &r,
            true,
            true,
        );
        let got: Vec<_> = msgs.iter().map(|m| (m.first, m.count)).collect();
        assert_eq!(got, [(1, 1), (2, 1), (3, 3)]);
    }

    #[test]
    fn runs_break_at_metadata_changes() {
        let src = |ip: &str| {
            Some(crate::udp::Source {
                ip: ip.parse().unwrap(),
                ifindex: 0,
            })
        };
        let m = |ecn: Option<u8>, s: &str| TxMeta {
            ecn,
            src: if s.is_empty() { None } else { src(s) },
        };
        let (a, b) = (m(Some(2), "10.0.0.1"), m(Some(3), "10.0.0.1"));
        let c = m(Some(2), "10.0.0.2");
        let data: Vec<Vec<u8>> = vec![vec![0; 10]; 7];
        let each = [a, a, b, b, c, c, a];
        // (metadata, replan, send_ecn) -> (first, count) of each message
        type Case<'a> = (TxMetas<'a>, Replan, bool, Vec<(usize, usize)>);
        let cases: Vec<Case<'_>> = vec![
            (TxMetas::All(a), Replan::default(), true, vec![(0, 7)]),
            (
                TxMetas::Each(&each),
                Replan::default(),
                true,
                vec![(0, 2), (2, 2), (4, 2), (6, 1)],
            ),
            // ECN off: a and b are the same then.
            (
                TxMetas::Each(&each),
                Replan::default(),
                false,
                vec![(0, 4), (4, 2), (6, 1)],
            ),
            // Datagrams 4 and 5 without their source: like a's but for... their ECN.
            (
                TxMetas::Each(&each),
                Replan {
                    nosrc: 4..6,
                    ..Replan::default()
                },
                true,
                vec![(0, 2), (2, 2), (4, 2), (6, 1)],
            ),
        ];
        for (k, (meta, r, send_ecn, want)) in cases.into_iter().enumerate() {
            let mut msgs = Vec::new();
            group(&mut msgs, &data, Dest::Connected, meta, &r, true, send_ecn);
            let got: Vec<_> = msgs.iter().map(|m| (m.first, m.count)).collect();
            assert_eq!(got, want, "case {k}");
            for msg in &msgs {
                let mut want = meta.get(msg.first);
                if !send_ecn {
                    want.ecn = None;
                }
                if r.nosrc.contains(&msg.first) {
                    want.src = None;
                }
                assert_eq!(msg.meta, want, "case {k}, message at {}", msg.first);
            }
        }
    }

    #[test]
    fn regroup_is_a_full_regroup_from_the_refused_message() {
        let src = |ip: &str| {
            Some(crate::udp::Source {
                ip: ip.parse().unwrap(),
                ifindex: 0,
            })
        };
        let (a, b) = (src("10.0.0.1"), src("10.0.0.2"));
        let m = |s| TxMeta {
            ecn: Some(2),
            src: s,
        };
        let x: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let y: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut spill = vec![m(None); 200];
        (spill[0], spill[100]) = (m(a), m(a));
        let to: Vec<SocketAddr> = (0..200).map(|i| if i % 7 < 5 { x } else { y }).collect();
        let mixed = [10, 10, 10, 5, 10, 10, 20, 20, 20, 20, 0, 10, 10, 10, 10, 10];
        let some = [
            a, a, None, None, a, None, None, None, b, b, None, a, a, a, None, None,
        ];
        let some: Vec<TxMeta> = some.into_iter().map(m).collect();
        // (lengths, metadata, addresses)
        type Case<'a> = (Vec<usize>, Vec<TxMeta>, Option<&'a [SocketAddr]>);
        let cases: [Case<'_>; 5] = [
            (vec![10; 16], some.clone(), None),
            (mixed.to_vec(), some.clone(), None),
            (mixed.to_vec(), some, Some(&to)),
            (vec![10; 200], spill.clone(), None),
            (vec![10; 200], spill, Some(&to)),
        ];
        for (k, (lens, metas, to)) in cases.into_iter().enumerate() {
            let data: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0; l]).collect();
            let to = to.map_or(Dest::Connected, Dest::Each);
            let meta = TxMetas::Each(&metas);
            for (send_ecn, sources) in [(true, true), (false, true), (true, false)] {
                // Refuse each message with a source (or each segmented one), in turn, as
                // a send does: each time, the replacement and the messages that stand
                // are what grouping anew from the refused message gives.
                let mut r = Replan::default();
                let mut plan = Vec::new();
                group(&mut plan, &data, to, meta, &r, true, send_ecn);
                let (mut m, mut new) = (0, Vec::new());
                while m < plan.len() {
                    let msg = plan[m];
                    match sources {
                        true if msg.meta.src.is_some() => {
                            r.nosrc = msg.first..msg.first + msg.count
                        }
                        false if msg.count > 1 => r.plain_until = msg.first + msg.count,
                        _ => {
                            m += 1;
                            continue;
                        }
                    }
                    let runs = Runs {
                        datagrams: &data[..],
                        to,
                        meta,
                        r: &r,
                        gso: true,
                        send_ecn,
                    };
                    let end = regroup(&mut new, &plan, m, &runs);
                    let mut full = Vec::new();
                    let from = Replan {
                        start: msg.first,
                        ..r.clone()
                    };
                    group(&mut full, &data, to, meta, &from, true, send_ecn);
                    let got: Vec<TxMsg> = new.iter().chain(&plan[end..]).copied().collect();
                    assert_eq!(
                        got, full,
                        "case {k}, {send_ecn}, {sources}, at {}",
                        msg.first
                    );
                    plan.truncate(m);
                    plan.extend(full);
                    m += 1;
                }
            }
        }
    }
}
