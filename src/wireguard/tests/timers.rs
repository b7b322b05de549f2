//! The timers on a fake clock: each fires exactly when `timers.go` says, not a
//! nanosecond before (jitter 0 for exactness; one test checks the jitter's bounds).

use super::*;

const NS: Duration = Duration::from_nanos(1);

fn exact() -> Timing {
    Timing {
        rekey_timeout_jitter: Duration::ZERO,
        ..Timing::default()
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Ticks just before `at` (expecting nothing; this also runs work queued with nothing
/// to send, such as a flush of an empty queue), checks that `at` is the next deadline,
/// and ticks at `at`; returns what went out then.
fn fire_at(side: &Side, at: Instant) -> Vec<Datagram> {
    assert!(
        side.dev.tick(at - NS).is_empty(),
        "nothing before the deadline"
    );
    assert_eq!(side.dev.next_deadline(), Some(at), "the next deadline");
    let d = side.dev.time_to_deadline(at - NS);
    assert_eq!(
        d,
        Some(NS.min(Duration::from_secs(3600))),
        "a control thread's wait"
    );
    assert_eq!(
        side.dev.time_to_deadline(at + NS),
        Some(Duration::ZERO),
        "due"
    );
    side.dev.tick(at)
}

#[test]
fn handshake_retransmits_19_times_then_gives_up() {
    // As wireguard-go (and Linux): a retransmission while attempts <= MaxTimerHandshakes
    // (90 s / 5 s = 18), so 19 of them, 20 initiations in all ("after 20 attempts,
    // giving up"), then the staged packets are dropped.
    let t0 = start();
    let (a, b) = pair(exact(), t0);
    a.send(&[ipv4(a.ip, b.ip, b"lost")], t0);
    let first = a.dev.tick(t0);
    assert_eq!(first.len(), 1);
    let mut last = t0;
    let mut senders = vec![messages::u32_at(&first[0].0, 4)];
    for n in 1..=19 {
        let at = last + secs(5);
        let out = fire_at(&a, at);
        assert_eq!(out.len(), 1, "retransmission {n}");
        assert_eq!(out[0].0.len(), messages::INITIATION_LEN);
        senders.push(messages::u32_at(&out[0].0, 4));
        last = at;
    }
    // Each retransmission is a new initiation with a new index; the old ones are freed.
    senders.sort();
    senders.dedup();
    assert_eq!(senders.len(), 20);
    assert_eq!(super::super::peer::read(&a.dev.index).len(), 1);
    // 100 s after the first: give up, drop the staged packet.
    let out = fire_at(&a, last + secs(5));
    assert!(out.is_empty());
    let s = a.dev.stats();
    assert_eq!(
        (s.hs_initiations_sent, s.hs_given_up, s.tx_staged_dropped),
        (20, 1, 1)
    );
    // What is left is zeroed 3 x REJECT_AFTER_TIME later, then nothing is pending.
    let give_up = last + secs(5);
    assert!(fire_at(&a, give_up + secs(540)).is_empty());
    assert_eq!(super::super::peer::read(&a.dev.index).len(), 0);
    assert_eq!(a.dev.next_deadline(), None);
    assert_eq!(a.dev.time_to_deadline(give_up), None);
}

#[test]
fn retransmission_jitter_is_below_334_ms() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    a.send(&[ipv4(a.ip, b.ip, b"lost")], t0);
    assert_eq!(a.dev.tick(t0).len(), 1);
    let mut last = t0;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..18 {
        let at = a.dev.next_deadline().unwrap();
        let wait = at - last;
        assert!(
            wait >= secs(5) && wait < secs(5) + Duration::from_millis(334),
            "{wait:?}"
        );
        assert_eq!(wait.subsec_nanos() % 1_000_000, 0, "whole milliseconds");
        seen.insert(wait);
        assert!(a.dev.tick(at - NS).is_empty());
        assert_eq!(a.dev.tick(at).len(), 1);
        last = at;
    }
    assert!(seen.len() > 1, "the jitter varies");
}

#[test]
fn at_most_one_initiation_per_rekey_timeout() {
    let t0 = start();
    let (a, b) = pair(exact(), t0);
    a.send(&[ipv4(a.ip, b.ip, b"1")], t0);
    assert_eq!(a.dev.tick(t0).len(), 1);
    a.send(&[ipv4(a.ip, b.ip, b"2")], t0 + secs(1));
    assert!(a.dev.tick(t0 + secs(1)).is_empty(), "within REKEY_TIMEOUT");
    // The retransmission carries on at 5 s; both packets go once a session is up.
    let out = fire_at(&a, t0 + secs(5));
    let (_, got) = exchange(&a, &b, out, t0 + secs(5));
    assert_eq!(got.len(), 2);
}

#[test]
fn passive_keepalive_after_keepalive_timeout() {
    let t0 = start();
    let (a, b) = pair(exact(), t0);
    connect(&a, &b, t0);
    // b received data at t0 and sent none: a keepalive at exactly t0 + 10 s.
    let out = fire_at(&b, t0 + secs(10));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.len(), messages::KEEPALIVE_LEN);
    assert_eq!(out[0].1, a.endpoint);
    let (got, _) = a.receive(&[out[0].0.clone()], b.endpoint, t0 + secs(10));
    assert!(got.is_empty());
    assert_eq!(a.dev.stats().rx_keepalives, 1);
    // The keepalive cleared a's new-handshake timer (data sent at t0, 15 s): a's next
    // timer is the key zeroing at 540 s.
    assert_eq!(a.dev.next_deadline(), Some(t0 + secs(540)));
}

#[test]
fn data_during_a_pending_keepalive_rearms_it() {
    let t0 = start();
    let (a, b) = pair(exact(), t0);
    connect(&a, &b, t0);
    let t1 = t0 + secs(3);
    let (_, m) = a.send(&[ipv4(a.ip, b.ip, b"more")], t1);
    b.receive(&m, a.endpoint, t1);
    // Still t0 + 10 s (pending), then again 10 s after it fired.
    assert_eq!(fire_at(&b, t0 + secs(10)).len(), 1);
    assert_eq!(fire_at(&b, t0 + secs(20)).len(), 1);
}

#[test]
fn sending_without_reply_starts_a_handshake_after_15_s() {
    let t0 = start();
    let (a, b) = pair(exact(), t0);
    connect(&a, &b, t0);
    // b's keepalive answers a's first data; then a sends again and hears nothing.
    let ka = b.dev.tick(t0 + secs(10));
    a.receive(&[ka[0].0.clone()], b.endpoint, t0 + secs(10));
    let t1 = t0 + secs(30);
    assert!(matches!(
        a.send(&[ipv4(a.ip, b.ip, b"?")], t1).0,
        Encrypted::Send { .. }
    ));
    // More data does not push the timer back.
    a.send(&[ipv4(a.ip, b.ip, b"??")], t1 + secs(2));
    let out = fire_at(&a, t1 + secs(15));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.len(), messages::INITIATION_LEN);
}

#[test]
fn key_material_is_zeroed_after_three_reject_after_times() {
    let t0 = start();
    let (a, b) = pair(exact(), t0);
    connect(&a, &b, t0);
    let ka = b.dev.tick(t0 + secs(10));
    a.receive(&[ka[0].0.clone()], b.endpoint, t0 + secs(10));
    let index_len = |s: &Side| super::super::peer::read(&s.dev.index).len();
    assert_eq!((index_len(&a), index_len(&b)), (1, 1));
    assert!(fire_at(&a, t0 + secs(540)).is_empty());
    assert!(fire_at(&b, t0 + secs(540)).is_empty());
    assert_eq!((index_len(&a), index_len(&b)), (0, 0));
    assert!(super::super::peer::read(&a.dev.peers)
        .by_key
        .values()
        .all(|p| {
            let k = super::super::peer::read(&p.keypairs);
            k.current.is_none() && k.previous.is_none() && k.next.is_none()
        }));
    assert_eq!((a.dev.next_deadline(), b.dev.next_deadline()), (None, None));
}

#[test]
fn persistent_keepalive_every_interval() {
    let t0 = start();
    let (a, b) = pair(exact(), t0);
    connect(&a, &b, t0);
    // b's passive keepalive answers a's data (else a would rehandshake at 15 s).
    let ka = b.dev.tick(t0 + secs(10));
    a.receive(&[ka[0].0.clone()], b.endpoint, t0 + secs(10));
    let t1 = t0 + secs(11);
    a.dev
        .set_peer(&b.public, &[PeerLine::PersistentKeepalive(25)], t1)
        .unwrap();
    // Turning it on sends one at once.
    let out = a.dev.tick(t1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.len(), messages::KEEPALIVE_LEN);
    b.receive(&[out[0].0.clone()], a.endpoint, t1);
    // Then 25 s after the last authenticated packet, again and again.
    let mut at = t1 + secs(25);
    for _ in 0..3 {
        let out = fire_at(&a, at);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.len(), messages::KEEPALIVE_LEN);
        at += secs(25);
    }
    // Setting it again to the same value does not send one at once.
    a.dev
        .set_peer(
            &b.public,
            &[PeerLine::PersistentKeepalive(25)],
            at - secs(20),
        )
        .unwrap();
    assert!(a.dev.tick(at - secs(20)).is_empty());
}

#[test]
fn persistent_keepalive_without_session_starts_a_handshake() {
    let t0 = start();
    let (a, b) = pair(exact(), t0);
    a.dev
        .set_peer(&b.public, &[PeerLine::PersistentKeepalive(10)], t0)
        .unwrap();
    let out = a.dev.tick(t0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.len(), messages::INITIATION_LEN);
    // The keepalive was staged: it goes out when the session is up.
    let (_, _) = exchange(&a, &b, out, t0);
    assert_eq!(b.dev.stats().rx_keepalives, 1);
}

#[test]
fn short_timings_force_a_rekey_in_seconds() {
    // What the daemon's testing option does: rekey after 2 s of a session's life.
    let t0 = start();
    let timing = Timing {
        rekey_after_time: secs(2),
        ..exact()
    };
    let (a, b) = pair(timing, t0);
    connect(&a, &b, t0);
    let mut t = t0;
    for round in 0..5 {
        t += secs(6);
        let p = ipv4(a.ip, b.ip, &[round; 10]);
        let (r, m) = a.send(std::slice::from_ref(&p), t);
        assert!(
            matches!(r, Encrypted::Send { wake: true, .. }),
            "round {round}"
        );
        assert_eq!(b.receive(&m, a.endpoint, t).0, vec![p]);
        exchange(&a, &b, a.dev.tick(t), t);
    }
    assert_eq!(a.dev.stats().sessions, 6);
    assert_eq!(b.dev.stats().sessions, 6);
}
