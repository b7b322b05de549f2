//! The WireGuard protocol, as the whitepaper and wireguard-go define it: pure Rust, no
//! Python and **no I/O of its own**.
//!
//! The caller owns the UDP sockets, the TUN device, the threads and the clock: it hands
//! this module batches of packets and datagrams, single handshake messages and the time
//! (`now: Instant` on every call), and sends what the module returns. The transport data
//! path (sealing and opening messages of type 4) is the batch AEAD of [`crate::aead`].
//!
//! Files, split as wireguard-go's `device/` is:
//! - `crypto`: BLAKE2s hash, HMAC and KDF1..3, keyed BLAKE2s-128 MACs, X25519,
//!   ChaCha20-Poly1305 / XChaCha20-Poly1305 of one handshake field.
//! - `messages`: the message types, sizes and field offsets.
//! - `tai64n`: TAI64N timestamps (whitened as wireguard-go's).
//! - `noise`: Noise_IKpsk2: initiation, response, the keys of a session.
//! - `cookie`: mac1/mac2, cookie replies, the rotating cookie secret, the load meter and
//!   the per-address rate limiter.
//! - [`allowed_ips`]: cryptokey routing, a longest-prefix trie for IPv4 and IPv6.
//! - `keypair`: a session's [`Sealer`](crate::aead::Sealer) / [`Opener`](crate::aead::Opener)
//!   and the current / previous / next slots.
//! - `timers`: the five timers of `timers.go` as atomic deadlines, and [`Timing`].
//! - `index_table`: our random 32-bit indices, each naming a handshake or a session.
//! - `peer`: one peer's state, and the lock order.
//! - `device`: [`Device`], the whole: sessions, the control path, `tick`.
//! - `config`: [`DeviceConfig`], the keys, port, fwmark and peers, changed one UAPI line
//!   at a time ([`PeerLine`]) and reported as `get=1` does ([`PeerStatus`]).
//! - [`uapi`]: the configuration protocol's text, as wireguard-go's `uapi.go`
//!   ([`Device::uapi_get`], [`Device::uapi_set`]).
//! - `send`, `receive`: the data paths, [`Device::encrypt`] and [`Device::decrypt`], and
//!   their forms for a binding's buffers ([`Device::encrypt_with`],
//!   [`Device::decrypt_with`]).
//! - [`pump`]: the data paths as loops between a TUN queue and UDP sockets
//!   ([`pump_tx`], [`pump_rx`]): the only part of this module that does I/O, for a caller
//!   that wants no code of its own per batch.
//!
//! # The API
//!
//! Everything is `&self` on a [`Device`], which is `Send + Sync`: three threads call it at
//! once (TUN to UDP, UDP to TUN, and a timer/control thread). Locks are fine-grained
//! (device identity, peer table, index table, and per peer: handshake, keypairs,
//! endpoint, staged packets); a batch takes each lock it needs once, never once per
//! packet (the one per-message lock is the aead module's replay window, held to check a
//! counter), and the steady state allocates nothing. Argument errors are the engine's
//! [`Error`](crate::engine::Error) (kinds `offset_too_small`, `count_too_large`,
//! `buffer_too_small`, `out_buf_too_small`, `too_few_addresses`, `overlapping_buffers`,
//! `bad_protocol_version`, `bad_allowed_ip`, and for the configuration `bad_key`,
//! `bad_address`, `bad_uapi_line`, `out_of_range`, `unknown_option`); bad packets are
//! never errors, only counted.
//!
//! ## Sending: [`Device::encrypt`]
//! `encrypt(bufs, offset, sizes, now) -> Result<Encrypted>`: packet `i` is
//! `bufs[i][offset..offset + sizes[i]]` for `i < sizes.len()`, `offset >= 16` (the
//! message header goes in front). A TUN read is one super-packet, one flow: the
//! destination of the **first** packet is looked up in the allowed IPs, and the whole
//! batch goes to that peer.
//! - [`Encrypted::Send`] `{ endpoint, count }`: sealed in place with the peer's current
//!   session; message `i` is `bufs[i][offset - 16..offset - 16 + sizes[i]]` (buffers grow
//!   for padding and tag as [`ExpandBuffer`](crate::engine::ExpandBuffer) allows); send
//!   them to `endpoint`. Tx bytes and the timers (data sent) are updated; when the session
//!   is old or has sent many messages, a new handshake is queued for the control thread
//!   ([`Encrypted::Send::wake`]).
//! - [`Encrypted::NoRoute`]: no peer for the destination, or the first packet is not an
//!   IP packet (counted in [`DeviceStats`]).
//! - [`Encrypted::Staged`]: no usable session or no endpoint yet: the packets are copied
//!   to the peer's staged queue (128 packets at most, the oldest dropped) and a handshake
//!   initiation is queued for the control thread: call [`Device::tick`] soon.
//!
//! ## Receiving: [`Device::decrypt`]
//! `decrypt(bufs, offset, sizes, sources, now) -> Result<Decrypted>`: datagram `i` is
//! `bufs[i][offset..offset + sizes[i]]`, from `sources[i]` (`None`: unknown, no roaming;
//! the `Option<SocketAddr>`s that [`UdpBatch::recv`](crate::udp::UdpBatch::recv) fills).
//! Transport messages are opened in place by the aead module's batch open, with a
//! resolver over the index table (each message's receiver index finds its session);
//! each opened packet's inner source address must map to the peer whose key opened it;
//! the endpoint roams to the source of the last authenticated message of each peer; rx
//! bytes and timers are updated. The batch is compacted as the aead module compacts:
//! `[0..packets)` are the decrypted IP packets (packet `i` at
//! `bufs[i][offset + 16..offset + 16 + sizes[i]]`, padding stripped) in arrival order,
//! `[packets..packets + control)` the handshake initiations and responses made for our
//! public key (right size, valid mac1) and the cookie replies (right size), untouched, in
//! arrival order, with `sources[packets..packets + control)` set to their sources, so the
//! caller passes each to [`Device::handle_control`] (the other entries of `sources` are
//! unspecified). Everything else (forged, replayed, unknown index, expired session,
//! disallowed source, malformed, keepalives, handshake messages of a wrong size or with a
//! bad mac1) is dropped, its size 0, and counted. A keepalive or data message that
//! confirms a responder's session, or a receive-side rekey, sets [`Decrypted::wake`].
//!
//! ## For a binding: [`Device::encrypt_with`], [`Device::decrypt_with`]
//! The same two calls on a caller's [`Buffers`](crate::engine::Buffers) (a Python list of
//! `bytearray`s) with its [`Hooks`](crate::hooks::Hooks): the buffers converted once,
//! checked distinct, grown before the work where a message needs room, then pinned and
//! sealed or opened through [`Hooks::work`](crate::hooks::Hooks::work) (the binding
//! releases the GIL) when the hooks find the batch worth it, as
//! [`UdpBatch::recv_with`](crate::udp::UdpBatch::recv_with) copies; a decrypt puts the
//! caller's entries in the compacted order. `sources` is the `[Option<SocketAddr>]` a
//! binding's receive metadata holds.
//!
//! ## The control path: [`Device::handle_control`], [`Device::tick`]
//! - `handle_control(msg, src, now) -> Vec<Datagram>`: one handshake initiation,
//!   response or cookie reply. Returns what to send: a response, a cookie reply (under
//!   load, for a message without a valid mac2), a keepalive or the staged packets sealed
//!   (when our handshake completed). Anything invalid is dropped and counted.
//! - `tick(now) -> Vec<Datagram>`: the timers that are due (handshake initiations and
//!   retransmissions, keepalives, persistent keepalives, key zeroing) and the work the data
//!   paths queued (handshakes, staged packets to send). [`Device::next_deadline`] says
//!   when to call it next.
//!
//! A [`Datagram`] is `(bytes, destination)`.
//!
//! ## Configuration: UAPI text, or typed values
//! [`Device::uapi_set`] applies the lines of a UAPI `set=1` operation and
//! [`Device::uapi_get`] writes the body of a `get=1` answer, byte for byte as
//! wireguard-go (see [`uapi`]): a server only frames them. The same changes typed:
//! [`Device::set_private_key`] (the public key is derived; changing it expires every
//! session whose static-static DH changes and removes a peer equal to our own public key),
//! [`Device::set_listen_port`], [`Device::set_fwmark`] (stored and reported only: the
//! caller binds and marks its sockets), [`Device::remove_all_peers`]
//! (`replace_peers=true`), and [`Device::set_peer`] with one peer block's lines in order
//! ([`PeerLine`]: `update_only`, `remove`, `preshared_key`, `endpoint`,
//! `persistent_keepalive_interval`, `replace_allowed_ips`, `allowed_ip` (add or remove),
//! `protocol_version`). [`Device::peers`] reports every peer as `get=1` does
//! ([`PeerStatus`]), [`Device::private_key`], [`Device::public_key`],
//! [`Device::listen_port`], [`Device::fwmark`] the device's values; [`Device::stats`] the
//! device's counters, drops by reason ([`DeviceStats::items`] by name). Changes are
//! serialized by one configuration lock, as wireguard-go's `ipcMutex`.
//!
//! Timer constants are overridable in [`DeviceConfig::timing`] (defaults: the real
//! values; [`Timing::set`] by name), so tests can force a rekey in seconds;
//! [`DeviceConfig::force_under_load`] makes every handshake message need a valid mac2;
//! [`DeviceConfig::from_options`] makes the whole from a binding's keyword arguments,
//! naming a bad one.
//!
//! Time: `now` is a monotonic [`std::time::Instant`]; wall-clock time (TAI64N timestamps,
//! the last handshake time) comes from the device's [`Clock`], by default
//! [`SystemClock`].

pub mod allowed_ips;
mod config;
mod cookie;
mod crypto;
mod device;
mod index_table;
mod keypair;
pub mod messages;
mod noise;
mod peer;
pub mod pump;
mod receive;
mod send;
pub mod tai64n;
mod timers;
pub mod uapi;

#[cfg(test)]
mod tests;

pub use allowed_ips::{AllowedIps, IpNet};
pub use config::{mtu_limit, DeviceConfig, PeerLine, PeerStatus};
pub use device::{Clock, Datagram, Decrypted, Device, DeviceStats, Encrypted, SystemClock};
pub use pump::{pump_rx, pump_tx, send_datagrams, PumpOptions, PumpSocket, PumpStats};
pub use timers::Timing;
pub use uapi::UapiError;

/// The length of a public, private or pre-shared key.
pub const KEY_LEN: usize = 32;
