//! Arbitrary input never panics and never passes: a seeded random mix of garbage,
//! mutated real messages and random messages of the right types and sizes, through
//! `decrypt` and `handle_control`, with the tunnel still working after.

use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A garbage datagram: random, a mutated real one, or a random message of a real type.
fn garbage(rng: &mut Rng, real: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            let n = rng.below(200);
            rng.bytes(n)
        }
        1 => {
            let (t, n) = [(1u8, 148), (2, 92), (3, 64), (4, 32), (4, 100)][rng.below(5)];
            let mut m = rng.bytes(n);
            m[..4].copy_from_slice(&[t, 0, 0, 0]);
            m
        }
        _ => {
            let mut m = real[rng.below(real.len())].clone();
            match rng.below(3) {
                0 => {
                    let i = rng.below(m.len());
                    m[i] ^= 1 << rng.below(8);
                }
                1 => m.truncate(rng.below(m.len() + 1)),
                _ => {
                    let n = rng.below(20);
                    m.extend(rng.bytes(n));
                }
            }
            m
        }
    }
}

#[test]
fn random_input_never_panics_nor_passes() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    // Real messages to mutate: an initiation, a response, a cookie reply, transport data.
    a.send(&[ipv4(a.ip, b.ip, b"seed")], t0);
    let init = a.dev.tick(t0)[0].0.clone();
    let (_, resp) = b.receive(std::slice::from_ref(&init), a.endpoint, t0);
    let resp = resp[0].0.clone();
    b.dev.set_force_under_load(true);
    let cookie = b.dev.handle_control(&init, addr("192.0.2.99:9"), t0)[0]
        .0
        .clone();
    b.dev.set_force_under_load(false);
    let (_, _) = a.receive(std::slice::from_ref(&resp), b.endpoint, t0);
    let (_, data) = a.send(&[ipv4(a.ip, b.ip, &[1; 300])], t0);
    let real = vec![init, resp, cookie, data[0].clone()];

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..400 {
        let now = t0 + Duration::from_millis(round);
        let n = 1 + rng.below(40);
        let offset = rng.below(3) * 8;
        let dgrams: Vec<Vec<u8>> = (0..n).map(|_| garbage(&mut rng, &real)).collect();
        let mut bufs: Vec<Vec<u8>> = dgrams
            .iter()
            .map(|d| [vec![0u8; offset], d.clone()].concat())
            .collect();
        let mut sizes: Vec<usize> = dgrams.iter().map(|d| d.len()).collect();
        let mut sources: Vec<Option<SocketAddr>> = (0..n)
            .map(|i| (i % 3 != 0).then(|| addr("198.51.100.7:7")))
            .collect();
        let dev = if round % 2 == 0 { &a.dev } else { &b.dev };
        let d = dev
            .decrypt(&mut bufs, offset, &mut sizes, &mut sources, now)
            .unwrap();
        assert!(d.packets + d.control <= n);
        // The only packet that can come out is the real one, the first time.
        for i in 0..d.packets {
            let p = &bufs[i][offset + 16..offset + 16 + sizes[i]];
            assert_eq!(
                p,
                &ipv4(a.ip, b.ip, &[1; 300])[..],
                "only the real packet, once"
            );
        }
        for i in d.packets..d.packets + d.control {
            let msg = &bufs[i][offset..offset + sizes[i]];
            let src = sources[i].unwrap_or_else(|| addr("198.51.100.8:8"));
            for (out, _) in dev.handle_control(msg, src, now) {
                assert!(out.len() <= 148);
            }
        }
        // handle_control on raw garbage too, and the timers.
        let g = garbage(&mut rng, &real);
        dev.handle_control(&g, addr("198.51.100.9:9"), now);
        dev.tick(now);
    }
    let (sa, sb) = (a.dev.stats(), b.dev.stats());
    assert!(sb.rx_forged + sb.rx_junk + sb.rx_malformed + sb.hs_bad_mac1 > 100);
    // No transport message was ever for a; the one real one for b opens at most once.
    assert_eq!(sa.rx_packets, 0);
    assert!(sb.rx_packets <= 1);
    // The tunnel still works.
    let later = t0 + Duration::from_secs(1);
    let p = ipv4(a.ip, b.ip, b"still up");
    let (r, m) = a.send(std::slice::from_ref(&p), later);
    assert!(matches!(r, Encrypted::Send { .. }));
    assert_eq!(b.receive(&m, a.endpoint, later).0, vec![p]);
}
