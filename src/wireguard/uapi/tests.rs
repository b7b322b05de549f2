//! The configuration protocol against wireguard-go's behaviour: the value parsers'
//! tables (Go's `netip`, `strconv` and `hex` rules), `get` byte for byte, `set`'s
//! semantics section by section, and each refusal's errno, kind, and what stays applied.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Instant;

use super::*;
use crate::wireguard::tests::{connect, keys, pair, start};
use crate::wireguard::{DeviceConfig, Timing};

const K1: [u8; 32] = seq(0);
const K2: [u8; 32] = seq(32);
const K3: [u8; 32] = seq(64);
const PSK: [u8; 32] = [7; 32];
const PRIV: [u8; 32] = [0x11; 32];

const fn seq(from: u8) -> [u8; 32] {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = from + i as u8;
        i += 1;
    }
    k
}

fn hex(k: &[u8]) -> String {
    Hex(k).to_string()
}

fn dev(private: Option<[u8; 32]>) -> Device {
    let d = Device::new(DeviceConfig::default());
    if let Some(k) = private {
        d.set_private_key(&k, Instant::now());
    }
    d
}

fn set(d: &Device, text: &str) -> Result<(), UapiError> {
    d.uapi_set(text, Instant::now())
}

fn allowed(d: &Device, key: &[u8; 32]) -> Option<Vec<String>> {
    let peers = d.peers();
    let p = peers.iter().find(|p| p.public_key == *key)?;
    Some(p.allowed_ips.iter().map(|n| n.to_string()).collect())
}

fn lo_index() -> u32 {
    match crate::udp::parse_host("fe80::1%lo", AF_INET6) {
        Ok((_, Some(i))) => i,
        other => panic!("no loopback interface: {other:?}"),
    }
}

// --- values ---------------------------------------------------------------------------

#[test]
fn endpoints_accepted_and_written_back() {
    let lo = lo_index();
    let v6 = |s: &str, port, scope| {
        SocketAddr::V6(SocketAddrV6::new(
            s.parse::<Ipv6Addr>().unwrap(),
            port,
            0,
            scope,
        ))
    };
    let cases: Vec<(&str, SocketAddr, &str)> = vec![
        (
            "1.2.3.4:51820",
            "1.2.3.4:51820".parse().unwrap(),
            "1.2.3.4:51820",
        ),
        ("10.0.0.1:0", "10.0.0.1:0".parse().unwrap(), "10.0.0.1:0"),
        (
            "10.0.0.1:65535",
            "10.0.0.1:65535".parse().unwrap(),
            "10.0.0.1:65535",
        ),
        (
            "[fd00::1]:51820",
            v6("fd00::1", 51820, 0),
            "[fd00::1]:51820",
        ),
        ("[FD00:0:0::1]:1", v6("fd00::1", 1, 0), "[fd00::1]:1"),
        // an IPv4-mapped address stays IPv6, written as Go writes it
        (
            "[::ffff:1.2.3.4]:53",
            v6("::ffff:1.2.3.4", 53, 0),
            "[::ffff:1.2.3.4]:53",
        ),
        // ParseUint takes leading zeros
        (
            "1.2.3.4:051820",
            "1.2.3.4:51820".parse().unwrap(),
            "1.2.3.4:51820",
        ),
        // a zone: an interface name (its index), or a number
        ("[fe80::1%lo]:9", v6("fe80::1", 9, lo), "[fe80::1%lo]:9"),
        ("[fd00::2%7]:9", v6("fd00::2", 9, 7), "[fd00::2%7]:9"),
    ];
    for (text, want, back) in cases {
        let got = parse_endpoint(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(got, want, "{text}");
        assert_eq!(format_endpoint(&got), back, "{text}");
    }
}

#[test]
fn endpoints_refused() {
    for text in [
        "",
        "1.2.3.4",
        "1.2.3.4:",
        ":51820",
        "1.2.3.4:65536",
        "1.2.3.4:-1",
        "1.2.3.4:+1",
        "1.2.3.4:0x10",
        "1.2.3.4: 1",
        "fd00::1:51820",   // IPv6 without brackets
        "[1.2.3.4]:51820", // brackets are for IPv6 only
        "[fd00::1]51820",
        "[fd00::1:51820",
        "[]:1",
        "example.com:51820", // names are not resolved (wg resolves them)
        "1.2.3.04:1",        // a leading zero in an IPv4 octet
        "256.0.0.1:1",
        "[fe80::1%]:9", // an empty zone
        "[fe80::1%no-such-if0]:9",
        "[fe80::1%99999999999]:9",
        "1.2.3.4%lo:1", // a zone on IPv4
        "<broadcast>:1",
    ] {
        let e = parse_endpoint(text).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadAddress, "{text}: {e}");
    }
}

#[test]
fn prefixes_masked_and_refused() {
    for (text, want) in [
        ("10.0.0.0/24", "10.0.0.0/24"),
        ("10.0.0.1/24", "10.0.0.0/24"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("10.1.2.3/32", "10.1.2.3/32"),
        ("fd00::1/64", "fd00::/64"),
        ("::/0", "::/0"),
        ("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"),
        ("FD00::/8", "fd00::/8"),
    ] {
        assert_eq!(parse_prefix(text).unwrap().to_string(), want, "{text}");
    }
    for text in [
        "10.0.0.0",
        "10.0.0.0/",
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0.0/024",
        "10.0.0.0/00",
        "10.0.0.0/255.255.255.0",
        "10.0.0.0/-1",
        "10.0.0.0/+8",
        "fe80::1%eth0/64",
        "/24",
        "host/24",
        "10.0.0.0/8/8",
        "01.0.0.0/8",
    ] {
        let e = parse_prefix(text).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadAllowedIp, "{text}: {e}");
    }
}

#[test]
fn keys_and_numbers() {
    assert_eq!(parse_key(&hex(&K1)), Ok(K1));
    assert_eq!(parse_key(&hex(&K1).to_uppercase()), Ok(K1));
    let h = hex(&K1);
    for text in [
        &h[..62],
        &format!("{h}00"),
        &format!("zz{}", &h[2..]),
        &format!("0 {}", &h[2..]),
        &format!("+0{}", &h[2..]),
        "",
        // 64 characters, not 64 digits
        &format!("é{}", &h[2..]),
    ] {
        assert_eq!(
            parse_key(text).unwrap_err().kind(),
            ErrorKind::BadKey,
            "{text}"
        );
    }
    for (text, bits, want) in [
        ("0", 16, Some(0)),
        ("65535", 16, Some(65535)),
        ("0000000000000000000000065535", 16, Some(65535)),
        ("4294967295", 32, Some(4294967295)),
        ("65536", 16, None),
        ("4294967296", 32, None),
        ("-1", 16, None),
        ("+1", 16, None),
        (" 1", 16, None),
        ("1_000", 16, None),
        ("", 16, None),
        ("\u{661}", 16, None), // an Arabic-Indic digit: not ASCII
    ] {
        assert_eq!(parse_uint(text, bits).ok(), want, "{text}");
    }
    assert_eq!(
        parse_uint("65536", 16).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        parse_uint("x", 16).unwrap_err().kind(),
        ErrorKind::BadUapiLine
    );
}

// --- get ------------------------------------------------------------------------------

#[test]
fn get_of_an_empty_device_is_empty() {
    assert_eq!(dev(None).uapi_get(Instant::now()), "");
}

#[test]
fn get_in_wireguard_go_order_and_format() {
    let d = dev(Some(PRIV));
    set(
        &d,
        &format!(
            "listen_port=51820\nfwmark=32\npublic_key={}\npreshared_key={}\n\
             endpoint=192.0.2.1:51821\npersistent_keepalive_interval=25\n\
             allowed_ip=fd00::/64\nallowed_ip=10.0.0.1/24\npublic_key={}\n\
             allowed_ip=10.9.0.0/16\nendpoint=[fd00::9]:7\n",
            hex(&K1),
            hex(&PSK),
            hex(&K2)
        ),
    )
    .unwrap();
    let private = d.private_key().unwrap();
    assert_eq!(private, crate::wireguard::crypto::clamp(PRIV));
    assert_eq!(
        d.uapi_get(Instant::now()),
        format!(
            "private_key={}\nlisten_port=51820\nfwmark=32\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.1:51821\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
             persistent_keepalive_interval=25\nallowed_ip=fd00::/64\nallowed_ip=10.0.0.0/24\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=[fd00::9]:7\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
             persistent_keepalive_interval=0\nallowed_ip=10.9.0.0/16\n",
            hex(&private),
            hex(&K1),
            hex(&PSK),
            hex(&K2),
            hex(&[0; 32])
        )
    );
}

#[test]
fn get_reports_handshake_time_and_counters() {
    let t0 = start();
    let (a, b) = pair(Timing::default(), t0);
    connect(&a, &b, t0);
    let p = &a.dev.peers()[0];
    assert!(p.last_handshake.as_secs() > 0 && p.tx_bytes > 0 && p.rx_bytes > 0);
    let text = a.dev.uapi_get(t0);
    for want in [
        format!("last_handshake_time_sec={}\n", p.last_handshake.as_secs()),
        format!(
            "last_handshake_time_nsec={}\n",
            p.last_handshake.subsec_nanos()
        ),
        format!("tx_bytes={}\nrx_bytes={}\n", p.tx_bytes, p.rx_bytes),
        format!("endpoint={}\n", b.endpoint),
    ] {
        assert!(text.contains(&want), "{want:?} not in {text}");
    }
}

#[test]
fn get_then_set_of_its_configuration_is_the_same() {
    let d = dev(Some(PRIV));
    set(
        &d,
        &format!(
            "listen_port=1\nfwmark=2\npublic_key={}\nendpoint=[::ffff:1.2.3.4]:5\n\
             allowed_ip=::ffff:10.0.0.0/104\nallowed_ip=10.1.0.0/16\npublic_key={}\n\
             preshared_key={}\npersistent_keepalive_interval=9\n",
            hex(&K1),
            hex(&K2),
            hex(&PSK)
        ),
    )
    .unwrap();
    let text = d.uapi_get(Instant::now());
    // what get reports and set does not take (the counters) left out, as wg does
    let config: String = text
        .lines()
        .filter(|l| !l.starts_with("last_handshake") && !l.contains("x_bytes="))
        .map(|l| format!("{l}\n"))
        .collect();
    let copy = dev(None);
    set(&copy, &config).unwrap();
    assert_eq!(copy.uapi_get(Instant::now()), text);
}

// --- set ------------------------------------------------------------------------------

#[test]
fn device_keys() {
    let d = dev(None);
    set(
        &d,
        &format!("private_key={}\nlisten_port=51820\nfwmark=7\n", hex(&PRIV)),
    )
    .unwrap();
    assert_eq!(d.public_key(), Some(keys(0x11).1));
    assert_eq!((d.listen_port(), d.fwmark()), (51820, 7));
    // all zeros: no key
    set(&d, &format!("private_key={}\nfwmark=0\n", hex(&[0; 32]))).unwrap();
    assert_eq!(
        (d.private_key(), d.public_key(), d.fwmark()),
        (None, None, 0)
    );
}

#[test]
fn set_semantics_as_wireguard_go() {
    let k = |k: &[u8; 32]| hex(k);
    // (text, peers after, allowed IPs of some peers after)
    type Case = (String, Vec<[u8; 32]>, Vec<([u8; 32], Vec<&'static str>)>);
    let cases: Vec<Case> = vec![
        // replace_peers removes everything before the new sections
        (
            format!("replace_peers=true\npublic_key={}\n", k(&K3)),
            vec![K3],
            vec![(K3, vec![])],
        ),
        // remove anywhere in a section removes the peer; later lines change nothing
        (
            format!(
                "public_key={}\nallowed_ip=10.5.0.0/16\nremove=true\n",
                k(&K1)
            ),
            vec![K2],
            vec![],
        ),
        (
            format!(
                "public_key={}\nremove=true\nallowed_ip=10.5.0.0/16\nendpoint=1.2.3.4:5\n",
                k(&K1)
            ),
            vec![K2],
            vec![],
        ),
        // update_only: nothing for a peer that does not exist, changes for one that does
        (
            format!(
                "public_key={}\nupdate_only=true\nallowed_ip=10.7.0.0/16\n",
                k(&K3)
            ),
            vec![K1, K2],
            vec![],
        ),
        (
            format!(
                "public_key={}\nupdate_only=true\nallowed_ip=10.7.0.0/16\n",
                k(&K1)
            ),
            vec![K1, K2],
            vec![(K1, vec!["10.1.0.0/16", "10.7.0.0/16"])],
        ),
        // update_only after lines that created the peer: the peer goes again
        (
            format!(
                "public_key={}\nallowed_ip=10.7.0.0/16\nupdate_only=true\n",
                k(&K3)
            ),
            vec![K1, K2],
            vec![],
        ),
        // an allowed IP moves from the peer that had it to the one that takes it
        (
            format!("public_key={}\nallowed_ip=10.1.0.0/16\n", k(&K2)),
            vec![K1, K2],
            vec![(K1, vec![]), (K2, vec!["10.2.0.0/16", "10.1.0.0/16"])],
        ),
        // -PREFIX removes one; the last word on a prefix wins
        (
            format!("public_key={}\nallowed_ip=-10.1.0.0/16\n", k(&K1)),
            vec![K1, K2],
            vec![(K1, vec![])],
        ),
        (
            format!(
                "public_key={}\nallowed_ip=-10.1.0.0/16\nallowed_ip=10.1.0.0/16\n",
                k(&K1)
            ),
            vec![K1, K2],
            vec![(K1, vec!["10.1.0.0/16"])],
        ),
        (
            format!(
                "public_key={}\nallowed_ip=10.8.0.0/16\nallowed_ip=-10.8.0.0/16\n",
                k(&K1)
            ),
            vec![K1, K2],
            vec![(K1, vec!["10.1.0.0/16"])],
        ),
        // -PREFIX masks as an addition does
        (
            format!("public_key={}\nallowed_ip=-10.1.2.3/16\n", k(&K1)),
            vec![K1, K2],
            vec![(K1, vec![])],
        ),
        // removing a prefix another peer holds changes nothing
        (
            format!("public_key={}\nallowed_ip=-10.2.0.0/16\n", k(&K1)),
            vec![K1, K2],
            vec![(K2, vec!["10.2.0.0/16"])],
        ),
        // replace_allowed_ips forgets what came before it in the section
        (
            format!(
                "public_key={}\nallowed_ip=10.8.0.0/16\nreplace_allowed_ips=true\n\
                 allowed_ip=10.9.0.0/16\n",
                k(&K1)
            ),
            vec![K1, K2],
            vec![(K1, vec!["10.9.0.0/16"])],
        ),
        // a section for the device's own public key changes nothing (as wireguard-go)
        (
            format!(
                "public_key={}\nallowed_ip=10.6.0.0/16\nremove=true\n",
                k(&keys(0x11).1)
            ),
            vec![K1, K2],
            vec![(K1, vec!["10.1.0.0/16"]), (K2, vec!["10.2.0.0/16"])],
        ),
        // a key in two sections of one operation: both apply, in order
        (
            format!(
                "public_key={}\nallowed_ip=10.8.0.0/16\npublic_key={}\n\
                 allowed_ip=10.8.0.0/16\npublic_key={}\nendpoint=1.2.3.4:5\n",
                k(&K1),
                k(&K2),
                k(&K1)
            ),
            vec![K1, K2],
            vec![
                (K1, vec!["10.1.0.0/16"]),
                (K2, vec!["10.2.0.0/16", "10.8.0.0/16"]),
            ],
        ),
        // the end of input ends the operation; a blank line ends it before
        (
            format!("public_key={}\n\npublic_key={}\n", k(&K3), k(&K1)),
            vec![K1, K2, K3],
            vec![],
        ),
        // \r\n line ends, as bufio.ScanLines reads them; "\r\n" alone is a blank line
        (
            format!(
                "public_key={}\r\nallowed_ip=10.4.0.0/16\r\n\r\nremove=true\n",
                k(&K3)
            ),
            vec![K1, K2, K3],
            vec![(K3, vec!["10.4.0.0/16"])],
        ),
    ];
    for (text, peers, want) in cases {
        // the peers derive their keys from the device's: the device's key is set first
        let d = dev(Some(keys(0x11).0));
        set(
            &d,
            &format!(
                "public_key={}\nallowed_ip=10.1.0.0/16\npublic_key={}\nallowed_ip=10.2.0.0/16\n",
                k(&K1),
                k(&K2)
            ),
        )
        .unwrap();
        set(&d, &text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let got: Vec<[u8; 32]> = d.peers().iter().map(|p| p.public_key).collect();
        assert_eq!(got, peers, "{text:?}");
        for (key, nets) in want {
            assert_eq!(
                allowed(&d, &key),
                Some(nets.iter().map(|s| s.to_string()).collect())
            );
        }
    }
}

#[test]
fn refusals_have_wireguard_go_errnos_and_the_lines_before_stay() {
    let k3 = hex(&K3);
    let cases: Vec<(String, i32, ErrorKind, bool)> = vec![
        (
            "listen_port=65536\n".into(),
            errno::INVALID,
            ErrorKind::OutOfRange,
            false,
        ),
        (
            "listen_port=abc\n".into(),
            errno::INVALID,
            ErrorKind::BadUapiLine,
            false,
        ),
        (
            "fwmark=-1\n".into(),
            errno::INVALID,
            ErrorKind::BadUapiLine,
            false,
        ),
        (
            "private_key=123\n".into(),
            errno::INVALID,
            ErrorKind::BadKey,
            false,
        ),
        (
            "replace_peers=false\n".into(),
            errno::INVALID,
            ErrorKind::BadUapiLine,
            false,
        ),
        (
            "bogus=1\n".into(),
            errno::INVALID,
            ErrorKind::BadUapiLine,
            false,
        ),
        (
            "no equals sign\n".into(),
            errno::PROTOCOL,
            ErrorKind::BadUapiLine,
            false,
        ),
        // device keys after a peer are peer keys, and invalid ones
        (
            format!("public_key={k3}\nlisten_port=5\n"),
            errno::INVALID,
            ErrorKind::BadUapiLine,
            true,
        ),
        (
            format!("public_key={}\n", &k3[..10]),
            errno::INVALID,
            ErrorKind::BadKey,
            false,
        ),
        // the lines before the bad one stay applied (the peer and its endpoint)
        (
            format!("public_key={k3}\nendpoint=1.2.3.4:5\nallowed_ip=bad\n"),
            errno::INVALID,
            ErrorKind::BadAllowedIp,
            true,
        ),
        (
            format!("public_key={k3}\nendpoint=1.2.3.4\n"),
            errno::INVALID,
            ErrorKind::BadAddress,
            true,
        ),
        (
            format!("public_key={k3}\npreshared_key=00\n"),
            errno::INVALID,
            ErrorKind::BadKey,
            true,
        ),
        (
            format!("public_key={k3}\npersistent_keepalive_interval=65536\n"),
            errno::INVALID,
            ErrorKind::OutOfRange,
            true,
        ),
        (
            format!("public_key={k3}\nprotocol_version=2\n"),
            errno::INVALID,
            ErrorKind::BadProtocolVersion,
            true,
        ),
        (
            format!("public_key={k3}\nprotocol_version=01\n"),
            errno::INVALID,
            ErrorKind::BadProtocolVersion,
            true,
        ),
        (
            format!("public_key={k3}\nremove=1\n"),
            errno::INVALID,
            ErrorKind::BadUapiLine,
            true,
        ),
        (
            format!("public_key={k3}\nupdate_only=false\n"),
            errno::INVALID,
            ErrorKind::BadUapiLine,
            true,
        ),
        (
            format!("public_key={k3}\nreplace_allowed_ips=yes\n"),
            errno::INVALID,
            ErrorKind::BadUapiLine,
            true,
        ),
        (
            format!("public_key={k3}\nunknown=1\n"),
            errno::INVALID,
            ErrorKind::BadUapiLine,
            true,
        ),
        (
            format!("public_key={k3}\nno equals\n"),
            errno::PROTOCOL,
            ErrorKind::BadUapiLine,
            true,
        ),
        // a value is parsed (and refused) even in a section that changes nothing
        (
            format!("public_key={k3}\nremove=true\nallowed_ip=nope\n"),
            errno::INVALID,
            ErrorKind::BadAllowedIp,
            false,
        ),
    ];
    for (text, errno, kind, applied) in cases {
        let d = dev(Some(PRIV));
        let e = set(&d, &text).unwrap_err();
        assert_eq!((e.errno(), e.kind()), (errno, kind), "{text:?}: {e}");
        assert_eq!(e.code(), -i64::from(errno));
        assert!(
            e.to_string().starts_with(&format!("IPC error -{errno}: ")),
            "{e}"
        );
        assert_eq!(allowed(&d, &K3).is_some(), applied, "{text:?}");
        if text.contains("endpoint=1.2.3.4:5") {
            assert_eq!(d.peers()[0].endpoint, Some("1.2.3.4:5".parse().unwrap()));
        }
        // the error as the engine's (a binding's ValueError)
        assert_eq!(Error::from(e).kind(), kind);
    }
    // a device line after the bad one is not applied
    let d = dev(None);
    assert!(set(&d, "fwmark=3\nlisten_port=x\nfwmark=9\n").is_err());
    assert_eq!(d.fwmark(), 3);
}

#[test]
fn the_private_key_of_a_peer_removes_it() {
    let (private, public) = keys(0x42);
    let d = dev(None);
    set(
        &d,
        &format!(
            "public_key={}\nallowed_ip=10.1.0.0/16\npublic_key={}\n",
            hex(&public),
            hex(&K1)
        ),
    )
    .unwrap();
    set(&d, &format!("private_key={}\n", hex(&private))).unwrap();
    let peers: Vec<[u8; 32]> = d.peers().iter().map(|p| p.public_key).collect();
    assert_eq!(peers, [K1]);
}

#[test]
fn a_persistent_keepalive_turned_on_sends_at_once() {
    let t0 = start();
    let d = dev(Some(PRIV));
    let (_, peer) = keys(0x22);
    let section = |secs: u16| {
        format!(
            "public_key={}\nendpoint=192.0.2.9:7\npersistent_keepalive_interval={secs}\n",
            hex(&peer)
        )
    };
    d.uapi_set(&section(25), t0).unwrap();
    // 0 -> 25: a keepalive is queued; without a session it starts a handshake
    let out = d.tick(t0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.len(), crate::wireguard::messages::INITIATION_LEN);
    assert_eq!(out[0].1, "192.0.2.9:7".parse().unwrap());
    // 25 -> 25: nothing new
    d.uapi_set(&section(25), t0).unwrap();
    assert!(d.tick(t0).is_empty());
}

#[test]
fn uapi_error_shape() {
    let e = UapiError::new(errno::PORT_IN_USE, ErrorKind::OutOfRange, "port".into());
    assert_eq!((e.errno(), e.code(), e.message()), (98, -98, "port"));
    assert_eq!(e.to_string(), "IPC error -98: port");
}
