//! Buffers as the batch calls see them, and the rules about them that every call shares.
//!
//! - [`ExpandBuffer`]: one buffer a call may grow (a `Vec<u8>`, a Python `bytearray`) or
//!   not (`&mut [u8]`, a [`Window`]).
//! - [`Window`]: a fixed region whose packet ends at a movable length that can never pass
//!   the region's end (a buffer of `send_multiple(..., sizes=)`, an output pinned for work
//!   without the GIL).
//! - [`Buffers`]: a caller's list of buffers, converted only as far as a call needs it (a
//!   Python list of 128 `bytearray`s is not converted whole for a 45-segment split).
//! - The checks: buffers that share memory ([`check_distinct`]), and the arguments every
//!   batch call takes ([`non_negative`], [`batch_len`], [`check_sizes`], [`span`]).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::thread::LocalKey;

use super::error::{bail, Error, ErrorKind, Result};

/// The largest IP packet (the 16-bit IPv4 total length; IPv6 without jumbograms): no
/// coalesced packet exceeds it, and a read buffer of this size after its header takes any
/// packet.
pub const MAX_IP_PACKET: usize = 65535;

/// How an argument is named in a message: `buf`, or `bufs[3]` (formatted only for an
/// error).
#[derive(Debug, Clone, Copy)]
pub struct Name<'a>(pub &'a str, pub Option<usize>);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(i) => write!(f, "{}[{i}]", self.0),
            None => f.write_str(self.0),
        }
    }
}

/// Runs `f` on this thread's reusable vector in `key`, empty: nothing is allocated per
/// call once it has grown (a call made meanwhile, from inside `f`, gets one of its own).
pub fn reuse<T, R>(key: &'static LocalKey<Cell<Vec<T>>>, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
    let mut v = key.with(Cell::take);
    v.clear();
    let r = f(&mut v);
    v.clear();
    key.with(|c| c.set(v));
    r
}

/// A buffer a batch call writes into and may grow. The packet is `bytes()[offset..]`.
pub trait ExpandBuffer {
    /// Buffers of this type never share memory with each other (Rust's borrows make it so
    /// for `Vec<u8>`, `&mut [u8]` and [`Window`]s in one slice): [`check_distinct`] skips
    /// them.
    const DISJOINT: bool = false;
    /// The buffer's bytes.
    fn bytes(&self) -> &[u8];
    /// The buffer's bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// The length this buffer can be grown to (its length, for fixed buffers).
    fn max_len(&self) -> usize;
    /// Sets the length to `new_len <= max_len()`; new bytes are unspecified (they are
    /// overwritten at once).
    fn resize(&mut self, new_len: usize) -> Result<()>;
    /// How long the packet can get without the buffer moving in memory.
    fn capacity(&self) -> usize {
        self.bytes().len()
    }
    /// For an object that owns its memory and that a caller may list twice (a Python
    /// `bytearray`): an identity, the same for the same object. Two buffers with
    /// identities share memory only if they are the same object. `None`: compared by
    /// address instead.
    fn identity(&self) -> Option<usize> {
        None
    }
}

impl ExpandBuffer for Vec<u8> {
    const DISJOINT: bool = true;
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn max_len(&self) -> usize {
        isize::MAX as usize
    }
    fn resize(&mut self, new_len: usize) -> Result<()> {
        Vec::resize(self, new_len, 0);
        Ok(())
    }
    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }
}

impl ExpandBuffer for &mut [u8] {
    const DISJOINT: bool = true;
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn max_len(&self) -> usize {
        self.len()
    }
    fn resize(&mut self, new_len: usize) -> Result<()> {
        if new_len != self.len() {
            bail!(
                BufferCannotGrow,
                "a fixed-size buffer of {} bytes cannot become {new_len}",
                self.len()
            );
        }
        Ok(())
    }
}

/// A fixed region of memory holding a packet that ends at `len`: the packet may grow or
/// shrink within the region, never past its end, and the region itself never moves.
///
/// Made safely from a `&mut [u8]` ([`Window::new`]); the Python binding makes them over
/// memory that an export (or the GIL) keeps in place ([`Window::from_raw`]), to use it
/// with the GIL released.
pub struct Window<'a> {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
    _bytes: PhantomData<&'a mut [u8]>,
}

// SAFETY: a Window is an exclusive borrow of its bytes (as `&mut [u8]`, which is Send).
unsafe impl Send for Window<'_> {}

impl<'a> Window<'a> {
    /// The packet `region[..len]` (at most all of `region`), able to grow to all of it.
    pub fn new(region: &'a mut [u8], len: usize) -> Self {
        Window {
            len: len.min(region.len()),
            cap: region.len(),
            ptr: NonNull::from(region).cast(),
            _bytes: PhantomData,
        }
    }

    /// All of `region`.
    pub fn whole(region: &'a mut [u8]) -> Self {
        let len = region.len();
        Window::new(region, len)
    }

    /// The window of `cap` bytes at `ptr`, the packet its first `len` (at most `cap`).
    ///
    /// # Safety
    /// `ptr` is valid for reads and writes of `cap` bytes for `'a`, and nothing else
    /// accesses them while the window's bytes are borrowed.
    pub unsafe fn from_raw(ptr: NonNull<u8>, cap: usize, len: usize) -> Self {
        Window {
            ptr,
            cap,
            len: len.min(cap),
            _bytes: PhantomData,
        }
    }

    /// Where the packet ends.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte's address.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The first byte.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

impl ExpandBuffer for Window<'_> {
    const DISJOINT: bool = true;
    fn bytes(&self) -> &[u8] {
        // SAFETY: `len <= cap` (kept by every constructor and `resize`), and the region
        // is valid and exclusive to this window (see the constructors).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
    fn max_len(&self) -> usize {
        self.cap
    }
    fn resize(&mut self, new_len: usize) -> Result<()> {
        if new_len > self.cap {
            bail!(
                BufferCannotGrow,
                "a fixed region of {} bytes cannot hold {new_len}",
                self.cap
            );
        }
        self.len = new_len;
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.cap
    }
}

impl AsMut<[u8]> for Window<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.bytes_mut()
    }
}

/// One buffer as it is before a call converts it: where it is, how long, how long it may
/// grow (what a receive checks before it reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// The first byte's address.
    pub addr: usize,
    /// Its length now.
    pub len: usize,
    /// The length it can be grown to.
    pub max_len: usize,
}

/// A caller's list of buffers, converted only as far as a call needs it. The batch calls
/// take one (`recv_multiple`'s outputs, `send_multiple`'s packets); `E` is the caller's
/// error, into which the calls convert their own.
///
/// Rust callers pass a slice of [`ExpandBuffer`]s (`&mut [Vec<u8>]`, `&mut [Window]`);
/// the Python binding a list of Python buffers.
pub trait Buffers<E> {
    /// A buffer converted for the call.
    type Buf: ExpandBuffer + AsMut<[u8]>;
    /// How many buffers there are.
    fn count(&self) -> usize;
    /// Buffer `i` as it is now, without converting it.
    fn room(&mut self, i: usize) -> std::result::Result<Room, E>;
    /// The first index `i >= from` (or `count()`) whose buffer may not grow to any length
    /// or starts at `addr`: a quick way past the buffers a receive need not look at (a
    /// Python list's `bytearray`s). Every buffer from `from` on is a fine answer.
    fn next_limited(&mut self, from: usize, addr: Option<usize>) -> usize {
        let _ = addr;
        from
    }
    /// The first `n` buffers (`n <= count()`), converted once per call. `sized`: the
    /// caller moves the packet's end within each buffer with `resize`, and it grows only
    /// past its end; otherwise `resize` sets the buffer's length. Bytes that growing adds
    /// before `written_from` are zeroed (the call writes the ones after).
    fn bufs(
        &mut self,
        n: usize,
        sized: bool,
        written_from: usize,
    ) -> std::result::Result<&mut [Self::Buf], E>;
    /// Runs `f` on the first `n` buffers as whole windows, without converting them, when
    /// each is an object with memory of its own (sharing none with another unless it is
    /// the same object, which then has the same address) at least `need(i)` bytes long;
    /// `Ok(None)` otherwise (then [`bufs`](Self::bufs) names the problem). With `pin`,
    /// each is pinned while `f` runs (nothing else resizes or frees it: the binding may
    /// run work on it with the GIL released).
    fn windows<T>(
        &mut self,
        n: usize,
        need: impl Fn(usize) -> usize,
        pin: bool,
        f: impl for<'w> FnOnce(&mut [Window<'w>]) -> T,
    ) -> std::result::Result<Option<T>, E> {
        let _ = (n, need, pin, f);
        Ok(None)
    }
    /// Runs `f` on the first `n` buffers of the last [`bufs`](Self::bufs) call as windows
    /// of their memory (each as long as its packet, able to grow to the buffer's capacity),
    /// pinned: nothing else resizes or frees them until `f` returns (the binding runs
    /// system calls and work on them with the GIL released). Afterwards the buffers take
    /// the windows' order and lengths.
    fn pinned<T>(
        &mut self,
        n: usize,
        f: impl for<'w> FnOnce(&mut [Window<'w>]) -> T,
    ) -> std::result::Result<T, E>;
    /// Puts the caller's entries in the order of the converted buffers, after a call
    /// swapped some of them (GRO).
    fn reorder(&mut self) -> std::result::Result<(), E> {
        Ok(())
    }
    /// The bytes of buffers `idx`, pinned while the slices live (a system call reads
    /// them).
    fn pinned_bytes(
        &mut self,
        idx: impl Iterator<Item = usize>,
    ) -> std::result::Result<Vec<&[u8]>, E>;
}

impl<E: From<Error>, B: ExpandBuffer + AsMut<[u8]>> Buffers<E> for [B] {
    type Buf = B;
    fn count(&self) -> usize {
        self.len()
    }
    fn room(&mut self, i: usize) -> std::result::Result<Room, E> {
        let b = &self[i];
        Ok(Room {
            addr: b.bytes().as_ptr() as usize,
            len: b.bytes().len(),
            max_len: b.max_len(),
        })
    }
    fn bufs(&mut self, n: usize, _: bool, _: usize) -> std::result::Result<&mut [B], E> {
        Ok(&mut self[..n])
    }
    fn pinned<T>(
        &mut self,
        n: usize,
        f: impl for<'w> FnOnce(&mut [Window<'w>]) -> T,
    ) -> std::result::Result<T, E> {
        let bufs = &mut self[..n];
        // Rust's borrows pin the memory already: the windows' moves and lengths are then
        // carried back to the buffers themselves.
        let mut w: Vec<Window<'_>> = (bufs.iter_mut())
            .map(|b| {
                let (len, cap) = (b.bytes().len(), b.capacity().min(b.max_len()));
                b.resize(cap).ok();
                Window::new(b.as_mut(), len)
            })
            .collect();
        let addrs: Vec<usize> = w.iter().map(Window::addr).collect();
        let r = f(&mut w);
        let to: Vec<(usize, usize)> = (w.iter().enumerate())
            .map(|(k, x)| {
                (
                    addrs.iter().position(|&a| a == x.addr()).unwrap_or(k),
                    x.len(),
                )
            })
            .collect();
        drop(w);
        let mut at: Vec<usize> = (0..n).collect(); // where each buffer is now
        for (k, &(from, len)) in to.iter().enumerate() {
            let j = at[from];
            bufs.swap(k, j);
            let moved = at.iter().position(|&p| p == k).unwrap_or(k);
            at.swap(from, moved);
            bufs[k].resize(len)?;
        }
        Ok(r)
    }
    fn pinned_bytes(
        &mut self,
        idx: impl Iterator<Item = usize>,
    ) -> std::result::Result<Vec<&[u8]>, E> {
        Ok(idx.map(|i| self[i].bytes()).collect())
    }
}

/// The first pair `(i, j)`, `i < j`, with `keys[i] == keys[j]` (0 is no key, never equal
/// to another), if any: none at once when the keys rise (buffers allocated one after
/// another usually do: one comparison per key), pairwise for a few keys, none at once for
/// one of the last two sets of keys found distinct on this thread (a batch call is usually
/// given the same buffers as the call before it: one comparison of the sets), else an
/// open-addressing set (reused per thread) of twice as many slots, a few instructions per
/// key where sorting 45 costs a couple of thousand.
pub fn find_duplicate(keys: &[usize]) -> Option<(usize, usize)> {
    if rising(keys) {
        return None;
    }
    if keys.len() <= 8 {
        for j in 1..keys.len() {
            if keys[j] == 0 {
                continue;
            }
            if let Some(i) = keys[..j].iter().position(|&k| k == keys[j]) {
                return Some((i, j));
            }
        }
        return None;
    }
    if DISTINCT.with(|d| d.borrow().iter().any(|seen| seen.as_slice() == keys)) {
        return None;
    }
    let found = hashed_duplicate(keys);
    if found.is_none() {
        DISTINCT.with(|d| {
            let mut d = d.borrow_mut();
            d.swap(0, 1);
            d[0].clear();
            d[0].extend_from_slice(keys);
        });
    }
    found
}

/// [`find_duplicate`] through an open-addressing set of twice as many slots.
fn hashed_duplicate(keys: &[usize]) -> Option<(usize, usize)> {
    let bits = (2 * keys.len()).next_power_of_two();
    let mask = bits - 1;
    // Fibonacci hashing: the product's top bits index the table.
    let shift = 64 - bits.trailing_zeros();
    let mut table = SLOTS.with(Cell::take);
    table.clear();
    table.resize(bits, (0, u32::MAX));
    let mut found = None;
    'keys: for (j, &k) in keys.iter().enumerate() {
        if k == 0 {
            continue;
        }
        let mut h = ((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize;
        loop {
            let slot = &mut table[h & mask];
            if slot.1 == u32::MAX {
                *slot = (k, j as u32);
                break;
            }
            if slot.0 == k {
                found = Some((slot.1 as usize, j));
                break 'keys;
            }
            h += 1;
        }
    }
    SLOTS.with(|t| t.set(table));
    found
}

/// Whether no two of `windows` start at the same address: windows over objects that own
/// their memory (whole `bytearray`s) share none unless they are the same object.
pub fn distinct_starts(windows: &[Window<'_>]) -> bool {
    reuse(&KEYS, |keys| {
        keys.extend(windows.iter().map(Window::addr));
        find_duplicate(keys).is_none()
    })
}

/// Whether the keys other than 0 rise strictly (then no two are equal).
fn rising(keys: &[usize]) -> bool {
    let mut last = 0;
    for &k in keys {
        if k != 0 {
            if k <= last {
                return false;
            }
            last = k;
        }
    }
    true
}

thread_local! {
    /// The last two sets of keys [`find_duplicate`] found distinct, the newer first.
    static DISTINCT: RefCell<[Vec<usize>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
    /// `find_duplicate`'s table, reused between calls.
    static SLOTS: Cell<Vec<(usize, u32)>> = const { Cell::new(Vec::new()) };
    /// The keys of `check_identities` and `distinct_starts`, reused between calls.
    static KEYS: Cell<Vec<usize>> = const { Cell::new(Vec::new()) };
}

/// Refuses buffers that share memory (`name[i]` names buffer i): the same object twice
/// (by [`ExpandBuffer::identity`]), and, unless every buffer has an identity, any two
/// whose `part(i, b)` address ranges overlap. `OverlappingBuffers`, its index the second
/// buffer.
pub fn check_distinct<B: ExpandBuffer>(
    bufs: &[B],
    part: &dyn Fn(usize, &B) -> (usize, usize),
    name: &str,
) -> Result<()> {
    if !check_identities(bufs, name)? {
        check_ranges(bufs, part, name)?;
    }
    Ok(())
}

/// The first half of [`check_distinct`], for a call that grows buffers: refuses the same
/// object twice, by identity, which holds before any of them grows (growing moves a
/// buffer, and its second entry would keep the old address). Returns whether the ranges
/// need no check (every buffer has an identity, or the type shares no memory).
pub fn check_identities<B: ExpandBuffer>(bufs: &[B], name: &str) -> Result<bool> {
    if B::DISJOINT {
        return Ok(true);
    }
    let (all, dup) = reuse(&KEYS, |keys| {
        keys.extend(bufs.iter().map(|b| b.identity().unwrap_or(0)));
        (!keys.contains(&0), find_duplicate(keys))
    });
    if let Some((i, j)) = dup {
        bail!(OverlappingBuffers @ j, "{name}[{i}] and {name}[{j}] share memory (the same bytearray twice)");
    }
    Ok(all)
}

/// The second half of [`check_distinct`]: refuses two buffers whose `part(i, b)` address
/// ranges overlap.
pub fn check_ranges<B: ExpandBuffer>(
    bufs: &[B],
    part: &dyn Fn(usize, &B) -> (usize, usize),
    name: &str,
) -> Result<()> {
    if B::DISJOINT {
        return Ok(());
    }
    let mut spans: Vec<(usize, usize, usize)> = (bufs.iter().enumerate())
        .map(|(i, b)| {
            let (s, e) = part(i, b);
            (s, e, i)
        })
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        let ((_, a_end, a), (b_start, _, b)) = (w[0], w[1]);
        if b_start < a_end {
            let (i, j) = (a.min(b), a.max(b));
            bail!(OverlappingBuffers @ j, "{name}[{i}] and {name}[{j}] share memory");
        }
    }
    Ok(())
}

/// The address range of bytes `from..to` of `b`.
pub fn addr_range<B: ExpandBuffer + ?Sized>(b: &B, from: usize, to: usize) -> (usize, usize) {
    let s = b.bytes().as_ptr() as usize;
    (s + from, s + to)
}

/// Whether two address ranges share a byte.
pub fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// `v` (an argument as the caller gave it) as a size; `NegativeArgument` naming it
/// (`name`) if it is below 0. Values past `usize` become `usize::MAX` (no buffer holds
/// that many bytes, so a later check names the problem).
pub fn non_negative(v: impl Into<i128>, name: impl std::fmt::Display) -> Result<usize> {
    let v: i128 = v.into();
    if v < 0 {
        bail!(NegativeArgument, "{name} must be >= 0, got {v}");
    }
    Ok(usize::try_from(v).unwrap_or(usize::MAX))
}

/// How many buffers a send takes: `count` if given, else as many as `sizes` has (if
/// given), else all `have`. `SizesTooShort` if `count` is more than `sizes` has,
/// `CountTooLarge` if it is more than `have`. Checked before anything is converted, so a
/// huge count costs nothing.
pub fn batch_len(have: usize, sizes: Option<usize>, count: Option<usize>) -> Result<usize> {
    let n = count.or(sizes).unwrap_or(have);
    if let Some(s) = sizes.filter(|&s| n > s) {
        bail!(SizesTooShort, "count is {n} but sizes has {s} entries");
    }
    if n > have {
        bail!(CountTooLarge, "count is {n} but bufs has {have} entries");
    }
    Ok(n)
}

/// Checks the sizes of a send: each `offset + sizes[i]` a length some buffer could have
/// (`BufferTooSmall` otherwise), and with `!empty_ok` none 0 (`NoPacketAfterOffset`).
pub fn check_sizes(sizes: &[usize], offset: usize, empty_ok: bool) -> Result<()> {
    for (i, &size) in sizes.iter().enumerate() {
        if size > isize::MAX as usize || offset.checked_add(size).is_none() {
            bail!(BufferTooSmall @ i, "offset + sizes[{i}] overflows: sizes[{i}] is {size}");
        }
        if size == 0 && !empty_ok {
            bail!(NoPacketAfterOffset @ i, "sizes[{i}] is 0: no packet");
        }
    }
    Ok(())
}

/// Where packet (or datagram) `i` ends in its buffer of `len` bytes: `offset + size`
/// with a size, else the buffer's end. `BufferTooSmall` if that is past the buffer (or
/// `offset` is); with `!empty_ok`, `NoPacketAfterOffset` for an empty packet.
pub fn span(
    i: usize,
    len: usize,
    offset: usize,
    size: Option<usize>,
    empty_ok: bool,
) -> Result<usize> {
    let end = match size {
        Some(s) => offset.saturating_add(s),
        None => len.max(offset),
    };
    if end > len {
        match size {
            Some(_) => {
                bail!(BufferTooSmall @ i, "bufs[{i}] holds {len} bytes, less than offset + sizes[{i}] = {end}")
            }
            None if !empty_ok => {
                bail!(NoPacketAfterOffset @ i, "bufs[{i}] holds {len} bytes: no packet after offset {offset}")
            }
            None => {
                bail!(BufferTooSmall @ i, "bufs[{i}] holds {len} bytes, less than offset {offset}")
            }
        }
    }
    if end == offset && !empty_ok {
        bail!(NoPacketAfterOffset @ i, "bufs[{i}] holds {len} bytes: no packet after offset {offset}");
    }
    Ok(end)
}

/// The packets (or datagrams) of a send from the buffers `whole`, in place: packet `i` is
/// `whole[i][offset..]`, with `sizes` `whole[i][offset..offset + sizes[i]]`, each checked
/// by [`span`].
pub fn packets<'b>(
    mut whole: Vec<&'b [u8]>,
    offset: usize,
    sizes: Option<&[usize]>,
    empty_ok: bool,
) -> Result<Vec<&'b [u8]>> {
    for (i, b) in whole.iter_mut().enumerate() {
        let end = span(i, b.len(), offset, sizes.map(|s| s[i]), empty_ok)?;
        *b = &b[offset..end];
    }
    Ok(whole)
}

/// The error for a buffer too small, when a call needs `need` bytes of it.
pub fn too_small(what: &str, have: usize, need: usize) -> Error {
    Error::new(
        ErrorKind::BufferTooSmall,
        format!("{what} holds {have} bytes; it needs {need}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_never_passes_its_region() {
        let mut raw = [7u8; 10];
        let mut w = Window::new(&mut raw, 4);
        assert_eq!((w.len(), w.capacity(), w.max_len()), (4, 10, 10));
        w.resize(10).unwrap();
        assert_eq!(w.bytes().len(), 10);
        assert_eq!(
            w.resize(11).unwrap_err().kind(),
            ErrorKind::BufferCannotGrow
        );
        w.resize(2).unwrap();
        w.bytes_mut()[1] = 1;
        assert_eq!(raw[..3], [7, 1, 7]);
        assert_eq!(Window::new(&mut [0u8; 3], 9).len(), 3);
    }

    #[test]
    fn duplicates_are_found_by_key_or_range() {
        assert_eq!(find_duplicate(&[1, 2, 3, 2]), Some((1, 3)));
        assert_eq!(find_duplicate(&[0, 0, 5]), None);
        // Rising keys (the quick answer), zeros anywhere among them, and keys that rise
        // but for one repeat or one step back.
        let rising: Vec<usize> = (1..=100).map(|k| k * 4096).collect();
        assert_eq!(find_duplicate(&rising), None);
        let mut gaps = rising.clone();
        gaps[0] = 0;
        gaps[50] = 0;
        assert_eq!(find_duplicate(&gaps), None);
        let mut repeat = rising.clone();
        repeat[60] = repeat[59];
        assert_eq!(find_duplicate(&repeat), Some((59, 60)));
        let mut back = rising.clone();
        back[99] = back[3];
        assert_eq!(find_duplicate(&back), Some((3, 99)));
        let mut around_zero = rising.clone();
        around_zero[10] = 0;
        around_zero[11] = rising[9];
        assert_eq!(find_duplicate(&around_zero), Some((9, 11)));
        assert_eq!(find_duplicate(&[5, 0, 5]), Some((0, 2)));
        let many: Vec<usize> = (1..=100).chain([57]).collect();
        assert_eq!(find_duplicate(&many), Some((56, 100)));
        // Sets found distinct are remembered (the last two): asked again, or changed by
        // one key into a set with a repeat, the answer is still right.
        let shuffled: Vec<usize> = (1..=45).map(|k| (k * 17 % 46) * 64).collect();
        let other: Vec<usize> = shuffled.iter().map(|k| k + 8).collect();
        for _ in 0..3 {
            assert_eq!(find_duplicate(&shuffled), None);
            assert_eq!(find_duplicate(&other), None);
        }
        let mut dup = shuffled.clone();
        dup[30] = dup[2];
        for _ in 0..2 {
            assert_eq!(find_duplicate(&dup), Some((2, 30)));
        }
        assert_eq!(find_duplicate(&shuffled[..44]), None);
        assert_eq!(find_duplicate(&shuffled), None);
        let mut raw = [0u8; 30];
        let (a, b) = raw.split_at_mut(15);
        let w = [Window::whole(a), Window::whole(b)];
        assert!(check_distinct(&w, &|_, b| addr_range(b, 0, b.len()), "bufs").is_ok());
    }

    #[test]
    fn argument_checks_name_the_problem() {
        assert_eq!(
            non_negative(-1i64, "count").unwrap_err().kind(),
            ErrorKind::NegativeArgument
        );
        assert_eq!(non_negative(i128::MAX, "x").unwrap(), usize::MAX);
        assert_eq!(
            batch_len(3, Some(1), Some(2)).unwrap_err().kind(),
            ErrorKind::SizesTooShort
        );
        assert_eq!(
            batch_len(3, None, Some(4)).unwrap_err().kind(),
            ErrorKind::CountTooLarge
        );
        assert_eq!(batch_len(3, Some(2), None), Ok(2));
        assert_eq!(batch_len(3, None, None), Ok(3));
        let e = check_sizes(&[5, 0], 10, false).unwrap_err();
        assert_eq!(
            (e.kind(), e.index()),
            (ErrorKind::NoPacketAfterOffset, Some(1))
        );
        assert!(check_sizes(&[0], 10, true).is_ok());
        assert_eq!(
            check_sizes(&[usize::MAX], 1, true).unwrap_err().kind(),
            ErrorKind::BufferTooSmall
        );
        assert_eq!(span(0, 100, 10, Some(50), false), Ok(60));
        assert_eq!(span(0, 100, 10, None, false), Ok(100));
        assert_eq!(span(2, 10, 10, None, true), Ok(10));
        let e = span(2, 10, 10, None, false).unwrap_err();
        assert_eq!(
            (e.kind(), e.index()),
            (ErrorKind::NoPacketAfterOffset, Some(2))
        );
        assert_eq!(
            span(0, 9, 10, None, true).unwrap_err().kind(),
            ErrorKind::BufferTooSmall
        );
        assert_eq!(
            span(0, 50, 10, Some(41), true).unwrap_err().kind(),
            ErrorKind::BufferTooSmall
        );
    }
}
