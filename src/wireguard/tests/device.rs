//! Two devices in memory: handshakes, data, sessions, routing, roaming, cookies,
//! configuration.

use super::*;
use crate::engine::ErrorKind;

const S: Duration = Duration::from_secs(1);

#[test]
fn handshake_then_data_both_ways() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    // No session: staged, then the initiation goes out from tick.
    let p1 = ipv4(a.ip, b.ip, b"first");
    let p2 = ipv4(a.ip, b.ip, &[7u8; 1000]);
    let (r, _) = a.send(&[p1.clone(), p2.clone()], t0);
    assert_eq!(r, Encrypted::Staged);
    assert!(a.dev.next_deadline().is_some_and(|d| d <= t0));
    let out = a.dev.tick(t0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.len(), messages::INITIATION_LEN);
    assert_eq!(out[0].1, b.endpoint);
    // b answers; a sends its staged packets with the new session; b decrypts them.
    let (got_a, got_b) = exchange(&a, &b, out, t0);
    assert!(got_a.is_empty());
    assert_eq!(got_b, vec![p1.clone(), p2.clone()]);
    // b's session is confirmed by a's data: b can send at once.
    let q = ipv6([0; 16], [1; 16], b"not routed");
    assert_eq!(b.send(&[q], t0).0, Encrypted::NoRoute);
    let reply = ipv4(b.ip, a.ip, b"reply");
    let (r, msgs) = b.send(&[reply.clone(), reply.clone()], t0);
    assert_eq!(
        r,
        Encrypted::Send {
            endpoint: a.endpoint,
            count: 2,
            wake: false
        }
    );
    let (got, _) = a.receive(&msgs, b.endpoint, t0);
    assert_eq!(got, vec![reply.clone(), reply]);

    let sa = a.dev.stats();
    let sb = b.dev.stats();
    assert_eq!((sa.sessions, sb.sessions), (1, 1));
    assert_eq!((sa.rx_packets, sb.rx_packets), (2, 2));
    assert_eq!((sa.hs_initiations_sent, sb.hs_responses_sent), (1, 1));
    assert_eq!(sb.tx_no_route, 1);
    // Byte counters: handshake messages and transport messages both ways, equal on
    // both ends.
    let pa = &a.dev.peers()[0];
    let pb = &b.dev.peers()[0];
    assert_eq!(pa.tx_bytes, pb.rx_bytes);
    assert_eq!(pb.tx_bytes, pa.rx_bytes);
    let padded = |n: usize| n.div_ceil(16) * 16 + 32;
    assert_eq!(
        pa.tx_bytes as usize,
        messages::INITIATION_LEN + padded(p1.len()) + padded(p2.len())
    );
    assert_eq!(
        pb.tx_bytes as usize,
        messages::RESPONSE_LEN + 2 * padded(25)
    );
    // The last handshake time is the fake wall clock's.
    let want = Duration::from_secs(1_750_000_000) + t0.duration_since(t0);
    assert!(pa.last_handshake >= want && pa.last_handshake < want + S);
    assert!(pb.last_handshake >= want);
    assert_eq!(pa.endpoint, Some(b.endpoint));
}

#[test]
fn ipv6_and_preshared_key() {
    let t0 = start();
    let psk = [0x42; 32];
    let a = Side::new(
        1,
        "[2001:db8::1]:51820",
        [10, 9, 0, 1],
        Timing::default(),
        t0,
    );
    let b = Side::new(
        2,
        "[2001:db8::2]:51820",
        [10, 9, 0, 2],
        Timing::default(),
        t0,
    );
    let a6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let b6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    a.dev
        .set_peer(
            &b.public,
            &[
                PeerLine::Endpoint(b.endpoint),
                PeerLine::PresharedKey(psk),
                PeerLine::AllowedIp(net("fd00::2/128")),
            ],
            t0,
        )
        .unwrap();
    b.dev
        .set_peer(
            &a.public,
            &[
                PeerLine::PresharedKey(psk),
                PeerLine::AllowedIp(net("fd00::/120")),
                PeerLine::ProtocolVersion(1),
            ],
            t0,
        )
        .unwrap();
    let p = ipv6(a6, b6, b"six");
    a.send(std::slice::from_ref(&p), t0);
    let (_, got_b) = exchange(&a, &b, a.dev.tick(t0), t0);
    assert_eq!(got_b, vec![p]);
    // b learnt a's endpoint from the initiation (it had none).
    assert_eq!(b.dev.peers()[0].endpoint, Some(a.endpoint));
    let q = ipv6(b6, a6, b"back");
    let (_, msgs) = b.send(std::slice::from_ref(&q), t0);
    assert_eq!(a.receive(&msgs, b.endpoint, t0).0, vec![q]);
}

#[test]
fn preshared_key_mismatch_fails_the_handshake() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    a.dev
        .set_peer(&b.public, &[PeerLine::PresharedKey([1; 32])], t0)
        .unwrap();
    a.send(&[ipv4(a.ip, b.ip, b"x")], t0);
    let out = a.dev.tick(t0);
    let (_, replies) = b.receive(&[out[0].0.clone()], a.endpoint, t0);
    assert_eq!(replies.len(), 1, "b answers: it cannot tell");
    let (_, more) = a.receive(&[replies[0].0.clone()], b.endpoint, t0);
    assert!(more.is_empty());
    assert_eq!(a.dev.stats().hs_invalid, 1);
    assert_eq!(a.dev.stats().sessions, 0);
}

#[test]
fn transport_drops_are_counted_by_reason() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    connect(&a, &b, t0);
    let p = ipv4(a.ip, b.ip, b"payload");
    let (_, msgs) = a.send(std::slice::from_ref(&p), t0);
    let good = msgs[0].clone();
    let mut forged = good.clone();
    forged[20] ^= 1;
    let mut unknown = good.clone();
    unknown[4] ^= 0xff;
    let truncated = good[..31].to_vec();
    let junk = vec![9u8; 100];
    let short = vec![1u8, 0, 0];
    // Allowed-IPs: a claims b's own address as source.
    let (_, spoof) = a.send(&[ipv4([10, 9, 0, 2], b.ip, b"spoof")], t0);
    let batch = vec![
        forged,
        good.clone(),
        unknown,
        good.clone(), // replay
        truncated,
        junk,
        short,
        spoof[0].clone(),
    ];
    let (got, replies) = b.receive(&batch, a.endpoint, t0);
    assert_eq!(got, vec![p]);
    assert!(replies.is_empty());
    let s = b.dev.stats();
    assert_eq!(
        (
            s.rx_forged,
            s.rx_replayed,
            s.rx_unknown_index,
            s.rx_malformed,
            s.rx_junk,
            s.rx_filtered
        ),
        (1, 1, 1, 1, 2, 1)
    );
}

#[test]
fn a_batch_mixes_data_and_handshakes_with_sources_permuted_alike() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    connect(&a, &b, t0);
    let c = Side::new(3, "192.0.2.3:51820", [10, 9, 0, 3], Timing::default(), t0);
    c.add_peer(&b, true, None, t0);
    b.add_peer(&c, true, None, t0);
    c.send(&[ipv4(c.ip, b.ip, b"c")], t0);
    let init_c = c.dev.tick(t0)[0].0.clone();
    let p = ipv4(a.ip, b.ip, b"from a");
    let (_, m1) = a.send(std::slice::from_ref(&p), t0);
    let (_, m2) = a.send(std::slice::from_ref(&p), t0);
    let mut bufs = vec![
        vec![0u8; 7],
        init_c.clone(),
        m1[0].clone(),
        vec![1u8; 92],
        m2[0].clone(),
    ];
    let mut sizes: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
    let src_junk = addr("198.51.100.1:1");
    let mut sources = vec![
        Some(src_junk),
        Some(c.endpoint),
        Some(a.endpoint),
        Some(src_junk),
        Some(a.endpoint),
    ];
    let d = b
        .dev
        .decrypt(&mut bufs, 0, &mut sizes, &mut sources, t0)
        .unwrap();
    assert_eq!((d.packets, d.control), (2, 1));
    assert_eq!(&bufs[0][16..16 + sizes[0]], &p[..]);
    assert_eq!(&bufs[1][16..16 + sizes[1]], &p[..]);
    assert_eq!(&bufs[2][..sizes[2]], &init_c[..]);
    assert_eq!(sources[2], Some(c.endpoint));
    assert_eq!(&sizes[3..], &[0, 0]);
    // Too few sources: an error, nothing changed.
    let mut sizes2 = vec![3, 3];
    let mut bufs2 = vec![vec![0u8; 3]; 2];
    let e = b
        .dev
        .decrypt(&mut bufs2, 0, &mut sizes2, &mut [None], t0)
        .unwrap_err();
    assert_eq!(e.kind(), crate::engine::ErrorKind::TooFewAddresses);
}

#[test]
fn roaming_follows_authenticated_data_only() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    connect(&a, &b, t0);
    let p = ipv4(a.ip, b.ip, b"moved");
    let (_, msgs) = a.send(std::slice::from_ref(&p), t0);
    let new_src = addr("203.0.113.9:4000");
    // A forged message from elsewhere does not move the endpoint.
    let mut forged = msgs[0].clone();
    forged[40] ^= 1;
    b.receive(&[forged], addr("203.0.113.66:1"), t0);
    assert_eq!(b.dev.peers()[0].endpoint, Some(a.endpoint));
    b.receive(&msgs, new_src, t0);
    assert_eq!(b.dev.peers()[0].endpoint, Some(new_src));
    let (r, _) = b.send(&[ipv4(b.ip, a.ip, b"r")], t0);
    assert!(matches!(r, Encrypted::Send { endpoint, .. } if endpoint == new_src));
}

#[test]
fn several_peers_are_routed_by_longest_prefix() {
    let t0 = start();
    let hub = Side::new(
        10,
        "192.0.2.10:51820",
        [10, 9, 0, 10],
        Timing::default(),
        t0,
    );
    let x = Side::new(11, "192.0.2.11:51820", [10, 9, 1, 1], Timing::default(), t0);
    let y = Side::new(12, "192.0.2.12:51820", [10, 9, 1, 2], Timing::default(), t0);
    hub.dev
        .set_peer(
            &x.public,
            &[
                PeerLine::Endpoint(x.endpoint),
                PeerLine::AllowedIp(net("10.9.0.0/16")),
            ],
            t0,
        )
        .unwrap();
    hub.dev
        .set_peer(
            &y.public,
            &[
                PeerLine::Endpoint(y.endpoint),
                PeerLine::AllowedIp(net("10.9.1.2/32")),
            ],
            t0,
        )
        .unwrap();
    x.add_peer(&hub, true, None, t0);
    y.add_peer(&hub, true, None, t0);
    // To y's /32 goes to y, the rest of the /16 to x.
    for (dst, side) in [([10, 9, 1, 2], &y), ([10, 9, 1, 1], &x)] {
        let p = ipv4(hub.ip, dst, b"routed");
        let (r, _) = hub.send(std::slice::from_ref(&p), t0);
        assert_eq!(r, Encrypted::Staged);
        let out = hub.dev.tick(t0);
        assert!(out.iter().all(|(_, to)| *to == side.endpoint), "{dst:?}");
        let (_, got) = exchange(&hub, side, out, t0);
        assert_eq!(got, vec![p]);
    }
    let p = ipv4(hub.ip, [10, 9, 200, 7], b"x's /16");
    let (r, m) = hub.send(std::slice::from_ref(&p), t0);
    assert!(matches!(r, Encrypted::Send { endpoint, .. } if endpoint == x.endpoint));
    assert_eq!(x.receive(&m, hub.endpoint, t0).0, vec![p]);
    // y sending with x's address as source is filtered at the hub.
    let (_, m) = y.send(&[ipv4([10, 9, 1, 1], hub.ip, b"spoof")], t0);
    assert!(hub.receive(&m, y.endpoint, t0).0.is_empty());
    assert_eq!(hub.dev.stats().rx_filtered, 1);
    // One lookup per batch (one flow per TUN read), but a batch whose second packet is
    // x's is not sealed for y (y could read it): refused whole. (This test used to assert
    // that it was sealed for y.)
    let mut bufs: Vec<Vec<u8>> = [[10, 9, 1, 2], [10, 9, 1, 1]]
        .iter()
        .map(|&dst| [vec![0; OFF], ipv4(hub.ip, dst, b"1")].concat())
        .collect();
    let mut sizes = [bufs[0].len() - OFF, bufs[1].len() - OFF];
    let e = hub.dev.encrypt(&mut bufs, OFF, &mut sizes, t0).unwrap_err();
    assert_eq!((e.kind(), e.index()), (ErrorKind::MixedPeers, Some(1)));
}

#[test]
fn initiation_replay_is_refused_at_the_device() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    a.send(&[ipv4(a.ip, b.ip, b"x")], t0);
    let init = a.dev.tick(t0)[0].0.clone();
    assert_eq!(
        b.receive(std::slice::from_ref(&init), a.endpoint, t0)
            .1
            .len(),
        1
    );
    // The same bytes later (an attacker replaying it): no response.
    assert!(b.receive(&[init], a.endpoint, t0 + S).1.is_empty());
    assert_eq!(b.dev.stats().hs_replayed, 1);
    // A bad mac1 is dropped before any work.
    let mut other = [0u8; 148];
    other[0] = 1;
    assert!(b.dev.handle_control(&other, a.endpoint, t0).is_empty());
    assert_eq!(b.dev.stats().hs_bad_mac1, 1);
}

#[test]
fn cookie_reply_under_load_then_mac2_gets_through() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    b.dev.set_force_under_load(true);
    a.send(&[ipv4(a.ip, b.ip, b"x")], t0);
    let init = a.dev.tick(t0);
    let (_, replies) = b.receive(&[init[0].0.clone()], a.endpoint, t0);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0.len(), messages::COOKIE_REPLY_LEN);
    assert_eq!(b.dev.stats().hs_cookie_sent, 1);
    assert_eq!(b.dev.stats().sessions, 0);
    let (_, nothing) = a.receive(&[replies[0].0.clone()], b.endpoint, t0);
    assert!(nothing.is_empty());
    assert_eq!(a.dev.stats().cookies_accepted, 1);
    // The retransmission (REKEY_TIMEOUT + jitter later) carries mac2: b answers.
    let t1 = t0 + Duration::from_millis(5400);
    let retry = a.dev.tick(t1);
    assert_eq!(retry.len(), 1);
    let (_, got_b) = exchange(&a, &b, retry, t1);
    assert_eq!(got_b.len(), 1, "the staged packet arrives");
    assert_eq!(b.dev.stats().hs_cookie_sent, 1);
    // From another address the cookie does not hold.
    let c = Side::new(3, "192.0.2.3:51820", [10, 9, 0, 3], Timing::default(), t0);
    c.add_peer(&b, true, None, t0);
    c.send(&[ipv4(c.ip, b.ip, b"x")], t0);
    let init_c = c.dev.tick(t0);
    let (_, r) = b.receive(&[init_c[0].0.clone()], c.endpoint, t1);
    assert_eq!(r[0].0.len(), messages::COOKIE_REPLY_LEN);
    // A cookie reply for no handshake of ours is refused.
    assert!(a.receive(&[r[0].0.clone()], b.endpoint, t1).1.is_empty());
    assert_eq!(a.dev.stats().cookies_invalid, 1);
}

#[test]
fn load_meter_turns_cookies_on() {
    let t0 = start();
    let config = DeviceConfig {
        under_load_per_second: 3,
        ..DeviceConfig::default()
    };
    let b = Device::new(config);
    let (bk, bp) = keys(2);
    b.set_private_key(&bk, t0);
    let a = Side::new(1, "192.0.2.1:51820", [10, 9, 0, 1], Timing::default(), t0);
    let bs = Side {
        dev: b,
        public: bp,
        endpoint: addr("192.0.2.2:51820"),
        ip: [10, 9, 0, 2],
    };
    a.add_peer(&bs, true, None, t0);
    bs.add_peer(&a, true, None, t0);
    a.send(&[ipv4(a.ip, bs.ip, b"x")], t0);
    let init = a.dev.tick(t0)[0].0.clone();
    // A flood of copies: the first is answered, replays refused, then under load every
    // one gets a cookie reply.
    let mut kinds = Vec::new();
    for i in 0..6 {
        let r = bs
            .dev
            .handle_control(&init, a.endpoint, t0 + Duration::from_millis(i));
        kinds.push(r.first().map(|d| d.0.len()));
    }
    assert_eq!(
        kinds,
        [Some(92), None, Some(64), Some(64), Some(64), Some(64)]
    );
    // Two seconds later the load is gone.
    let later = t0 + 2 * S;
    assert!(bs.dev.handle_control(&init, a.endpoint, later).is_empty());
    assert_eq!(bs.dev.stats().hs_replayed, 2);
}

#[test]
fn staged_queue_keeps_the_newest_128() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    for i in 0..200u16 {
        let (r, _) = a.send(&[ipv4(a.ip, b.ip, &i.to_be_bytes())], t0);
        assert_eq!(r, Encrypted::Staged);
    }
    let s = a.dev.stats();
    assert_eq!((s.tx_staged, s.tx_staged_dropped), (200, 72));
    let (_, got) = exchange(&a, &b, a.dev.tick(t0), t0);
    assert_eq!(got.len(), 128);
    assert_eq!(got[0][20..], 72u16.to_be_bytes());
    assert_eq!(got[127][20..], 199u16.to_be_bytes());
}

#[test]
fn rekey_after_messages_and_old_session_still_accepted() {
    let t0 = start();
    let timing = Timing {
        rekey_after_messages: 4,
        ..Timing::default()
    };
    let (a, b) = pair(timing, t0);
    connect(&a, &b, t0);
    let p = ipv4(a.ip, b.ip, b"n");
    // Counter 0 went with the staged packet: four more reach 5 > 4.
    let (r, _) = a.send(&vec![p.clone(); 3], t0);
    assert!(matches!(r, Encrypted::Send { wake: false, .. }));
    let (r, old_msgs) = a.send(&vec![p.clone(); 2], t0);
    assert!(matches!(r, Encrypted::Send { wake: true, .. }));
    let t1 = t0 + Duration::from_secs(6); // after REKEY_TIMEOUT
    let init = a.dev.tick(t1);
    assert_eq!(init.len(), 1);
    let (_, _) = exchange(&a, &b, init, t1);
    assert_eq!((a.dev.stats().sessions, b.dev.stats().sessions), (2, 2));
    // Messages of the old session still open at b (it is b's previous).
    let (got, _) = b.receive(&old_msgs, a.endpoint, t1);
    assert_eq!(got.len(), 2);
    // New data uses the new session, and b confirms it with data from a.
    let (_, m) = a.send(std::slice::from_ref(&p), t1);
    assert_eq!(b.receive(&m, a.endpoint, t1).0, vec![p]);
}

#[test]
fn rekey_after_time_by_the_initiator_only() {
    let t0 = start();
    let timing = Timing {
        rekey_after_time: Duration::from_secs(6),
        reject_after_time: Duration::from_secs(20),
        ..Timing::default()
    };
    let (a, b) = pair(timing, t0);
    connect(&a, &b, t0);
    let t1 = t0 + Duration::from_secs(7);
    let (r, _) = b.send(&[ipv4(b.ip, a.ip, b"resp")], t1);
    assert!(
        matches!(r, Encrypted::Send { wake: false, .. }),
        "the responder does not rekey on send"
    );
    let (r, _) = a.send(&[ipv4(a.ip, b.ip, b"init")], t1);
    assert!(
        matches!(r, Encrypted::Send { wake: true, .. }),
        "the initiator does"
    );
    let out = a.dev.tick(t1);
    exchange(&a, &b, out, t1);
    assert_eq!(a.dev.stats().sessions, 2);
    // After REJECT_AFTER_TIME a session is used no more: staged, new handshake.
    let t2 = t1 + Duration::from_secs(21);
    let (r, _) = a.send(&[ipv4(a.ip, b.ip, b"late")], t2);
    assert_eq!(r, Encrypted::Staged);
    assert_eq!(
        b.send(&[ipv4(b.ip, a.ip, b"late")], t2).0,
        Encrypted::Staged
    );
}

#[test]
fn responder_rekeys_on_receive_near_reject_after_time() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    connect(&a, &b, t0);
    // a is the initiator: at 180 - 10 - 5 s its receive path asks for a handshake once.
    let t1 = t0 + Duration::from_secs(166);
    let (_, m) = b.send(&[ipv4(b.ip, a.ip, b"1")], t1);
    let (_, m2) = b.send(&[ipv4(b.ip, a.ip, b"2")], t1);
    let mut bufs = m.clone();
    let mut sizes = vec![m[0].len()];
    let mut src = vec![Some(b.endpoint)];
    let d = a
        .dev
        .decrypt(&mut bufs, 0, &mut sizes, &mut src, t1)
        .unwrap();
    assert!(d.wake);
    let mut bufs = m2.clone();
    let d = a
        .dev
        .decrypt(&mut bufs, 0, &mut sizes, &mut src, t1)
        .unwrap();
    assert!(!d.wake, "once");
    assert_eq!(a.dev.tick(t1).len(), 1);
    // At 165 s it would not have.
    let (a2, b2) = pair(Timing::default(), t0);
    connect(&a2, &b2, t0);
    let t = t0 + Duration::from_secs(165);
    let (_, m) = b2.send(&[ipv4(b2.ip, a2.ip, b"1")], t);
    let mut bufs = m.clone();
    let d = a2
        .dev
        .decrypt(&mut bufs, 0, &mut sizes, &mut src, t)
        .unwrap();
    assert!(!d.wake);
}

#[test]
fn expired_sessions_are_refused_on_receive() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    connect(&a, &b, t0);
    let (_, m) = a.send(&[ipv4(a.ip, b.ip, b"old")], t0);
    assert!(b
        .receive(&m, a.endpoint, t0 + Duration::from_secs(181))
        .0
        .is_empty());
    assert_eq!(b.dev.stats().rx_expired, 1);
}

#[test]
fn configuration_as_uapi() {
    let t0 = start();
    let dev = Device::new(DeviceConfig::default());
    assert_eq!((dev.private_key(), dev.public_key()), (None, None));
    let (sk, pk) = keys(5);
    dev.set_private_key(&[5; 32], t0); // clamped as stored
    assert_eq!(dev.private_key(), Some(sk));
    assert_eq!(dev.public_key(), Some(pk));
    dev.set_listen_port(51820);
    dev.set_fwmark(7);
    assert_eq!((dev.listen_port(), dev.fwmark()), (51820, 7));

    let (_, p1) = keys(6);
    let (_, p2) = keys(7);
    // update_only on a missing peer: nothing created.
    dev.set_peer(
        &p1,
        &[PeerLine::UpdateOnly, PeerLine::AllowedIp(net("10.0.0.0/8"))],
        t0,
    )
    .unwrap();
    assert!(dev.peers().is_empty());
    dev.set_peer(
        &p1,
        &[
            PeerLine::PresharedKey([3; 32]),
            PeerLine::Endpoint(addr("192.0.2.5:1")),
            PeerLine::PersistentKeepalive(25),
            PeerLine::AllowedIp(net("10.0.0.1/32")),
            PeerLine::AllowedIp(net("fd00::/64")),
        ],
        t0,
    )
    .unwrap();
    dev.set_peer(&p2, &[PeerLine::AllowedIp(net("10.0.0.2/32"))], t0)
        .unwrap();
    // Our own public key: ignored.
    dev.set_peer(&pk, &[PeerLine::AllowedIp(net("10.0.0.3/32"))], t0)
        .unwrap();
    // A bad protocol version: an error, nothing applied.
    let e = dev
        .set_peer(
            &p2,
            &[
                PeerLine::AllowedIp(net("10.0.0.4/32")),
                PeerLine::ProtocolVersion(2),
            ],
            t0,
        )
        .unwrap_err();
    assert_eq!(e.kind(), crate::engine::ErrorKind::BadProtocolVersion);
    let peers = dev.peers();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].public_key, p1);
    assert_eq!(peers[0].preshared_key, [3; 32]);
    assert_eq!(peers[0].endpoint, Some(addr("192.0.2.5:1")));
    assert_eq!(peers[0].persistent_keepalive_interval, 25);
    assert_eq!(
        peers[0].allowed_ips,
        vec![net("10.0.0.1/32"), net("fd00::/64")]
    );
    assert_eq!(peers[0].last_handshake, Duration::ZERO);
    assert_eq!(peers[1].allowed_ips, vec![net("10.0.0.2/32")]);
    assert_eq!(peers[1].preshared_key, [0; 32]);
    // Turning persistent keepalive on asked for a keepalive (a handshake: no session).
    assert!(dev.next_deadline().is_some_and(|d| d <= t0));

    // replace_allowed_ips then one, removal with "-", moving a prefix to another peer.
    dev.set_peer(
        &p1,
        &[
            PeerLine::ReplaceAllowedIps,
            PeerLine::AllowedIp(net("10.1.0.0/16")),
            PeerLine::AllowedIp(net("10.2.0.0/16")),
            PeerLine::RemoveAllowedIp(net("10.2.0.0/16")),
        ],
        t0,
    )
    .unwrap();
    dev.set_peer(&p2, &[PeerLine::AllowedIp(net("10.1.0.0/16"))], t0)
        .unwrap();
    let peers = dev.peers();
    assert!(peers[0].allowed_ips.is_empty());
    assert_eq!(
        peers[1].allowed_ips,
        vec![net("10.0.0.2/32"), net("10.1.0.0/16")]
    );
    // remove, then replace_peers.
    dev.set_peer(&p2, &[PeerLine::Remove], t0).unwrap();
    assert_eq!(dev.peers().len(), 1);
    assert!(!dev.remove_peer(&p2));
    dev.remove_all_peers();
    assert!(dev.peers().is_empty());
    // Setting a private key whose public key is a peer's removes that peer.
    dev.set_peer(&p2, &[], t0).unwrap();
    dev.set_private_key(&keys(7).0, t0);
    assert!(dev.peers().is_empty());
    // Zero private key: none.
    dev.set_private_key(&[0; 32], t0);
    assert_eq!(dev.private_key(), None);
}

#[test]
fn changing_the_private_key_expires_sessions() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    connect(&a, &b, t0);
    let p = ipv4(a.ip, b.ip, b"x");
    assert!(matches!(
        a.send(std::slice::from_ref(&p), t0).0,
        Encrypted::Send { .. }
    ));
    // The same key again changes nothing.
    a.dev.set_private_key(&keys(1).0, t0);
    assert!(matches!(
        a.send(std::slice::from_ref(&p), t0).0,
        Encrypted::Send { .. }
    ));
    a.dev.set_private_key(&keys(9).0, t0);
    assert_eq!(a.send(&[p], t0).0, Encrypted::Staged);
    // The new initiation goes out at once (no REKEY_TIMEOUT wait), and b does not know
    // the new key: no response.
    let out = a.dev.tick(t0);
    assert_eq!(out.len(), 1);
    assert!(b.receive(&[out[0].0.clone()], a.endpoint, t0).1.is_empty());
}

#[test]
fn removing_a_peer_frees_its_indices_and_drops_its_data() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    connect(&a, &b, t0);
    let (_, m) = a.send(&[ipv4(a.ip, b.ip, b"x")], t0);
    assert!(b.dev.remove_peer(&a.public));
    assert_eq!(super::super::peer::read(&b.dev.index).len(), 0);
    assert!(b.receive(&m, a.endpoint, t0).0.is_empty());
    assert_eq!(b.dev.stats().rx_unknown_index, 1);
    assert_eq!(b.send(&[ipv4(b.ip, a.ip, b"y")], t0).0, Encrypted::NoRoute);
}

#[test]
fn encrypt_argument_errors() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    let p = ipv4(a.ip, b.ip, b"x");
    let mut bufs = vec![[vec![0; 8], p.clone()].concat()];
    let e = a.dev.encrypt(&mut bufs, 8, &mut [p.len()], t0).unwrap_err();
    assert_eq!(e.kind(), crate::engine::ErrorKind::OffsetTooSmall);
    let e = a
        .dev
        .encrypt(&mut bufs, 16, &mut [p.len()], t0)
        .unwrap_err();
    assert_eq!(e.kind(), crate::engine::ErrorKind::BufferTooSmall);
    let e = a.dev.encrypt(&mut bufs, 16, &mut [1, 1], t0).unwrap_err();
    assert_eq!(e.kind(), crate::engine::ErrorKind::CountTooLarge);
    assert_eq!(
        a.dev.encrypt(&mut bufs, 16, &mut [], t0).unwrap(),
        Encrypted::NoRoute
    );
    let mut bufs = vec![vec![0u8; 40]];
    assert_eq!(
        a.dev.encrypt(&mut bufs, 16, &mut [4], t0).unwrap(),
        Encrypted::NoRoute
    );
    assert_eq!(a.dev.stats().tx_not_ip, 1);
    // A fixed buffer with no room for padding and tag, with a session up.
    connect(&a, &b, t0);
    let mut arena = [vec![0u8; 16], p.clone()].concat();
    let mut fixed: Vec<&mut [u8]> = vec![&mut arena[..]];
    let e = a
        .dev
        .encrypt(&mut fixed, 16, &mut [p.len()], t0)
        .unwrap_err();
    assert_eq!(e.kind(), crate::engine::ErrorKind::OutBufTooSmall);
}

#[test]
fn timings_of_any_length_from_rust_do_not_panic() {
    // `Timing`'s fields are public: a Rust caller can skip the day's cap that
    // `Timing::set` puts on Python's values. The timers' sums saturate.
    let t0 = start();
    let timing = Timing {
        keepalive_timeout: Duration::MAX,
        rekey_timeout: Duration::MAX,
        ..Timing::default()
    };
    let (a, b) = pair(timing, t0);
    connect(&a, &b, t0);
    let (r, m) = a.send(&[ipv4(a.ip, b.ip, b"x")], t0);
    assert!(matches!(r, Encrypted::Send { .. }), "{r:?}");
    assert_eq!(b.receive(&m, a.endpoint, t0).0.len(), 1);
}
