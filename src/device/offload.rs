//! A live device's offload switches, the fallback when the kernel refuses a coalesced
//! write, and a fault hook for tests.
//!
//! - *Segmentation* (what the kernel hands us): `TUNSETOFFLOAD` with TSO4|TSO6 (TCP) and
//!   USO4|USO6 (UDP), checksum offload always kept. Device-wide: the ioctl sets the
//!   device's features, so every queue of a device shares one [`Offloads`].
//! - *Coalescing* (what `send_multiple`'s GRO merges before writing): TCP and UDP flows,
//!   each on its own. On by default (UDP where the kernel took USO, as wireguard-go does).
//! - *Fallback*: a coalesced write (virtio `gso_type` not `GSO_NONE`) the kernel refuses
//!   with `EINVAL` (the 6.1.103 backport that broke Tailscale, NAS kernels, UDP GSO bugs)
//!   is split back into its segments with the engine's own split (GRO then GSO gives the
//!   original segments back) and written again as plain packets; coalescing of that kind
//!   is turned off for the device and counted (`tcp_coalescing_fallbacks`,
//!   `udp_coalescing_fallbacks` in [`Counters`](super::Counters)). Nothing is lost.
//! - *Faults*: [`Tun::inject_write_faults`] makes the next writes fail with an errno as if
//!   the kernel had refused them (this kernel accepts what older ones refused). Unset,
//!   it costs one relaxed atomic load per write.

use std::ffi::c_ulong;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use super::sys::{TUNSETOFFLOAD, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
use super::{invalid, Error, Tun};
use crate::engine::gro::GroKinds;
use crate::engine::virtio::*;
use crate::engine::{ErrorKind, Split};
use crate::hooks::locked;

const TSO: c_ulong = TUN_F_TSO4 | TUN_F_TSO6;
const USO: c_ulong = TUN_F_USO4 | TUN_F_USO6;
/// The coalescing kinds, as bits.
pub(super) const TCP: u8 = 1;
pub(super) const UDP: u8 = 2;

/// The switches of one device, shared by its queues.
#[derive(Debug)]
pub struct Offloads {
    /// The `TUNSETOFFLOAD` mask as last set; the lock keeps a change and its ioctl
    /// together.
    mask: Mutex<c_ulong>,
    /// `TCP | UDP`: the flows `send_multiple` coalesces (read once per batch).
    coalescing: AtomicU8,
}

/// A snapshot of a device's switches (all false without offload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OffloadState {
    /// The kernel may hand over TCP super-packets (TSO4/TSO6).
    pub tcp_segmentation: bool,
    /// The kernel may hand over UDP super-packets (USO4/USO6).
    pub udp_segmentation: bool,
    /// `send_multiple` merges TCP segments into super-packets.
    pub tcp_coalescing: bool,
    /// `send_multiple` merges UDP datagrams into super-packets.
    pub udp_coalescing: bool,
}

impl OffloadState {
    /// Every switch by name (as `stats()` and `tunoffload info` show them).
    pub fn items(&self) -> [(&'static str, bool); 4] {
        [
            ("tcp_segmentation", self.tcp_segmentation),
            ("udp_segmentation", self.udp_segmentation),
            ("tcp_coalescing", self.tcp_coalescing),
            ("udp_coalescing", self.udp_coalescing),
        ]
    }
}

impl Offloads {
    /// The state after opening: `mask` as set, coalescing on for TCP and, where the kernel
    /// took USO, for UDP (none at all without a virtio header).
    pub(super) fn new(vnet: bool, udp_gso: bool) -> Self {
        let mask = match (vnet, udp_gso) {
            (false, _) => 0,
            (true, false) => TUN_F_CSUM | TSO,
            (true, true) => TUN_F_CSUM | TSO | USO,
        };
        let coalescing = match (vnet, udp_gso) {
            (false, _) => 0,
            (true, false) => TCP,
            (true, true) => TCP | UDP,
        };
        Offloads {
            mask: Mutex::new(mask),
            coalescing: AtomicU8::new(coalescing),
        }
    }

    /// The switches as they are now.
    pub fn state(&self) -> OffloadState {
        let kinds = self.coalescing();
        let mask = *self.mask();
        OffloadState {
            tcp_segmentation: mask & TSO != 0,
            udp_segmentation: mask & USO != 0,
            tcp_coalescing: kinds.tcp,
            udp_coalescing: kinds.udp,
        }
    }

    fn mask(&self) -> MutexGuard<'_, c_ulong> {
        locked(&self.mask)
    }

    /// Sets the device's mask to the shared one (a queue opened later, whose open set
    /// the full mask on the device).
    pub(super) fn apply(&self, fd: i32) -> Result<(), Error> {
        let mask = self.mask();
        set_mask(
            fd,
            *mask,
            "restoring the offload mask on a new queue (TUNSETOFFLOAD)",
        )
    }

    fn coalescing(&self) -> GroKinds {
        let c = self.coalescing.load(Relaxed);
        GroKinds {
            tcp: c & TCP != 0,
            udp: c & UDP != 0,
        }
    }

    fn set_coalescing(&self, kind: u8, on: bool) {
        match on {
            true => self.coalescing.fetch_or(kind, Relaxed),
            false => self.coalescing.fetch_and(!kind, Relaxed),
        };
    }
}

fn set_mask(fd: i32, mask: c_ulong, what: &str) -> Result<(), Error> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(fd, TUNSETOFFLOAD as _, mask) } != 0 {
        return Err(super::last_error(what));
    }
    Ok(())
}

/// A packet as written to a device with offload (virtio header first) that is a
/// super-packet: `Some(TCP or UDP)` by its GSO type.
pub(super) fn coalesced_kind(packet: &[u8]) -> Option<u8> {
    match packet.get(1).map(|t| t & !VIRTIO_NET_HDR_GSO_ECN) {
        Some(VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6) => Some(TCP),
        Some(VIRTIO_NET_HDR_GSO_UDP_L4) => Some(UDP),
        _ => None,
    }
}

/// The write faults armed: `count` in the low 32 bits, the errno above, and the top bit
/// for "coalesced packets only". 0: none.
const COALESCED_ONLY: u64 = 1 << 63;

impl Tun {
    /// The switches as they are now.
    pub fn offload_state(&self) -> OffloadState {
        self.offloads.state()
    }

    /// The flows `send_multiple` coalesces now.
    pub fn coalescing(&self) -> GroKinds {
        self.offloads.coalescing()
    }

    fn needs_offload(&self, what: &str) -> Result<(), Error> {
        self.check_open()?;
        if !self.vnet_hdr() {
            return Err(invalid(
                ErrorKind::IncompatibleOptions,
                format!("{what} needs a device opened with offload=True"),
            ));
        }
        Ok(())
    }

    fn set_segmentation(&self, bits: c_ulong, on: bool, what: &str) -> Result<(), Error> {
        self.needs_offload(what)?;
        let mut mask = self.offloads.mask();
        let new = if on { *mask | bits } else { *mask & !bits };
        if new == *mask {
            return Ok(());
        }
        let doing = format!(
            "turning {what} {} (TUNSETOFFLOAD)",
            if on { "on" } else { "off" }
        );
        match set_mask(self.raw_fd(), new, &doing) {
            Err(Error::Os { errno, msg }) if errno == libc::EINVAL && bits == USO => {
                Err(Error::Os {
                    errno,
                    msg: format!(
                        "{msg}: this kernel has no UDP segmentation offload for TUN devices \
                         (Linux 6.2 and later have it)"
                    ),
                })
            }
            Err(e) => Err(e),
            Ok(()) => {
                *mask = new;
                Ok(())
            }
        }
    }

    /// TCP segmentation offload (TSO4/TSO6): whether the kernel may hand this device TCP
    /// super-packets. Turned off, the kernel segments before the device (checksum
    /// offload stays on); the reads already queued may still hold super-packets, which
    /// are split as ever. For every queue of the device.
    pub fn set_tcp_segmentation(&self, on: bool) -> Result<(), Error> {
        self.set_segmentation(TSO, on, "TCP segmentation offload")
    }

    /// UDP segmentation offload (USO4/USO6), as [`set_tcp_segmentation`](Self::set_tcp_segmentation).
    /// Turning it on where the kernel has none (before Linux 6.2) is `EINVAL`.
    pub fn set_udp_segmentation(&self, on: bool) -> Result<(), Error> {
        self.set_segmentation(USO, on, "UDP segmentation offload")
    }

    /// Whether `send_multiple` merges TCP segments into super-packets. For every queue of
    /// the device; turned off by itself when the kernel refuses a TCP super-packet.
    pub fn set_tcp_coalescing(&self, on: bool) -> Result<(), Error> {
        self.needs_offload("TCP coalescing")?;
        self.offloads.set_coalescing(TCP, on);
        Ok(())
    }

    /// Whether `send_multiple` merges UDP datagrams into super-packets (`GSO_UDP_L4`,
    /// Linux 6.2 and later). On by default where the kernel took USO ([`udp_gso`](Self::udp_gso));
    /// turned on elsewhere, the first refusal turns it off again (nothing is lost).
    pub fn set_udp_coalescing(&self, on: bool) -> Result<(), Error> {
        self.needs_offload("UDP coalescing")?;
        self.offloads.set_coalescing(UDP, on);
        Ok(())
    }

    /// **Testing only.** The next `count` writes of this queue (with `coalesced_only`,
    /// of super-packets only) fail with `errno`, as if the kernel had refused them, before
    /// reaching it. `count` 0 disarms. Unset, a write pays one relaxed atomic load.
    pub fn inject_write_faults(
        &self,
        errno: i32,
        count: u32,
        coalesced_only: bool,
    ) -> Result<(), Error> {
        self.check_open()?;
        if errno <= 0 {
            return Err(invalid(
                ErrorKind::OutOfRange,
                format!("errno must be a positive error number, not {errno}"),
            ));
        }
        let v = match count {
            0 => 0,
            n => {
                u64::from(n)
                    | (errno as u64) << 32
                    | if coalesced_only { COALESCED_ONLY } else { 0 }
            }
        };
        self.faults.store(v, Relaxed);
        Ok(())
    }

    /// A fault armed (`armed`, non-zero, as loaded) that applies to writing `buf`: it is
    /// used up and returned.
    #[cold]
    pub(super) fn take_fault(&self, mut armed: u64, buf: &[u8]) -> Option<Error> {
        if armed & COALESCED_ONLY != 0 && !(self.vnet_hdr() && coalesced_kind(buf).is_some()) {
            return None;
        }
        loop {
            let left = armed & 0xffff_ffff;
            let next = if left <= 1 { 0 } else { armed - 1 };
            match self.faults.compare_exchange(armed, next, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(0) => return None,
                Err(now) => armed = now,
            }
        }
        let errno = ((armed >> 32) & 0x7fff_ffff) as i32;
        Some(Error::from_errno(
            errno,
            "writing to the TUN device (a fault injected for testing)",
        ))
    }
}

/// Whether `error` is the kernel refusing `packet`, a super-packet the engine can split,
/// with `EINVAL`: then the fallback writes its [`segments`] instead, and this turns
/// coalescing of its kind off for the device and counts it.
pub(super) fn refused_coalesced(tun: &Tun, packet: &[u8], error: &Error) -> bool {
    if error.errno() != Some(libc::EINVAL) || !tun.vnet_hdr() {
        return false;
    }
    let Some(kind) = coalesced_kind(packet) else {
        return false;
    };
    if Split::plan(packet).is_err() {
        return false; // not a packet `send_multiple` coalesced: it stays refused
    }
    tun.offloads.set_coalescing(kind, false);
    let c = &tun.counters;
    match kind {
        TCP => &c.tcp_coalescing_fallbacks,
        _ => &c.udp_coalescing_fallbacks,
    }
    .fetch_add(1, Relaxed);
    true
}

/// The segments of a super-packet as written (virtio header first), each with a plain
/// virtio header (`GSO_NONE`, no flags) and its checksums complete: the engine's split,
/// into scratch buffers.
pub(super) fn segments(packet: &[u8]) -> Result<Vec<Vec<u8>>, crate::engine::Error> {
    let split = Split::plan(packet)?;
    let mut out: Vec<Vec<u8>> = (0..split.count())
        .map(|i| vec![0u8; VIRTIO_NET_HDR_LEN + split.size(i)])
        .collect();
    split.write(
        &packet[VIRTIO_NET_HDR_LEN..],
        &mut out,
        VIRTIO_NET_HDR_LEN,
        false,
    )?;
    Ok(out)
}

/// Turns the fault counter into its parts, for tests: `(count, errno, coalesced_only)`.
#[cfg(test)]
pub(super) fn faults_armed(tun: &Tun) -> (u64, i32, bool) {
    let v = tun.faults.load(Relaxed);
    (
        v & 0xffff_ffff,
        ((v >> 32) & 0x7fff_ffff) as i32,
        v & COALESCED_ONLY != 0,
    )
}
