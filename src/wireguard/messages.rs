//! WireGuard's messages (whitepaper 5.4): types, sizes and field offsets.
//!
//! Every message starts with a 32-bit little-endian type (the type byte and three zero
//! bytes). Handshake messages have exactly their size; a transport message is at least
//! [`KEEPALIVE_LEN`].

/// Handshake initiation.
pub const MESSAGE_INITIATION: u32 = 1;
/// Handshake response.
pub const MESSAGE_RESPONSE: u32 = 2;
/// Cookie reply.
pub const MESSAGE_COOKIE_REPLY: u32 = 3;
/// Transport data.
pub const MESSAGE_TRANSPORT: u32 = 4;

/// The size of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// The size of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// The size of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// The header of a transport message (type, receiver index, counter).
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// The smallest transport message: a keepalive (header and tag).
pub const KEEPALIVE_LEN: usize = 32;

// Field offsets.
pub(crate) const SENDER: usize = 4;
pub(crate) const INIT_EPHEMERAL: usize = 8;
pub(crate) const INIT_STATIC: usize = 40;
pub(crate) const INIT_TIMESTAMP: usize = 88;
pub(crate) const RESP_RECEIVER: usize = 8;
pub(crate) const RESP_EPHEMERAL: usize = 12;
pub(crate) const RESP_EMPTY: usize = 44;
pub(crate) const COOKIE_RECEIVER: usize = 4;
pub(crate) const COOKIE_NONCE: usize = 8;
pub(crate) const COOKIE_SEALED: usize = 32;

/// The message type (the first four bytes, little-endian), if there are four.
pub fn message_type(msg: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(msg.get(..4)?.try_into().ok()?))
}

/// The type of a handshake message ([`MESSAGE_INITIATION`], [`MESSAGE_RESPONSE`] or
/// [`MESSAGE_COOKIE_REPLY`]) of exactly its size, else `None`.
pub fn control_type(msg: &[u8]) -> Option<u32> {
    let t = message_type(msg)?;
    let len = match t {
        MESSAGE_INITIATION => INITIATION_LEN,
        MESSAGE_RESPONSE => RESPONSE_LEN,
        MESSAGE_COOKIE_REPLY => COOKIE_REPLY_LEN,
        _ => return None,
    };
    (msg.len() == len).then_some(t)
}

/// A little-endian `u32` at `at` (callers check the length first).
pub(crate) fn u32_at(msg: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(msg[at..at + 4].try_into().unwrap())
}

/// 32 bytes at `at` (callers check the length first).
pub(crate) fn key_at(msg: &[u8], at: usize) -> [u8; 32] {
    msg[at..at + 32].try_into().unwrap()
}

/// Where mac1 starts in a handshake message of `len` bytes.
pub(crate) fn mac1_at(len: usize) -> usize {
    len - 32
}

/// Where mac2 starts in a handshake message of `len` bytes.
pub(crate) fn mac2_at(len: usize) -> usize {
    len - 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_type_needs_exact_size_and_zero_reserved_bytes() {
        let cases: &[(u32, usize, Option<u32>)] = &[
            (1, 148, Some(1)),
            (1, 147, None),
            (1, 149, None),
            (2, 92, Some(2)),
            (2, 148, None),
            (3, 64, Some(3)),
            (3, 65, None),
            (4, 148, None),
            (0, 148, None),
            (0x0101, 148, None), // a non-zero reserved byte
        ];
        for &(t, len, want) in cases {
            let mut m = vec![0u8; len];
            m[..4].copy_from_slice(&t.to_le_bytes());
            assert_eq!(control_type(&m), want, "type {t:#x} len {len}");
        }
        assert_eq!(control_type(&[1, 0, 0]), None);
        assert_eq!(message_type(&[4, 0, 0, 0, 9]), Some(4));
    }

    #[test]
    fn layout_adds_up() {
        assert_eq!(INIT_STATIC, INIT_EPHEMERAL + 32);
        assert_eq!(INIT_TIMESTAMP, INIT_STATIC + 48);
        assert_eq!(mac1_at(INITIATION_LEN), INIT_TIMESTAMP + 28);
        assert_eq!(RESP_EPHEMERAL, RESP_RECEIVER + 4);
        assert_eq!(mac1_at(RESPONSE_LEN), RESP_EMPTY + 16);
        assert_eq!(COOKIE_SEALED + 32, COOKIE_REPLY_LEN);
    }
}
