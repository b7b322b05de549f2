//! WireGuard's configuration protocol (UAPI, <https://www.wireguard.com/xplatform/>) on a
//! [`Device`], as wireguard-go's `device/uapi.go` speaks it: [`Device::uapi_get`] writes
//! the body of a `get=1` answer, [`Device::uapi_set`] applies the lines of a `set=1`
//! operation. The socket, the framing (`get=1\n\n`, the blank line that ends a `set`, the
//! `errno=` line) and the lines' length limit are the server's (the Python package's
//! `tunoffload.wireguard.uapi`).
//!
//! Values are parsed as wireguard-go parses them (Go's `strconv.ParseUint`, `netip`
//! and `hex`): keys are exactly 64 hexadecimal digits, numbers decimal digits only
//! (leading zeros allowed), endpoints `a.b.c.d:port` or `[v6]:port` (`[v6%zone]:port`:
//! a zone is an interface name or number), allowed IPs `address/length` (masked; no
//! zone, no leading zero in the length), and `allowed_ip=-PREFIX` removes one.
//!
//! A refused line is a [`UapiError`]: wireguard-go's negative errno for the client
//! ([`UapiError::code`]), the engine's kind for a Python `ValueError`, and a message. As
//! in wireguard-go, the lines before it stay applied and the ones after it are not.

use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Instant;

use zeroize::Zeroizing;

use super::allowed_ips::IpNet;
use super::config::PeerLine;
use super::device::Device;
use super::peer::lock;
use super::KEY_LEN;
use crate::engine::error::{Error, ErrorKind};
use crate::udp::{consts::AF_INET6, host_string, parse_host};

/// The errnos of wireguard-go's `ipc` package; the client reads their negatives.
pub mod errno {
    /// `IpcErrorIO`: the request could not be read (a line too long).
    pub const IO: i32 = 5;
    /// `IpcErrorProtocol`: a line without `=`.
    pub const PROTOCOL: i32 = 71;
    /// `IpcErrorInvalid`: a bad key or value.
    pub const INVALID: i32 = 22;
    /// `IpcErrorPortInUse`: the listen port could not be bound or the fwmark set (the
    /// caller's sockets: never from [`Device::uapi_set`](super::Device::uapi_set)).
    pub const PORT_IN_USE: i32 = 98;
    /// `IpcErrorUnknown`: anything else.
    pub const UNKNOWN: i32 = 55;
}

/// A refused UAPI operation: wireguard-go's errno ([`errno`]), and the engine's error (a
/// kind and a message naming the line's problem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UapiError {
    errno: i32,
    error: Error,
}

impl UapiError {
    /// An error with `errno` (one of [`errno`]) of `kind`.
    pub fn new(errno: i32, kind: ErrorKind, message: String) -> UapiError {
        UapiError {
            errno,
            error: Error::new(kind, message),
        }
    }

    /// `-EINVAL` for `error` (a value refused), its message after `what`.
    fn invalid(what: &str, error: Error) -> UapiError {
        let message = format!("{what}: {}", error.message());
        UapiError {
            errno: errno::INVALID,
            error: error.with_message(message),
        }
    }

    /// The errno (positive, one of [`errno`]).
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// What the client reads after `errno=`: the errno's negative.
    pub fn code(&self) -> i64 {
        -i64::from(self.errno)
    }

    /// The engine's kind of the refusal.
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }

    /// What was wrong with which line.
    pub fn message(&self) -> &str {
        self.error.message()
    }

    /// The engine's error (kind and message), without the errno.
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl fmt::Display for UapiError {
    /// As wireguard-go logs it: `IPC error -22: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IPC error {}: {}", self.code(), self.message())
    }
}

impl std::error::Error for UapiError {}

impl From<UapiError> for Error {
    fn from(e: UapiError) -> Error {
        e.error
    }
}

/// An error of `kind` for a value.
fn bad(kind: ErrorKind, message: String) -> Error {
    Error::new(kind, message)
}

/// A `bad_uapi_line` error with `-EINVAL`.
fn bad_line(message: String) -> UapiError {
    UapiError::new(errno::INVALID, ErrorKind::BadUapiLine, message)
}

impl Device {
    /// The body of a `get=1` answer, everything before `errno=0`, as wireguard-go's
    /// `IpcGetOperation` writes it: `private_key` (if set), `listen_port` and `fwmark` (if
    /// not 0), then for each peer, in the order they were added, `public_key`,
    /// `preshared_key`, `protocol_version=1`, `endpoint` (if known),
    /// `last_handshake_time_sec`, `last_handshake_time_nsec`, `tx_bytes`, `rx_bytes`,
    /// `persistent_keepalive_interval` and each `allowed_ip` in the order added; keys
    /// in lower-case hexadecimal, one `key=value` line each.
    pub fn uapi_get(&self, _now: Instant) -> String {
        let _config = lock(&self.config);
        let mut out = String::new();
        let mut line = |key: &str, value: &dyn fmt::Display| {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{key}={value}");
        };
        let port = self.listen_port();
        if port != 0 {
            line("listen_port", &port);
        }
        let mark = self.fwmark();
        if mark != 0 {
            line("fwmark", &mark);
        }
        for p in self.peers() {
            line("public_key", &Hex(&p.public_key));
            line("preshared_key", &Hex(&Zeroizing::new(p.preshared_key)[..]));
            line("protocol_version", &1);
            if let Some(ep) = &p.endpoint {
                line("endpoint", &format_endpoint(ep));
            }
            line("last_handshake_time_sec", &p.last_handshake.as_secs());
            line("last_handshake_time_nsec", &p.last_handshake.subsec_nanos());
            line("tx_bytes", &p.tx_bytes);
            line("rx_bytes", &p.rx_bytes);
            line(
                "persistent_keepalive_interval",
                &p.persistent_keepalive_interval,
            );
            for net in &p.allowed_ips {
                line("allowed_ip", net);
            }
        }
        // The private key's line in front, written into the one allocation that is
        // returned (no copy of it left behind in a buffer that grew).
        let Some(key) = self.private_key().map(Zeroizing::new) else {
            return out;
        };
        let mut all = String::with_capacity(out.len() + 2 * KEY_LEN + 13);
        let _ = writeln!(all, "private_key={}", Hex(&key[..]));
        all.push_str(&out);
        all
    }

    /// Applies the lines of a `set=1` operation (without the `set=1` line), up to the
    /// first blank line or the end of `text`, as wireguard-go's `IpcSetOperation`: each
    /// line is `key=value` (a trailing `\r` is dropped); device keys first
    /// (`private_key`, all zeros for none; `listen_port`; `fwmark`;
    /// `replace_peers=true`), then a `public_key` line opens a peer's section (created
    /// if it does not exist; our own key's is ignored) with `update_only=true`,
    /// `remove=true`, `preshared_key`, `endpoint`, `persistent_keepalive_interval`,
    /// `replace_allowed_ips=true`, `allowed_ip` (`-PREFIX` removes it) and
    /// `protocol_version=1`; device keys after a `public_key` are peer keys, and refused.
    ///
    /// Each line takes effect as it is read. The first bad line stops the operation:
    /// the lines before it stay applied (as in wireguard-go), and its [`UapiError`]
    /// says why (`-EPROTO` for a line without `=`, `-EINVAL` for anything else).
    /// `listen_port` and `fwmark` are only stored: the caller binds and marks its sockets
    /// (compare [`listen_port`](Self::listen_port) before and after).
    pub fn uapi_set(&self, text: &str, _now: Instant) -> Result<(), UapiError> {
        let _config = lock(&self.config);
        let mut section = None;
        let mut device_lines = true;
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                break;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(UapiError::new(
                    errno::PROTOCOL,
                    ErrorKind::BadUapiLine,
                    format!("failed to parse line {line:?}: no '='"),
                ));
            };
            if key == "public_key" {
                if let Some(s) = section.take() {
                    self.end_section(s);
                }
                device_lines = false;
                let key = parse_key(value)
                    .map_err(|e| UapiError::invalid("failed to get peer by public key", e))?;
                section = Some(self.begin_section(&key));
            } else if device_lines {
                self.device_line(key, value)?;
            } else if let Some(s) = section.as_mut() {
                self.section_line(s, &peer_line(key, value)?);
            }
        }
        if let Some(s) = section {
            self.end_section(s);
        }
        Ok(())
    }

    /// One device line (wireguard-go's `handleDeviceLine`).
    fn device_line(&self, key: &str, value: &str) -> Result<(), UapiError> {
        match key {
            "private_key" => {
                let k = parse_key(value)
                    .map(Zeroizing::new)
                    .map_err(|e| UapiError::invalid("failed to set private_key", e))?;
                self.apply_private_key(&k);
            }
            "listen_port" => {
                let port = parse_uint(value, 16)
                    .map_err(|e| UapiError::invalid("failed to parse listen_port", e))?;
                self.set_listen_port(port as u16);
            }
            "fwmark" => {
                let mark =
                    parse_uint(value, 32).map_err(|e| UapiError::invalid("invalid fwmark", e))?;
                self.set_fwmark(mark as u32);
            }
            "replace_peers" => {
                parse_true(value, "failed to set replace_peers")?;
                self.apply_remove_all_peers();
            }
            _ => return Err(bad_line(format!("invalid UAPI device key: {key:?}"))),
        }
        Ok(())
    }
}

/// One peer line parsed (wireguard-go's `handlePeerLine`, which parses a line's value
/// even in a section that changes nothing).
fn peer_line(key: &str, value: &str) -> Result<PeerLine, UapiError> {
    Ok(match key {
        "update_only" => {
            parse_true(value, "failed to set update only")?;
            PeerLine::UpdateOnly
        }
        "remove" => {
            parse_true(value, "failed to set remove")?;
            PeerLine::Remove
        }
        "preshared_key" => PeerLine::PresharedKey(
            parse_key(value).map_err(|e| UapiError::invalid("failed to set preshared key", e))?,
        ),
        "endpoint" => PeerLine::Endpoint(
            parse_endpoint(value).map_err(|e| UapiError::invalid("failed to set endpoint", e))?,
        ),
        "persistent_keepalive_interval" => {
            let secs = parse_uint(value, 16).map_err(|e| {
                UapiError::invalid("failed to set persistent keepalive interval", e)
            })?;
            PeerLine::PersistentKeepalive(secs as u16)
        }
        "replace_allowed_ips" => {
            parse_true(value, "failed to replace allowedips")?;
            PeerLine::ReplaceAllowedIps
        }
        "allowed_ip" => {
            let (remove, prefix) = match value.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, value),
            };
            let net = parse_prefix(prefix)
                .map_err(|e| UapiError::invalid("failed to set allowed ip", e))?;
            match remove {
                true => PeerLine::RemoveAllowedIp(net),
                false => PeerLine::AllowedIp(net),
            }
        }
        "protocol_version" if value == "1" => PeerLine::ProtocolVersion(1),
        "protocol_version" => {
            return Err(UapiError::new(
                errno::INVALID,
                ErrorKind::BadProtocolVersion,
                format!("invalid protocol version: {value:?} (only 1 exists)"),
            ))
        }
        _ => return Err(bad_line(format!("invalid UAPI peer key: {key:?}"))),
    })
}

/// `true`, else `-EINVAL` (`bad_uapi_line`): the only value of the flag lines.
fn parse_true(value: &str, what: &str) -> Result<(), UapiError> {
    match value {
        "true" => Ok(()),
        _ => Err(bad_line(format!("{what}, invalid value: {value:?}"))),
    }
}

/// A 32-byte key from exactly 64 hexadecimal digits, either case (Go's
/// `hex.DecodeString` of exactly a key's length); else `bad_key`. The caller zeroes a
/// private key.
pub fn parse_key(value: &str) -> Result<[u8; KEY_LEN], Error> {
    let digit = |c: u8| (c as char).to_digit(16);
    let b = value.as_bytes();
    let mut key = [0u8; KEY_LEN];
    if b.len() == 2 * KEY_LEN {
        for (k, pair) in key.iter_mut().zip(b.chunks_exact(2)) {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => *k = (hi * 16 + lo) as u8,
                _ => {
                    return Err(bad(
                        ErrorKind::BadKey,
                        "not a key: a character that is no hexadecimal digit".into(),
                    ))
                }
            }
        }
        return Ok(key);
    }
    Err(bad(
        ErrorKind::BadKey,
        format!(
            "not a key: {} characters, not 64 hexadecimal digits",
            value.chars().count()
        ),
    ))
}

/// A decimal number below `2^bits` as Go's `strconv.ParseUint(value, 10, bits)` reads
/// it: ASCII digits only (leading zeros allowed, no sign, no spaces). Not a number:
/// `bad_uapi_line`; too large: `out_of_range`.
pub fn parse_uint(value: &str, bits: u32) -> Result<u64, Error> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            ErrorKind::BadUapiLine,
            format!("{value:?} is not a decimal number"),
        ));
    }
    let max = u64::MAX >> (64 - bits);
    match value.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(bad(
            ErrorKind::OutOfRange,
            format!("{value} is out of range (0 to {max})"),
        )),
    }
}

/// An endpoint as wireguard-go's `ParseEndpoint` (Go's `netip.ParseAddrPort`) reads it:
/// `a.b.c.d:port`, or `[v6]:port` with an optional `%zone` (an interface name or number:
/// the scope id); IP literals only, an IPv6 address only in brackets and brackets only
/// around one. Else `bad_address`.
pub fn parse_endpoint(value: &str) -> Result<SocketAddr, Error> {
    let bad = |why: &str| bad(ErrorKind::BadAddress, format!("{value:?}: {why}"));
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(bad("not an ip:port"));
    };
    if host.is_empty() {
        return Err(bad("no IP"));
    }
    if port.is_empty() {
        return Err(bad("no port"));
    }
    let bracketed = host.strip_prefix('[');
    let host = match bracketed {
        Some(inner) => inner.strip_suffix(']').ok_or_else(|| bad("missing ]"))?,
        None => host,
    };
    let port = parse_uint(port, 16).map_err(|_| bad("invalid port"))? as u16;
    if let Ok(a) = host.parse::<Ipv4Addr>() {
        if bracketed.is_some() {
            return Err(bad("square brackets can only be used with IPv6 addresses"));
        }
        return Ok(SocketAddr::V4(SocketAddrV4::new(a, port)));
    }
    let (ip, zone) = match host.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (host, None),
    };
    if ip.parse::<Ipv6Addr>().is_err() {
        return Err(bad("not an IP address"));
    }
    if bracketed.is_none() {
        return Err(bad("IPv6 addresses must be surrounded by square brackets"));
    }
    let scope = match zone {
        None => 0,
        Some("") => return Err(bad("an empty zone")),
        Some(z) if z.bytes().all(|b| b.is_ascii_digit()) => z
            .parse::<u32>()
            .map_err(|_| bad("a zone number out of range"))?,
        // An interface name: its index.
        Some(_) => match parse_host(host, AF_INET6) {
            Ok((_, Some(scope))) => scope,
            _ => return Err(bad("no interface of that name for the zone")),
        },
    };
    // (Parsed above: an IPv6 literal.)
    let ip: Ipv6Addr = ip.parse().map_err(|_| bad("not an IP address"))?;
    Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
}

/// An endpoint as wireguard-go writes it (Go's `AddrPort.String`): `a.b.c.d:port`, or
/// `[v6]:port` (an IPv4-mapped address as `::ffff:a.b.c.d`), with `%zone` where the
/// scope id is not 0: the interface's name for a link-local address, else the number.
pub fn format_endpoint(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) if a.scope_id() == 0 => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => {
            // The zone as `socket.recvfrom` names it (one rule for both).
            let host = host_string(addr);
            let zone = host.rsplit_once('%').map_or("", |(_, z)| z);
            format!("[{}%{zone}]:{}", a.ip(), a.port())
        }
    }
}

/// An allowed IP as wireguard-go reads it (Go's `netip.ParsePrefix`), masked:
/// `address/length`, the length decimal without a leading zero and at most 32 (IPv4) or
/// 128 (IPv6), no zone. Else `bad_allowed_ip`.
pub fn parse_prefix(value: &str) -> Result<IpNet, Error> {
    let bad = |why: &str| bad(ErrorKind::BadAllowedIp, format!("{value:?}: {why}"));
    let Some((addr, len)) = value.rsplit_once('/') else {
        return Err(bad("no '/'"));
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
    let well_formed = !len.is_empty()
        && len.len() <= 3
        && len.bytes().all(|b| b.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'));
    if !well_formed {
        return Err(bad("bad prefix length"));
    }
    let len: u8 = len.parse().map_err(|_| bad("bad prefix length"))?;
    IpNet::new(addr, len).map_err(|e| bad(e.message()))
}

/// Bytes as lower-case hexadecimal.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
