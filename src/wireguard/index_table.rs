//! The device's index table (wireguard-go's `indextable.go`): our random 32-bit
//! indices, each naming a handshake in progress or a session of one peer. A message's
//! receiver index finds its session here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::crypto;
use super::keypair::Keypair;
use super::peer::Peer;

/// What an index names.
pub(crate) struct Entry {
    pub(crate) peer: Arc<Peer>,
    /// The session; `None` while the index names the peer's handshake in progress.
    pub(crate) keypair: Option<Arc<Keypair>>,
}

/// Indices are random (ours, not the sender's: a message can only pick among them), so
/// they hash to themselves.
#[derive(Default)]
pub(crate) struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u32(&mut self, i: u32) {
        // Spread the bits over the whole word for the table's bucket selection.
        self.0 = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Index to entry.
#[derive(Default)]
pub(crate) struct IndexTable {
    map: HashMap<u32, Entry, BuildHasherDefault<IndexHasher>>,
}

impl IndexTable {
    /// A new random index (never 0, which means "none") for `peer`'s handshake.
    pub(crate) fn new_handshake_index(&mut self, peer: &Arc<Peer>) -> u32 {
        loop {
            let i = crypto::random_u32();
            if i == 0 || self.map.contains_key(&i) {
                continue;
            }
            self.map.insert(
                i,
                Entry {
                    peer: peer.clone(),
                    keypair: None,
                },
            );
            return i;
        }
    }

    /// Makes `index` name `keypair` (it named the handshake that derived it); nothing if
    /// the index is gone.
    pub(crate) fn swap_for_keypair(&mut self, index: u32, keypair: Arc<Keypair>) {
        if let Some(e) = self.map.get_mut(&index) {
            e.keypair = Some(keypair);
        }
    }

    /// Frees `index` (0: nothing).
    pub(crate) fn remove(&mut self, index: u32) {
        if index != 0 {
            self.map.remove(&index);
        }
    }

    /// Frees the indices of the given keypairs.
    pub(crate) fn remove_keypairs<'a>(
        &mut self,
        kps: impl IntoIterator<Item = &'a Option<Arc<Keypair>>>,
    ) {
        for kp in kps.into_iter().flatten() {
            self.remove(kp.local_index);
        }
    }

    /// The entry of `index`.
    pub(crate) fn get(&self, index: u32) -> Option<&Entry> {
        self.map.get(&index)
    }

    /// How many indices are in use.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
