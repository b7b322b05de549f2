//! Against an independent implementation: boringtun 0.7's `noise::Tunn` (Cloudflare's
//! userspace WireGuard), in memory. Handshakes with each side initiating, data both
//! ways (IPv4 and IPv6, many sizes), cookie replies in both directions, a rekey, and
//! pre-shared keys.

use std::net::IpAddr;

use ::boringtun::noise::rate_limiter::RateLimiter;
use ::boringtun::noise::{Tunn, TunnResult};
use ::boringtun::x25519;

use super::*;

/// boringtun's side: a `Tunn` whose peer is our device, with its endpoint and address.
struct Bt {
    tunn: Tunn,
    endpoint: SocketAddr,
    ip: [u8; 4],
}

const BT_SEED: u8 = 0x77;

fn bt(ours: &Side, psk: Option<[u8; 32]>, limiter: Option<u64>) -> (Bt, [u8; 32]) {
    let (sk, pk) = keys(BT_SEED);
    let secret = x25519::StaticSecret::from(sk);
    let rate = limiter.map(|l| Arc::new(RateLimiter::new(&x25519::PublicKey::from(pk), l)));
    let tunn = Tunn::new(
        secret,
        x25519::PublicKey::from(ours.public),
        psk,
        None,
        7,
        rate,
    );
    let b = Bt {
        tunn,
        endpoint: addr("192.0.2.77:51820"),
        ip: [10, 9, 0, 77],
    };
    (b, pk)
}

/// Our device with boringtun as its peer.
fn ours(t0: Instant, psk: Option<[u8; 32]>, timing: Timing) -> (Side, Bt) {
    let us = Side::new(1, "192.0.2.1:51820", [10, 9, 0, 1], timing, t0);
    let (b, pk) = bt(&us, psk, None);
    let mut lines = vec![
        PeerLine::Endpoint(b.endpoint),
        PeerLine::AllowedIp(net("10.9.0.77/32")),
        PeerLine::AllowedIp(net("fd00::77/128")),
    ];
    if let Some(k) = psk {
        lines.push(PeerLine::PresharedKey(k));
    }
    us.dev.set_peer(&pk, &lines, t0).unwrap();
    (us, b)
}

/// What boringtun makes of one datagram from us: datagrams to send back, packets out.
fn bt_receive(b: &mut Bt, from: &Side, msg: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut buf = vec![0u8; 65536];
    let (mut net_out, mut tun_out) = (Vec::new(), Vec::new());
    let src = Some(from.endpoint.ip());
    match b.tunn.decapsulate(src, msg, &mut buf) {
        TunnResult::WriteToNetwork(d) => {
            net_out.push(d.to_vec());
            // "Repeat the call with an empty datagram until Done" (queued packets).
            loop {
                let mut buf2 = vec![0u8; 65536];
                match b.tunn.decapsulate(None, &[], &mut buf2) {
                    TunnResult::WriteToNetwork(d) => net_out.push(d.to_vec()),
                    _ => break,
                }
            }
        }
        TunnResult::WriteToTunnelV4(p, src) => {
            assert_eq!(src, std::net::Ipv4Addr::from(from.ip));
            tun_out.push(p.to_vec());
        }
        TunnResult::WriteToTunnelV6(p, _) => tun_out.push(p.to_vec()),
        TunnResult::Done => {}
        TunnResult::Err(e) => panic!("boringtun refused our message: {e:?}"),
    }
    (net_out, tun_out)
}

fn bt_send(b: &mut Bt, packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    match b.tunn.encapsulate(packet, &mut buf) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("boringtun did not send: {other:?}"),
    }
}

/// Runs datagrams between us and boringtun until none are left; returns the packets
/// each side got (ours, boringtun's).
fn pump(
    us: &Side,
    b: &mut Bt,
    to_bt: Vec<Vec<u8>>,
    to_us: Vec<Vec<u8>>,
    now: Instant,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut got_us, mut got_bt) = (Vec::new(), Vec::new());
    let (mut to_bt, mut to_us) = (to_bt, to_us);
    for _ in 0..20 {
        if to_bt.is_empty() && to_us.is_empty() {
            return (got_us, got_bt);
        }
        let mut next_us = Vec::new();
        for m in to_bt.drain(..) {
            let (net_out, tun_out) = bt_receive(b, us, &m);
            next_us.extend(net_out);
            got_bt.extend(tun_out);
        }
        let mut next_bt = Vec::new();
        if !to_us.is_empty() {
            let (packets, replies) = us.receive(&to_us, b.endpoint, now);
            got_us.extend(packets);
            for (d, to) in replies {
                assert_eq!(to, b.endpoint);
                next_bt.push(d);
            }
        }
        to_bt = next_bt;
        to_us = next_us;
    }
    panic!("no end to the exchange");
}

/// Packets of many sizes, IPv4 and IPv6, `src -> dst`.
fn traffic(src: [u8; 4], dst: [u8; 4], src6: [u8; 16], dst6: [u8; 16]) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for (i, n) in [0usize, 1, 15, 16, 17, 100, 555, 1000, 1380, 1400]
        .iter()
        .enumerate()
    {
        let payload: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
        v.push(ipv4(src, dst, &payload));
        v.push(ipv6(src6, dst6, &payload));
    }
    v
}

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = last;
    a
}

/// Data both ways over an established session.
fn data_both_ways(us: &Side, b: &mut Bt, now: Instant) {
    let ours_out = traffic(us.ip, b.ip, v6(1), v6(0x77));
    let (r, msgs) = us.send(&ours_out, now);
    assert!(matches!(r, Encrypted::Send { .. }), "{r:?}");
    let mut got = Vec::new();
    for m in &msgs {
        let (net_out, tun_out) = bt_receive(b, us, m);
        assert!(net_out.is_empty());
        got.extend(tun_out);
    }
    assert_eq!(got, ours_out, "boringtun decrypted what we sealed");
    let theirs = traffic(b.ip, us.ip, v6(0x77), v6(1));
    let msgs: Vec<Vec<u8>> = theirs.iter().map(|p| bt_send(b, p)).collect();
    let (got, replies) = us.receive(&msgs, b.endpoint, now);
    assert!(replies.is_empty());
    assert_eq!(got, theirs, "we decrypted what boringtun sealed");
}

#[test]
fn we_initiate() {
    let t0 = start();
    let (us, mut b) = ours(t0, None, Timing::default());
    let p = ipv4(us.ip, b.ip, b"hello boringtun");
    assert_eq!(us.send(std::slice::from_ref(&p), t0).0, Encrypted::Staged);
    let init: Vec<Vec<u8>> = us.dev.tick(t0).into_iter().map(|(d, _)| d).collect();
    assert_eq!(init.len(), 1);
    let (got_us, got_bt) = pump(&us, &mut b, init, Vec::new(), t0);
    assert!(got_us.is_empty());
    assert_eq!(got_bt, vec![p]);
    assert_eq!(us.dev.stats().sessions, 1);
    data_both_ways(&us, &mut b, t0);
}

#[test]
fn boringtun_initiates() {
    let t0 = start();
    let (us, mut b) = ours(t0, None, Timing::default());
    let p = ipv4(b.ip, us.ip, b"hello tunoffload");
    let init = bt_send(&mut b, &p);
    assert_eq!(init.len(), messages::INITIATION_LEN);
    let (got_us, got_bt) = pump(&us, &mut b, Vec::new(), vec![init], t0);
    assert_eq!(
        got_us,
        vec![p],
        "boringtun's queued packet, which confirms our session"
    );
    assert!(got_bt.is_empty());
    // We learnt boringtun's endpoint from its initiation.
    assert_eq!(us.dev.peers()[0].endpoint, Some(b.endpoint));
    data_both_ways(&us, &mut b, t0);
}

#[test]
fn with_a_preshared_key() {
    let t0 = start();
    let psk = [0x5a; 32];
    let (us, mut b) = ours(t0, Some(psk), Timing::default());
    us.send(&[ipv4(us.ip, b.ip, b"psk")], t0);
    let init = us.dev.tick(t0).into_iter().map(|(d, _)| d).collect();
    let (_, got_bt) = pump(&us, &mut b, init, Vec::new(), t0);
    assert_eq!(got_bt.len(), 1);
    data_both_ways(&us, &mut b, t0);
}

#[test]
fn boringtun_under_load_sends_us_a_cookie() {
    let t0 = start();
    let us = Side::new(1, "192.0.2.1:51820", [10, 9, 0, 1], Timing::default(), t0);
    // A limit of 0: boringtun wants a valid mac2 on every handshake message.
    let (mut b, pk) = bt(&us, None, Some(0));
    us.dev
        .set_peer(
            &pk,
            &[
                PeerLine::Endpoint(b.endpoint),
                PeerLine::AllowedIp(net("10.9.0.77/32")),
            ],
            t0,
        )
        .unwrap();
    let p = ipv4(us.ip, b.ip, b"after the cookie");
    us.send(std::slice::from_ref(&p), t0);
    let init = us.dev.tick(t0)[0].0.clone();
    let (cookie, _) = bt_receive(&mut b, &us, &init);
    assert_eq!(cookie.len(), 1);
    assert_eq!(cookie[0].len(), messages::COOKIE_REPLY_LEN);
    let (_, none) = us.receive(&cookie, b.endpoint, t0);
    assert!(none.is_empty());
    assert_eq!(us.dev.stats().cookies_accepted, 1);
    // Our retransmission carries mac2 and boringtun answers it.
    let t1 = t0 + Duration::from_millis(5400);
    let retry: Vec<Vec<u8>> = us.dev.tick(t1).into_iter().map(|(d, _)| d).collect();
    assert_eq!(retry.len(), 1);
    let (_, got_bt) = pump(&us, &mut b, retry, Vec::new(), t1);
    assert_eq!(got_bt, vec![p]);
}

#[test]
fn we_under_load_send_boringtun_a_cookie() {
    let t0 = start();
    let (us, mut b) = ours(t0, None, Timing::default());
    us.dev.set_force_under_load(true);
    let p = ipv4(b.ip, us.ip, b"cookie for you");
    let init = bt_send(&mut b, &p);
    let (_, replies) = us.receive(&[init], b.endpoint, t0);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0.len(), messages::COOKIE_REPLY_LEN);
    assert_eq!(us.dev.stats().hs_cookie_sent, 1);
    let (net_out, _) = bt_receive(&mut b, &us, &replies[0].0);
    assert!(net_out.is_empty(), "boringtun stores the cookie");
    // boringtun's next initiation has mac2: we answer.
    let mut buf = vec![0u8; 256];
    let retry = match b.tunn.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("{other:?}"),
    };
    let (got_us, _) = pump(&us, &mut b, Vec::new(), vec![retry], t0);
    assert_eq!(got_us, vec![p]);
    assert_eq!(us.dev.stats().hs_cookie_sent, 1);
    assert_eq!(us.dev.stats().sessions, 1);
}

#[test]
fn rekey_with_boringtun() {
    let t0 = start();
    let timing = Timing {
        rekey_after_messages: 30,
        ..Timing::default()
    };
    let (us, mut b) = ours(t0, None, timing);
    us.send(&[ipv4(us.ip, b.ip, b"1")], t0);
    let init = us.dev.tick(t0).into_iter().map(|(d, _)| d).collect();
    pump(&us, &mut b, init, Vec::new(), t0);
    data_both_ways(&us, &mut b, t0); // 20 more messages from us
    let (r, _) = us.send(&traffic(us.ip, b.ip, v6(1), v6(0x77))[..10], t0);
    assert!(
        matches!(r, Encrypted::Send { wake: true, .. }),
        "past 30 messages"
    );
    let t1 = t0 + Duration::from_secs(6);
    let init: Vec<Vec<u8>> = us.dev.tick(t1).into_iter().map(|(d, _)| d).collect();
    assert_eq!(init.len(), 1);
    pump(&us, &mut b, init, Vec::new(), t1);
    assert_eq!(us.dev.stats().sessions, 2);
    data_both_ways(&us, &mut b, t1);
    let _ = IpAddr::from(b.ip);
}
