//! The batch entry points a binding calls ([`Device::encrypt_with`],
//! [`Device::decrypt_with`]) on `Vec<u8>` buffers, with the work run as a binding runs
//! it (through [`Hooks::work`], buffers pinned) and without; and the handshake messages
//! `decrypt` drops before the caller sees them.

use super::*;
use crate::engine::{Error, ErrorKind};
use crate::hooks::Hooks;
use crate::wireguard::messages::{INITIATION_LEN, RESPONSE_LEN};

/// Hooks that run the work when `release` says so, and count it.
struct Counting {
    release: bool,
    work: usize,
}

impl Hooks<Error> for Counting {
    fn syscall<T: Send>(&mut self, call: impl FnOnce() -> T + Send) -> T {
        call()
    }
    fn interrupted(&mut self) -> std::result::Result<(), Error> {
        Ok(())
    }
    fn worth_releasing(&self, _bytes: usize) -> bool {
        self.release
    }
    fn work<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        self.work += 1;
        f()
    }
}

#[test]
fn encrypt_with_and_decrypt_with_pinned_or_not() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    connect(&a, &b, t0);
    for release in [true, false] {
        let packets: Vec<Vec<u8>> = (0..3u8)
            .map(|i| ipv4(a.ip, b.ip, &vec![i; 100 + usize::from(i)]))
            .collect();
        // Each buffer exactly as long as its packet: the padding and tag make it grow.
        let mut bufs: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| [vec![0; OFF], p.clone()].concat())
            .collect();
        let mut sizes: Vec<usize> = packets.iter().map(Vec::len).collect();
        let mut hooks = Counting { release, work: 0 };
        let r = a
            .dev
            .encrypt_with(&mut bufs[..], OFF, &mut sizes, t0, &mut hooks)
            .unwrap();
        assert!(matches!(r, Encrypted::Send { endpoint, count: 3, .. } if endpoint == b.endpoint));
        assert_eq!(hooks.work, usize::from(release));
        for (i, p) in packets.iter().enumerate() {
            assert_eq!(
                sizes[i],
                16 + p.len().div_ceil(16) * 16 + 16,
                "padded, with the tag"
            );
            assert!(bufs[i].len() >= OFF - HEADER_LEN + sizes[i]);
        }
        // The messages arrive in one batch with a datagram of junk in front; b opens
        // them in place, at offset 0.
        let mut rx: Vec<Vec<u8>> = vec![vec![9u8; 50]];
        rx.extend((0..3).map(|i| bufs[i][..sizes[i]].to_vec()));
        let mut rx_sizes: Vec<usize> = rx.iter().map(Vec::len).collect();
        let mut sources = vec![Some(a.endpoint); 4];
        let mut hooks = Counting { release, work: 0 };
        let d = b
            .dev
            .decrypt_with(&mut rx[..], 0, &mut rx_sizes, &mut sources, t0, &mut hooks)
            .unwrap();
        assert_eq!((d.packets, d.control), (3, 0));
        assert_eq!(hooks.work, usize::from(release));
        for (i, p) in packets.iter().enumerate() {
            assert_eq!(&rx[i][HEADER_LEN..HEADER_LEN + rx_sizes[i]], &p[..]);
        }
        assert_eq!(rx_sizes[3], 0);
    }
}

#[test]
fn the_batch_entry_points_refuse_before_anything_changes() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    connect(&a, &b, t0);
    let p = ipv4(a.ip, b.ip, b"x");
    let hooks = &mut Counting {
        release: true,
        work: 0,
    };
    // More sizes than buffers.
    let mut bufs = [[vec![0; OFF], p.clone()].concat()];
    let e = (a.dev)
        .encrypt_with(&mut bufs[..], OFF, &mut [p.len(); 2], t0, hooks)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CountTooLarge);
    let e = (b.dev)
        .decrypt_with(&mut bufs[..], 0, &mut [1; 2], &mut [None; 2], t0, hooks)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CountTooLarge);
    // Fixed buffers that cannot grow for the padding and tag: refused, nothing sealed.
    let mut raw = [vec![0; OFF], p.clone()].concat();
    let before = raw.clone();
    let mut fixed = [&mut raw[..]];
    let e = (a.dev)
        .encrypt_with(&mut fixed[..], OFF, &mut [p.len()], t0, hooks)
        .unwrap_err();
    assert_eq!((e.kind(), e.index()), (ErrorKind::OutBufTooSmall, Some(0)));
    assert_eq!(raw, before);
    // Fixed buffers with room: sealed through the work, in place.
    let mut roomy = [vec![0; OFF], p.clone(), vec![0; 64]].concat();
    let mut fixed = [&mut roomy[..]];
    let mut sizes = [p.len()];
    let r = (a.dev)
        .encrypt_with(&mut fixed[..], OFF, &mut sizes, t0, hooks)
        .unwrap();
    assert!(matches!(r, Encrypted::Send { count: 1, .. }));
    assert_eq!(roomy[0], 4, "a transport message in place");
    assert_eq!(hooks.work, 1);
    // Too few sources.
    let mut rx = [roomy[..sizes[0]].to_vec()];
    let e = (b.dev)
        .decrypt_with(&mut rx[..], 0, &mut [sizes[0]], &mut [], t0, hooks)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooFewAddresses);
    assert_eq!(rx[0], roomy[..sizes[0]]);
}

#[test]
fn a_batch_with_a_packet_for_another_peer_is_refused_whole() {
    // A with two peers, B and C: a batch sealed for B must not carry C's packets (B could
    // read them), nor anything that is not IP.
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    let c = Side::new(3, "192.0.2.3:51820", [10, 0, 0, 3], Timing::default(), t0);
    a.add_peer(&c, true, None, t0);
    connect(&a, &b, t0);
    let to_b = ipv4(a.ip, b.ip, b"for b");
    let cases: [(Vec<u8>, &str); 3] = [
        (ipv4(a.ip, c.ip, b"for c"), "another peer's"),
        (ipv4(a.ip, [198, 51, 100, 7], b"nobody's"), "no peer's"),
        (vec![0x50; 30], "not IP"),
    ];
    for (other, what) in cases {
        let mut bufs: Vec<Vec<u8>> = [&to_b, &other, &to_b]
            .iter()
            .map(|p| [vec![0xee; OFF], p.to_vec()].concat())
            .collect();
        let before = bufs.clone();
        let mut sizes = [to_b.len(), other.len(), to_b.len()];
        let e = a.dev.encrypt(&mut bufs, OFF, &mut sizes, t0).unwrap_err();
        assert_eq!(
            (e.kind(), e.index()),
            (ErrorKind::MixedPeers, Some(1)),
            "{what}"
        );
        assert_eq!(bufs, before, "{what}: nothing sealed");
    }
    // Packets to one peer by different addresses of its allowed IPs: one batch.
    let (sent, msgs) = a.send(&[to_b.clone(), to_b], t0);
    assert!(matches!(sent, Encrypted::Send { count: 2, .. }) && msgs.len() == 2);
}

#[test]
fn decrypt_drops_handshakes_without_our_mac1() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    let c = Side::new(3, "192.0.2.3:51820", [10, 9, 0, 3], Timing::default(), t0);
    // A valid initiation for b, and one for c (made with c's public key: not b's mac1).
    a.send(&[ipv4(a.ip, b.ip, b"1")], t0);
    let for_b = a.dev.tick(t0)[0].0.clone();
    c.add_peer(&a, true, None, t0);
    a.add_peer(&c, true, None, t0);
    a.send(&[ipv4(a.ip, c.ip, b"2")], t0);
    let for_c = (a.dev.tick(t0).into_iter())
        .find(|(_, to)| *to == c.endpoint)
        .unwrap()
        .0;
    let mut forged = vec![0u8; INITIATION_LEN];
    forged[0] = 1;
    let mut response = vec![0u8; RESPONSE_LEN];
    response[0] = 2;
    let mut cookie = vec![0u8; 64];
    cookie[0] = 3;
    let short = for_b[..INITIATION_LEN - 1].to_vec();
    let batch = [
        forged,
        for_c,
        for_b.clone(),
        response,
        short,
        cookie.clone(),
    ];
    let srcs: Vec<SocketAddr> = (1..=6)
        .map(|i| addr(&format!("198.51.100.{i}:1")))
        .collect();
    let mut bufs = batch.to_vec();
    let mut sizes: Vec<usize> = bufs.iter().map(Vec::len).collect();
    let mut sources: Vec<Option<SocketAddr>> = srcs.iter().copied().map(Some).collect();
    let d = b
        .dev
        .decrypt(&mut bufs, 0, &mut sizes, &mut sources, t0)
        .unwrap();
    // Kept, in arrival order with their sources: b's initiation and the cookie reply
    // (which has no mac1; handle_control checks its seal).
    assert_eq!((d.packets, d.control), (0, 2));
    assert_eq!(
        (&bufs[0][..sizes[0]], sources[0]),
        (&for_b[..], Some(srcs[2]))
    );
    assert_eq!(
        (&bufs[1][..sizes[1]], sources[1]),
        (&cookie[..], Some(srcs[5]))
    );
    assert_eq!(&sizes[2..], &[0; 4]);
    let s = b.dev.stats();
    assert_eq!((s.hs_bad_mac1, s.rx_junk), (3, 1));
}
