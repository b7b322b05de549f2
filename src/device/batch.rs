//! Batch I/O on a TUN device: one read split into the caller's buffers, a batch coalesced
//! (with offload) and written. Pure Rust, no Python.
//!
//! [`recv_multiple`] and [`send_multiple`] take the arguments the Python API takes
//! (buffers, `offset`, `sizes`, `count`, `fit`) and make every check on them. Their
//! `*_with` forms take the caller's [`Buffers`] and [`Hooks`]: the Python binding passes
//! its lists and releases the GIL around the system calls, which go through the hooks;
//! Rust callers use the plain forms, on slices of [`ExpandBuffer`]s.
//!
//! A buffer too small for its packet is grown when it can be (`max_len()`), so a
//! `Vec<u8>` (or a Python `bytearray`) trimmed to its last packet takes a larger one next
//! time. Errors are the device's [`Error`]: `Invalid` (with its kind) for a bad packet or
//! argument, `Os` with the errno for the system.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use super::offload::{refused_coalesced, segments};
use super::sys::{IFF_NO_PI, IFF_TAP};
use super::{invalid, Error, Tun};
use crate::engine::buffer::{batch_len, check_sizes, span};
use crate::engine::gro::coalesce;
use crate::engine::split::{check_outputs, Failed};
use crate::engine::{
    self, Buffers, ErrorKind, ExpandBuffer, GroTable, Split, MAX_IP_PACKET, VIRTIO_NET_HDR_LEN,
};
use crate::hooks::{locked, retry, Direct, Hooks};
use crate::udp::Wait;

/// More than any one read from a TUN/TAP device returns (a header, an Ethernet header and
/// the largest IP packet): a caller that allocates per read need not allocate more.
pub const MAX_READ: usize = 1 << 17;

/// The size a receive buffer needs for any packet of this device: the virtio header or
/// packet information, an Ethernet header on TAP, and the largest IP packet.
pub fn max_read(tun: &Tun) -> usize {
    header_len(tun) + if is_tap(tun) { 14 } else { 0 } + MAX_IP_PACKET
}

/// Bytes before the IP header (or Ethernet frame) in a read or write: the virtio header
/// with offload, the packet information without `IFF_NO_PI`, else none.
pub fn header_len(tun: &Tun) -> usize {
    if tun.vnet_hdr() {
        VIRTIO_NET_HDR_LEN
    } else if tun.flags() & IFF_NO_PI == 0 {
        4
    } else {
        0
    }
}

fn is_tap(tun: &Tun) -> bool {
    tun.flags() & IFF_TAP != 0
}

/// The TUN driver silently truncates a packet that does not fit the read buffer. A read
/// that filled `data` is checked against the IP header's own length: `BufferTooSmall` if
/// the packet was cut (it is lost). `skip` is what precedes the IP header; TAP frames are
/// not checked.
pub fn check_truncation(data: &[u8], skip: usize, tap: bool) -> Result<(), Error> {
    if tap || data.len() <= skip {
        return Ok(());
    }
    let pkt = &data[skip..];
    let be16 = |i: usize| {
        pkt.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    };
    let want = match pkt[0] >> 4 {
        4 => be16(2),
        6 => be16(4).filter(|&p| p != 0).map(|p| p + 40),
        _ => None,
    };
    match want {
        Some(w) if w > pkt.len() => Err(invalid(
            ErrorKind::BufferTooSmall,
            format!(
                "a {}-byte packet did not fit the {}-byte buffer and was truncated (it is \
                 lost); use a buffer of at least {} bytes",
                w + skip,
                data.len(),
                skip + MAX_IP_PACKET
            ),
        )),
        _ => Ok(()),
    }
}

/// The receive side of one queue: a packet read by a call that could not deliver it
/// (its buffers were too few or too small) is held here and handed to the next call, so
/// no packet is lost to an argument error.
#[derive(Debug, Default)]
pub struct RecvState {
    held: Mutex<Option<Vec<u8>>>,
}

impl RecvState {
    /// A state with nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a packet is held back for the next read.
    pub fn has_held(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        locked(&self.held)
    }

    /// Reads one packet (virtio header first, with offload) into `buf`: the held one if
    /// there is one, else from the device ([`Tun::read_waiting`], truncation checked).
    /// `EINTR`, `EAGAIN` and `ETIMEDOUT` are returned as errors.
    pub fn read(&self, tun: &Tun, buf: &mut [u8], wait: Wait) -> Result<usize, Error> {
        if let Some(n) = self.take_held(buf)? {
            return Ok(n);
        }
        tun.read_waiting(buf, wait)
    }

    /// Copies the held packet into `buf` and forgets it; `None` if nothing is held.
    pub fn take_held(&self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        let mut held = self.lock();
        let Some(p) = held.as_ref() else {
            return Ok(None);
        };
        if p.len() > buf.len() {
            return Err(invalid(
                ErrorKind::BufferTooSmall,
                format!(
                    "the buffer holds {} bytes, less than the {}-byte packet held back from \
                     an earlier call",
                    buf.len(),
                    p.len()
                ),
            ));
        }
        let n = p.len();
        buf[..n].copy_from_slice(p);
        *held = None;
        Ok(Some(n))
    }

    /// Holds `data` (a packet as read) for the next [`read`](Self::read).
    pub fn hold(&self, data: &[u8]) {
        *self.lock() = Some(data.to_vec());
    }
}

/// One read from the device, split into `bufs` (packet `i` into
/// `bufs[i][offset..offset + sizes[i]]`); returns the number of packets. `original` receives the read (ideally
/// `VIRTIO_NET_HDR_LEN + 65535` bytes). Buffers too small are grown; with `fit` every
/// growable buffer ends exactly at its packet. Arguments wrong whatever arrives are
/// refused before the read; a packet that the buffers cannot take is held in `state` for
/// the next call. `EINTR` is retried.
///
/// Without offload one packet is read straight into `bufs[0][offset..]` (grown first
/// when it has no room after `offset`, or to [`max_read`] with `fit`) and `original` is
/// not used.
///
/// `blocking`: whether to wait for a packet (`true`, or `Wait::Block`), not
/// (`false`: `EAGAIN`), or until an instant (`Wait::Until`: then `ETIMEDOUT`).
#[allow(clippy::too_many_arguments)]
pub fn recv_multiple<B: ExpandBuffer + AsMut<[u8]>>(
    tun: &Tun,
    state: &RecvState,
    original: &mut [u8],
    bufs: &mut [B],
    sizes: &mut [usize],
    offset: usize,
    blocking: impl Into<Wait>,
    fit: bool,
) -> Result<usize, Error> {
    recv_multiple_with(
        tun,
        state,
        original,
        bufs,
        sizes,
        offset,
        blocking,
        fit,
        &mut Direct,
    )
}

/// [`recv_multiple`] with the caller's buffers and hooks.
#[allow(clippy::too_many_arguments)]
pub fn recv_multiple_with<E, L, H>(
    tun: &Tun,
    state: &RecvState,
    original: &mut [u8],
    bufs: &mut L,
    sizes: &mut [usize],
    offset: usize,
    blocking: impl Into<Wait>,
    fit: bool,
    hooks: &mut H,
) -> Result<usize, E>
where
    E: From<Error> + From<engine::Error>,
    L: Buffers<E> + ?Sized,
    H: Hooks<E> + ?Sized,
{
    let (vnet, blocking) = (tun.vnet_hdr(), blocking.into());
    let read_into = vnet.then_some(original.as_ptr() as usize);
    check_outputs(bufs, sizes.len(), offset, read_into, "bufs")?;
    if !vnet {
        // One packet, read straight into `bufs[0][offset..]`.
        let want = offset.saturating_add(max_read(tun));
        // With `fit` the bytes after the packet are cut off again at once: only the
        // headroom needs zeroing when the buffer grows.
        let b = &mut bufs.bufs(1, false, if fit { offset } else { want })?[0];
        let want = want.min(b.max_len());
        // A buffer with no room after `offset` grows as it can; with `fit` one too small
        // for any packet grows too.
        if b.bytes().len() < want && (fit || b.bytes().len() <= offset) {
            b.resize(want)?;
        }
        let len = b.bytes().len();
        if len <= offset {
            let m =
                format!("bufs[0] holds {len} bytes and cannot grow: no room after offset {offset}");
            return Err(engine::Error::new(ErrorKind::OutBufTooSmall, m)
                .at(0)
                .into());
        }
        let n = bufs.pinned(1, |w| {
            let data = &mut w[0].bytes_mut()[offset..];
            retry(hooks, || state.read(tun, data, blocking))
        })??;
        sizes[0] = n;
        tun.counters.rx_packets.fetch_add(1, Relaxed);
        let b = &mut bufs.bufs(1, false, offset)?[0];
        if fit && b.bytes().len() != offset + n && b.max_len() > b.bytes().len() {
            b.resize(offset + n)?;
        }
        return Ok(1);
    }
    check_original(original.len())?;
    let n = retry(hooks, || state.read(tun, original, blocking))?;
    let read = &original[..n];
    // Everything goes through the engine: super-packets are split, a plain packet (GSO_NONE
    // without NEEDS_CSUM) is copied across as it is, whatever it holds.
    let split = Split::plan(read)?;
    let pkt = &read[VIRTIO_NET_HDR_LEN..];
    match split.deliver(pkt, bufs, sizes, offset, fit, "bufs", hooks) {
        Ok(count) => {
            tun.counters.rx_packets.fetch_add(count as u64, Relaxed);
            Ok(count)
        }
        Err(Failed::Packet(e)) => Err(e.into()),
        Err(Failed::Buffers(e)) => {
            state.hold(read);
            Err(kept(e).into())
        }
        Err(Failed::Caller(e)) => {
            state.hold(read);
            Err(e)
        }
    }
}

/// `error` (about the caller's buffers) saying that the packet was held for the next call.
pub fn kept(error: engine::Error) -> engine::Error {
    let m = format!("{} (the packet is kept for the next call)", error.message());
    error.with_message(m)
}

/// Checks one packet to be written as the kernel's `tun_get_user` and IP input would
/// refuse it: `vnet` says a virtio header comes first (then it must be whole), then an IP
/// packet: version 4 or 6, an IPv4 header length within the packet and a total length
/// that is the packet's (an IPv6 payload length of 0 is a jumbogram, not checked). A
/// message naming the problem, for the caller to prefix with the packet's index.
pub fn check_packet(buf: &[u8], vnet: bool) -> Result<(), engine::Error> {
    let pkt = if vnet {
        if buf.len() < VIRTIO_NET_HDR_LEN {
            return Err(engine::Error::new(
                ErrorKind::VirtioHdrTooShort,
                format!(
                    "{} bytes: shorter than the {VIRTIO_NET_HDR_LEN}-byte virtio header",
                    buf.len()
                ),
            ));
        }
        &buf[VIRTIO_NET_HDR_LEN..]
    } else {
        buf
    };
    let Some(&b0) = pkt.first() else {
        return Err(engine::Error::fixed(
            ErrorKind::EmptyPacket,
            "no packet (0 bytes)",
        ));
    };
    let be16 = |i: usize| u16::from_be_bytes([pkt[i], pkt[i + 1]]) as usize;
    match b0 >> 4 {
        4 => {
            let ihl = usize::from(b0 & 0x0f) * 4;
            if ihl < 20 || pkt.len() < ihl {
                return Err(engine::Error::new(
                    ErrorKind::BadIhl,
                    format!(
                        "an IPv4 header of {ihl} bytes in a {}-byte packet",
                        pkt.len()
                    ),
                ));
            }
            let total = be16(2);
            if total < ihl || total > pkt.len() {
                return Err(engine::Error::new(
                    ErrorKind::IpLengthMismatch,
                    format!(
                        "IPv4 total length {total} in a {}-byte packet (header {ihl} bytes)",
                        pkt.len()
                    ),
                ));
            }
        }
        6 => {
            if pkt.len() < 40 {
                return Err(engine::Error::new(
                    ErrorKind::TruncatedIpHeader,
                    format!(
                        "an IPv6 packet of {} bytes, shorter than its 40-byte header",
                        pkt.len()
                    ),
                ));
            }
            let payload = be16(4);
            if payload != 0 && 40 + payload > pkt.len() {
                return Err(engine::Error::new(
                    ErrorKind::IpLengthMismatch,
                    format!(
                        "IPv6 payload length {payload} in a {}-byte packet",
                        pkt.len()
                    ),
                ));
            }
        }
        v => {
            return Err(engine::Error::new(
                ErrorKind::BadIpVersion,
                format!("IP version {v} (the first byte is {b0:#04x}): not an IPv4 or IPv6 packet"),
            ))
        }
    }
    Ok(())
}

/// Checks every packet of a batch with [`check_packet`] (the first bad one's index in
/// `index_of`).
pub fn check_packets(
    packets: &[&[u8]],
    vnet: bool,
    index_of: impl Fn(usize) -> usize,
) -> Result<(), engine::Error> {
    for (k, p) in packets.iter().enumerate() {
        if let Err(e) = check_packet(p, vnet) {
            let i = index_of(k);
            let m = format!(
                "bufs[{i}] is not a packet the kernel takes: {}; nothing was written",
                e.message()
            );
            return Err(e.with_message(m).at(i));
        }
    }
    Ok(())
}

/// Refuses a buffer for the super-packet read (`len` bytes) that cannot hold the virtio
/// header and a packet.
pub fn check_original(len: usize) -> Result<(), engine::Error> {
    if len <= VIRTIO_NET_HDR_LEN {
        return Err(engine::Error::new(
            ErrorKind::BufferTooSmall,
            format!(
                "original_buffer holds {len} bytes; it needs room for the \
                 {VIRTIO_NET_HDR_LEN}-byte virtio header and a packet (ideally {} bytes)",
                VIRTIO_NET_HDR_LEN + MAX_IP_PACKET
            ),
        ));
    }
    Ok(())
}

/// Progress of [`write_packets`]: what was written, where to go on, the first packet the
/// kernel refused.
#[derive(Debug, Default)]
pub struct Sent {
    /// Packets written.
    pub packets: usize,
    /// Bytes written (virtio headers included).
    pub bytes: usize,
    next: usize,
    /// When the kernel refused packet `next`, a super-packet, and it is being written as
    /// its segments (see [`super::offload`]): the next segment to write.
    split_next: Option<usize>,
    refused: Option<Error>,
}

impl Sent {
    /// Nothing written yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Writes `packets` in order, from where `sent` stopped. A packet the kernel refuses
/// (`EINVAL`, `EIO` on a down device, ...) does not stop the others: the first such error
/// is returned at the end. A super-packet the kernel refuses with `EINVAL` is written
/// again as its segments, and coalescing of its kind is turned off for the device
/// ([`super::offload`]). A closed or deleted device stops at once. `EINTR`, and `EAGAIN`
/// when not `blocking`, are returned with `sent` up to date and the packet (or segment)
/// not yet written: call again to go on.
pub fn write_packets(
    tun: &Tun,
    packets: &[&[u8]],
    blocking: bool,
    sent: &mut Sent,
) -> Result<(), Error> {
    while sent.next < packets.len() {
        let packet = packets[sent.next];
        if sent.split_next.is_none() {
            match tun.write(packet, blocking) {
                Ok(n) => {
                    sent.packets += 1;
                    sent.bytes += n;
                    sent.next += 1;
                    continue;
                }
                Err(e) => {
                    stops(&e)?;
                    if !refused_coalesced(tun, packet, &e) {
                        sent.refused.get_or_insert(e);
                        sent.next += 1;
                        continue;
                    }
                    sent.split_next = Some(0);
                }
            }
        }
        write_segments(tun, packet, blocking, sent)?;
    }
    match sent.refused.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `Err` for a write error that stops the batch: a signal or a full queue (call again),
/// a closed or deleted device, a bad argument.
fn stops(e: &Error) -> Result<(), Error> {
    match e {
        e if e.is_eintr() || e.is_eagain() => Err(e.clone()),
        Error::Closed | Error::Invalid(_) | Error::State(_) => Err(e.clone()),
        e if matches!(e.errno(), Some(libc::EBADFD | libc::EBADF)) => Err(e.clone()),
        _ => Ok(()),
    }
}

/// Writes packet `sent.next`, a super-packet the kernel refused, as its segments (from
/// `sent.split_next` on), then moves on to the next packet. A segment refused in turn is
/// counted as [`write_packets`] counts a refused packet.
fn write_segments(tun: &Tun, packet: &[u8], blocking: bool, sent: &mut Sent) -> Result<(), Error> {
    // (`refused_coalesced` planned the split already: it cannot fail.)
    let segments = segments(packet).unwrap_or_default();
    let mut k = sent.split_next.unwrap_or(0);
    while let Some(seg) = segments.get(k) {
        match tun.write(seg, blocking) {
            Ok(n) => {
                sent.packets += 1;
                sent.bytes += n;
            }
            Err(e) => {
                stops(&e)?;
                sent.refused.get_or_insert(e);
            }
        }
        k += 1;
        sent.split_next = Some(k);
    }
    sent.split_next = None;
    sent.next += 1;
    Ok(())
}

/// A failed [`send_multiple`]: the error and, once writing had started, what was written
/// before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError<E = Error> {
    pub error: E,
    /// Whether writing had started (`packets` and `bytes` say how far it got).
    pub writing: bool,
    pub packets: usize,
    pub bytes: usize,
}

impl<E> SendError<E> {
    fn early(error: impl Into<E>) -> Self {
        SendError {
            error: error.into(),
            writing: false,
            packets: 0,
            bytes: 0,
        }
    }
}

/// Writes packet `i` = `bufs[i][offset..]` (with `sizes`: `bufs[i][offset..offset +
/// sizes[i]]`) for the first `count` buffers (default: as many as `sizes` has, else all),
/// coalesced first when the device has offload (`offset >= VIRTIO_NET_HDR_LEN`: the
/// buffers may grow and be swapped); returns the bytes written. Every packet to write is
/// checked as the kernel would refuse it before anything is written. A packet the kernel
/// still refuses does not stop the others; the first error comes at the end. `EINTR` is
/// retried.
#[allow(clippy::too_many_arguments)]
pub fn send_multiple<B: ExpandBuffer + AsMut<[u8]>>(
    tun: &Tun,
    table: &mut GroTable,
    bufs: &mut [B],
    offset: usize,
    sizes: Option<&[usize]>,
    count: Option<usize>,
    blocking: bool,
) -> Result<usize, SendError> {
    send_multiple_with(
        tun,
        table,
        bufs,
        offset,
        sizes,
        count,
        blocking,
        &mut Direct,
    )
}

/// [`send_multiple`] with the caller's buffers and hooks. Without `sizes`, the packets end
/// where their buffers end, and a coalesced buffer is resized to its packet; with them,
/// coalescing moves each packet's end within its buffer, and when every buffer can hold
/// `offset + 65535` bytes (nothing grows) a large batch is coalesced through
/// [`Hooks::work`] on the buffers pinned.
#[allow(clippy::too_many_arguments)]
pub fn send_multiple_with<E, L, H>(
    tun: &Tun,
    table: &mut GroTable,
    bufs: &mut L,
    offset: usize,
    sizes: Option<&[usize]>,
    count: Option<usize>,
    blocking: bool,
    hooks: &mut H,
) -> Result<usize, SendError<E>>
where
    E: From<Error> + From<engine::Error>,
    L: Buffers<E> + ?Sized,
    H: Hooks<E> + ?Sized,
{
    let vnet = tun.vnet_hdr();
    let n = batch_len(bufs.count(), sizes.map(<[usize]>::len), count).map_err(SendError::early)?;
    let sizes = sizes.map(|s| &s[..n]);
    if let Some(s) = sizes {
        check_sizes(s, offset, false).map_err(SendError::early)?;
    }
    if vnet && offset < VIRTIO_NET_HDR_LEN {
        let m = format!(
            "offset {offset} leaves no room for the {VIRTIO_NET_HDR_LEN}-byte virtio header"
        );
        return Err(SendError::early(engine::Error::new(
            ErrorKind::OffsetTooSmall,
            m,
        )));
    }
    if n == 0 {
        return Ok(0);
    }

    // Each packet is `bufs[i][start..end]`: its virtio header (with offload) and the
    // packet, which ends at `offset + size` (or, `size` None, where the buffer ends).
    let coalesced: Vec<(usize, usize)> = if vnet {
        (coalesce(bufs, n, sizes, offset, table, tun.coalescing(), hooks))
            .map_err(SendError::early)?;
        let b = bufs
            .bufs(n, sizes.is_some(), offset)
            .map_err(SendError::early)?;
        (table.written().iter())
            .map(|&i| (i, b[i].bytes().len() - offset))
            .collect()
    } else {
        Vec::new() // every buffer in order (nothing reserved from `n`, which Python code may have made up)
    };
    let at = |k: usize| match vnet {
        true => (coalesced[k].0, Some(coalesced[k].1)),
        false => (k, sizes.map(|s| s[k])),
    };
    let count = if vnet { coalesced.len() } else { n };
    let start = if vnet {
        offset - VIRTIO_NET_HDR_LEN
    } else {
        offset
    };
    let whole = (bufs.pinned_bytes((0..count).map(|k| at(k).0))).map_err(SendError::early)?;
    let mut packets: Vec<&[u8]> = Vec::with_capacity(whole.len());
    for (k, b) in whole.iter().enumerate() {
        let (i, size) = at(k);
        let end = span(i, b.len(), offset, size, false).map_err(SendError::early)?;
        packets.push(&b[start..end]);
    }
    if !is_tap(tun) && tun.flags() & IFF_NO_PI != 0 {
        check_packets(&packets, vnet, |k| at(k).0).map_err(SendError::early)?;
    }
    let mut sent = Sent::new();
    let stop = |error: E, sent: &Sent| SendError {
        error,
        writing: true,
        packets: sent.packets,
        bytes: sent.bytes,
    };
    tun.counters.tx_packets.fetch_add(n as u64, Relaxed);
    loop {
        match hooks.syscall(|| write_packets(tun, &packets, blocking, &mut sent)) {
            Ok(()) => return Ok(sent.bytes),
            Err(e) if e.is_eintr() => {
                if let Err(e) = hooks.interrupted() {
                    return Err(stop(e, &sent));
                }
            }
            Err(e) => return Err(stop(e.into(), &sent)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_checked_as_the_kernel_would() {
        let mut v4 = vec![0u8; 28];
        v4[0] = 0x45;
        v4[3] = 28;
        assert!(check_packet(&v4, false).is_ok());
        let mut with_hdr = vec![0u8; 10];
        with_hdr.extend_from_slice(&v4);
        assert!(check_packet(&with_hdr, true).is_ok());
        assert!(check_packet(&v4[..5], true).is_err()); // no whole virtio header
        assert!(check_packet(&[0u8; 20], false)
            .unwrap_err()
            .message()
            .contains("version 0"));
        assert!(check_packet(&[], false).is_err());
        let mut long = v4.clone();
        long[3] = 29; // total length past the end
        assert!(check_packet(&long, false).is_err());
        let mut ihl = v4.clone();
        ihl[0] = 0x4f; // 60-byte header in 28 bytes
        assert!(check_packet(&ihl, false).is_err());
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[5] = 8;
        assert!(check_packet(&v6, false).is_ok());
        v6[5] = 9;
        assert!(check_packet(&v6, false).is_err());
        let e = check_packets(&[&v4, &[0u8; 20]], false, |k| k + 7).unwrap_err();
        assert!(e.to_string().contains("bufs[8]"), "{e}");
    }

    #[test]
    fn truncation_is_seen() {
        let mut p = vec![0u8; 100];
        p[0] = 0x45;
        p[2] = 0x05; // 1280 bytes claimed
        assert!(check_truncation(&p, 0, false).is_err());
        assert!(check_truncation(&p, 0, true).is_ok());
        p[2] = 0;
        p[3] = 100;
        assert!(check_truncation(&p, 0, false).is_ok());
    }

    #[test]
    fn held_packets_come_back() {
        let s = RecvState::new();
        let mut buf = [0u8; 4];
        assert_eq!(s.take_held(&mut buf), Ok(None));
        s.hold(b"abc");
        assert!(s.has_held());
        assert!(s.take_held(&mut [0u8; 2]).is_err());
        assert!(s.has_held());
        assert_eq!(s.take_held(&mut buf), Ok(Some(3)));
        assert_eq!(&buf[..3], b"abc");
        assert!(!s.has_held());
    }
}

/// A forwarder written on this module alone: two TUN devices with offload, each in a
/// private network namespace of its own, TCP between them through [`recv_multiple`] and
/// [`send_multiple`]. Needs root and `/dev/net/tun`; without them it says so on stderr
/// and passes.
#[cfg(test)]
pub(crate) mod forward {
    use super::*;
    use crate::device::{parse_ifaddr, TunOptions};
    use std::sync::Arc;

    const BYTES: usize = 8 << 20;

    pub(crate) fn pattern(i: usize) -> u8 {
        (i * 7 + i / 4093) as u8
    }

    /// In a new network namespace (this thread's), a TUN device with offload at `addr`.
    pub(crate) fn device_in_new_netns(addr: &str) -> Result<Arc<Tun>, String> {
        // SAFETY: unshare on this thread only affects this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            ));
        }
        let tun = Tun::open(&TunOptions {
            offload: true,
            up: true,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        let a = parse_ifaddr(addr).map_err(|e| e.to_string())?;
        tun.add_address(&a, true).map_err(|e| e.to_string())?;
        Ok(Arc::new(tun))
    }

    /// Forwards from `src` to `dst` until either is closed; returns (reads, packets,
    /// failed writes).
    pub(crate) fn forward(src: &Tun, dst: &Tun) -> (usize, usize, usize) {
        let offset = VIRTIO_NET_HDR_LEN;
        let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_IP_PACKET];
        // Small buffers on purpose: they grow to what their packets need.
        let mut bufs: Vec<Vec<u8>> = (0..128).map(|_| vec![0u8; offset + 100]).collect();
        let mut sizes = vec![0usize; 128];
        let mut table = GroTable::new();
        let state = RecvState::new();
        let (mut reads, mut packets, mut errors) = (0, 0, 0);
        loop {
            let n = match recv_multiple(
                src,
                &state,
                &mut original,
                &mut bufs,
                &mut sizes,
                offset,
                true,
                true,
            ) {
                Ok(n) => n,
                Err(e) if e.is_eintr() => continue,
                Err(Error::Closed) => return (reads, packets, errors),
                Err(e) => panic!("recv_multiple: {e}"),
            };
            reads += 1;
            packets += n;
            for (b, &s) in bufs[..n].iter().zip(&sizes) {
                assert_eq!(b.len(), offset + s, "fit");
            }
            match send_multiple(dst, &mut table, &mut bufs[..n], offset, None, None, true) {
                Ok(_) => {}
                Err(SendError {
                    error: Error::Closed,
                    ..
                }) => return (reads, packets, errors),
                // IPv6 router solicitations and such may be refused; TCP never is.
                Err(e) => {
                    eprintln!("send_multiple: {e:?}");
                    errors += 1;
                }
            }
        }
    }

    crate::root_test! {
        fn recv_without_offload_grows_a_buffer_shorter_than_offset() {
            let r = std::thread::spawn(|| -> Result<(usize, usize, usize), String> {
                // SAFETY: unshare on this thread only affects this thread's namespaces.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err("unshare(CLONE_NEWNET) failed".into());
                }
                let tun = Tun::open(&TunOptions {
                    up: true,
                    ..Default::default()
                })
                .map_err(|e| e.to_string())?;
                let a = parse_ifaddr("10.77.2.1/24").map_err(|e| e.to_string())?;
                tun.add_address(&a, true).map_err(|e| e.to_string())?;
                let s = std::net::UdpSocket::bind("10.77.2.1:0").map_err(|e| e.to_string())?;
                s.send_to(b"grow", "10.77.2.2:9")
                    .map_err(|e| e.to_string())?;
                // Shorter than the offset, not fitted: grown before the read, not sliced past.
                let mut bufs = vec![vec![0u8; 3]];
                let mut sizes = [0usize; 1];
                let n = recv_multiple(
                    &tun,
                    &RecvState::new(),
                    &mut [],
                    &mut bufs,
                    &mut sizes,
                    16,
                    true,
                    false,
                )
                .map_err(|e| e.to_string())?;
                Ok((n, bufs[0].len(), sizes[0]))
            })
            .join()
            .expect("recv thread");
            let (n, len, size) = r.expect("recv_multiple");
            assert_eq!(n, 1);
            assert!(
                size > 0 && len >= 16 + size,
                "{len} bytes for a {size}-byte packet"
            );
        }
    }

    crate::root_test! {
        fn tcp_through_a_rust_forwarder() {
            use crate::device::offload_tests::{between_namespaces, tcp_receive, tcp_send};
            let r = between_namespaces(
                |_| {},
                |_| tcp_send(BYTES),
                |_, ready| tcp_receive(ready, |_| {}),
            );
            r.a.expect("sender");
            assert_eq!(r.b.expect("receiver"), BYTES);
            let (reads, packets, errors) = r.ab;
            eprintln!(
                "tcp_through_a_rust_forwarder: {BYTES} bytes, {packets} packets in {reads} reads"
            );
            // Super-packets came through: far fewer reads than packets.
            assert!(packets > 2 * reads, "{packets} packets in {reads} reads");
            assert_eq!(errors, 0, "every write went through");
        }
    }
}
