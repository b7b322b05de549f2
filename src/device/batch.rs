//! Batch I/O on a TUN device with offload: reading a super-packet and splitting it into
//! the caller's buffers, coalescing a batch and writing it.
//!
//! Pure Rust, no Python. Each operation comes whole ([`recv_multiple`],
//! [`send_multiple`]) and in stages, so that a caller that must do something between the
//! system call and the packet work (the Python binding releases the GIL for the read and
//! the writes, and holds it for the split and the coalescing) runs the same code:
//!
//! - receive: [`RecvState::read`] (one read, or the packet held back by an earlier call),
//!   [`Split::plan`], [`Split::prepare`] (counts, growth), [`Split::write`];
//! - send: [`coalesce`], [`check_packet`] on each packet to write, [`write_packets`].
//!
//! Buffers are the engine's [`ExpandBuffer`]: a buffer too small for its segment is grown
//! when it can be (`max_len()`), so a `Vec<u8>` (or a Python `bytearray`) trimmed to its
//! last packet takes a larger one next time.
//!
//! Errors are the device's [`Error`]: `Invalid` for a bad packet or argument, `Os` with the
//! errno for the system. `EINTR` is returned, never retried here, except by the whole
//! operations, which retry it: a caller that must run signal handlers uses the stages.

use std::sync::Mutex;

use super::sys::{IFF_NO_PI, IFF_TAP};
use super::{Error, Tun};
use crate::engine::{
    self, gso, ErrorKind, ExpandBuffer, GroTable, GsoPlan, VirtioNetHdr, VIRTIO_NET_HDR_LEN,
};

/// The largest IP packet.
pub const MAX_IP_PACKET: usize = 65535;

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

fn invalid(e: engine::Error) -> Error {
    Error::Engine(e)
}

/// The TUN driver silently truncates a packet that does not fit the read buffer. A read
/// that filled `data` is checked against the IP header's own length: `Invalid` if the
/// packet was cut (it is lost). `skip` is what precedes the IP header; TAP frames are not
/// checked.
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
        Some(w) if w > pkt.len() => Err(Error::Invalid(format!(
            "a {}-byte packet did not fit the {}-byte buffer and was truncated (it is lost); \
             use a buffer of at least {} bytes",
            w + skip,
            data.len(),
            skip + MAX_IP_PACKET
        ))),
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
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads one packet (virtio header first, with offload) into `buf`: the held one if
    /// there is one, else from the device ([`Tun::read`], truncation checked). `EINTR`
    /// and `EAGAIN` are returned as errors.
    pub fn read(&self, tun: &Tun, buf: &mut [u8], blocking: bool) -> Result<usize, Error> {
        if let Some(n) = self.take_held(buf)? {
            return Ok(n);
        }
        tun.read(buf, blocking)
    }

    /// Copies the held packet into `buf` and forgets it; `None` if nothing is held.
    pub fn take_held(&self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        let mut held = self.lock();
        let Some(p) = held.as_ref() else {
            return Ok(None);
        };
        if p.len() > buf.len() {
            return Err(Error::Invalid(format!(
                "the buffer holds {} bytes, less than the {}-byte packet held back from an \
                 earlier call",
                buf.len(),
                p.len()
            )));
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

/// A super-packet as read (virtio header first), checked and planned: how it splits.
#[derive(Debug, Clone, Copy)]
pub struct Split {
    plan: GsoPlan,
}

/// Why a split failed, and whether the packet is intact (the buffers were at fault: hold
/// it with [`RecvState::hold`] for the next call) or bad (it is dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitError {
    pub error: Error,
    /// True when the caller's buffers, not the packet, were at fault.
    pub keep: bool,
}

impl SplitError {
    fn bad(error: Error) -> Self {
        SplitError { error, keep: false }
    }
    fn buffers(kind: ErrorKind, index: Option<usize>, msg: String) -> Self {
        let e = engine::Error::new(kind, msg);
        SplitError {
            error: Error::Engine(match index {
                Some(i) => e.at(i),
                None => e,
            }),
            keep: true,
        }
    }
}

impl From<SplitError> for Error {
    fn from(e: SplitError) -> Error {
        e.error
    }
}

impl Split {
    /// Checks `read` (the virtio header, then the packet) and plans the split.
    pub fn plan(read: &[u8]) -> Result<Split, SplitError> {
        if read.len() < VIRTIO_NET_HDR_LEN {
            return Err(SplitError::bad(Error::Invalid(format!(
                "short read of {} bytes from the device",
                read.len()
            ))));
        }
        let (h, pkt) = read.split_at(VIRTIO_NET_HDR_LEN);
        let hdr = VirtioNetHdr::decode(h).map_err(|e| SplitError::bad(invalid(e)))?;
        let plan = gso::plan(pkt, &hdr, None).map_err(|e| SplitError::bad(invalid(e)))?;
        Ok(Split { plan })
    }

    /// Checks the packet `pkt` (without its virtio header `hdr`) and plans the split, as
    /// [`gso::plan`] does (`is_v6`: `None` takes the version from the packet).
    pub fn plan_packet(
        pkt: &[u8],
        hdr: &VirtioNetHdr,
        is_v6: Option<bool>,
    ) -> Result<Split, Error> {
        Ok(Split {
            plan: gso::plan(pkt, hdr, is_v6).map_err(invalid)?,
        })
    }

    /// The number of packets.
    pub fn count(&self) -> usize {
        self.plan.segments()
    }

    /// The length of packet `i`.
    pub fn size(&self, i: usize) -> usize {
        self.plan.segment_len(i)
    }

    /// Checks that `bufs` (with `sizes_len` sizes) can take the packets at `offset`, and
    /// grows the buffers that are too small; nothing is written. A failure leaves the
    /// packet intact (`keep`). Messages call the buffers `bufs`.
    pub fn prepare<B: ExpandBuffer>(
        &self,
        bufs: &mut [B],
        sizes_len: usize,
        offset: usize,
    ) -> Result<(), SplitError> {
        self.prepare_named(bufs, sizes_len, offset, "bufs")
    }

    /// [`prepare`](Self::prepare), with messages that call the buffers `name` (the
    /// caller's name for them: `out_bufs` for `gso_split`).
    pub fn prepare_named<B: ExpandBuffer>(
        &self,
        bufs: &mut [B],
        sizes_len: usize,
        offset: usize,
        name: &str,
    ) -> Result<(), SplitError> {
        let n = self.count();
        if bufs.len() < n {
            return Err(SplitError::buffers(
                ErrorKind::TooFewOutBufs,
                None,
                format!(
                    "the packet splits into {n} segments but only {} {name} were given",
                    bufs.len()
                ),
            ));
        }
        if sizes_len < n {
            return Err(SplitError::buffers(
                ErrorKind::SizesTooShort,
                None,
                format!("the packet splits into {n} segments but sizes has room for {sizes_len}"),
            ));
        }
        for (i, b) in bufs[..n].iter_mut().enumerate() {
            let need = offset.saturating_add(self.size(i));
            if b.bytes().len() >= need {
                continue;
            }
            if b.max_len() < need {
                return Err(SplitError::buffers(
                    ErrorKind::OutBufTooSmall,
                    Some(i),
                    format!(
                        "{name}[{i}] holds {} bytes; segment {i} needs {} after offset {offset}",
                        b.bytes().len(),
                        self.size(i)
                    ),
                ));
            }
            b.resize(need).map_err(|e| {
                SplitError::buffers(
                    ErrorKind::BufferCannotGrow,
                    Some(i),
                    format!("{name}[{i}] cannot grow to {need} bytes: {}", e.message()),
                )
            })?;
        }
        Ok(())
    }

    /// Writes the packets: packet `i` into `bufs[i][offset..offset + size(i)]`, after a
    /// successful [`prepare`](Self::prepare). With `fit`, each growable buffer is then
    /// set to exactly `offset + size(i)` bytes. `read` is what [`plan`](Self::plan) saw.
    pub fn write<B: ExpandBuffer + AsMut<[u8]>>(
        &self,
        read: &[u8],
        bufs: &mut [B],
        offset: usize,
        fit: bool,
    ) -> Result<usize, Error> {
        self.write_packet(
            &read[VIRTIO_NET_HDR_LEN.min(read.len())..],
            bufs,
            offset,
            fit,
        )
    }

    /// As [`write`](Self::write), for a split made by [`plan_packet`](Self::plan_packet):
    /// `pkt` is the packet without its virtio header.
    ///
    /// The buffers' `AsMut<[u8]>` must give the same bytes as their
    /// [`ExpandBuffer::bytes_mut`] (as `Vec<u8>` and `&mut [u8]` do).
    pub fn write_packet<B: ExpandBuffer + AsMut<[u8]>>(
        &self,
        pkt: &[u8],
        bufs: &mut [B],
        offset: usize,
        fit: bool,
    ) -> Result<usize, Error> {
        let n = self.count().min(bufs.len());
        let written =
            gso::write_segments(&self.plan, pkt, &mut bufs[..n], offset).map_err(invalid)?;
        if fit {
            for (i, b) in bufs[..written].iter_mut().enumerate() {
                let want = offset + self.size(i);
                if b.bytes().len() != want && b.max_len() > b.bytes().len() {
                    b.resize(want).map_err(invalid)?;
                }
            }
        }
        Ok(written)
    }
}

/// Fills `sizes[..split.count()]` with the packets' lengths.
pub fn fill_sizes(split: &Split, sizes: &mut [usize]) {
    for (i, s) in sizes.iter_mut().take(split.count()).enumerate() {
        *s = split.size(i);
    }
}

/// Checks what can be checked of a receive's outputs before anything is read: at least one
/// buffer, and each one able to hold a byte after `offset` (growing if it must).
pub fn check_outputs<B: ExpandBuffer>(bufs: &[B], offset: usize) -> Result<(), Error> {
    if bufs.is_empty() {
        return Err(Error::Engine(engine::Error::fixed(
            ErrorKind::TooFewOutBufs,
            "bufs must not be empty",
        )));
    }
    for (i, b) in bufs.iter().enumerate() {
        if b.max_len() <= offset {
            return Err(Error::Engine(
                engine::Error::new(
                    ErrorKind::OutBufTooSmall,
                    format!(
                        "bufs[{i}] holds {} bytes and cannot grow: no room after offset {offset}",
                        b.bytes().len()
                    ),
                )
                .at(i),
            ));
        }
    }
    Ok(())
}

/// One read from a device with offload, split into `bufs` (packet `i` into
/// `bufs[i][offset..offset + sizes[i]]`); returns the number of packets. `original`
/// receives the read (ideally `VIRTIO_NET_HDR_LEN + 65535` bytes). Buffers too small are
/// grown; with `fit` every growable buffer ends exactly at its packet. A packet that the
/// buffers cannot take is held in `state` for the next call. `EINTR` is returned.
///
/// Without offload one packet is read straight into `bufs[0][offset..]` (grown first to
/// [`max_read`] when `fit` and it can grow) and `original` is not used.
#[allow(clippy::too_many_arguments)]
pub fn recv_multiple<B: ExpandBuffer + AsMut<[u8]>>(
    tun: &Tun,
    state: &RecvState,
    original: &mut [u8],
    bufs: &mut [B],
    sizes: &mut [usize],
    offset: usize,
    blocking: bool,
    fit: bool,
) -> Result<usize, Error> {
    check_outputs(bufs, offset)?;
    if sizes.is_empty() {
        return Err(Error::Engine(engine::Error::fixed(
            ErrorKind::SizesTooShort,
            "sizes must not be empty",
        )));
    }
    if !tun.vnet_hdr() {
        let b = &mut bufs[0];
        // A buffer with no room after `offset` grows as it can (`check_outputs` made sure
        // it can take a byte there); with `fit` one too small for any packet grows too.
        let want = (offset + max_read(tun)).min(b.max_len());
        if b.bytes().len() < want && (fit || b.bytes().len() <= offset) {
            b.resize(want).map_err(invalid)?;
        }
        let n = state.read(tun, &mut b.bytes_mut()[offset..], blocking)?;
        sizes[0] = n;
        if fit && b.bytes().len() != offset + n && b.max_len() > b.bytes().len() {
            b.resize(offset + n).map_err(invalid)?;
        }
        return Ok(1);
    }
    check_original(original.len(), "original")?;
    let n = state.read(tun, original, blocking)?;
    let read = &original[..n];
    let split = Split::plan(read)?;
    if let Err(e) = split.prepare(bufs, sizes.len(), offset) {
        return Err(if e.keep {
            state.hold(read);
            kept(e.error)
        } else {
            e.error
        });
    }
    let count = split.write(read, bufs, offset, fit)?;
    fill_sizes(&split, sizes);
    Ok(count)
}

/// `error` (about the caller's buffers) saying that the packet was held for the next call.
pub fn kept(error: Error) -> Error {
    match error {
        Error::Invalid(m) => Error::Invalid(format!("{m} (the packet is kept for the next call)")),
        Error::Engine(e) => {
            let m = format!("{} (the packet is kept for the next call)", e.message());
            Error::Engine(e.with_message(m))
        }
        e => e,
    }
}

/// Coalesces `bufs` (packet `i` is `bufs[i].bytes()[offset..]`, `offset >=
/// VIRTIO_NET_HDR_LEN`) as [`engine::handle_gro`] does and returns the indices of the
/// buffers to write, in order; `bufs[i].bytes()[offset - 10..]` is then a virtio header
/// and a packet.
pub fn coalesce<'t, B: ExpandBuffer>(
    bufs: &mut [B],
    offset: usize,
    table: &'t mut GroTable,
    can_udp_gro: bool,
) -> Result<&'t [usize], Error> {
    engine::handle_gro(bufs, offset, table, can_udp_gro).map_err(invalid)
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

/// Checks every packet of a batch with [`check_packet`] (`Invalid` naming the first bad
/// one's index in `index_of`).
pub fn check_packets(
    packets: &[&[u8]],
    vnet: bool,
    index_of: impl Fn(usize) -> usize,
) -> Result<(), Error> {
    for (k, p) in packets.iter().enumerate() {
        if let Err(e) = check_packet(p, vnet) {
            let i = index_of(k);
            let m = format!(
                "bufs[{i}] is not a packet the kernel takes: {}; nothing was written",
                e.message()
            );
            return Err(Error::Engine(e.with_message(m).at(i)));
        }
    }
    Ok(())
}

/// Refuses a buffer for the super-packet read (`name`, `len` bytes) that cannot hold the
/// virtio header and a packet.
pub fn check_original(len: usize, name: &str) -> Result<(), Error> {
    if len <= VIRTIO_NET_HDR_LEN {
        return Err(Error::Invalid(format!(
            "{name} holds {len} bytes; it needs room for the {VIRTIO_NET_HDR_LEN}-byte virtio \
             header and a packet (ideally {} bytes)",
            VIRTIO_NET_HDR_LEN + MAX_IP_PACKET
        )));
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
/// is returned at the end. A closed or deleted device stops at once. `EINTR`, and
/// `EAGAIN` when not `blocking`, are returned with `sent` up to date and the packet not
/// yet written: call again to go on.
pub fn write_packets(
    tun: &Tun,
    packets: &[&[u8]],
    blocking: bool,
    sent: &mut Sent,
) -> Result<(), Error> {
    while sent.next < packets.len() {
        match tun.write(packets[sent.next], blocking) {
            Ok(n) => {
                sent.packets += 1;
                sent.bytes += n;
                sent.next += 1;
            }
            Err(e) if e.is_eintr() || e.errno() == Some(libc::EAGAIN) => return Err(e),
            Err(e @ (Error::Closed | Error::Invalid(_) | Error::Engine(_))) => return Err(e),
            Err(e) if matches!(e.errno(), Some(libc::EBADFD | libc::EBADF)) => return Err(e),
            Err(e) => {
                sent.refused.get_or_insert(e);
                sent.next += 1;
            }
        }
    }
    match sent.refused.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A failed [`send_multiple`]: the error and what was written before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub error: Error,
    pub packets: usize,
    pub bytes: usize,
}

/// Coalesces `bufs` (packet `i` is `bufs[i].bytes()[offset..]`) when the device has
/// offload (`offset >= VIRTIO_NET_HDR_LEN`; the buffers may grow and be swapped), checks
/// every packet to write, then writes them; returns the bytes written. Without offload
/// each packet is written as it is. `EINTR` is retried.
pub fn send_multiple<B: ExpandBuffer>(
    tun: &Tun,
    table: &mut GroTable,
    bufs: &mut [B],
    offset: usize,
    blocking: bool,
) -> Result<usize, SendError> {
    let fail = |error| SendError {
        error,
        packets: 0,
        bytes: 0,
    };
    let vnet = tun.vnet_hdr();
    // With offload: the buffers GRO says to write (it refused any without a packet after
    // `offset`), each from its virtio header. Without: every buffer, as it is.
    let (start, idx): (usize, Option<&[usize]>) = if vnet {
        let idx = coalesce(bufs, offset, table, tun.udp_gso()).map_err(fail)?;
        (offset - VIRTIO_NET_HDR_LEN, Some(idx))
    } else {
        (offset, None)
    };
    let index_of = |k: usize| idx.map_or(k, |v| v[k]);
    let count = idx.map_or(bufs.len(), <[usize]>::len);
    let mut packets = Vec::with_capacity(count);
    for k in 0..count {
        let i = index_of(k);
        let b = bufs[i].bytes();
        if b.len() <= offset {
            return Err(fail(Error::Engine(
                engine::Error::new(
                    ErrorKind::NoPacketAfterOffset,
                    format!(
                        "bufs[{i}] holds {} bytes: no packet after offset {offset}",
                        b.len()
                    ),
                )
                .at(i),
            )));
        }
        packets.push(&b[start..]);
    }
    if !is_tap(tun) && tun.flags() & IFF_NO_PI != 0 {
        check_packets(&packets, vnet, index_of).map_err(fail)?;
    }
    let mut sent = Sent::new();
    loop {
        match write_packets(tun, &packets, blocking, &mut sent) {
            Ok(()) => return Ok(sent.bytes),
            Err(e) if e.is_eintr() => continue,
            Err(error) => {
                return Err(SendError {
                    error,
                    packets: sent.packets,
                    bytes: sent.bytes,
                })
            }
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

    /// A read as a TUN device with offload gives it: a plain virtio header, then an
    /// IPv4/UDP packet of `len` bytes.
    fn plain_read(len: usize) -> Vec<u8> {
        let mut r = vec![0u8; VIRTIO_NET_HDR_LEN + len];
        let p = &mut r[VIRTIO_NET_HDR_LEN..];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[9] = 17;
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        r
    }

    #[test]
    fn split_grows_small_buffers_and_fits() {
        let read = plain_read(300);
        let split = Split::plan(&read).unwrap();
        assert_eq!((split.count(), split.size(0)), (1, 300));
        let mut bufs = vec![vec![0u8; 3], vec![7u8; 2]];
        split.prepare(&mut bufs, 1, 10).unwrap();
        assert_eq!(bufs[0].len(), 310); // grown to what the packet needs
        assert_eq!(split.write(&read, &mut bufs, 10, true).unwrap(), 1);
        assert_eq!(&bufs[0][10..], &read[VIRTIO_NET_HDR_LEN..]);
        assert_eq!(bufs[1], vec![7u8; 2]); // untouched
        let mut sizes = [0usize; 2];
        fill_sizes(&split, &mut sizes);
        assert_eq!(sizes, [300, 0]);
        // Fit: a larger buffer ends exactly at its packet.
        let mut big = vec![vec![0u8; 2000]];
        split.prepare(&mut big, 1, 10).unwrap();
        split.write(&read, &mut big, 10, true).unwrap();
        assert_eq!(big[0].len(), 310);
    }

    #[test]
    fn split_refusals_keep_the_packet() {
        let read = plain_read(300);
        let split = Split::plan(&read).unwrap();
        let mut none: Vec<Vec<u8>> = Vec::new();
        let e = split.prepare(&mut none, 1, 10).unwrap_err();
        assert!(e.keep, "{e:?}");
        let e = split.prepare(&mut [vec![0u8; 400]], 0, 10).unwrap_err();
        assert!(e.keep && e.error.to_string().contains("sizes"), "{e:?}");
        let mut fixed = [0u8; 100];
        let mut outs: [&mut [u8]; 1] = [&mut fixed];
        let e = split.prepare(&mut outs, 1, 10).unwrap_err();
        assert!(e.keep && e.error.to_string().contains("bufs[0]"), "{e:?}");
        // A bad packet is not kept.
        let e = Split::plan(&read[..5]).unwrap_err();
        assert!(!e.keep);
        assert!(check_outputs(&outs, 100).is_err()); // no room after the offset, cannot grow
        assert!(check_outputs(&[Vec::<u8>::new()], 100).is_ok()); // grows
        assert!(check_outputs::<Vec<u8>>(&[], 0).is_err());
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
mod forward {
    use super::*;
    use crate::device::{parse_ifaddr, TunOptions};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    const BYTES: usize = 8 << 20;

    fn pattern(i: usize) -> u8 {
        (i * 7 + i / 4093) as u8
    }

    /// In a new network namespace (this thread's), a TUN device with offload at `addr`.
    fn device_in_new_netns(addr: &str) -> Result<Arc<Tun>, String> {
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

    /// Forwards from `src` to `dst` until either is closed; returns (reads, packets).
    fn forward(src: &Tun, dst: &Tun) -> (usize, usize) {
        let offset = VIRTIO_NET_HDR_LEN;
        let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_IP_PACKET];
        // Small buffers on purpose: they grow to what their packets need.
        let mut bufs: Vec<Vec<u8>> = (0..128).map(|_| vec![0u8; offset + 100]).collect();
        let mut sizes = vec![0usize; 128];
        let mut table = GroTable::new();
        let state = RecvState::new();
        let (mut reads, mut packets) = (0, 0);
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
                Err(Error::Closed) => return (reads, packets),
                Err(e) => panic!("recv_multiple: {e}"),
            };
            reads += 1;
            packets += n;
            for (b, &s) in bufs[..n].iter().zip(&sizes) {
                assert_eq!(b.len(), offset + s, "fit");
            }
            match send_multiple(dst, &mut table, &mut bufs[..n], offset, true) {
                Ok(_) => {}
                Err(SendError {
                    error: Error::Closed,
                    ..
                }) => return (reads, packets),
                // IPv6 router solicitations and such may be refused; TCP never is.
                Err(e) => eprintln!("send_multiple: {e:?}"),
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
            let (tx_a, rx_a) = mpsc::channel();
            let (tx_b, rx_b) = mpsc::channel();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            // B: the receiver, in its own namespace.
            let b = std::thread::spawn(move || -> Result<usize, String> {
                let tun = device_in_new_netns("10.77.1.2/16")?;
                let l = TcpListener::bind("10.77.1.2:5001").map_err(|e| e.to_string())?;
                tx_b.send(tun).map_err(|e| e.to_string())?;
                let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(20)))
                    .map_err(|e| e.to_string())?;
                let mut got = 0usize;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Ok(got);
                    }
                    for (k, &x) in buf[..n].iter().enumerate() {
                        if x != pattern(got + k) {
                            return Err(format!("byte {} differs", got + k));
                        }
                    }
                    got += n;
                }
            });
            // A: the sender, in another namespace.
            let a = std::thread::spawn(move || -> Result<(), String> {
                let tun = device_in_new_netns("10.77.0.1/16")?;
                tx_a.send(tun).map_err(|e| e.to_string())?;
                go_rx.recv().map_err(|e| e.to_string())?;
                let mut s = TcpStream::connect_timeout(
                    &"10.77.1.2:5001".parse().expect("address"),
                    Duration::from_secs(10),
                )
                .map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(Duration::from_secs(20)))
                    .map_err(|e| e.to_string())?;
                let data: Vec<u8> = (0..BYTES).map(pattern).collect();
                s.write_all(&data).map_err(|e| e.to_string())?;
                Ok(())
            });
            let (ta, tb) = match (rx_a.recv(), rx_b.recv()) {
                (Ok(ta), Ok(tb)) => (ta, tb),
                _ => {
                    let (ea, eb) = (a.join(), b.join());
                    panic!("setting up the namespaces failed: {ea:?} {eb:?}");
                }
            };
            let (a2, b2) = (ta.clone(), tb.clone());
            let ab = std::thread::spawn(move || forward(&a2, &b2));
            let (a3, b3) = (ta.clone(), tb.clone());
            let ba = std::thread::spawn(move || forward(&b3, &a3));
            go_tx.send(()).expect("go");
            let sent = a.join().expect("sender thread");
            let got = b.join().expect("receiver thread");
            ta.shutdown();
            tb.shutdown();
            let (reads, packets) = ab.join().expect("forwarder a->b");
            let _ = ba.join().expect("forwarder b->a");
            sent.expect("sender");
            assert_eq!(got.expect("receiver"), BYTES);
            eprintln!(
                "tcp_through_a_rust_forwarder: {BYTES} bytes, {packets} packets in {reads} reads"
            );
            // Super-packets came through: far fewer reads than packets.
            assert!(packets > 2 * reads, "{packets} packets in {reads} reads");
        }
    }
}
