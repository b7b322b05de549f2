//! The forwarder of `benchmarks/forwarder.py` in Rust alone, on the crate's batch I/O: no
//! Python, no binding. It shows what the README idiom costs without the interpreter, the
//! floor a Python forwarder can approach.
//!
//!     forward_native pass|idiom NETNS_A NETNS_B
//!
//! Creates `tob0` with offload in each (existing) namespace, prints `ready`, then forwards
//! both ways (a thread each) until its standard input closes. `pass` writes each
//! super-packet as it was read; `idiom` splits it into 128 buffers of 64 KiB
//! (`batch::recv_multiple`) and coalesces and writes them (`batch::send_multiple`), as
//! `fwd_idiom` does from Python (`tunoffload_bench::forward_once`). The harness adds the
//! addresses and brings the devices up.
use std::io::Read;
use std::sync::Arc;
use tunoffload::device::{batch, Netns, NetnsTarget, Tun, TunOptions};
use tunoffload::engine::{GroTable, VIRTIO_NET_HDR_LEN};
use tunoffload_bench::forward_once;

const BATCH: usize = 128;

fn open(ns: &str) -> Tun {
    let netns = Netns::open(&NetnsTarget::Name(ns.into())).expect("namespace");
    Tun::open(&TunOptions {
        name: Some("tob0".into()),
        offload: true,
        netns: Some(Arc::new(netns)),
        ..TunOptions::default()
    })
    .expect("device")
}

/// Whether to go on after `e`: not once either device is shut down (the run is over).
fn go_on(e: &tunoffload::device::Error, src: &Tun, dst: &Tun) -> bool {
    if src.is_closed() || dst.is_closed() {
        return false;
    }
    eprintln!("forward_native: {e}");
    true
}

fn pass(src: &Tun, dst: &Tun) {
    let mut buf = vec![0u8; VIRTIO_NET_HDR_LEN + 65535];
    loop {
        let r = src
            .read(&mut buf, true)
            .and_then(|n| dst.write(&buf[..n], true));
        if let Err(e) = r {
            if !go_on(&e, src, dst) {
                return;
            }
        }
    }
}

fn idiom(src: &Tun, dst: &Tun) {
    let off = VIRTIO_NET_HDR_LEN;
    let mut original = vec![0u8; off + 65535];
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; off + 65535]).collect();
    let mut sizes = vec![0usize; BATCH];
    let mut table = GroTable::new();
    let state = batch::RecvState::new();
    loop {
        let r = forward_once(
            src,
            dst,
            &state,
            &mut original,
            &mut bufs,
            &mut sizes,
            &mut table,
        );
        if let Err(e) = r {
            if !go_on(&e, src, dst) {
                return;
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 || !matches!(args[1].as_str(), "pass" | "idiom") {
        eprintln!("usage: forward_native pass|idiom NETNS_A NETNS_B");
        std::process::exit(2);
    }
    let a = Arc::new(open(&args[2]));
    let b = Arc::new(open(&args[3]));
    let f: fn(&Tun, &Tun) = if args[1] == "pass" { pass } else { idiom };
    for (src, dst) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
        std::thread::spawn(move || f(&src, &dst));
    }
    println!("ready");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink); // the harness closes it to stop us
    a.shutdown();
    b.shutdown();
}
