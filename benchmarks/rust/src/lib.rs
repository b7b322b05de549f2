//! The Rust engine timed from inside a Python process (`benchmarks/engine_py.py` loads this
//! library with ctypes), so the binding's overhead is measured side by side with the engine
//! it wraps: same process, same moment, same inputs, interleaved round by round. A shared
//! VM's speed drifts by 2x within minutes; a ratio of numbers taken minutes apart (Python
//! now, criterion earlier) measures the drift as much as the binding.
//!
//! Build: `cargo build --release --lib` in `benchmarks/rust`. The loops are the same as the
//! criterion benchmarks' (`benches/engine.rs`).

use std::time::Instant;

use tunoffload::device::{batch, Tun};
use tunoffload::engine::{self as eng, checksum, VirtioNetHdr};

const OFFSET: usize = 10;

/// A super-packet as a TUN reader gets it: headers + `payload` bytes, pseudo-header sum in
/// the transport checksum field. Shared by the criterion benchmarks and the examples.
pub fn super_packet(v6: bool, udp: bool, payload: usize) -> (Vec<u8>, VirtioNetHdr) {
    let iph = if v6 { 40 } else { 20 };
    let l4h = if udp { 8 } else { 20 };
    let total = iph + l4h + payload;
    let mut p = vec![0u8; total];
    let proto = if udp { 17 } else { 6 };
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p[6] = proto;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = checksum::ipv4_header_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p[iph..iph + 4].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
    if udp {
        p[iph + 4..iph + 6].copy_from_slice(&((total - iph) as u16).to_be_bytes());
    } else {
        p[iph + 4..iph + 8].copy_from_slice(&1u32.to_be_bytes());
        p[iph + 8..iph + 12].copy_from_slice(&1u32.to_be_bytes());
        p[iph + 12] = 5 << 4;
        p[iph + 13] = 0x10;
    }
    for (i, b) in p[iph + l4h..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let (a, n) = if v6 { (8, 16) } else { (12, 4) };
    let ps = checksum::pseudo_header(
        proto,
        &p[a..a + n],
        &p[a + n..a + 2 * n],
        (total - iph) as u16,
    );
    let at = iph + if udp { 6 } else { 16 };
    p[at..at + 2].copy_from_slice(&ps.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: eng::VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: match (v6, udp) {
            (_, true) => eng::VIRTIO_NET_HDR_GSO_UDP_L4,
            (false, false) => eng::VIRTIO_NET_HDR_GSO_TCPV4,
            (true, false) => eng::VIRTIO_NET_HDR_GSO_TCPV6,
        },
        hdr_len: (iph + l4h) as u16,
        gso_size: 1448,
        csum_start: iph as u16,
        csum_offset: if udp { 6 } else { 16 },
    };
    (p, hdr)
}

/// The `n` TCP or UDP segments (virtio header room first) of a super-packet of `n` x 1448
/// payload bytes, as `gso_split` makes them: a batch for `handle_gro`.
pub fn segments(v6: bool, udp: bool, n: usize) -> Vec<Vec<u8>> {
    let (pkt, hdr) = super_packet(v6, udp, 1448 * n);
    let mut outs = vec![vec![0u8; OFFSET + 1600]; n];
    let mut sizes = vec![0usize; n];
    let k = eng::gso_split(&pkt, &hdr, &mut outs, &mut sizes, OFFSET, None).unwrap();
    assert_eq!(k, n);
    outs.iter()
        .zip(&sizes)
        .map(|(o, s)| o[..OFFSET + s].to_vec())
        .collect()
}

/// Puts the original packets back into long-lived buffers (keeping their capacity, so no
/// allocation or page fault lands in the timed part). Shared by the criterion benchmarks,
/// [`tob_gro_run`] and `examples/gro_callgrind.rs`.
pub fn reset(bufs: &mut Vec<Vec<u8>>, segs: &[Vec<u8>]) {
    bufs.resize_with(segs.len(), || Vec::with_capacity(OFFSET * 2 + 65536));
    for (b, s) in bufs.iter_mut().zip(segs) {
        b.clear();
        b.extend_from_slice(s);
    }
}

/// A destination for a timed copy of `src`: `len` bytes at `[at..]` of the returned buffer,
/// half a page from `src` modulo 4096. Two buffers allocated one after the other sit a few
/// bytes apart modulo a page, and glibc's `rep movsb` copy is then many times slower on AMD
/// Zen (26 us against 1.4 for 64 KiB on the VM of 2026-12-07): not the copy a `memcpy`
/// column stands for.
pub fn copy_target(src: &[u8]) -> (Vec<u8>, usize) {
    let dst = vec![0u8; src.len() + 4096];
    let apart = (dst.as_ptr() as usize).wrapping_sub(src.as_ptr() as usize) % 4096;
    let at = (2048 + 4096 - apart) % 4096;
    (dst, at)
}

/// State for timing `gso_split` of one packet.
pub struct Gso {
    pkt: Vec<u8>,
    hdr: VirtioNetHdr,
    outs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

/// State for timing `handle_gro` of one batch.
pub struct Gro {
    segs: Vec<Vec<u8>>,
    bufs: Vec<Vec<u8>>,
    table: eng::GroTable,
}

/// # Safety
/// `p` points to `len` readable bytes (or `len` is 0).
unsafe fn bytes<'a>(p: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(p, len) }
    }
}

/// A timing state for `gso_split` of the packet `pkt[..len]` with the 10-byte virtio header
/// `hdr`, into 64 outputs of `OFFSET + 1600` bytes (as `engine_py.py` and criterion use);
/// null if the header does not decode or the packet does not split.
///
/// # Safety
/// `pkt` points to `len` readable bytes and `hdr` to 10.
#[no_mangle]
pub unsafe extern "C" fn tob_gso_new(pkt: *const u8, len: usize, hdr: *const u8) -> *mut Gso {
    // SAFETY: the caller's contract.
    let (pkt, hdr) = unsafe { (bytes(pkt, len).to_vec(), bytes(hdr, 10)) };
    let Ok(hdr) = VirtioNetHdr::decode(hdr) else {
        return std::ptr::null_mut();
    };
    let mut s = Gso {
        pkt,
        hdr,
        outs: vec![vec![0u8; OFFSET + 1600]; 64],
        sizes: vec![0; 64],
    };
    if eng::gso_split(&s.pkt, &s.hdr, &mut s.outs, &mut s.sizes, OFFSET, None).is_err() {
        return std::ptr::null_mut();
    }
    Box::into_raw(Box::new(s))
}

/// Nanoseconds per call over `iters` back-to-back calls (criterion's `b.iter`).
///
/// # Safety
/// `s` came from [`tob_gso_new`] and was not freed.
#[no_mangle]
pub unsafe extern "C" fn tob_gso_run(s: *mut Gso, iters: u64) -> f64 {
    // SAFETY: the caller's contract.
    let s = unsafe { &mut *s };
    let t = Instant::now();
    for _ in 0..iters {
        let pkt = std::hint::black_box(&s.pkt);
        let n = eng::gso_split(pkt, &s.hdr, &mut s.outs, &mut s.sizes, OFFSET, None);
        std::hint::black_box(n.ok());
    }
    t.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

/// Nanoseconds per call over `iters` back-to-back calls that split `s`'s packet into the
/// caller's `n` buffers of `cap` bytes each (`outs[i]`): `engine_py.py` passes the very
/// bytearrays its Python calls write, so both sides touch the same memory and the ratio
/// measures the binding, not where the heap put each side's buffers (which moves a split
/// by up to 10 %). Negative if the split fails.
///
/// # Safety
/// `s` came from [`tob_gso_new`] and was not freed; `outs` points to `n` pointers, each to
/// `cap` writable bytes that nothing else uses during the call, no two overlapping.
#[no_mangle]
pub unsafe extern "C" fn tob_gso_run_into(
    s: *mut Gso,
    outs: *const *mut u8,
    n: usize,
    cap: usize,
    iters: u64,
) -> f64 {
    // SAFETY: the caller's contract.
    let (s, ptrs) = unsafe { (&mut *s, std::slice::from_raw_parts(outs, n)) };
    // SAFETY: each pointer is `cap` writable bytes of its own (the caller's contract).
    let mut bufs: Vec<&mut [u8]> = (ptrs.iter())
        .map(|&p| unsafe { std::slice::from_raw_parts_mut(p, cap) })
        .collect();
    let t = Instant::now();
    for _ in 0..iters {
        let pkt = std::hint::black_box(&s.pkt);
        let n = eng::gso_split(pkt, &s.hdr, &mut bufs, &mut s.sizes, OFFSET, None);
        if n.is_err() {
            return -1.0;
        }
    }
    t.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

/// # Safety
/// `s` came from [`tob_gso_new`] and is freed once.
#[no_mangle]
pub unsafe extern "C" fn tob_gso_free(s: *mut Gso) {
    if !s.is_null() {
        // SAFETY: the caller's contract.
        drop(unsafe { Box::from_raw(s) });
    }
}

/// A timing state for `handle_gro` of `n` packets laid end to end in `data`, packet `i`
/// being `lens[i]` bytes (each gets `OFFSET` bytes of headroom); null for `n == 0`.
///
/// # Safety
/// `lens` points to `n` lengths and `data` to their sum of readable bytes.
#[no_mangle]
pub unsafe extern "C" fn tob_gro_new(data: *const u8, lens: *const usize, n: usize) -> *mut Gro {
    if n == 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: the caller's contract.
    let lens = unsafe { std::slice::from_raw_parts(lens, n) };
    // SAFETY: the caller's contract.
    let mut data = unsafe { bytes(data, lens.iter().sum()) };
    let mut segs = Vec::with_capacity(n);
    for &l in lens {
        let mut b = vec![0u8; OFFSET];
        b.extend_from_slice(&data[..l]);
        data = &data[l..];
        segs.push(b);
    }
    Box::into_raw(Box::new(Gro {
        segs,
        bufs: Vec::new(),
        table: eng::GroTable::new(),
    }))
}

/// Nanoseconds per call over `iters` calls, each on the batch restored outside the timed
/// part into long-lived buffers with room to grow (criterion's `timed`: no allocation or
/// page fault timed). The Python side cannot do that (a bytearray has no spare room), so
/// its figure includes growing the first bytearray of each flow to the coalesced size.
///
/// # Safety
/// `s` came from [`tob_gro_new`] and was not freed.
#[no_mangle]
pub unsafe extern "C" fn tob_gro_run(s: *mut Gro, iters: u64) -> f64 {
    // SAFETY: the caller's contract.
    let s = unsafe { &mut *s };
    let mut total = std::time::Duration::ZERO;
    for _ in 0..iters {
        reset(&mut s.bufs, &s.segs);
        let t = Instant::now();
        let r = eng::handle_gro(&mut s.bufs, OFFSET, &mut s.table, true).map(|w| w.len());
        std::hint::black_box(r.ok());
        total += t.elapsed();
    }
    total.as_nanos() as f64 / iters.max(1) as f64
}

/// # Safety
/// `s` came from [`tob_gro_new`] and is freed once.
#[no_mangle]
pub unsafe extern "C" fn tob_gro_free(s: *mut Gro) {
    if !s.is_null() {
        // SAFETY: the caller's contract.
        drop(unsafe { Box::from_raw(s) });
    }
}

/// One iteration of the README idiom in Rust alone: read and split into `bufs`, then
/// coalesce and write; the number of packets.
pub fn forward_once(
    src: &Tun,
    dst: &Tun,
    state: &batch::RecvState,
    original: &mut [u8],
    bufs: &mut [Vec<u8>],
    sizes: &mut [usize],
    table: &mut eng::GroTable,
) -> Result<usize, tunoffload::device::Error> {
    let n = batch::recv_multiple(src, state, original, bufs, sizes, OFFSET, true, false)?;
    // Each packet at the start of its buffer, which GRO may grow it into (what
    // `send_multiple(..., sizes=)` hands the engine from Python).
    let mut out: Vec<eng::Window> = (bufs[..n].iter_mut().zip(sizes.iter()))
        .map(|(b, &s)| eng::Window::new(b, OFFSET + s))
        .collect();
    batch::send_multiple(dst, table, &mut out, OFFSET, None, None, true).map_err(|e| e.error)?;
    Ok(n)
}

/// The forwarder state of [`tob_fwd_new`].
pub struct Fwd {
    src: Tun,
    dst: Tun,
    state: batch::RecvState,
    original: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    table: eng::GroTable,
}

/// The idiom's state (128 buffers of 64 KiB) on duplicates of two TUN descriptors with
/// offload (`benchmarks/forward_callgrind.py native`); null if either is not one.
#[no_mangle]
pub extern "C" fn tob_fwd_new(src_fd: i32, dst_fd: i32) -> *mut Fwd {
    let (Ok(src), Ok(dst)) = (Tun::from_fd(src_fd), Tun::from_fd(dst_fd)) else {
        return std::ptr::null_mut();
    };
    Box::into_raw(Box::new(Fwd {
        src,
        dst,
        state: batch::RecvState::new(),
        original: vec![0u8; OFFSET + 65535],
        bufs: vec![vec![0u8; OFFSET + 65535]; 128],
        sizes: vec![0; 128],
        table: eng::GroTable::new(),
    }))
}

/// `iters` iterations of [`forward_once`]; the packets forwarded, or -1 on an error.
///
/// # Safety
/// `s` came from [`tob_fwd_new`] and was not freed.
#[no_mangle]
pub unsafe extern "C" fn tob_fwd_run(s: *mut Fwd, iters: u64) -> i64 {
    // SAFETY: the caller's contract.
    let s = unsafe { &mut *s };
    let mut packets = 0;
    for _ in 0..iters {
        let f = &mut *s;
        match forward_once(
            &f.src,
            &f.dst,
            &f.state,
            &mut f.original,
            &mut f.bufs,
            &mut f.sizes,
            &mut f.table,
        ) {
            Ok(n) => packets += n as i64,
            Err(_) => return -1,
        }
    }
    packets
}

/// # Safety
/// `s` came from [`tob_fwd_new`] and is freed once.
#[no_mangle]
pub unsafe extern "C" fn tob_fwd_free(s: *mut Fwd) {
    if !s.is_null() {
        // SAFETY: the caller's contract.
        drop(unsafe { Box::from_raw(s) });
    }
}

/// `ring` alone on a tunnel's batch, the baseline of the batch AEAD from Python
/// (`benchmarks/aead_py.py`): nanoseconds per round over `iters` rounds, each sealing
/// `n` packets of `size` bytes in place (padded to a multiple of 16, nonce 0000 || counter,
/// tag after the ciphertext) and opening them again, as `Sealer::seal` + `Opener::open`
/// do with the same bytes. `ring_key` is built once (as a `Sealer`/`Opener` holds one).
#[no_mangle]
pub extern "C" fn tob_ring_seal_open_run(n: usize, size: usize, iters: u64) -> f64 {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[0x5a; 32]).unwrap());
    let nonce = |c: u64| {
        let mut b = [0u8; 12];
        b[4..].copy_from_slice(&c.to_le_bytes());
        Nonce::assume_unique_for_key(b)
    };
    let padded = size.div_ceil(16) * 16;
    let mut bufs = vec![vec![0x45u8; 16 + padded + 16]; n];
    let mut counter = 0u64;
    let t = Instant::now();
    for _ in 0..iters {
        for (i, b) in bufs.iter_mut().enumerate() {
            let c = counter + i as u64;
            let body = &mut b[16..16 + padded];
            let tag = key.seal_in_place_separate_tag(nonce(c), Aad::empty(), body);
            b[16 + padded..].copy_from_slice(tag.unwrap().as_ref());
        }
        for (i, b) in bufs.iter_mut().enumerate() {
            let c = counter + i as u64;
            let opened = key.open_in_place(nonce(c), Aad::empty(), &mut b[16..]);
            std::hint::black_box(opened.map(|p| p.len()).ok());
        }
        counter += n as u64;
    }
    t.elapsed().as_nanos() as f64 / iters.max(1) as f64
}
