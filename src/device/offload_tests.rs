//! The offload switches and the coalesced-write fallback against the kernel: TUN devices
//! with offload in two private network namespaces (one thread each), forwarders between
//! them on `recv_multiple`/`send_multiple`, TCP and UDP through them. Root only (see
//! [`crate::root_test!`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::batch::forward::{device_in_new_netns, forward, pattern};
use super::offload::{coalesced_kind, faults_armed, TCP};
use super::{OffloadState, Tun, TunOptions};
use crate::udp::{Dest, UdpBatch, Wait};

/// The two devices: `a` at [`A_ADDR`], `b` at [`B_ADDR`] (one /16: each reaches the other
/// through its own device and the forwarders).
#[derive(Clone)]
pub(crate) struct Devs {
    pub a: Arc<Tun>,
    pub b: Arc<Tun>,
}

pub(crate) const A_ADDR: &str = "10.77.0.1/16";
pub(crate) const B_ADDR: &str = "10.77.1.2/16";
const B_IP: &str = "10.77.1.2";
const WAIT: Duration = Duration::from_secs(20);

/// What [`between_namespaces`] gives back: the two sides' results and the forwarder's
/// `(reads, packets, failed writes)` from A to B.
pub(crate) struct Run<RA, RB> {
    pub a: Result<RA, String>,
    pub b: Result<RB, String>,
    pub ab: (usize, usize, usize),
    pub devs: Devs,
}

/// Runs `fa` in namespace A and `fb` in namespace B, each on a thread there, once both
/// devices are up, `setup` has seen them and the forwarders run; `fa` starts when `fb`
/// calls its `ready` argument (or fails).
pub(crate) fn between_namespaces<RA, RB>(
    setup: impl FnOnce(&Devs),
    fa: impl FnOnce(&Devs) -> Result<RA, String> + Send + 'static,
    fb: impl FnOnce(&Devs, &dyn Fn()) -> Result<RB, String> + Send + 'static,
) -> Run<RA, RB>
where
    RA: Send + 'static,
    RB: Send + 'static,
{
    let (tx_a, rx_a) = mpsc::channel();
    let (tx_b, rx_b) = mpsc::channel();
    let (go_a, go_rx_a) = mpsc::channel::<Devs>();
    let (go_b, go_rx_b) = mpsc::channel::<Devs>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let b = std::thread::spawn(move || -> Result<RB, String> {
        tx_b.send(device_in_new_netns(B_ADDR)?)
            .map_err(|e| e.to_string())?;
        let devs = go_rx_b.recv().map_err(|e| e.to_string())?;
        let ready = move || {
            let _ = ready_tx.send(());
        };
        fb(&devs, &ready)
    });
    let a = std::thread::spawn(move || -> Result<RA, String> {
        tx_a.send(device_in_new_netns(A_ADDR)?)
            .map_err(|e| e.to_string())?;
        let devs = go_rx_a.recv().map_err(|e| e.to_string())?;
        ready_rx
            .recv_timeout(WAIT)
            .map_err(|_| "namespace B never got ready".to_string())?;
        fa(&devs)
    });
    let devs = match (rx_a.recv(), rx_b.recv()) {
        (Ok(a), Ok(b)) => Devs { a, b },
        _ => {
            let (ea, eb) = (failure(a.join()), failure(b.join()));
            panic!("setting up the namespaces failed: {ea} {eb}");
        }
    };
    setup(&devs);
    let (a2, b2) = (devs.a.clone(), devs.b.clone());
    let ab = std::thread::spawn(move || forward(&a2, &b2));
    let (a3, b3) = (devs.a.clone(), devs.b.clone());
    let ba = std::thread::spawn(move || forward(&b3, &a3));
    go_a.send(devs.clone()).expect("go a");
    go_b.send(devs.clone()).expect("go b");
    let ra = a.join().expect("thread a");
    let rb = b.join().expect("thread b");
    devs.a.shutdown();
    devs.b.shutdown();
    let ab = ab.join().expect("forwarder a->b");
    let _ = ba.join().expect("forwarder b->a");
    Run {
        a: ra,
        b: rb,
        ab,
        devs,
    }
}

fn failure<T>(r: std::thread::Result<Result<T, String>>) -> String {
    match r {
        Ok(Err(e)) => e,
        Ok(Ok(_)) => "(no error)".into(),
        Err(_) => "(a panic)".into(),
    }
}

/// Sends `bytes` of [`pattern`] over TCP to B's port 5001.
pub(crate) fn tcp_send(bytes: usize) -> Result<(), String> {
    let to = format!("{B_IP}:5001").parse().expect("address");
    let mut s = TcpStream::connect_timeout(&to, WAIT).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    let data: Vec<u8> = (0..bytes).map(pattern).collect();
    s.write_all(&data).map_err(|e| e.to_string())
}

/// Listens on B's port 5001 (then calls `ready`), takes one connection and reads it to
/// the end, checking every byte against [`pattern`]; `progress` sees the count so far.
/// Returns the byte count.
pub(crate) fn tcp_receive(
    ready: &dyn Fn(),
    mut progress: impl FnMut(usize),
) -> Result<usize, String> {
    let l = TcpListener::bind(format!("{B_IP}:5001")).map_err(|e| e.to_string())?;
    ready();
    let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(got);
        }
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(got + k)) {
            return Err(format!("byte {} differs", got + k));
        }
        got += n;
        progress(got);
    }
}

fn default_state(tun: &Tun) -> OffloadState {
    OffloadState {
        tcp_segmentation: true,
        udp_segmentation: tun.udp_gso(),
        tcp_coalescing: true,
        udp_coalescing: tun.udp_gso(),
    }
}

crate::root_test! {
    /// The kernel refuses B's coalesced writes (a fault injected below the write) once
    /// 2 MiB have arrived: the refused super-packet is written as its segments, TCP
    /// coalescing turns off on B, and the stream arrives whole.
    fn tcp_coalescing_refused_mid_stream_loses_nothing() {
        const BYTES: usize = 8 << 20;
        let r = between_namespaces(
            |_| {},
            |_| tcp_send(BYTES),
            |devs, ready| {
                let mut armed = false;
                tcp_receive(ready, |got| {
                    if !armed && got >= 2 << 20 {
                        devs.b.inject_write_faults(libc::EINVAL, 3, true).expect("arm");
                        armed = true;
                    }
                })
            },
        );
        r.a.expect("sender");
        assert_eq!(r.b.expect("receiver"), BYTES);
        let (b, a) = (&r.devs.b, &r.devs.a);
        let fallbacks = b.counters.tcp_coalescing_fallbacks.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(fallbacks, 1, "one refusal, then no more coalesced writes");
        assert_eq!(faults_armed(b).0, 2, "two faults left: nothing coalesced was written after");
        let state = b.offload_state();
        assert!(!state.tcp_coalescing && state.tcp_segmentation, "{state:?}");
        assert_eq!(a.offload_state(), default_state(a), "A is untouched");
        // Super-packets kept coming from A all along (its segmentation is on).
        let (reads, packets, errors) = r.ab;
        assert!(packets > 2 * reads, "{packets} packets in {reads} reads");
        assert_eq!(errors, 0, "every write from A to B went through");
    }
}

crate::root_test! {
    /// With TCP segmentation off on A, the kernel hands A plain packets only: no read is
    /// larger than the MTU and its virtio header; the stream still arrives whole.
    fn tcp_segmentation_off_gives_plain_reads() {
        const BYTES: usize = 1 << 20;
        let r = between_namespaces(
            |devs| devs.a.set_tcp_segmentation(false).expect("TSO off"),
            |_| tcp_send(BYTES),
            |_, ready| tcp_receive(ready, |_| {}),
        );
        r.a.expect("sender");
        assert_eq!(r.b.expect("receiver"), BYTES);
        let a = &r.devs.a;
        let max = a.counters.max_read.load(std::sync::atomic::Ordering::Relaxed);
        let mtu = a.mtu().unwrap_or(1500) as u64;
        assert!(max <= mtu + 10, "a {max}-byte read with TSO off (MTU {mtu})");
        let (reads, packets, errors) = r.ab;
        assert_eq!(reads, packets, "one packet per read");
        assert_eq!(errors, 0);
        assert!(!a.offload_state().tcp_segmentation);
    }
}

crate::root_test! {
    /// UDP super-packets (A's kernel segments a UDP_SEGMENT send for A's device with USO)
    /// are split by the forwarder and coalesced again for B; B refuses the first coalesced
    /// write: it is written as its datagrams, UDP coalescing turns off on B, and every
    /// datagram arrives.
    fn udp_coalescing_refused_loses_nothing() {
        const BATCHES: usize = 6;
        const PER: usize = 20;
        let (ack_tx, ack_rx) = mpsc::channel::<usize>();
        let mut uso = true;
        let r = between_namespaces(
            |devs| {
                uso = devs.a.udp_gso() && devs.b.udp_gso();
                devs.b.inject_write_faults(libc::EINVAL, 1, true).expect("arm");
            },
            move |_| -> Result<(), String> {
                let s = UdpSocket::bind("10.77.0.1:0").map_err(|e| e.to_string())?;
                let mut batch = UdpBatch::new(s.as_fd()).map_err(|e| e.to_string())?;
                let to = Dest::One(format!("{B_IP}:5002").parse().expect("address"));
                for k in 0..BATCHES {
                    let data: Vec<Vec<u8>> = (0..PER).map(|i| vec![(k * PER + i) as u8; 1000]).collect();
                    batch.send(s.as_fd(), &data, to, Wait::Block).map_err(|e| e.to_string())?;
                    match ack_rx.recv_timeout(WAIT) {
                        Ok(n) if n == (k + 1) * PER => {}
                        r => return Err(format!("batch {k}: {r:?}")),
                    }
                }
                Ok(())
            },
            move |_, ready| -> Result<usize, String> {
                let s = UdpSocket::bind(format!("{B_IP}:5002")).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
                ready();
                let mut buf = [0u8; 2000];
                for got in 0..BATCHES * PER {
                    let n = s.recv(&mut buf).map_err(|e| format!("datagram {got}: {e}"))?;
                    if n != 1000 || buf[..n].iter().any(|&x| x != got as u8) {
                        return Err(format!("datagram {got} differs ({n} bytes)"));
                    }
                    if (got + 1) % PER == 0 {
                        let _ = ack_tx.send(got + 1);
                    }
                }
                Ok(BATCHES * PER)
            },
        );
        r.a.expect("sender");
        assert_eq!(r.b.expect("receiver"), BATCHES * PER);
        if !uso {
            eprintln!("udp_coalescing_refused_loses_nothing: no USO on this kernel, no UDP super-packets");
            return;
        }
        let b = &r.devs.b;
        let c = &b.counters;
        assert_eq!(c.udp_coalescing_fallbacks.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(c.tcp_coalescing_fallbacks.load(std::sync::atomic::Ordering::Relaxed), 0);
        let state = b.offload_state();
        assert!(!state.udp_coalescing && state.tcp_coalescing, "{state:?}");
        let (reads, packets, errors) = r.ab;
        assert!(packets >= 2 * reads, "UDP super-packets from A: {packets} packets in {reads} reads");
        assert_eq!(errors, 0, "every write from A to B went through");
    }
}

crate::root_test! {
    /// The switches of a live device: read back as set, shared with a queue cloned
    /// later (whose open sets the full mask on the device: it is restored), refused on a
    /// device without offload; the fault hook arms, counts down and disarms.
    fn switches_on_a_live_device() {
        std::thread::spawn(|| {
            // SAFETY: unshare on this thread only affects this thread's namespaces.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let tun = Tun::open(&TunOptions {
                offload: true,
                multi_queue: true,
                ..Default::default()
            })
            .expect("open");
            assert_eq!(tun.offload_state(), default_state(&tun));
            tun.set_tcp_segmentation(false).unwrap();
            tun.set_tcp_coalescing(false).unwrap();
            let want = OffloadState {
                tcp_segmentation: false,
                tcp_coalescing: false,
                ..default_state(&tun)
            };
            assert_eq!(tun.offload_state(), want);
            let names: Vec<_> = want.items().iter().map(|(n, _)| *n).collect();
            assert_eq!(names, ["tcp_segmentation", "udp_segmentation", "tcp_coalescing", "udp_coalescing"]);
            let q = tun.clone_queue().expect("clone");
            assert_eq!(q.offload_state(), want);
            q.set_tcp_coalescing(true).unwrap();
            assert!(tun.offload_state().tcp_coalescing, "one device, one set of switches");
            if tun.udp_gso() {
                tun.set_udp_segmentation(false).unwrap();
                assert!(!q.offload_state().udp_segmentation);
                tun.set_udp_segmentation(true).unwrap();
                assert!(q.offload_state().udp_segmentation);
            } else {
                let e = tun.set_udp_segmentation(true).unwrap_err();
                assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
            }
            tun.set_tcp_segmentation(true).unwrap();
            tun.set_udp_coalescing(false).unwrap();
            assert!(!tun.coalescing().udp && tun.coalescing().tcp);

            tun.inject_write_faults(libc::EIO, 2, false).unwrap();
            assert_eq!(faults_armed(&tun), (2, libc::EIO, false));
            let plain = [0u8; 10 + 20];
            for _ in 0..2 {
                let e = tun.write(&plain, false).unwrap_err();
                assert_eq!(e.errno(), Some(libc::EIO), "{e}");
                assert!(e.to_string().contains("injected"), "{e}");
            }
            assert_eq!(faults_armed(&tun).0, 0, "used up");
            tun.inject_write_faults(libc::EINVAL, 1, true).unwrap();
            // A plain packet passes by a coalesced-only fault (and the kernel takes or
            // refuses it as ever: not EINVAL-injected).
            if let Err(e) = tun.write(&plain, false) {
                assert!(!e.to_string().contains("injected"), "{e}");
            }
            assert_eq!(faults_armed(&tun).0, 1);
            tun.inject_write_faults(libc::EINVAL, 0, true).unwrap();
            assert_eq!(faults_armed(&tun).0, 0, "disarmed");
            assert!(tun.inject_write_faults(0, 1, true).is_err());

            // A queue keeps the device's switches readable once closed, as they were.
            let queue = crate::device::Queue::new(tun, false);
            queue.get().unwrap().set_udp_coalescing(true).unwrap();
            let at_close = queue.offload_state();
            assert!(at_close.udp_coalescing && at_close.tcp_segmentation);
            queue.close();
            assert_eq!(queue.offload_state(), at_close);

            let plain_dev = Tun::open(&TunOptions::default()).expect("open without offload");
            assert_eq!(plain_dev.offload_state(), OffloadState::default());
            for r in [
                plain_dev.set_tcp_segmentation(false),
                plain_dev.set_udp_segmentation(false),
                plain_dev.set_tcp_coalescing(true),
                plain_dev.set_udp_coalescing(true),
            ] {
                assert!(matches!(r, Err(super::Error::Invalid(_))), "{r:?}");
            }
        })
        .join()
        .expect("test thread");
    }
}

#[test]
fn a_coalesced_packet_splits_back_into_plain_segments() {
    use crate::engine::virtio::*;
    use crate::engine::{handle_gro, GroTable};
    // Three TCP segments of one flow, coalesced as send_multiple does, then split back.
    let seg = |i: u32| -> Vec<u8> {
        let mut p = vec![0u8; 10 + 40 + 100];
        let ip = &mut p[10..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&140u16.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = crate::engine::checksum::ipv4_header_checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let tcp = &mut ip[20..];
        tcp[0..4].copy_from_slice(&[0x04, 0xd2, 0x13, 0x89]);
        tcp[4..8].copy_from_slice(&(1000 + 100 * i).to_be_bytes());
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x10;
        tcp[14..16].copy_from_slice(&[0xff, 0xff]);
        for (j, b) in tcp[20..].iter_mut().enumerate() {
            *b = (i as usize * 3 + j) as u8;
        }
        let sum = crate::engine::checksum::sum(&[&ip[12..20], &[0, 6, 0, 120], &ip[20..]].concat());
        ip[36..38].copy_from_slice(&(!sum).to_be_bytes());
        p
    };
    let originals: Vec<Vec<u8>> = (0..3).map(seg).collect();
    let mut bufs = originals.clone();
    let mut t = GroTable::new();
    assert_eq!(handle_gro(&mut bufs, 10, &mut t, true).unwrap(), &[0]);
    assert_eq!(coalesced_kind(&bufs[0]), Some(TCP));
    let segs = super::offload::segments(&bufs[0]).unwrap();
    assert_eq!(segs.len(), 3);
    for (i, (got, want)) in segs.iter().zip(&originals).enumerate() {
        assert_eq!(
            VirtioNetHdr::decode(got).unwrap(),
            VirtioNetHdr::default(),
            "segment {i}"
        );
        // The IPv4 ID is numbered from the first segment's (the originals all had 0).
        let (mut got, mut want) = (got[10..].to_vec(), want[10..].to_vec());
        for p in [&mut got, &mut want] {
            p[4..6].fill(0);
            p[10..12].fill(0);
        }
        assert_eq!(got, want, "segment {i}");
    }
    assert_eq!(coalesced_kind(&originals[0]), None);
}
