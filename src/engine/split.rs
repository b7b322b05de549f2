//! A super-packet split into a caller's buffers: the plan, the checks on the outputs,
//! their growth, the writes and the sizes. `gso_split` and a TUN device's
//! `recv_multiple` both go through [`Split`].

use super::buffer::{
    addr_range, check_identities, check_ranges, overlaps, Buffers, ExpandBuffer, Room,
};
use super::error::{bail, Error, ErrorKind, Result};
use super::gso::{self, GsoPlan};
use super::virtio::{VirtioNetHdr, VIRTIO_NET_HDR_LEN};
use crate::hooks::Hooks;

/// A super-packet, checked and planned: how it splits.
#[derive(Debug, Clone, Copy)]
pub struct Split {
    plan: GsoPlan,
}

/// Why a split into a caller's buffers failed.
#[derive(Debug)]
pub enum Failed<E> {
    /// The packet cannot be split (it is lost).
    Packet(Error),
    /// The caller's buffers cannot take it (too few, too small, sharing memory): the
    /// packet is intact.
    Buffers(Error),
    /// The caller's buffers could not be converted (the caller's own error, say a
    /// `TypeError`): the packet is intact.
    Caller(E),
}

impl<E: From<Error>> Failed<E> {
    /// The error, in the caller's type.
    pub fn into_error(self) -> E {
        match self {
            Failed::Packet(e) | Failed::Buffers(e) => e.into(),
            Failed::Caller(e) => e,
        }
    }
}

impl Split {
    /// Checks `read` (a virtio header, then the packet, as a TUN device with offload
    /// gives it) and plans the split.
    pub fn plan(read: &[u8]) -> Result<Split> {
        if read.len() < VIRTIO_NET_HDR_LEN {
            bail!(
                VirtioHdrTooShort,
                "short read of {} bytes from the device",
                read.len()
            );
        }
        let (h, pkt) = read.split_at(VIRTIO_NET_HDR_LEN);
        Split::plan_packet(pkt, &VirtioNetHdr::decode(h)?, None)
    }

    /// Checks the packet `pkt` (without its virtio header `hdr`) and plans the split, as
    /// [`gso::plan`] does (`is_v6`: `None` takes the version from the packet).
    pub fn plan_packet(pkt: &[u8], hdr: &VirtioNetHdr, is_v6: Option<bool>) -> Result<Split> {
        Ok(Split {
            plan: gso::plan(pkt, hdr, is_v6)?,
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

    /// Checks that `bufs` (with `sizes` sizes) can take the packets at `offset`, and grows
    /// the buffers that are too small; nothing is written. Every error is about the
    /// buffers (the packet is intact); messages call them `name`.
    pub fn prepare<B: ExpandBuffer>(
        &self,
        bufs: &mut [B],
        sizes: usize,
        offset: usize,
        name: &str,
    ) -> Result<()> {
        let n = self.count();
        if bufs.len() < n {
            bail!(
                TooFewOutBufs,
                "the packet splits into {n} segments but only {} {name} were given",
                bufs.len()
            );
        }
        if sizes < n {
            bail!(
                SizesTooShort,
                "the packet splits into {n} segments but sizes has room for {sizes}"
            );
        }
        for (i, b) in bufs[..n].iter_mut().enumerate() {
            let need = offset.saturating_add(self.size(i));
            let have = b.bytes().len();
            if have >= need {
                continue;
            }
            if b.max_len() < need {
                bail!(OutBufTooSmall @ i, "{name}[{i}] holds {have} bytes; segment {i} needs {} after offset {offset}", self.size(i));
            }
            b.resize(need).map_err(|e| {
                Error::new(
                    ErrorKind::BufferCannotGrow,
                    format!("{name}[{i}] cannot grow to {need} bytes: {}", e.message()),
                )
                .at(i)
            })?;
        }
        Ok(())
    }

    /// Writes the packets of `pkt` (the packet without its virtio header), packet `i` into
    /// `bufs[i][offset..offset + size(i)]`, after a successful [`prepare`](Self::prepare).
    /// With `fit`, each buffer that can is then set to exactly `offset + size(i)` bytes.
    pub fn write<B: ExpandBuffer + AsMut<[u8]>>(
        &self,
        pkt: &[u8],
        bufs: &mut [B],
        offset: usize,
        fit: bool,
    ) -> Result<usize> {
        let n = self.count().min(bufs.len());
        let written = gso::write_segments(&self.plan, pkt, &mut bufs[..n], offset)?;
        if fit {
            for (i, b) in bufs[..written].iter_mut().enumerate() {
                let want = offset + self.size(i);
                if b.bytes().len() != want && b.max_len() > b.bytes().len() {
                    b.resize(want)?;
                }
            }
        }
        Ok(written)
    }

    /// Stores the first `n` packets' lengths into `sizes`: all of one length but the last
    /// packet of the split (a store per entry, where a length each took a multiply).
    pub fn fill_sizes(&self, sizes: &mut [usize], n: usize) {
        let n = n.min(sizes.len()).min(self.count());
        if let Some(last) = n.checked_sub(1) {
            sizes[..last].fill(self.size(0));
            sizes[last] = self.size(last);
        }
    }

    /// Splits `pkt` (the packet without its virtio header, as planned) into the caller's
    /// buffers `outs` (`name` in messages): packet `i` into `outs[i][offset..offset +
    /// sizes[i]]`; returns the count. Buffers too small are grown where they can be, and
    /// with `fit` each ends exactly at its packet. Everything is checked before anything
    /// is written: too few buffers or sizes, one too small, two that share memory or one
    /// that shares memory with the packet.
    ///
    /// When the outputs are objects large enough already (a list of `bytearray`s read in
    /// place), they are written without being converted, and a large split goes through
    /// [`Hooks::work`] on the buffers pinned (the binding releases the GIL).
    #[allow(clippy::too_many_arguments)]
    pub fn deliver<E, L, H>(
        &self,
        pkt: &[u8],
        outs: &mut L,
        sizes: &mut [usize],
        offset: usize,
        fit: bool,
        name: &str,
        hooks: &mut H,
    ) -> std::result::Result<usize, Failed<E>>
    where
        L: Buffers<E> + ?Sized,
        H: Hooks<E> + ?Sized,
    {
        let n = self.count();
        let p = pkt.as_ptr() as usize;
        let packet = (p, p + pkt.len());
        if !fit && sizes.len() >= n && outs.count() >= n {
            let need = |i: usize| offset.saturating_add(self.size(i));
            let pin = hooks.worth_releasing(pkt.len());
            let done = outs
                .windows(n, need, pin, |w| {
                    if w.iter()
                        .any(|w| overlaps((w.addr(), w.addr() + w.max_len()), packet))
                    {
                        return None; // named by the general path
                    }
                    Some(match pin {
                        true => hooks.work(|| self.write(pkt, w, offset, false)),
                        false => self.write(pkt, w, offset, false),
                    })
                })
                .map_err(Failed::Caller)?;
            if let Some(Some(written)) = done {
                let written = written.map_err(Failed::Packet)?;
                self.fill_sizes(sizes, written);
                return Ok(written);
            }
        }
        let m = n.min(outs.count());
        let bufs = outs.bufs(m, false, offset).map_err(Failed::Caller)?;
        // The same object twice before anything grows; address ranges once they are final.
        let all_known = check_identities(bufs, name).map_err(Failed::Buffers)?;
        (self.prepare(bufs, sizes.len(), offset, name)).map_err(Failed::Buffers)?;
        let part = |i: usize, b: &L::Buf| addr_range(b, offset, offset + self.size(i));
        if let Some(i) = (0..n).find(|&i| overlaps(part(i, &bufs[i]), packet)) {
            let e = Error::new(
                ErrorKind::OverlappingBuffers,
                format!("{name}[{i}] and the packet share memory"),
            );
            return Err(Failed::Buffers(e.at(i)));
        }
        if !all_known {
            check_ranges(bufs, &part, name).map_err(Failed::Buffers)?;
        }
        let written = (self.write(pkt, bufs, offset, fit)).map_err(Failed::Packet)?;
        self.fill_sizes(sizes, written);
        Ok(written)
    }
}

/// What a receive can check of its outputs before it reads (a call with these outputs
/// fails whatever arrives, and no packet is read for it): at least one buffer and one
/// size, each buffer able to hold a byte after `offset` (growing if it must), and none
/// the buffer the read goes into (`original`, its address). (An output that overlaps it
/// otherwise is refused with the packet, which is then kept.)
pub fn check_outputs<E, L>(
    outs: &mut L,
    sizes: usize,
    offset: usize,
    original: Option<usize>,
    name: &str,
) -> std::result::Result<(), E>
where
    E: From<Error>,
    L: Buffers<E> + ?Sized,
{
    let n = outs.count();
    if n == 0 {
        return Err(Error::new(
            ErrorKind::TooFewOutBufs,
            format!("{name} must not be empty"),
        )
        .into());
    }
    if sizes == 0 {
        return Err(Error::fixed(ErrorKind::SizesTooShort, "sizes must not be empty").into());
    }
    let mut i = outs.next_limited(0, original);
    while i < n {
        let r = outs.room(i)?;
        if r.max_len <= offset || original == Some(r.addr) {
            return Err(refused_output(i, r, offset, name).into());
        }
        i = outs.next_limited(i + 1, original);
    }
    Ok(())
}

#[cold]
fn refused_output(i: usize, r: Room, offset: usize, name: &str) -> Error {
    let (kind, m) = match r.max_len <= offset {
        true => (
            ErrorKind::OutBufTooSmall,
            format!(
                "{name}[{i}] holds {} bytes and cannot grow: no room after offset {offset}",
                r.len
            ),
        ),
        false => (
            ErrorKind::OverlappingBuffers,
            format!("{name}[{i}] is original_buffer: the packet read would be overwritten"),
        ),
    };
    Error::new(kind, m).at(i)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Window;
    use crate::hooks::Direct;

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
    fn fill_sizes_gives_each_packets_length() {
        use crate::engine::testutil::{build, Spec};
        use crate::engine::virtio::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
        // (payload, gso_size): a short last segment, an exact multiple, one segment, and a
        // packet without GSO.
        for (payload, gso_size) in [(3000, 1000), (2500, 1000), (3000, 1448), (700, 1000)] {
            let spec = Spec {
                payload: vec![7; payload],
                ..Spec::default()
            };
            let hdr = VirtioNetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
                gso_size,
                csum_start: 20,
                csum_offset: 16,
                ..VirtioNetHdr::default()
            };
            let pkt = build(&spec, true);
            for hdr in [hdr, VirtioNetHdr::default()] {
                let split = Split::plan_packet(&pkt, &hdr, None).unwrap();
                let count = split.count();
                let want: Vec<usize> = (0..count).map(|i| split.size(i)).collect();
                assert_eq!(want.iter().sum::<usize>(), pkt.len() + (count - 1) * 40);
                for n in 0..=count + 1 {
                    let mut sizes = vec![usize::MAX; count + 2];
                    split.fill_sizes(&mut sizes, n);
                    let k = n.min(count);
                    assert_eq!(sizes[..k], want[..k], "{payload}/{gso_size}, n {n}");
                    assert!(sizes[k..].iter().all(|&s| s == usize::MAX), "past n");
                }
            }
        }
    }

    fn deliver<B: ExpandBuffer + AsMut<[u8]>>(
        read: &[u8],
        bufs: &mut [B],
        sizes: &mut [usize],
        fit: bool,
    ) -> std::result::Result<usize, Failed<Error>> {
        let split = Split::plan(read).map_err(Failed::Packet)?;
        let pkt = &read[VIRTIO_NET_HDR_LEN..];
        split.deliver(pkt, bufs, sizes, 10, fit, "bufs", &mut Direct)
    }

    #[test]
    fn split_grows_small_buffers_and_fits() {
        let read = plain_read(300);
        let mut bufs = vec![vec![0u8; 3], vec![7u8; 2]];
        let mut sizes = [0usize; 2];
        assert_eq!(deliver(&read, &mut bufs, &mut sizes, false).unwrap(), 1);
        assert_eq!(bufs[0].len(), 310); // grown to what the packet needs
        assert_eq!(&bufs[0][10..], &read[VIRTIO_NET_HDR_LEN..]);
        assert_eq!(bufs[1], vec![7u8; 2]); // untouched
        assert_eq!(sizes, [300, 0]);
        // Fit: a larger buffer ends exactly at its packet.
        let mut big = vec![vec![0u8; 2000]];
        deliver(&read, &mut big, &mut sizes, true).unwrap();
        assert_eq!(big[0].len(), 310);
        // Windows: written in place, nothing grows.
        let mut raw = [0u8; 400];
        let mut w = [Window::whole(&mut raw)];
        assert_eq!(deliver(&read, &mut w, &mut sizes, false).unwrap(), 1);
        assert_eq!((w[0].len(), &raw[10..310]), (400, &read[10..]));
    }

    #[test]
    fn split_refusals_say_whose_fault() {
        let read = plain_read(300);
        let mut none: Vec<Vec<u8>> = Vec::new();
        let buffers = |r: std::result::Result<usize, Failed<Error>>| match r {
            Err(Failed::Buffers(e)) => e,
            r => panic!("{r:?}"),
        };
        let e = buffers(deliver(&read, &mut none, &mut [0], false));
        assert_eq!(e.kind(), ErrorKind::TooFewOutBufs);
        let e = buffers(deliver(&read, &mut [vec![0u8; 400]], &mut [], false));
        assert_eq!(e.kind(), ErrorKind::SizesTooShort);
        let mut fixed = [0u8; 100];
        let mut outs: [&mut [u8]; 1] = [&mut fixed];
        let e = buffers(deliver(&read, &mut outs, &mut [0], false));
        assert!(e.message().contains("bufs[0]"), "{e:?}");
        assert_eq!((e.kind(), e.index()), (ErrorKind::OutBufTooSmall, Some(0)));
        // A bad packet is the packet's fault.
        assert!(matches!(
            deliver(&read[..5], &mut outs, &mut [0], false),
            Err(Failed::Packet(_))
        ));
        let check = |outs: &mut [&mut [u8]], sizes, offset| {
            check_outputs::<Error, _>(outs, sizes, offset, None, "bufs")
        };
        assert!(check(&mut outs, 1, 100).is_err()); // no room after the offset, cannot grow
        assert_eq!(
            check(&mut outs, 0, 0).unwrap_err().kind(),
            ErrorKind::SizesTooShort
        );
        assert_eq!(
            check(&mut [], 1, 0).unwrap_err().kind(),
            ErrorKind::TooFewOutBufs
        );
        assert!(check_outputs::<Error, _>(&mut [Vec::<u8>::new()][..], 1, 100, None, "b").is_ok());
        let a = outs[0].as_ptr() as usize;
        let e = check_outputs::<Error, _>(&mut outs[..], 1, 0, Some(a), "b");
        assert_eq!(e.unwrap_err().kind(), ErrorKind::OverlappingBuffers);
    }
}
