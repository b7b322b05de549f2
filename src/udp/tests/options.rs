//! The per-datagram options against the kernel, in a private network namespace with
//! several addresses on `lo` (127.0.0.0/8, and `fd00::5`, `fd00::6` added): packet
//! information (a server answers each client from the address it used), ECN codepoints
//! (each of the four, per batch and per datagram, IPv4, IPv6 and v4-mapped), don't
//! fragment (the error names the MTU), and the fallbacks, forced by the kernel where it
//! lets a test (a source address not on the host) and else by the fault hook.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;

use super::*;
use crate::udp::{FaultOn, Options, RecvMeta, Source, TxMeta, TxMetas};

/// Adds `fd00::5` and `fd00::6` to `lo` (ifindex 1 in a new namespace), and waits until
/// each delivers a datagram to itself (the kernel finishes setting an address up, its
/// local route included, in a work queue, after the netlink request returns).
fn add_v6_addresses() {
    let mut nl = crate::device::netlink::Netlink::open().expect("netlink");
    for a in ["fd00::5", "fd00::6"] {
        let prefix = crate::device::parse_ifaddr(&format!("{a}/128")).expect("address");
        nl.add_address(1, &prefix, true)
            .expect("adding an address to lo");
        let s = (0..200)
            .find_map(|_| {
                let s = UdpSocket::bind(format!("[{a}]:0")).ok();
                if s.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                s
            })
            .expect("binding to the new address");
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let me = s.local_addr().unwrap();
        let up = (0..200).any(|_| {
            let _ = s.send_to(b"?", me);
            s.recv(&mut [0u8; 4]).is_ok()
        });
        assert!(up, "{a} never delivered a datagram");
    }
}

fn opts(pktinfo: bool, ecn: bool, dont_fragment: bool) -> Options {
    Options {
        pktinfo,
        ecn,
        dont_fragment,
        ..Options::default()
    }
}

fn with(sock: &UdpSocket, o: Options) -> UdpBatch {
    UdpBatch::with_options(sock.as_fd(), &o).expect("UdpBatch")
}

/// Receives exactly `n` datagrams into `meta` (several calls if need be); returns their
/// sizes and the batch's metadata for each, in order.
fn recv_n(rx: &mut UdpBatch, sock: &UdpSocket, n: usize) -> Vec<(usize, crate::udp::Meta)> {
    let mut out = Vec::new();
    let mut bufs = vec![Vec::new(); 64];
    let mut sizes = vec![0; 64];
    let mut meta = RecvMeta::new(64);
    while out.len() < n {
        let k = rx
            .recv(sock.as_fd(), &mut bufs, &mut sizes, 0, &mut meta, soon())
            .unwrap_or_else(|e| {
                let at = sock.local_addr().ok();
                panic!(
                    "recv_meta on {at:?}: {e} after {} of {n} datagrams",
                    out.len()
                )
            });
        for (i, &size) in sizes[..k].iter().enumerate() {
            out.push((size, meta.get(i).expect("entry")));
        }
    }
    assert_eq!(out.len(), n);
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (server bind, client bind, the server's addresses the clients send to, what the
/// server sees as its address for each)
type StickyCase = (
    &'static str,
    &'static str,
    [&'static str; 2],
    [&'static str; 2],
);

const STICKY: [StickyCase; 3] = [
    (
        "0.0.0.0:0",
        "127.0.0.1:0",
        ["127.0.0.5", "127.0.0.6"],
        ["127.0.0.5", "127.0.0.6"],
    ),
    (
        "[::]:0",
        "[fd00::5]:0",
        ["fd00::5", "fd00::6"],
        ["fd00::5", "fd00::6"],
    ),
    // A dual-stack socket reached over IPv4: v4-mapped.
    (
        "[::]:0",
        "127.0.0.1:0",
        ["127.0.0.5", "127.0.0.6"],
        ["::ffff:127.0.0.5", "::ffff:127.0.0.6"],
    ),
];

netns_test! {
    /// A server socket bound to the wildcard answers each client from the address the
    /// client sent to (its destination, read with packet information, given back as the
    /// source); without the source it answers from the route's choice, 127.0.0.1 /
    /// fd00::5 (what makes this test able to fail).
    fn sticky_sources_answer_from_the_address_used_as_root(mtu: None) {
        add_v6_addresses();
        for (k, (bind, client, to, seen)) in STICKY.into_iter().enumerate() {
            let server = UdpSocket::bind(bind).unwrap();
            let port = server.local_addr().unwrap().port();
            let mut rx = with(&server, opts(true, false, false));
            let mut tx = with(&server, Options::default());
            let clients: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind(client).unwrap()).collect();
            // Each client sends a run of 4 (a coalesced read: the four share its metadata).
            // (No UDP_GRO on the clients: they read the replies one by one.)
            let mut cb = UdpBatch::with_offloads(clients[0].as_fd(), true, false).unwrap();
            for (c, host) in clients.iter().zip(to) {
                let dest = SocketAddr::new(ip(host), port);
                let data = vec![vec![k as u8; 300]; 4];
                cb.send(c.as_fd(), &data, Dest::One(dest), soon()).unwrap();
            }
            let got = recv_n(&mut rx, &server, 8);
            let mut sources = Vec::new();
            let mut dests = Vec::new();
            let mut replies = Vec::new();
            for (size, m) in &got {
                assert_eq!(*size, 300);
                assert!(m.ifindex.is_some_and(|i| i > 0), "case {k}: {m:?}");
                assert_eq!(m.ecn, None, "not asked for");
                let src = m.reply_source().expect("a destination");
                dests.push(src.ip);
                sources.push(m.source.expect("a sender"));
                replies.push(TxMeta { ecn: None, src: Some(src) });
            }
            let want: Vec<IpAddr> = seen.iter().flat_map(|s| [ip(s); 4]).collect();
            let mut sorted = dests.clone();
            sorted.sort();
            assert_eq!(sorted, want, "case {k}: the destinations");
            let data = vec![vec![0xa5u8; 100]; 8];
            let sent = tx.send_meta(
                server.as_fd(),
                &data,
                Dest::Each(&sources),
                TxMetas::Each(&replies),
                soon(),
            );
            assert_eq!(sent, Ok(8), "case {k}");
            assert!(tx.stats().send_messages <= 8);
            for (c, host) in clients.iter().zip(to) {
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                for _ in 0..4 {
                    let mut buf = [0u8; 200];
                    let (n, from) = c.recv_from(&mut buf).expect("a reply");
                    assert_eq!(n, 100);
                    assert_eq!(from, SocketAddr::new(ip(host), port), "case {k}: answered from");
                }
            }
            // Without the source the answer comes from the route's choice.
            let c = &clients[1];
            let plain = tx.send(server.as_fd(), &[[1u8; 10]], Dest::One(c.local_addr().unwrap()), soon());
            assert_eq!(plain, Ok(1));
            let (_, from) = c.recv_from(&mut [0u8; 64]).expect("a reply");
            assert_ne!(from.ip(), ip(to[1]), "case {k}");
            assert_eq!(tx.stats().src_fallbacks, 0);
        }
    }
}

/// (sender bind, receiver bind, the receiver's address to send to)
const FAMILIES: [(&str, &str, &str); 3] = [
    ("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1"),
    ("[fd00::5]:0", "[fd00::6]:0", "fd00::6"),
    // From a dual-stack socket to an IPv4 one through its v4-mapped address, and the
    // other way (below).
    ("[::]:0", "127.0.0.1:0", "::ffff:127.0.0.1"),
];

netns_test! {
    /// Each ECN codepoint sent is the one received, per batch (a run: one segmented send,
    /// one coalesced read) and per datagram (alternating: one message each), over IPv4,
    /// IPv6 and v4-mapped IPv6, in both directions of a dual-stack pair.
    fn ecn_codepoints_arrive_as_sent_as_root(mtu: None) {
        add_v6_addresses();
        let mut cases: Vec<(&str, &str, String)> =
            FAMILIES.iter().map(|(a, b, c)| (*a, *b, c.to_string())).collect();
        cases.push(("127.0.0.1:0", "[::]:0", "127.0.0.1".into()));
        for (from, to, host) in cases {
            let a = UdpSocket::bind(from).unwrap();
            let b = UdpSocket::bind(to).unwrap();
            let dest = SocketAddr::new(ip(&host), b.local_addr().unwrap().port());
            let mut tx = with(&a, Options::default());
            let mut rx = with(&b, opts(false, true, false));
            for ecn in 0..4u8 {
                let data = vec![vec![ecn; 500]; 6];
                let meta = TxMeta { ecn: Some(ecn), src: None };
                let r = tx.send_meta(a.as_fd(), &data, Dest::One(dest), TxMetas::All(meta), soon());
                assert_eq!(r, Ok(6));
                for (size, m) in recv_n(&mut rx, &b, 6) {
                    assert_eq!((size, m.ecn), (500, Some(ecn)), "{from} -> {host}");
                    assert_eq!(m.destination, None, "not asked for");
                }
            }
            let each: Vec<TxMeta> = (0..8)
                .map(|i| TxMeta { ecn: Some((i % 4) as u8), src: None })
                .collect();
            let data = vec![vec![7u8; 500]; 8];
            let before = tx.stats().send_messages;
            let r = tx.send_meta(a.as_fd(), &data, Dest::One(dest), TxMetas::Each(&each), soon());
            assert_eq!(r, Ok(8));
            assert_eq!(tx.stats().send_messages - before, 8, "no two neighbours alike");
            let got: Vec<Option<u8>> = recv_n(&mut rx, &b, 8).iter().map(|(_, m)| m.ecn).collect();
            let want: Vec<Option<u8>> = (0..8).map(|i| Some((i % 4) as u8)).collect();
            assert_eq!(got, want, "{from} -> {host}");
            assert!(rx.stats().recv_datagrams > rx.stats().recv_messages, "coalesced reads");
            assert_eq!((tx.stats().ecn_fallbacks, tx.send_ecn()), (0, true));
        }
    }
}

netns_test! {
    /// With don't-fragment, a datagram over the path MTU (lo at 1400) is refused with an
    /// error that names the MTU, connected or not, IPv4, IPv6 and v4-mapped; a run of
    /// such segments falls back to single datagrams first, which are refused the same
    /// way. Without it, IPv4 fragments and the datagram goes out.
    fn dont_fragment_names_the_mtu_as_root(mtu: Some(1400)) {
        add_v6_addresses();
        for (from, to, host) in FAMILIES {
            let a = UdpSocket::bind(from).unwrap();
            let b = UdpSocket::bind(to).unwrap();
            let dest = SocketAddr::new(ip(host), b.local_addr().unwrap().port());
            let payload = if dest.is_ipv4() || host.starts_with("::ffff:") { 1372 } else { 1352 };
            let mut tx = with(&a, opts(false, false, true));
            assert!(tx.options().dont_fragment);
            let fits = vec![vec![1u8; payload]; 3];
            assert_eq!(tx.send(a.as_fd(), &fits, Dest::One(dest), soon()), Ok(3), "{host}");
            for connected in [false, true] {
                if connected {
                    a.connect(dest).unwrap();
                }
                let to = if connected { Dest::Connected } else { Dest::One(dest) };
                let data = [vec![1u8; 100], vec![2u8; payload + 1]];
                match tx.send(a.as_fd(), &data, to, soon()) {
                    Err(SendError {
                        sent: 1,
                        error: Error::MessageTooLong { size, mtu, msg },
                    }) => {
                        assert_eq!((size, mtu), (payload + 1, Some(1400)), "{host}: {msg}");
                        assert!(msg.contains("1400") && msg.contains(&payload.to_string()), "{msg}");
                    }
                    r => panic!("{host} connected={connected}: {r:?}"),
                }
                let run = vec![vec![3u8; payload + 1]; 4];
                let fallbacks = tx.stats().fallbacks;
                match tx.send(a.as_fd(), &run, to, soon()) {
                    Err(SendError { sent: 0, error: e @ Error::MessageTooLong { .. } }) => {
                        assert_eq!(e.errno(), Some(libc::EMSGSIZE));
                    }
                    r => panic!("{host} connected={connected}: {r:?}"),
                }
                assert_eq!(tx.stats().fallbacks, fallbacks + 1, "the run fell back first");
            }
        }
        // Without don't-fragment IPv4 fragments.
        let (a, b) = pair("127.0.0.1");
        let mut tx = UdpBatch::new(a.as_fd()).unwrap();
        assert_eq!(tx.send(a.as_fd(), &[vec![5u8; 3000]], Dest::Connected, soon()), Ok(1));
        let mut buf = [0u8; 4000];
        assert_eq!(b.recv(&mut buf).unwrap(), 3000);
    }
}

netns_test! {
    /// The fallbacks: a source address the kernel refuses (not on the host: EINVAL for
    /// IPv6, ENETUNREACH for IPv4) and, through the fault hook, an ECN cmsg and a source
    /// refused (EINVAL), and segmentation refused (EIO). Each time the datagrams are sent
    /// again without what was refused and arrive, once each; ECN and segmentation turn
    /// off, sources do not. No UDP_SEGMENT goes with a single datagram.
    fn refused_options_fall_back_as_root(mtu: None) {
        add_v6_addresses();
        // IPv4 refuses the run with ENETUNREACH: it goes again whole, without the source.
        // IPv6 refuses it with EINVAL, which segmentation answers first (a segment above
        // the MTU is EINVAL too): one by one, then each without the source.
        for (from, to, host, stale, fallbacks) in [
            ("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1", "10.9.9.9", (0, 1)),
            ("[fd00::5]:0", "[fd00::6]:0", "fd00::6", "fd00::99", (1, 3)),
        ] {
            let a = UdpSocket::bind(from).unwrap();
            let b = UdpSocket::bind(to).unwrap();
            let dest = SocketAddr::new(ip(host), b.local_addr().unwrap().port());
            let mut tx = with(&a, Options::default());
            let mut rx = with(&b, opts(true, true, false));
            let stale = Source { ip: ip(stale), ifindex: 0 };
            let meta = TxMeta { ecn: None, src: Some(stale) };
            let data = vec![vec![9u8; 200]; 3];
            let r = tx.send_meta(a.as_fd(), &data, Dest::One(dest), TxMetas::All(meta), soon());
            assert_eq!(r, Ok(3), "{host}");
            let st = tx.stats();
            assert_eq!((st.fallbacks, st.src_fallbacks), fallbacks, "{host}");
            for (_, m) in recv_n(&mut rx, &b, 3) {
                assert_eq!(m.source.map(|s| s.ip()), Some(a.local_addr().unwrap().ip()));
            }
        }

        let (a, b) = pair("127.0.0.1");
        let here = a.local_addr().unwrap().ip();
        let mut tx = with(&a, Options::default());
        let mut rx = with(&b, opts(true, true, false));
        let five = Source { ip: ip("127.0.0.5"), ifindex: 0 };
        // A source refused once (a fault on the run, then on its first datagram).
        tx.inject_send_faults(libc::EINVAL, 2, FaultOn::Source).unwrap();
        let meta = TxMeta { ecn: None, src: Some(five) };
        let data = vec![vec![1u8; 200]; 5];
        assert_eq!(tx.send_meta(a.as_fd(), &data, Dest::Connected, TxMetas::All(meta), soon()), Ok(5));
        let st = tx.stats();
        assert_eq!((st.fallbacks, st.src_fallbacks), (1, 1));
        let froms: Vec<IpAddr> =
            recv_n(&mut rx, &b, 5).iter().map(|(_, m)| m.source.unwrap().ip()).collect();
        assert_eq!(froms, [here, ip("127.0.0.5"), ip("127.0.0.5"), ip("127.0.0.5"), ip("127.0.0.5")]);

        // ECN refused: sent again without it, and off for the batch.
        tx.inject_send_faults(libc::EINVAL, 2, FaultOn::Ecn).unwrap();
        let meta = TxMeta { ecn: Some(2), src: None };
        let data = vec![vec![2u8; 200]; 5];
        assert_eq!(tx.send_meta(a.as_fd(), &data, Dest::Connected, TxMetas::All(meta), soon()), Ok(5));
        let st = tx.stats();
        assert_eq!((st.fallbacks, st.ecn_fallbacks, tx.send_ecn()), (2, 1, false));
        let ecns: Vec<Option<u8>> = recv_n(&mut rx, &b, 5).iter().map(|(_, m)| m.ecn).collect();
        assert_eq!(ecns, [Some(0); 5]);
        // ECN stays off for this batch: a later send goes without it, first time.
        assert_eq!(tx.send_meta(a.as_fd(), &data, Dest::Connected, TxMetas::All(meta), soon()), Ok(5));
        assert_eq!(tx.stats().send_messages - st.send_messages, 1, "one run, no refusal");
        assert!(recv_n(&mut rx, &b, 5).iter().all(|(_, m)| m.ecn == Some(0)));

        // Segmentation refused with EIO: off for good; nothing lost.
        tx.inject_send_faults(libc::EIO, 1, FaultOn::Segmented).unwrap();
        let data = vec![vec![3u8; 200]; 4];
        assert_eq!(tx.send(a.as_fd(), &data, Dest::Connected, soon()), Ok(4));
        assert!(!tx.gso());
        assert_eq!(tx.stats().fallbacks, 3);
        assert_eq!(recv_n(&mut rx, &b, 4).len(), 4);

        // A single datagram carries no UDP_SEGMENT: a fault on segmented messages never
        // hits it.
        let mut tx = with(&a, Options::default());
        tx.inject_send_faults(libc::EIO, 1, FaultOn::Segmented).unwrap();
        assert_eq!(tx.send(a.as_fd(), &[vec![4u8; 200]], Dest::Connected, soon()), Ok(1));
        assert_eq!(tx.faults_left(), 1, "the fault is still armed");
        assert!(tx.gso());
        assert_eq!(recv_n(&mut rx, &b, 1).len(), 1);
        // An unknown error is raised, with what went out before it.
        tx.inject_send_faults(libc::EPERM, 1, FaultOn::Any).unwrap();
        let data = [vec![1u8; 10], vec![2u8; 20]];
        match tx.send(a.as_fd(), &data, Dest::Connected, soon()) {
            Err(SendError { sent: 0, error }) => assert_eq!(error.errno(), Some(libc::EPERM)),
            r => panic!("{r:?}"),
        }
        assert!(tx.inject_send_faults(0, 1, FaultOn::Any).is_err());
    }
}

netns_test! {
    /// Refused before anything is sent: a source of the other family than its
    /// destination, an ECN codepoint above 3, fewer entries than datagrams.
    fn bad_metadata_is_refused_before_sending_as_root(mtu: None) {
        let a = UdpSocket::bind("[::]:0").unwrap();
        let mut tx = with(&a, Options::default());
        let v4: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let src6 = Source { ip: ip("::1"), ifindex: 0 };
        let src4 = Source { ip: ip("127.0.0.1"), ifindex: 0 };
        let d = [[0u8; 10]];
        let send = |tx: &mut UdpBatch, to, meta| tx.send_meta(a.as_fd(), &d, to, meta, soon());
        for (to, meta) in [
            (Dest::One(v4), TxMeta { ecn: None, src: Some(src6) }),
            (Dest::One(v6), TxMeta { ecn: None, src: Some(src4) }),
            (Dest::One(v6), TxMeta { ecn: Some(4), src: None }),
        ] {
            refused_before_sending(send(&mut tx, to, TxMetas::All(meta)));
        }
        refused_before_sending(send(&mut tx, Dest::One(v6), TxMetas::Each(&[])));
        let ok = TxMeta { ecn: None, src: Some(Source { ip: ip("::ffff:127.0.0.1"), ifindex: 0 }) };
        let _ = a.set_nonblocking(true);
        assert_eq!(send(&mut tx, Dest::One(v4), TxMetas::All(ok)), Ok(1), "mapped for IPv4");
        assert_eq!(tx.stats().send_datagrams, 1);
    }
}
