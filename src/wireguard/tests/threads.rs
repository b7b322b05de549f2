//! Three threads per device pair at once, as the daemon runs them: TUN-to-UDP
//! (`encrypt`), UDP-to-TUN (`decrypt` + `handle_control`) and the control thread
//! (`tick`), with rekeys forced every few hundred messages. Bounded in count; checks
//! that every packet that comes out was sent, once, and that sessions rotated.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc;
use std::thread;

use super::*;

#[test]
fn device_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Device>();
}

#[test]
fn three_threads_with_rekeys() {
    let t0 = start();
    let timing = Timing {
        rekey_after_messages: 300,
        rekey_timeout: Duration::from_millis(10),
        rekey_timeout_jitter: Duration::ZERO,
        ..Timing::default()
    };
    let (a, b) = pair(timing, t0);
    connect(&a, &b, t0);
    let (a, b) = (Arc::new(a), Arc::new(b));
    // The shared fake clock, in milliseconds after t0, advanced by the control thread.
    let clock = Arc::new(AtomicU64::new(0));
    let now = {
        let clock = clock.clone();
        move || t0 + Duration::from_millis(clock.load(SeqCst))
    };
    let (to_b, from_a) = mpsc::channel::<Vec<u8>>();
    let (to_a, from_b) = mpsc::channel::<Vec<u8>>();
    let done = Arc::new(AtomicBool::new(false));
    // Batches a's sender has made: the fake clock moves only while it makes progress, so
    // fake time is tied to the traffic, not to how fast the control thread spins.
    let progress = Arc::new(AtomicU64::new(0));
    // Set by the sender when it waits for the clock (after it read the clock): the
    // control thread then moves it on whatever the progress.
    let waiting = Arc::new(AtomicBool::new(false));

    // a's TUN-to-UDP: batches of 8 numbered packets, 2000 of them and then on until a few
    // rekeys have completed (the receiving thread may lag behind), 20000 at most.
    let sender = {
        let (a, to_b, now, clock) = (a.clone(), to_b.clone(), now.clone(), clock.clone());
        let (progress, waiting) = (progress.clone(), waiting.clone());
        thread::spawn(move || {
            let mut sent = HashSet::new();
            for batch in 0..20_000u32 {
                if batch >= 2000 && a.dev.stats().sessions >= 4 {
                    break;
                }
                progress.fetch_add(1, SeqCst);
                let packets: Vec<Vec<u8>> = (0..8u32)
                    .map(|i| ipv4(a.ip, b_ip(), &(batch * 8 + i).to_be_bytes()))
                    .collect();
                let (r, msgs) = a.send(&packets, now());
                match r {
                    Encrypted::Send { .. } => {
                        for p in &packets {
                            sent.insert(p.clone());
                        }
                        for m in msgs {
                            to_b.send(m).unwrap();
                        }
                    }
                    Encrypted::Staged => {
                        // Staged packets may be sent later (or dropped): they count as
                        // sent.
                        for p in &packets {
                            sent.insert(p.clone());
                        }
                    }
                    Encrypted::NoRoute => panic!("no route"),
                }
                // Every 10 batches, wait for the fake clock to move on (at most 1 s of
                // real time), so the traffic spans a few hundred fake milliseconds.
                if batch % 10 == 0 {
                    let (seen, since) = (clock.load(SeqCst), std::time::Instant::now());
                    waiting.store(true, SeqCst);
                    while clock.load(SeqCst) == seen && since.elapsed() < Duration::from_secs(1) {
                        thread::yield_now();
                    }
                }
            }
            sent
        })
    };
    // b's UDP-to-TUN, answering handshakes.
    let receiver = {
        let (b, to_a, now, done) = (b.clone(), to_a.clone(), now.clone(), done.clone());
        thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                let first = match from_a.recv_timeout(Duration::from_millis(20)) {
                    Ok(m) => m,
                    Err(_) if done.load(SeqCst) => break,
                    Err(_) => continue,
                };
                let mut batch = vec![first];
                while batch.len() < 32 {
                    match from_a.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let (packets, replies) = b.receive(&batch, A_EP.parse().unwrap(), now());
                got.extend(packets);
                for (d, _) in replies {
                    to_a.send(d).unwrap();
                }
            }
            got
        })
    };
    // The control thread: time passes, both tick; a's UDP-to-TUN runs here too.
    let control = {
        let (a, b, clock, done) = (a.clone(), b.clone(), clock.clone(), done.clone());
        thread::spawn(move || {
            // Bounded in real time; the fake clock moves on once per batch-making step
            // of the sender.
            let (since, mut last) = (std::time::Instant::now(), 0);
            while !done.load(SeqCst) && since.elapsed() < Duration::from_secs(60) {
                let p = progress.load(SeqCst);
                if p != last || waiting.swap(false, SeqCst) {
                    last = p;
                    clock.fetch_add(1, SeqCst);
                }
                let t = t0 + Duration::from_millis(clock.load(SeqCst));
                for (d, _) in a.dev.tick(t) {
                    to_b.send(d).unwrap();
                }
                for (d, _) in b.dev.tick(t) {
                    to_a.send(d).unwrap();
                }
                let mut batch = Vec::new();
                while let Ok(m) = from_b.try_recv() {
                    batch.push(m);
                }
                if !batch.is_empty() {
                    let (_, replies) = a.receive(&batch, B_EP.parse().unwrap(), t);
                    for (d, _) in replies {
                        to_b.send(d).unwrap();
                    }
                }
                thread::yield_now();
            }
        })
    };
    let sent = sender.join().unwrap();
    // Let the last messages drain, then stop.
    thread::sleep(Duration::from_millis(200));
    done.store(true, SeqCst);
    let got = receiver.join().unwrap();
    control.join().unwrap();

    let unique: HashSet<&Vec<u8>> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no packet came out twice");
    assert!(
        got.iter().all(|p| sent.contains(p)),
        "only sent packets came out"
    );
    assert!(
        got.len() > 8000,
        "most of the 16000 or more packets sent arrived: {}",
        got.len()
    );
    let sessions = a.dev.stats().sessions;
    assert!(
        sessions >= 3,
        "rekeys happened under traffic: {sessions} sessions"
    );
}

const A_EP: &str = "192.0.2.1:51820";
const B_EP: &str = "192.0.2.2:51820";

fn b_ip() -> [u8; 4] {
    [10, 9, 0, 2]
}
