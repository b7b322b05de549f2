//! Socket tests against the kernel, each in a private network namespace on a thread of its
//! own (`unshare(CLONE_NEWNET)`, `lo` brought up with `SIOCSIFFLAGS`), so the namespace
//! goes away with the thread. They need root: built without it they are listed as ignored
//! (`cfg(tunoffload_root_tests)`, see build.rs), and run without it they fail.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use super::*;
use crate::device::sys::{IfReq, IFF_UP, SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFMTU};
use crate::hooks::Direct;

fn ioctl(fd: i32, req: std::ffi::c_ulong, r: &mut IfReq) {
    // SAFETY: these interface requests take a pointer to an `ifreq`, valid for writes.
    let rc = unsafe { libc::ioctl(fd, req as _, r as *mut IfReq) };
    assert_eq!(rc, 0, "ioctl {req:#x}: {}", std::io::Error::last_os_error());
}

/// Brings `lo` up (and sets its MTU) in the calling thread's namespace.
pub(crate) fn lo_setup(mtu: Option<i32>) {
    let s = UdpSocket::bind("0.0.0.0:0").expect("a socket for ioctls");
    let mut r = IfReq::new(b"lo");
    ioctl(s.as_raw_fd(), SIOCGIFFLAGS, &mut r);
    r.set_flags(r.flags() | IFF_UP);
    ioctl(s.as_raw_fd(), SIOCSIFFLAGS, &mut r);
    if let Some(mtu) = mtu {
        let mut r = IfReq::new(b"lo");
        r.set_int(mtu);
        ioctl(s.as_raw_fd(), SIOCSIFMTU, &mut r);
    }
}

/// Runs `f` in a new network namespace with `lo` up, or prints why it cannot.
fn in_netns(name: &'static str, mtu: Option<i32>, f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: unshare on this thread only changes this thread's namespaces.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "{name}: unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        lo_setup(mtu);
        f();
    })
    .join()
    .expect("test thread");
}

/// A socket test that needs root: `fn name(mtu: None | Some(mtu)) { body }` runs `body` in
/// [`in_netns`] (with `lo` at that MTU), and is listed as ignored in builds without root.
macro_rules! netns_test {
    ($(#[doc = $doc:literal])* fn $name:ident(mtu: $mtu:expr) $body:block) => {
        crate::root_test! {
            $(#[doc = $doc])*
            fn $name() {
                in_netns(stringify!($name), $mtu, || $body);
            }
        }
    };
}

fn pair(host: &str) -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind(format!("{host}:0")).unwrap();
    let b = UdpSocket::bind(format!("{host}:0")).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    (a, b)
}

/// Datagram `i` of `len` bytes: its index, then a pattern.
fn datagram(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| {
            if j < 2 {
                (i >> (8 * j)) as u8
            } else {
                (i * 7 + j) as u8
            }
        })
        .collect()
}

/// A sending and a receiving batch on `a` and `b`.
fn batches(a: &UdpSocket, b: &UdpSocket) -> (UdpBatch, UdpBatch) {
    (
        UdpBatch::new(a.as_fd()).unwrap(),
        UdpBatch::new(b.as_fd()).unwrap(),
    )
}

/// `datagram(i, lens[i])` for every i.
fn datagrams(lens: &[usize]) -> Vec<Vec<u8>> {
    lens.iter()
        .enumerate()
        .map(|(i, &l)| datagram(i, l))
        .collect()
}

/// Asserts that a send was refused as a bad argument before anything went out.
fn refused_before_sending(r: std::result::Result<usize, SendError>) {
    assert!(
        matches!(
            r,
            Err(SendError {
                sent: 0,
                error: Error::Invalid(_)
            })
        ),
        "{r:?}"
    );
}

fn soon() -> Wait {
    Wait::Until(Instant::now() + Duration::from_secs(5))
}

/// Receives `lens.len()` datagrams with `batch` (in batches of `per_call`) and checks
/// them against `datagram(i, lens[i])`.
fn expect_all(batch: &mut UdpBatch, sock: &UdpSocket, lens: &[usize], per_call: usize) {
    let mut got = 0;
    let mut bufs = vec![Vec::new(); per_call];
    let mut sizes = vec![0; per_call];
    for _ in 0..lens.len() {
        if got == lens.len() {
            break;
        }
        let n = batch
            .recv(sock.as_fd(), &mut bufs, &mut sizes, 3, None, soon())
            .unwrap();
        assert!((1..=per_call).contains(&n));
        for i in 0..n {
            assert_eq!(sizes[i], lens[got], "datagram {got}");
            assert_eq!(
                &bufs[i][3..3 + sizes[i]],
                &datagram(got, lens[got])[..],
                "datagram {got}"
            );
            got += 1;
        }
    }
    assert_eq!(got, lens.len());
}

netns_test! {
    fn gso_send_gro_receive_as_root(mtu: None) {
        let (a, b) = pair("127.0.0.1");
        let (mut tx, mut rx) = batches(&a, &b);
        assert!(
            tx.gso() && rx.gro(),
            "a 6.x kernel has UDP_SEGMENT and UDP_GRO"
        );
        let lens = [1400; 45];
        let data = datagrams(&lens);
        assert_eq!(tx.send(a.as_fd(), &data, Dest::Connected, soon()), Ok(45));
        // One segmented send arrives as one coalesced read of 45 segments.
        assert_eq!(rx.fill(b.as_fd(), 64, soon()), Ok(45));
        assert_eq!(rx.pending_reads(), 1);
        expect_all(&mut rx, &b, &lens, 64);
        let (t, r) = (tx.stats(), rx.stats());
        assert_eq!(
            (t.send_calls, t.send_messages, t.send_datagrams),
            (1, 1, 45)
        );
        assert_eq!(
            (r.recv_calls, r.recv_messages, r.recv_datagrams),
            (1, 1, 45)
        );
    }
}

netns_test! {
    fn coalesced_reads_are_not_cut_as_root(mtu: None) {
        let (a, b) = pair("127.0.0.1");
        let (mut tx, mut rx) = batches(&a, &b);
        // Three sends, three coalesced reads: 10 x 100, 10 x 200, 3 x 300 bytes.
        let lens: Vec<usize> = [(10, 100), (10, 200), (3, 300)]
            .iter()
            .flat_map(|&(n, l)| std::iter::repeat_n(l, n))
            .collect();
        let data = datagrams(&lens);
        for run in [&data[..10], &data[10..20], &data[20..]] {
            assert_eq!(tx.send(a.as_fd(), run, Dest::Connected, soon()), Ok(run.len()));
        }
        let mut bufs = vec![Vec::new(); 15];
        let mut sizes = vec![0; 15];
        let mut recv = |rx: &mut UdpBatch| {
            rx.recv(b.as_fd(), &mut bufs, &mut sizes, 0, None, soon())
                .unwrap()
        };
        // The second read does not fit whole after the first: it waits, whole.
        assert_eq!(recv(&mut rx), 10);
        assert_eq!(rx.pending(), 13);
        assert_eq!(recv(&mut rx), 13);
        assert_eq!(rx.stats().recv_messages, 3);
        // One read larger than all the buffers is delivered in parts.
        let big: Vec<Vec<u8>> = (0..20).map(|i| datagram(i, 100)).collect();
        assert_eq!(tx.send(a.as_fd(), &big, Dest::Connected, soon()), Ok(20));
        assert_eq!(recv(&mut rx), 15);
        assert_eq!(recv(&mut rx), 5);
        assert_eq!(&bufs[4][..sizes[4]], &big[19][..]);
    }
}

netns_test! {
    /// `make_room` then `copy_out` (the binding's two steps around a GIL release) is
    /// `deliver`: room is made without consuming, the copy consumes exactly what it said.
    fn make_room_then_copy_out_as_root(mtu: None) {
        let (a, b) = pair("127.0.0.1");
        let (mut tx, mut rx) = batches(&a, &b);
        let lens = [1200; 30];
        let data = datagrams(&lens);
        assert_eq!(tx.send(a.as_fd(), &data, Dest::Connected, soon()), Ok(30));
        assert_eq!(rx.fill(b.as_fd(), 64, soon()), Ok(30));
        let mut bufs = vec![Vec::new(); 20];
        let mut sizes = vec![0; 20];
        // One coalesced read of 30 into 20 buffers: it fills all of them, in parts.
        assert_eq!(rx.make_room(&mut bufs, 4), Ok((20, 20 * 1200)));
        assert_eq!(rx.pending(), 30, "make_room consumes nothing");
        assert!(bufs.iter().all(|b| b.len() == 4 + 1200));
        assert_eq!(rx.copy_out(&mut bufs[..20], &mut sizes, 4, None), Ok(20));
        assert_eq!(rx.pending(), 10);
        for (i, b) in bufs.iter().enumerate() {
            assert_eq!((&b[4..], sizes[i]), (&data[i][..], 1200), "datagram {i}");
        }
        // More buffers than pending: the copy stops at what is there.
        let mut more = vec![vec![0u8; 4 + 1200]; 20];
        let mut sizes = vec![0; 20];
        assert_eq!(rx.make_room(&mut more, 4), Ok((10, 10 * 1200)));
        assert_eq!(rx.copy_out(&mut more, &mut sizes, 4, None), Ok(10));
        assert_eq!(&more[9][4..], &data[29][..]);
        assert_eq!(rx.pending(), 0);
    }
}

netns_test! {
    fn mixed_sizes_in_order_as_root(mtu: None) {
        let (a, b) = pair("127.0.0.1");
        let lens = [
            1400, 1400, 1000, 1400, 500, 500, 500, 2000, 1, 1, 65507, 0, 7, 8972, 8972, 8972,
        ];
        let data = datagrams(&lens);
        let mut tx = UdpBatch::new(a.as_fd()).unwrap();
        assert_eq!(
            tx.send(a.as_fd(), &data, Dest::Connected, soon()),
            Ok(lens.len())
        );
        // A plain reader (no UDP_GRO on `b`): the kernel splits the runs itself.
        let mut buf = vec![0; 70000];
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for (i, d) in data.iter().enumerate() {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &d[..], "datagram {i}");
        }
        // And the same through a coalescing reader, a few at a time.
        let mut rx = UdpBatch::new(b.as_fd()).unwrap();
        assert_eq!(
            tx.send(a.as_fd(), &data, Dest::Connected, soon()),
            Ok(lens.len())
        );
        expect_all(&mut rx, &b, &lens, 5);
    }
}

netns_test! {
    fn pending_across_calls_as_root(mtu: None) {
        let (a, b) = pair("127.0.0.1");
        let (mut tx, mut rx) = batches(&a, &b);
        let data = datagrams(&[100; 10]);
        tx.send(a.as_fd(), &data, Dest::Connected, soon()).unwrap();
        let mut bufs = vec![Vec::new(); 3];
        let mut sizes = vec![0; 3];
        let mut seen = 0;
        for want in [3, 3, 3, 1] {
            let n = rx
                .recv(b.as_fd(), &mut bufs, &mut sizes, 0, None, soon())
                .unwrap();
            assert_eq!(n, want);
            for i in 0..n {
                assert_eq!(&bufs[i][..sizes[i]], &data[seen][..]);
                seen += 1;
            }
        }
        assert_eq!(rx.pending(), 0);
        let r = rx.recv(b.as_fd(), &mut bufs, &mut sizes, 0, None, Wait::NonBlocking);
        assert_eq!(r, Err(Error::WouldBlock));
    }
}

netns_test! {
    fn too_small_fixed_buffer_keeps_the_datagram_as_root(mtu: None) {
        let (a, b) = pair("127.0.0.1");
        let mut rx = UdpBatch::new(b.as_fd()).unwrap();
        a.send(&datagram(0, 1400)).unwrap();
        let mut small = [0u8; 100];
        let mut sizes = [0; 1];
        let r = rx.recv(
            b.as_fd(),
            &mut [&mut small[..]],
            &mut sizes,
            10,
            None,
            soon(),
        );
        match r {
            Err(Error::BufferTooSmall {
                index: 0,
                need: 1410,
                have: 100,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.pending(), 1);
        let mut big = [0u8; 2000];
        let n = rx.recv(b.as_fd(), &mut [&mut big[..]], &mut sizes, 10, None, soon());
        assert_eq!(n, Ok(1));
        assert_eq!(sizes[0], 1400);
        assert_eq!(&big[10..1410], &datagram(0, 1400)[..]);
        // A growable buffer grows to fit.
        a.send(&datagram(1, 3000)).unwrap();
        let mut bufs = vec![vec![0u8; 5]];
        assert_eq!(
            rx.recv(b.as_fd(), &mut bufs, &mut sizes, 10, None, soon()),
            Ok(1)
        );
        assert_eq!(bufs[0].len(), 3010);
        assert_eq!(&bufs[0][10..], &datagram(1, 3000)[..]);
    }
}

netns_test! {
    fn waits_end_as_root(mtu: None) {
        let (_a, b) = pair("127.0.0.1");
        let mut rx = UdpBatch::new(b.as_fd()).unwrap();
        let mut bufs = vec![Vec::new(); 4];
        let mut sizes = vec![0; 4];
        let r = rx.recv(b.as_fd(), &mut bufs, &mut sizes, 0, None, Wait::NonBlocking);
        assert_eq!(r, Err(Error::WouldBlock));
        let t0 = Instant::now();
        let wait = Wait::Until(t0 + Duration::from_millis(30));
        let r = rx.recv(b.as_fd(), &mut bufs, &mut sizes, 0, None, wait);
        assert_eq!(r, Err(Error::Timeout));
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }
}

netns_test! {
    fn ipv6_unconnected_with_addresses_as_root(mtu: None) {
        let a = UdpSocket::bind("[::1]:0").unwrap();
        let b = UdpSocket::bind("[::1]:0").unwrap();
        let c = UdpSocket::bind("[::1]:0").unwrap();
        let mut tx = UdpBatch::new(a.as_fd()).unwrap();
        let mut tx_c = UdpBatch::new(c.as_fd()).unwrap();
        let mut rx = UdpBatch::new(b.as_fd()).unwrap();
        let to = b.local_addr().unwrap();
        let lens = [65527, 1200, 1200, 1200, 100];
        let data = datagrams(&lens);
        assert_eq!(tx.send(a.as_fd(), &data, Dest::One(to), soon()), Ok(5));
        let more = [datagram(5, 10)];
        assert_eq!(
            tx_c.send(c.as_fd(), &more, Dest::Each(&[to]), soon()),
            Ok(1)
        );
        let mut bufs = vec![Vec::new(); 8];
        let mut sizes = vec![0; 8];
        let mut addrs = vec![None; 8];
        let mut got = Vec::new();
        for _ in 0..6 {
            if got.len() == 6 {
                break;
            }
            let n = rx
                .recv(
                    b.as_fd(),
                    &mut bufs,
                    &mut sizes,
                    0,
                    Some(&mut addrs[..]),
                    soon(),
                )
                .unwrap();
            for i in 0..n {
                got.push((bufs[i][..sizes[i]].to_vec(), addrs[i]));
            }
        }
        let want: Vec<_> = data
            .iter()
            .map(|d| (d.clone(), Some(a.local_addr().unwrap())))
            .chain([(more[0].clone(), Some(c.local_addr().unwrap()))])
            .collect();
        assert_eq!(got, want);
        // Over the limit: refused before anything is sent.
        let big = [vec![0u8; 65528]];
        let r = tx.send(a.as_fd(), &big, Dest::One(to), soon());
        refused_before_sending(r);
        let v4: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let r = tx.send(a.as_fd(), &[vec![0u8; 65508]], Dest::One(v4), soon());
        refused_before_sending(r);
    }
}

netns_test! {
    /// With `lo` at MTU 1500, segments of 2000 bytes are refused (EINVAL): each run falls
    /// back to plain datagrams, which IPv4 fragments; every datagram arrives, and GSO
    /// stays on.
    fn segment_above_mtu_falls_back_as_root(mtu: Some(1500)) {
        let (a, b) = pair("127.0.0.1");
        let (mut tx, mut rx) = batches(&a, &b);
        let lens = [2000, 2000, 2000, 1000, 1000, 1000, 500];
        let data = datagrams(&lens);
        assert_eq!(
            tx.send(a.as_fd(), &data, Dest::Connected, soon()),
            Ok(lens.len())
        );
        assert!(tx.gso());
        assert_eq!(
            tx.stats().fallbacks,
            1,
            "the 2000-byte run was refused, the others not"
        );
        expect_all(&mut rx, &b, &lens, 64);
    }
}

netns_test! {
    /// Refused sources and segments cost a re-plan of the messages that change, not of
    /// the rest of the batch each time: N datagrams plan a few N messages in all (a
    /// re-plan of the remainder per refusal was some N^2 / 2), and the counters, the
    /// datagrams and their order are as before.
    fn send_fallbacks_replan_linearly_as_root(mtu: None) {
        let (a, b) = pair("127.0.0.1");
        let src = crate::udp::Source {
            ip: "127.0.0.1".parse().unwrap(),
            ifindex: 0,
        };
        let with_src = TxMeta { ecn: None, src: Some(src) };
        // (name, length of datagram i, whether it has a source, the messages the faults
        // hit, their errno)
        type Case = (&'static str, fn(usize) -> usize, fn(usize) -> bool, FaultOn, i32);
        let cases: [Case; 3] = [
            // Each its own message (a larger datagram ends a run), each source refused.
            ("sources", |i| 100 + i, |_| true, FaultOn::Source, libc::EADDRNOTAVAIL),
            // Runs of 4, each refused (a segment above the MTU).
            ("segments", |i| 100 + i / 4, |_| false, FaultOn::Segmented, libc::EINVAL),
            // Sources on every other datagram: without its source, each joins the next.
            (
                "sources that join the next",
                |_| 100,
                |i| i % 2 == 0,
                FaultOn::Source,
                libc::EINVAL,
            ),
        ];
        for (name, len, has_src, on, errno) in cases {
            for n in [1, 2, 16, 128] {
                let (mut tx, mut rx) = batches(&a, &b);
                let lens: Vec<usize> = (0..n).map(len).collect();
                let data = datagrams(&lens);
                let metas: Vec<TxMeta> = (0..n)
                    .map(|i| if has_src(i) { with_src } else { TxMeta::default() })
                    .collect();
                let refused = match on {
                    FaultOn::Segmented => n / 4,
                    _ => metas.iter().filter(|m| m.src.is_some()).count(),
                };
                if refused > 0 {
                    tx.inject_send_faults(errno, refused as u32, on).unwrap();
                }
                let meta = TxMetas::Each(&metas);
                let sent = tx.send_meta(a.as_fd(), &data, Dest::Connected, meta, soon());
                assert_eq!(sent, Ok(n), "{name}, {n}");
                let st = tx.stats();
                let messages = match name {
                    "sources that join the next" => n.div_ceil(2),
                    // The refused runs one by one; a run shorter than 4 whole.
                    "segments" => 4 * refused + usize::from(n % 4 > 0),
                    _ => n,
                };
                let (fallbacks, src_fallbacks) = match on {
                    FaultOn::Segmented => (refused, 0),
                    _ => (0, refused),
                };
                assert_eq!(
                    (st.send_messages, st.send_datagrams, st.fallbacks, st.src_fallbacks),
                    (messages as u64, n as u64, fallbacks as u64, src_fallbacks as u64),
                    "{name}, {n}"
                );
                let planned = tx.planned();
                assert!(planned <= 4 * n as u64, "{name}, {n}: {planned} messages planned");
                expect_all(&mut rx, &b, &lens, 64);
            }
        }
    }
}

#[test]
fn address_text_forms() {
    let p = |h: &str, f| parse_host(h, f);
    assert_eq!(
        p("127.0.0.1", libc::AF_INET).unwrap().0.to_string(),
        "127.0.0.1"
    );
    assert_eq!(p("", libc::AF_INET6).unwrap().0.to_string(), "::");
    assert_eq!(
        p("<broadcast>", libc::AF_INET).unwrap().0.to_string(),
        "255.255.255.255"
    );
    assert_eq!(p("fe80::1%7", libc::AF_INET6).unwrap().1, Some(7));
    assert!(matches!(
        p("example.com", libc::AF_INET),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        p("fe80::1%no-such-if0", libc::AF_INET6),
        Err(Error::Invalid(_))
    ));
    let a: SocketAddr = "[::ffff:1.2.3.4]:5".parse().unwrap();
    assert_eq!(host_string(&a), "::ffff:1.2.3.4");
    let a: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
    assert_eq!(host_string(&a), "2001:db8::1");
    let a = SocketAddr::V6(std::net::SocketAddrV6::new(
        "2001:db8::1".parse().unwrap(),
        5,
        0,
        3,
    ));
    assert_eq!(host_string(&a), "2001:db8::1%3");
    let a: SocketAddr = "10.1.2.3:5".parse().unwrap();
    assert_eq!(host_string(&a), "10.1.2.3");
    assert_eq!(host_port(&a), ("10.1.2.3".into(), 5));
    let a: SocketAddr = "[fd00::7]:51820".parse().unwrap();
    assert_eq!(host_port(&a), ("fd00::7".into(), 51820));
    // An address without a socket family picks one by its host, as `sendto` would.
    assert_eq!(host_family(Some("fd00::1")), libc::AF_INET6);
    assert_eq!(host_family(Some("::ffff:1.2.3.4")), libc::AF_INET6);
    assert_eq!(host_family(Some("10.0.0.1")), libc::AF_INET);
    assert_eq!(
        host_family(None),
        libc::AF_INET,
        "no host: the tuple's shape is refused"
    );
}

mod options;
netns_test! {
    /// `Shared`: its counters and pending count as of the last call that ended.
    fn shared_batches_report_as_of_the_last_call(mtu: None) {
        let (a, b) = pair("127.0.0.1");
        let rx = Shared::new(b.as_fd(), &Options::default()).unwrap();
        let tx = Shared::new(a.as_fd(), &Options::default()).unwrap();
        assert_eq!(tx.family(), libc::AF_INET);
        let data = datagrams(&[100, 100, 100]);
        let send = |t: &mut UdpBatch| t.send(a.as_fd(), &data, Dest::Connected, Wait::Block);
        assert_eq!(tx.sending::<_, (), _>(&mut Direct, send), Ok(3));
        let (mut bufs, mut sizes) = (vec![Vec::new(); 2], [0; 2]);
        let got = rx.receiving::<_, (), _>(&mut Direct, |r, hooks| {
            let bufs = &mut bufs[..];
            r.recv_with::<crate::engine::Error, _, _>(b.as_fd(), bufs, &mut sizes, 0, None, Wait::Block, hooks)
        });
        assert_eq!(got, Ok(Ok(2)));
        assert_eq!(rx.pending(), 1, "the third datagram waits for the next call");
        assert_eq!(tx.stats()[5], ("send_datagrams", 3));
        assert_eq!(rx.stats()[5], ("send_datagrams", 0));
        assert_eq!(bufs[1], data[1]);
    }
}

netns_test! {
    /// `Shared` with options: they are asked for and turned on for the socket; a refused
    /// ECN codepoint (a fault by the name a caller gives) turns `send_ecn` off as of
    /// that send, nothing lost.
    fn shared_batches_with_options(mtu: None) {
        let (a, b) = pair("127.0.0.1");
        let opts = Options::new(true, true, true, true, false);
        let rx = Shared::new(b.as_fd(), &opts).unwrap();
        let tx = Shared::new(a.as_fd(), &Options::default()).unwrap();
        assert_eq!(rx.options(), opts);
        assert!(tx.send_ecn());
        let arm = |on: &str| {
            let on: FaultOn = on.parse()?;
            tx.sending::<_, (), _>(&mut Direct, |t| t.inject_send_faults(libc::EINVAL, 1, on))
        };
        arm("ecn").unwrap();
        let data = datagrams(&[100, 200]); // (two messages: no segmentation to give up first)
        let meta = TxMetas::All(TxMeta { ecn: Some(ECN_CE), src: None });
        let send = |t: &mut UdpBatch| t.send_meta(a.as_fd(), &data, Dest::Connected, meta, Wait::Block);
        assert_eq!(tx.sending::<_, (), _>(&mut Direct, send), Ok(2));
        assert!(!tx.send_ecn(), "off after the refusal");
        assert_eq!(tx.stats()[8], ("ecn_fallbacks", 1));
        let mut meta = RecvMeta::new(4);
        let (mut bufs, mut sizes) = (vec![Vec::new(); 4], [0; 4]);
        let got = rx.receiving::<_, (), _>(&mut Direct, |r, hooks| {
            let bufs = &mut bufs[..];
            r.recv_with::<crate::engine::Error, _, _>(b.as_fd(), bufs, &mut sizes, 0, &mut meta, Wait::Block, hooks)
        });
        assert_eq!(got, Ok(Ok(2)));
        assert_eq!((meta.filled(), &bufs[..2]), (2, &data[..]));
        let m = meta.entry(1).unwrap();
        assert_eq!((m.ecn, m.destination), (Some(0), Some("127.0.0.1".parse().unwrap())), "sent without ECN");
        for bad in ["", "Any", "segment"] {
            match arm(bad) {
                Err(Error::Invalid(e)) => assert_eq!(e.kind(), crate::engine::ErrorKind::UnknownOption),
                r => panic!("{bad:?}: {r:?}"),
            }
        }
    }
}

#[test]
fn waits_from_python_timeouts() {
    assert_eq!(Wait::from_secs(None), Wait::Block);
    assert_eq!(Wait::from_secs(Some(0.0)), Wait::NonBlocking);
    assert!(matches!(Wait::from_secs(Some(1.5)), Wait::Until(_)));
    assert_eq!(
        Wait::from_secs(Some(1e300)),
        Wait::Block,
        "beyond any deadline"
    );
    // As poll's timeout: rounded up, never early; none once the deadline passed.
    let now = std::time::Instant::now();
    assert_eq!(Wait::Block.poll_ms(), Some(-1));
    assert_eq!(Wait::NonBlocking.poll_ms(), Some(0));
    let ms = Wait::Until(now + std::time::Duration::from_micros(1500)).poll_ms();
    assert!(matches!(ms, Some(1 | 2)), "{ms:?}");
    assert_eq!(Wait::Until(now).poll_ms(), None);
    assert_eq!(addr_form(libc::AF_INET).1, 2);
    assert_eq!(addr_form(libc::AF_INET6).1, 4);
    assert!(addr_form(libc::AF_INET6).0.contains("scope_id"));
}
