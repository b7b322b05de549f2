//! The data path as two loops with nothing of the caller's per batch: [`pump_tx`] (TUN
//! to UDP, wireguard-go's `RoutineReadFromTUN` and encryption) and [`pump_rx`] (UDP to
//! TUN, one per socket: `RoutineReceiveIncoming`, decryption and the handshake messages),
//! on the core's own types: a TUN [`Queue`], each socket's [`Shared`] batches
//! ([`PumpSocket`]), and buffers the loops own (`Vec<u8>`s, grown as packets need). A
//! binding runs a whole call with its interpreter lock released.
//!
//! The control thread stays the caller's: it calls [`Device::tick`] when
//! [`Device::next_deadline`] says and waits in [`Device::wait_for_kick`] meanwhile, which
//! returns as soon as a loop queues work for it (a packet staged for a handshake, a
//! session confirmed, a rekey due). [`send_datagrams`] sends what it returns, for a
//! caller that has no sockets of its own.
//!
//! A call runs for at most [`PumpOptions::slice`] and then returns `Ok(())`, so that its
//! caller looks at its own state between calls (a stop, new sockets after a rebind) with
//! no signal to the loop; `pump_rx` also returns `Ok(())` when a receive has waited its
//! socket's timeout. `pump_tx` returns as soon as the device's listen port changes
//! ([`Device::set_listen_port`]: the caller has bound new sockets), without sending
//! anything more on the old ones (a datagram sent from the old port would make the peer
//! roam back to a port about to close, and the tunnel would stay dead from then on); it
//! looks at the port between its wait and its read, so a packet that arrives meanwhile
//! stays queued for the next call. Both return `Err(Error::Closed)` (`EBADF`) once the TUN queue is
//! closed, and an [`Error::Os`] with `EBADFD` once the interface is deleted; `pump_tx`
//! returns any other error of a TUN read too. `EINTR` is retried (a binding's signal
//! handlers run in its main thread). What the loops drop (a super-packet the split
//! refuses, no route, no socket of the endpoint's family, a send or a write the kernel
//! refuses) is counted in [`PumpStats`] ([`Device::pump_stats`]), beside what the device
//! itself drops ([`DeviceStats`](super::DeviceStats)).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::cookie::Mac1Checked;
use super::device::{stats, Datagram, Device, Encrypted};
use crate::aead::HEADER_LEN;
use crate::device::batch::{max_read, recv_multiple, send_multiple};
use crate::device::{Error, Queue};
use crate::engine::{self, ErrorKind, GroTable, IDEAL_BATCH_SIZE};
use crate::hooks::Direct;
use crate::udp::{self, Dest, Out, Shared, Wait};

/// Packets sit at this offset in every buffer, messages at 0 (room for the header).
const OFFSET: usize = HEADER_LEN;

/// The most buffers a pump takes ([`PumpOptions::batch`]).
pub const MAX_BATCH: usize = 4096;

/// How long a pump call runs by default ([`PumpOptions::slice`]).
pub const DEFAULT_SLICE: Duration = Duration::from_millis(500);

stats! {
    /// What the data-path loops did and dropped, by direction: the data-path counters of
    /// the Python interface's `stats()` (which adds its own to them).
    PumpStats, PumpCounters;
    // --- TUN to UDP ---
    /// Reads from the TUN device.
    tun_reads,
    /// Packets in those reads (super-packets split).
    tun_packets,
    /// Batches sealed and sent.
    tx_batches,
    /// Batches not sent: no peer for their destination, or staged for a handshake.
    tx_unsent,
    /// Reads the split refused (a malformed super-packet), batches the device refused,
    /// sends that failed or had no socket of the endpoint's family, batches read just as
    /// the listen port changed (not sent).
    tx_errors,
    // --- UDP to TUN ---
    /// Receives (each up to a batch of datagrams).
    udp_reads,
    /// Datagrams received.
    udp_datagrams,
    /// Decrypted packets handed to the TUN device.
    rx_packets,
    /// Handshake messages handed to [`Device::handle_control`].
    rx_control,
    /// Receives that failed, batches the device refused, handshake messages without a
    /// source.
    rx_errors,
    /// Writes of decrypted packets to the TUN device that failed.
    tun_write_errors,
    /// Datagrams of the control path sent.
    control_sent,
    /// Datagrams of the control path that could not be sent.
    control_errors,
}

/// How a pump call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PumpOptions {
    /// Its buffers: the most packets of one TUN read, datagrams of one receive (the
    /// default: [`IDEAL_BATCH_SIZE`]).
    pub batch: usize,
    /// How long it runs at most before it returns `Ok(())` ([`DEFAULT_SLICE`]).
    pub slice: Duration,
}

impl Default for PumpOptions {
    fn default() -> Self {
        PumpOptions {
            batch: IDEAL_BATCH_SIZE,
            slice: DEFAULT_SLICE,
        }
    }
}

impl PumpOptions {
    /// The default options with `batch` buffers (`None`: the default's): `out_of_range`
    /// unless in `1..=`[`MAX_BATCH`], `negative_argument` below 0.
    pub fn with_batch(batch: Option<i64>) -> engine::Result<Self> {
        let Some(batch) = batch else {
            return Ok(PumpOptions::default());
        };
        let batch = engine::buffer::non_negative(batch, "batch_size")?;
        if !(1..=MAX_BATCH).contains(&batch) {
            let m = format!("batch_size must be in 1..={MAX_BATCH}, not {batch}");
            return Err(engine::Error::new(ErrorKind::OutOfRange, m));
        }
        Ok(PumpOptions {
            batch,
            ..PumpOptions::default()
        })
    }

    /// When a call that starts now ends.
    fn end(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.slice)
            .unwrap_or_else(|| now + Duration::from_secs(1 << 32))
    }
}

/// One UDP socket as a pump uses it: its batches, a descriptor of its own (a
/// duplicate, so that the caller may close its socket while a pump runs: the socket
/// stays open, sending and receiving, until the pump returns) and how long a receive or
/// a send waits.
#[derive(Debug)]
pub struct PumpSocket<'a> {
    shared: &'a Shared,
    fd: OwnedFd,
    timeout: Option<Duration>,
}

impl<'a> PumpSocket<'a> {
    /// `sock`, the socket of `shared`, with its timeout in seconds as Python's
    /// `gettimeout()` gives it (`None`: calls block; 0: they do not wait; see
    /// [`udp::timeout_from_secs`]).
    pub fn new(
        shared: &'a Shared,
        sock: BorrowedFd<'_>,
        timeout: Option<f64>,
    ) -> udp::Result<Self> {
        let fd = sock.try_clone_to_owned().map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EBADF);
            udp::Error::from_errno(errno, "duplicating the socket's descriptor")
        })?;
        Ok(PumpSocket {
            shared,
            fd,
            timeout: udp::timeout_from_secs(timeout),
        })
    }

    /// How long a call made now waits: the socket's timeout, and for a receive no
    /// later than `end`.
    fn wait(&self, end: Option<Instant>) -> Wait {
        match (Wait::from_timeout(self.timeout), end) {
            (Wait::Block, Some(end)) => Wait::Until(end),
            (Wait::Until(t), Some(end)) => Wait::Until(t.min(end)),
            (wait, _) => wait,
        }
    }

    /// Sends `msgs` to `to` (after a signal, the rest).
    fn send(&self, msgs: &[&[u8]], to: SocketAddr) -> udp::Result<()> {
        let (fd, wait) = (self.fd.as_fd(), self.wait(None));
        let mut done = 0;
        loop {
            let part = &msgs[done..];
            let r = (self.shared)
                .sending::<_, (), _>(&mut Direct, |tx| tx.send(fd, part, Dest::One(to), wait));
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.error == udp::Error::Interrupted => done += e.sent,
                Err(e) => return Err(e.error),
            }
        }
    }
}

/// The socket of `to`'s family among `udp` (IPv4, IPv6).
fn socket_for<'s, 'a>(
    udp: &'s [Option<PumpSocket<'a>>; 2],
    to: &SocketAddr,
) -> Option<&'s PumpSocket<'a>> {
    udp[usize::from(to.is_ipv6())].as_ref()
}

/// Sends each datagram the control path returned ([`Device::tick`],
/// [`Device::handle_control`]) on the socket of its destination's family among `udp`
/// (IPv4, IPv6), counting them in the device's [`PumpStats`] (`control_sent`,
/// `control_errors`).
pub fn send_datagrams(dev: &Device, udp: &[Option<PumpSocket<'_>>; 2], out: &[Datagram]) {
    for (bytes, to) in out {
        let sent = socket_for(udp, to).map(|s| s.send(&[bytes], *to));
        count_control(dev, matches!(sent, Some(Ok(()))));
    }
}

fn count_control(dev: &Device, sent: bool) {
    let c = &dev.pump;
    match sent {
        true => &c.control_sent,
        false => &c.control_errors,
    }
    .fetch_add(1, Relaxed);
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Relaxed);
}

/// TUN to UDP: reads a super-packet from `tun` (split into the loop's buffers at offset
/// 16), seals it for the peer of its destination ([`Device::encrypt`]) and sends it to
/// the peer's endpoint on the socket of its family among `udp` (IPv4, IPv6), until the
/// slice is over; see the [module doc](self) for what ends a call.
pub fn pump_tx(
    dev: &Device,
    tun: &Queue,
    udp: &[Option<PumpSocket<'_>>; 2],
    opts: &PumpOptions,
) -> Result<(), Error> {
    let (q, tun, end, c) = (tun, tun.get()?, opts.end(), &dev.pump);
    let port = dev.listen_port();
    let mut original = vec![0u8; max_read(&tun)];
    let mut bufs = vec![Vec::new(); opts.batch];
    let mut sizes = vec![0usize; opts.batch];
    let state = &q.recv_state;
    // The read does not wait: the loop waits, then looks at the listen port before it
    // reads, so that a packet that arrives after a rebind stays queued for the next call
    // (which has the new sockets) instead of being lost.
    let mut after_wait = false;
    loop {
        let (b, s) = (&mut bufs, &mut sizes);
        let read = recv_multiple(&tun, state, &mut original, b, s, OFFSET, false, false);
        match (read, std::mem::take(&mut after_wait)) {
            (Ok(n), _) => {
                add(&c.tun_reads, 1);
                add(&c.tun_packets, n);
                if dev.listen_port() != port {
                    add(&c.tx_errors, 1); // read just as the sockets changed: not sent
                    return Ok(());
                }
                send(dev, udp, &mut bufs[..n], &mut sizes[..n]);
            }
            (Err(e), true) if e.is_eagain() => {
                // Readable by poll, yet nothing to read: the descriptor is in error.
                return Err(Error::from_errno(libc::EIO, "reading from the TUN device"));
            }
            (Err(e), false) if e.is_eagain() => match tun.wait_readable_until(end) {
                Ok(readable) => after_wait = readable,
                Err(e) if e.is_eintr() => {}
                Err(e) => return Err(e),
            },
            (Err(e), _) if e.is_eintr() => {}
            // A super-packet that splits into more packets than there are buffers is held
            // back for the next read: more buffers for it, up to a batch's most; one that
            // not even those take is dropped (counted), not read again forever.
            (Err(Error::Invalid(_)), _) if state.has_held() && bufs.len() < MAX_BATCH => {
                let more = (bufs.len() * 2).min(MAX_BATCH);
                bufs.resize(more, Vec::new());
                sizes.resize(more, 0);
            }
            (Err(Error::Invalid(_)), _) => {
                add(&c.tx_errors, 1);
                let _ = state.take_held(&mut original);
            }
            (Err(e), _) => return Err(e),
        }
        if Instant::now() >= end || dev.listen_port() != port {
            return Ok(());
        }
    }
}

/// One batch of `pump_tx`, read: sealed and sent.
fn send(
    dev: &Device,
    udp: &[Option<PumpSocket<'_>>; 2],
    bufs: &mut [Vec<u8>],
    sizes: &mut [usize],
) {
    let c = &dev.pump;
    let counter = match dev.encrypt(bufs, OFFSET, sizes, Instant::now()) {
        Ok(Encrypted::Send {
            endpoint, count, ..
        }) => {
            let msgs: Vec<&[u8]> = (bufs.iter().zip(&*sizes).take(count))
                .map(|(b, &len)| &b[..len])
                .collect();
            match socket_for(udp, &endpoint).map(|s| s.send(&msgs, endpoint)) {
                Some(Ok(())) => &c.tx_batches,
                _ => &c.tx_errors,
            }
        }
        Ok(Encrypted::NoRoute | Encrypted::Staged) => &c.tx_unsent,
        Err(_) => &c.tx_errors,
    };
    add(counter, 1);
}

/// UDP to TUN: receives a batch on `udp` (`recvmmsg`, coalesced reads split), opens it
/// ([`Device::decrypt`]), writes the packets to `tun` (coalesced, with offload) and
/// hands the handshake messages to [`Device::handle_control`], sending what it returns
/// on `udp`, until the slice is over or a receive waited the socket's timeout; see the
/// [module doc](self) for what ends a call.
pub fn pump_rx(
    dev: &Device,
    tun: &Queue,
    udp: &PumpSocket<'_>,
    opts: &PumpOptions,
) -> Result<(), Error> {
    let (tun, end, c) = (tun.get()?, opts.end(), &dev.pump);
    let mut bufs = vec![Vec::new(); opts.batch];
    let mut sizes = vec![0usize; opts.batch];
    let mut sources: Vec<Option<SocketAddr>> = vec![None; opts.batch];
    let mut table = GroTable::new();
    let fd = udp.fd.as_fd();
    loop {
        if tun.is_closed() {
            return Err(Error::Closed);
        }
        let wait = udp.wait(Some(end));
        let (b, s, a) = (&mut bufs, &mut sizes, Out::Addrs(&mut sources));
        let r =
            (udp.shared).receiving::<_, (), _>(&mut Direct, |rx, _| rx.recv(fd, b, s, 0, a, wait));
        let n = match r {
            Ok(n) => n,
            Err(udp::Error::Timeout | udp::Error::WouldBlock) => return Ok(()),
            Err(udp::Error::Interrupted) => continue,
            Err(_) => {
                add(&c.rx_errors, 1);
                0
            }
        };
        if n > 0 {
            add(&c.udp_reads, 1);
            add(&c.udp_datagrams, n);
            receive(
                dev,
                &tun,
                udp,
                &mut table,
                &mut bufs,
                &mut sizes[..n],
                &mut sources,
            )?;
        }
        if Instant::now() >= end {
            return Ok(());
        }
    }
}

/// One batch of `pump_rx`, received: opened, its packets written, its handshake
/// messages handled. `Err` when the TUN device is closed or deleted.
fn receive(
    dev: &Device,
    tun: &crate::device::Tun,
    udp: &PumpSocket<'_>,
    table: &mut GroTable,
    bufs: &mut [Vec<u8>],
    sizes: &mut [usize],
    sources: &mut [Option<SocketAddr>],
) -> Result<(), Error> {
    let (c, now) = (&dev.pump, Instant::now());
    let Ok(d) = dev.decrypt(bufs, 0, sizes, sources, now) else {
        add(&c.rx_errors, 1);
        return Ok(());
    };
    let p = d.packets;
    if p > 0 {
        add(&c.rx_packets, p);
        if let Err(e) = send_multiple(
            tun,
            table,
            &mut bufs[..p],
            OFFSET,
            Some(&sizes[..p]),
            None,
            true,
        ) {
            if e.error == Error::Closed || e.error.errno() == Some(libc::EBADFD) {
                return Err(e.error);
            }
            add(&c.tun_write_errors, 1);
        }
    }
    let range = p..p + d.control;
    control(
        dev,
        &bufs[range.clone()],
        &sizes[range.clone()],
        &sources[range],
        d.mac1,
        now,
        |b, to| udp.send(&[b], to).is_ok(),
    );
    Ok(())
}

/// The handshake messages of a batch `receive` opened (`bufs[i][..sizes[i]]` from
/// `sources[i]`, with the verdict of [`Device::decrypt`] (`Decrypted::mac1`), which checked their
/// mac1), handed to the control path, which does not check mac1 again; what it returns
/// goes to `send` (`true`: sent).
fn control(
    dev: &Device,
    bufs: &[Vec<u8>],
    sizes: &[usize],
    sources: &[Option<SocketAddr>],
    checked: Option<Mac1Checked>,
    now: Instant,
    mut send: impl FnMut(&[u8], SocketAddr) -> bool,
) {
    let c = &dev.pump;
    for ((buf, &size), src) in bufs.iter().zip(sizes).zip(sources) {
        add(&c.rx_control, 1);
        let Some(src) = *src else {
            add(&c.rx_errors, 1); // no source: nowhere to answer
            continue;
        };
        let Some(msg) = buf.get(..size) else {
            add(&c.rx_errors, 1); // not reached: decrypt checked the sizes
            continue;
        };
        for (bytes, to) in dev.handle_checked_control(msg, src, now, checked) {
            count_control(dev, send(&bytes, to));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::{mpsc, Arc};
    use std::thread;

    use super::*;
    use crate::device::batch::forward::device_in_new_netns;
    use crate::device::offload_tests::{tcp_receive, tcp_send, A_ADDR, B_ADDR};
    use crate::device::Tun;
    use crate::udp::tests::lo_setup;
    use crate::wireguard::messages::{control_type, RESPONSE_LEN};
    use crate::wireguard::tests::keys;
    use crate::wireguard::{DeviceConfig, IpNet, PeerLine, Timing};

    const BYTES: usize = 4 << 20;

    #[test]
    fn batch_sizes_out_of_range_are_refused() {
        assert_eq!(PumpOptions::with_batch(Some(1)).unwrap().batch, 1);
        assert_eq!(
            PumpOptions::with_batch(None).unwrap(),
            PumpOptions::default()
        );
        let max = Some(MAX_BATCH as i64);
        assert_eq!(PumpOptions::with_batch(max).unwrap().slice, DEFAULT_SLICE);
        for (bad, kind) in [
            (0, ErrorKind::OutOfRange),
            (MAX_BATCH as i64 + 1, ErrorKind::OutOfRange),
            (i64::MAX, ErrorKind::OutOfRange),
            (-1, ErrorKind::NegativeArgument),
        ] {
            let e = PumpOptions::with_batch(Some(bad)).unwrap_err();
            assert_eq!(e.kind(), kind, "{bad}");
        }
    }

    #[test]
    fn seconds_to_wait() {
        use crate::udp::duration_from_secs;
        let ms = Duration::from_millis;
        assert_eq!(duration_from_secs(0.25), ms(250));
        for none in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(duration_from_secs(none), Duration::ZERO, "{none}");
        }
        assert_eq!(duration_from_secs(f64::INFINITY), Duration::MAX);
        assert_eq!(duration_from_secs(1e300), Duration::MAX);
    }

    #[test]
    fn a_kick_wakes_the_control_thread_once() {
        let dev = Arc::new(Device::new(DeviceConfig::default()));
        assert!(!dev.wait_for_kick(Duration::from_millis(1)), "no kick yet");
        dev.kick();
        assert!(
            dev.wait_for_kick(Duration::ZERO),
            "a kick before the wait counts"
        );
        assert!(!dev.wait_for_kick(Duration::ZERO), "and is taken");
        let d = dev.clone();
        let waiter = thread::spawn(move || d.wait_for_kick(Duration::from_secs(60)));
        dev.kick();
        assert!(waiter.join().unwrap(), "woken by the kick, not the timeout");
    }

    /// How many mac1s the device's checker (of its current key) computed.
    fn mac1_computed(dev: &Device) -> u64 {
        let st = crate::wireguard::peer::read(&dev.static_);
        st.as_ref()
            .map_or(0, |s| s.checker.mac1_computed.load(SeqCst))
    }

    /// A batch from `from` through the native receive path without its TUN write:
    /// `receive`'s [`Device::decrypt`] then its `control`, with `between` run
    /// between the two. Returns what the control path sent.
    fn native(
        dev: &Device,
        dgrams: &[Vec<u8>],
        from: SocketAddr,
        now: Instant,
        between: impl FnOnce(),
    ) -> Vec<Datagram> {
        let mut bufs = dgrams.to_vec();
        let mut sizes: Vec<usize> = dgrams.iter().map(Vec::len).collect();
        let mut sources = vec![Some(from); dgrams.len()];
        let d = (dev.decrypt(&mut bufs, 0, &mut sizes, &mut sources, now)).unwrap();
        between();
        let r = d.packets..d.packets + d.control;
        let mut out = Vec::new();
        let (b, s, a) = (&bufs[r.clone()], &sizes[r.clone()], &sources[r]);
        control(dev, b, s, a, d.mac1, now, |bytes, to| {
            out.push((bytes.to_vec(), to));
            true
        });
        out
    }

    /// The lengths and destinations of datagrams (their bytes are random in part).
    fn shapes(out: &[Datagram]) -> Vec<(usize, SocketAddr)> {
        out.iter().map(|(b, to)| (b.len(), *to)).collect()
    }

    #[test]
    fn the_native_receive_path_computes_each_mac1_once() {
        use crate::wireguard::messages::{COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN};
        use crate::wireguard::tests::{ipv4, pair, start, Side};
        let t0 = start();
        let (a, _) = pair(Timing::default(), t0);
        let receiver = || {
            let b = Side::new(2, "192.0.2.2:51820", [10, 9, 0, 2], Timing::default(), t0);
            b.add_peer(&a, true, None, t0);
            b
        };
        a.send(&[ipv4(a.ip, [10, 9, 0, 2], b"x")], t0);
        let init = a.dev.tick(t0)[0].0.clone();
        let mut bad = init.clone();
        bad[INITIATION_LEN - 20] ^= 1; // in mac1
        let mut cookie = vec![0u8; COOKIE_REPLY_LEN];
        cookie[0] = 3;
        let mut junk = vec![0u8; 32];
        junk[0] = 4; // transport data for no session
        let (c, r) = (COOKIE_REPLY_LEN, RESPONSE_LEN);
        // (case, batch, under load, mac1s computed on the native path, on the public
        // one (decrypt then handle_control), the lengths of what was sent)
        type Case<'a> = (&'a str, Vec<Vec<u8>>, bool, u64, u64, &'a [usize]);
        let cases: &[Case] = &[
            ("an initiation", vec![init.clone()], false, 1, 2, &[r]),
            ("a bad mac1", vec![bad.clone()], false, 1, 1, &[]),
            ("a cookie reply", vec![cookie.clone()], false, 0, 0, &[]),
            ("under load", vec![init.clone()], true, 1, 2, &[c]),
            ("a bad mac1 under load", vec![bad.clone()], true, 1, 1, &[]),
            (
                "a flood of copies",
                vec![init.clone(); 5],
                false,
                5,
                10,
                &[r],
            ),
            (
                "a flood under load",
                vec![init.clone(); 5],
                true,
                5,
                10,
                &[c; 5],
            ),
            (
                "a mixed batch",
                vec![junk, bad.clone(), init.clone(), cookie, bad],
                false,
                3,
                4,
                &[r],
            ),
        ];
        for (name, batch, load, once, twice, sent) in cases {
            let (n, p) = (receiver(), receiver());
            n.dev.set_force_under_load(*load);
            p.dev.set_force_under_load(*load);
            let out = native(&n.dev, batch, a.endpoint, t0, || {});
            let (_, out_p) = p.receive(batch, a.endpoint, t0);
            assert_eq!(mac1_computed(&n.dev), *once, "{name}: native");
            assert_eq!(mac1_computed(&p.dev), *twice, "{name}: public");
            let want: Vec<_> = sent.iter().map(|&len| (len, a.endpoint)).collect();
            assert_eq!(shapes(&out), want, "{name}");
            assert_eq!(shapes(&out_p), want, "{name}");
            // Dropped and counted alike (hs_bad_mac1, hs_cookie_sent, hs_replayed, ...).
            assert_eq!(n.dev.stats(), p.dev.stats(), "{name}");
            let st = n.dev.pump_stats();
            let handshakes = batch.iter().filter(|m| control_type(m).is_some()).count();
            let kept = handshakes as u64 - n.dev.stats().hs_bad_mac1;
            assert_eq!(st.rx_control, kept, "{name}: {st:?}");
            assert_eq!(st.control_sent, sent.len() as u64, "{name}: {st:?}");
        }

        // The initiator's side: b's response computes one mac1 at a.
        let b = receiver();
        let resp = native(&b.dev, &[init], a.endpoint, t0, || {});
        assert_eq!(shapes(&resp), [(r, a.endpoint)]);
        let before = mac1_computed(&a.dev);
        let out = native(&a.dev, &[resp[0].0.clone()], b.endpoint, t0, || {});
        assert_eq!(mac1_computed(&a.dev) - before, 1);
        assert_eq!(a.dev.stats().sessions, 1, "{out:?}");
    }

    #[test]
    fn a_key_change_between_decrypt_and_control_checks_mac1_again() {
        use crate::wireguard::tests::{ipv4, pair, start};
        let t0 = start();
        let (a, b) = pair(Timing::default(), t0);
        a.send(&[ipv4(a.ip, b.ip, b"x")], t0);
        let init = a.dev.tick(t0)[0].0.clone();
        let (key, other) = (keys(2).0, keys(9).0);
        // To another key: the verdict is not that key's, mac1 is computed under it and
        // is wrong.
        let out = native(&b.dev, std::slice::from_ref(&init), a.endpoint, t0, || {
            assert_eq!(mac1_computed(&b.dev), 1, "decrypt's");
            b.dev.set_private_key(&other, t0);
        });
        assert!(out.is_empty());
        assert_eq!(mac1_computed(&b.dev), 1, "the new key's checker's");
        assert_eq!(b.dev.stats().hs_bad_mac1, 1);
        // Away and back: the same key, the verdict holds.
        b.dev.set_private_key(&key, t0);
        let out = native(&b.dev, std::slice::from_ref(&init), a.endpoint, t0, || {
            b.dev.set_private_key(&other, t0);
            b.dev.set_private_key(&key, t0);
        });
        assert_eq!(mac1_computed(&b.dev), 0, "{out:?}");
        assert_eq!(shapes(&out), [(RESPONSE_LEN, a.endpoint)]);
        // No key left: refused as before (hs_invalid), nothing computed.
        let (_, c) = pair(Timing::default(), t0);
        let out = native(&c.dev, &[init], a.endpoint, t0, || {
            c.dev.set_private_key(&[0; 32], t0);
        });
        assert!(out.is_empty());
        assert_eq!(
            (c.dev.stats().hs_invalid, c.dev.stats().hs_bad_mac1),
            (1, 0)
        );
    }

    /// One side of the tunnel: its device and its TUN queue (in a namespace of its own),
    /// its socket (in the namespace of the sockets).
    struct Side {
        dev: Device,
        tun: Queue,
        sock: UdpSocket,
    }

    impl Side {
        fn new(seed: u8, tun: Arc<Tun>, sock: UdpSocket) -> Side {
            let tun = Arc::try_unwrap(tun).expect("the only reference");
            let dev = Device::new(DeviceConfig::default());
            dev.set_private_key(&keys(seed).0, Instant::now());
            let tun = Queue::new(tun, true);
            Side { dev, tun, sock }
        }

        /// `other` as a peer: its tunnel address (`addr`, a /32), and its endpoint when
        /// `endpoint` (else it is learnt from the handshake).
        fn add_peer(&self, seed: u8, addr: &str, endpoint: Option<SocketAddr>) {
            let ip: IpAddr = addr.split('/').next().unwrap().parse().unwrap();
            let mut lines = vec![PeerLine::AllowedIp(IpNet::new(ip, 32).unwrap())];
            lines.extend(endpoint.map(PeerLine::Endpoint));
            self.dev
                .set_peer(&keys(seed).1, &lines, Instant::now())
                .unwrap();
        }

        /// Its two pumps and its control thread, until the TUN queue is closed and `stop`
        /// set: the control thread sends what `tick` returns with `send_datagrams`.
        fn run<'s>(
            &'s self,
            s: &'s thread::Scope<'s, '_>,
            shared: &'s Shared,
            stop: &'s AtomicBool,
        ) {
            let socket = || PumpSocket::new(shared, self.sock.as_fd(), Some(0.2)).unwrap();
            let opts = PumpOptions {
                slice: Duration::from_millis(300),
                ..PumpOptions::default()
            };
            let until_closed = |pump: &dyn Fn() -> Result<(), Error>| loop {
                match pump() {
                    Ok(()) => {}
                    Err(Error::Closed) => return,
                    Err(e) => panic!("pump: {e}"),
                }
            };
            let tx = [Some(socket()), None];
            s.spawn(move || until_closed(&|| pump_tx(&self.dev, &self.tun, &tx, &opts)));
            let rx = socket();
            s.spawn(move || until_closed(&|| pump_rx(&self.dev, &self.tun, &rx, &opts)));
            let control = [Some(socket()), None];
            s.spawn(move || {
                while !stop.load(SeqCst) {
                    send_datagrams(&self.dev, &control, &self.dev.tick(Instant::now()));
                    let next = self.dev.next_deadline();
                    let wait = next.map_or(Duration::from_millis(100), |d| {
                        d.saturating_duration_since(Instant::now())
                    });
                    self.dev.wait_for_kick(
                        wait.clamp(Duration::from_millis(1), Duration::from_millis(100)),
                    );
                }
            });
        }
    }

    crate::root_test! {
        /// A closed TUN queue ends a receiving pump, an interface deleted (`ip link del`)
        /// a sending one with `EBADFD`, as the caller is to tell them apart.
        fn pumps_end_on_a_closed_queue_and_a_deleted_interface() {
            thread::spawn(|| {
                // SAFETY: unshare on this thread only affects this thread's namespaces.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
                lo_setup(None);
                let opts = crate::device::TunOptions {
                    offload: true,
                    up: true,
                    ..Default::default()
                };
                let (a, b) = (Tun::open(&opts).unwrap(), Tun::open(&opts).unwrap());
                let name = a.name().unwrap();
                let (a, b) = (Queue::new(a, true), Queue::new(b, true));
                let dev = Device::new(DeviceConfig::default());
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                let shared = Shared::new(sock.as_fd(), &udp::Options::default()).unwrap();
                let udp = PumpSocket::new(&shared, sock.as_fd(), Some(0.05)).unwrap();
                let opts = PumpOptions {
                    slice: Duration::from_secs(30),
                    ..PumpOptions::default()
                };
                thread::scope(|s| {
                    let tx = s.spawn(|| pump_tx(&dev, &a, &[None, None], &opts));
                    // Nothing comes: the receive waits out the socket's timeout.
                    assert_eq!(pump_rx(&dev, &b, &udp, &opts), Ok(()));
                    b.close();
                    assert_eq!(pump_rx(&dev, &b, &udp, &opts), Err(Error::Closed));
                    let del = std::process::Command::new("ip")
                        .args(["link", "del", &name])
                        .status()
                        .expect("ip link del");
                    assert!(del.success());
                    let e = tx.join().unwrap().unwrap_err();
                    assert_eq!(e.errno(), Some(libc::EBADFD), "{e}");
                });
            })
            .join()
            .expect("test thread");
        }
    }

    /// In a new network namespace (this thread's): A's TUN device with offload as a queue,
    /// and a device with one peer for 10.77.1.2, whose endpoint is the socket returned.
    fn one_peer_in_new_netns() -> (Queue, Device, UdpSocket) {
        let tun = device_in_new_netns(A_ADDR).expect("device");
        lo_setup(None);
        let tun = Queue::new(Arc::try_unwrap(tun).expect("one reference"), true);
        let dev = Device::new(DeviceConfig::default());
        dev.set_private_key(&keys(1).0, Instant::now());
        let peer_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let lines = [
            PeerLine::AllowedIp(IpNet::new("10.77.1.2".parse().unwrap(), 32).unwrap()),
            PeerLine::Endpoint(peer_sock.local_addr().unwrap()),
        ];
        dev.set_peer(&keys(2).1, &lines, Instant::now()).unwrap();
        (tun, dev, peer_sock)
    }

    crate::root_test! {
        /// A packet that arrives after the listen port changed (the caller bound new
        /// sockets) is not sent on the old socket: the call returns, and the packet stays
        /// queued for the next call (here: staged, as the peer has no session yet).
        fn pump_tx_leaves_a_packet_queued_once_the_listen_port_changed() {
            thread::spawn(|| {
                let (tun, dev, peer_sock) = one_peer_in_new_netns();
                dev.set_listen_port(1000);
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                let shared = Shared::new(sock.as_fd(), &udp::Options::default()).unwrap();
                let udp = [Some(PumpSocket::new(&shared, sock.as_fd(), None).unwrap()), None];
                let opts = PumpOptions {
                    slice: Duration::from_secs(30),
                    ..PumpOptions::default()
                };
                let started = Instant::now();
                thread::scope(|s| {
                    let pump = s.spawn(|| pump_tx(&dev, &tun, &udp, &opts));
                    thread::sleep(Duration::from_millis(100)); // the pump reads
                    dev.set_listen_port(2000);
                    let probe = UdpSocket::bind("10.77.0.1:0").unwrap();
                    probe.send_to(b"late", "10.77.1.2:9").unwrap();
                    assert_eq!(pump.join().unwrap(), Ok(()));
                });
                assert!(started.elapsed() < Duration::from_secs(10), "returned at once");
                let st = dev.pump_stats();
                assert_eq!((st.tx_errors, st.tx_batches), (0, 0), "{st:?}");
                assert_eq!(dev.stats().tx_staged, 0, "the packet is still queued");
                let short = PumpOptions {
                    slice: Duration::from_millis(200),
                    ..opts
                };
                assert_eq!(pump_tx(&dev, &tun, &udp, &short), Ok(()));
                assert_eq!(dev.stats().tx_staged, 1, "the next call read it");
                peer_sock.set_nonblocking(true).unwrap();
                let e = peer_sock.recv(&mut [0u8; 64]).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "nothing sent");
            })
            .join()
            .expect("test thread");
        }
    }

    crate::root_test! {
        /// A super-packet that splits into more packets than `batch_size` buffers is not
        /// held back forever (the loop read it again and again): the buffers grow to it.
        fn pump_tx_takes_a_super_packet_larger_than_its_batch() {
            thread::spawn(|| {
                let (tun, dev, _peer) = one_peer_in_new_netns(); // (the endpoint stays bound)
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                let shared = Shared::new(sock.as_fd(), &udp::Options::default()).unwrap();
                let udp = [Some(PumpSocket::new(&shared, sock.as_fd(), None).unwrap()), None];
                // Four UDP segments in one send: one super-packet on the TUN device.
                let probe = UdpSocket::bind("10.77.0.1:0").unwrap();
                let seg: libc::c_int = 100;
                // SAFETY: a valid socket and an int option of the size given.
                let rc = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&probe),
                        libc::SOL_UDP,
                        libc::UDP_SEGMENT,
                        (&seg as *const libc::c_int).cast(),
                        size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0, "UDP_SEGMENT");
                probe.send_to(&[7u8; 400], "10.77.1.2:9").unwrap();
                let opts = PumpOptions {
                    slice: Duration::from_millis(300),
                    ..PumpOptions::with_batch(Some(1)).unwrap()
                };
                assert_eq!(pump_tx(&dev, &tun, &udp, &opts), Ok(()));
                // (The device may also read a packet of its own, IPv6's router solicitation.)
                let st = dev.pump_stats();
                assert!(st.tun_packets >= 4 && st.tx_errors == 0, "{st:?}");
                assert_eq!(dev.stats().tx_staged, 4, "each packet staged for the handshake");
            })
            .join()
            .expect("test thread");
        }
    }

    crate::root_test! {
        /// TCP from A to B through two WireGuard devices, each with its two pumps: TUN
        /// devices with offload in namespaces of their own, the UDP sockets on `lo` of a
        /// third. B does not know A's endpoint: it learns it from the handshake, which
        /// only A's control thread starts (A's first packets are staged for it).
        fn tcp_through_two_pumps_a_side() {
            let (ua, ub) = thread::spawn(|| {
                // SAFETY: unshare on this thread only affects this thread's namespaces.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
                lo_setup(None);
                let bind = || UdpSocket::bind("127.0.0.1:0").expect("bind");
                (bind(), bind())
            })
            .join()
            .expect("socket thread");
            let (a_addr, b_addr) = (ua.local_addr().unwrap(), ub.local_addr().unwrap());
            let (tun_b, tun_b_rx) = mpsc::channel();
            let (ready, ready_rx) = mpsc::channel();
            let b = thread::spawn(move || -> Result<usize, String> {
                tun_b.send(device_in_new_netns(B_ADDR)?).unwrap();
                tcp_receive(&move || ready.send(()).unwrap(), |_| {})
            });
            let (tun_a, tun_a_rx) = mpsc::channel();
            let (go, go_rx) = mpsc::channel::<()>();
            let a = thread::spawn(move || -> Result<(), String> {
                tun_a.send(device_in_new_netns(A_ADDR)?).unwrap();
                go_rx.recv().map_err(|e| e.to_string())?;
                tcp_send(BYTES)
            });
            let side_a = Side::new(1, tun_a_rx.recv().expect("A's device"), ua);
            let side_b = Side::new(2, tun_b_rx.recv().expect("B's device"), ub);
            side_a.add_peer(2, B_ADDR, Some(b_addr));
            side_b.add_peer(1, A_ADDR, None);
            let (shared_a, shared_b) = (
                Shared::new(side_a.sock.as_fd(), &udp::Options::default()).unwrap(),
                Shared::new(side_b.sock.as_fd(), &udp::Options::default()).unwrap(),
            );
            let stop = AtomicBool::new(false);
            let (sent, got) = thread::scope(|s| {
                side_a.run(s, &shared_a, &stop);
                side_b.run(s, &shared_b, &stop);
                ready_rx.recv().expect("B listens");
                go.send(()).unwrap();
                let r = (a.join().expect("thread a"), b.join().expect("thread b"));
                side_a.tun.close();
                side_b.tun.close();
                stop.store(true, SeqCst);
                side_a.dev.kick();
                side_b.dev.kick();
                r
            });
            sent.expect("sender");
            assert_eq!(got.expect("receiver"), BYTES, "every byte, in order");
            let (a, b) = (side_a.dev.pump_stats(), side_b.dev.pump_stats());
            eprintln!("A: {a:?}\nB: {b:?}");
            for (name, dev) in [("A", &side_a.dev), ("B", &side_b.dev)] {
                assert_eq!(dev.stats().sessions, 1, "{name}: one handshake");
            }
            let peer = &side_b.dev.peers()[0];
            assert_eq!(peer.endpoint, Some(a_addr), "B learnt A's endpoint");
            // A's data went in super-packets, sealed and sent as batches; B wrote them all.
            assert!(a.tun_packets > 2 * a.tun_reads && a.tx_batches > 0, "{a:?}");
            assert!(b.rx_packets >= (BYTES / 1500) as u64, "{b:?}");
            assert!(b.udp_datagrams > b.udp_reads, "coalesced reads: {b:?}");
            // The handshake: A's initiation from its control thread, B's response from
            // its receiving pump, A's staged packets sent once A had the response.
            assert!(a.control_sent >= 2 && b.control_sent >= 1 && a.rx_control >= 1, "{a:?} {b:?}");
            for st in [a, b] {
                assert_eq!(st.tx_errors + st.rx_errors + st.tun_write_errors + st.control_errors, 0, "{st:?}");
            }
            // Each handshake message received (no cookie replies here) had its mac1
            // computed once.
            for (st, dev) in [(a, &side_a.dev), (b, &side_b.dev)] {
                assert_eq!(dev.stats().cookies_accepted + dev.stats().cookies_invalid, 0);
                assert_eq!(mac1_computed(dev), st.rx_control + dev.stats().hs_bad_mac1, "{st:?}");
            }
        }
    }
}
