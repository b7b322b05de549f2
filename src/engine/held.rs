//! Buffers in memory that a caller holds in place for a call and may resize on request:
//! the Python binding's `bytearray`s (read in place) and other exported buffers.
//!
//! - [`Holder`]: the caller's part (where the memory is now, resizing it).
//! - [`Held`]: the [`ExpandBuffer`] over it, with the rules for growing: exact and sized
//!   buffers, headroom zeroed, the refusal.
//! - [`on_windows`] and [`windows_over`]: work on [`Window`]s of such memory (pinned by
//!   the caller), the buffers following what the work did to the windows.

use std::cell::Cell;
use std::ptr::NonNull;

use super::buffer::{distinct_starts, reuse, ExpandBuffer, Window};
use super::error::{Error, ErrorKind, Result};

/// The owner of a [`Held`] buffer's memory.
pub trait Holder {
    /// The memory as it is now (it may have moved since the last look, if the holder
    /// resized it or let other code run).
    fn region(&self) -> NonNull<[u8]>;
    /// Resizes the memory to `new_len` bytes; `false` if it cannot. Only asked of a buffer
    /// made growable.
    fn resize(&mut self, new_len: usize) -> bool;
    /// As [`ExpandBuffer::identity`].
    fn identity(&self) -> Option<usize>;
}

/// A buffer over memory its [`Holder`] keeps in place.
///
/// Two modes. *Exact*: the packet ends where the memory ends, and growing resizes it (so
/// it stays exact). *Sized*: the packet ends at a length within the memory; growing moves
/// that end and resizes the memory only when it must. Bytes a resize adds before
/// `written_from` are zeroed (the caller writes the ones after: a packet or a segment goes
/// there), so that no stale memory shows through in the headroom.
pub struct Held<H> {
    pub holder: H,
    region: NonNull<[u8]>,
    len: usize,
    growable: bool,
    sized: bool,
    written_from: usize,
}

impl<H: Holder> Held<H> {
    /// The buffer over `region` (`holder.region()` now), the packet all of it.
    ///
    /// # Safety
    /// Until the buffer is dropped, whenever one of its methods runs other than
    /// [`reread`](Self::reread), the memory its holder last reported is valid for reads and
    /// writes and nothing else accesses it (the binding: the GIL is held, no Python code
    /// runs, and the buffers of a call share no memory, which the core checks before it
    /// writes; after Python code ran, `reread`).
    pub unsafe fn new(
        holder: H,
        region: NonNull<[u8]>,
        growable: bool,
        sized: bool,
        written_from: usize,
    ) -> Self {
        Held {
            holder,
            len: region.len(),
            region,
            growable,
            sized,
            written_from,
        }
    }

    /// Reads the holder's memory again; the packet ends where it does.
    pub fn reread(&mut self) {
        self.region = self.holder.region();
        self.len = self.region.len();
    }

    /// The memory.
    pub fn region(&self) -> NonNull<[u8]> {
        self.region
    }

    #[cold]
    fn grow_to(&mut self, new_len: usize) -> Result<()> {
        let cap = self.region.len();
        if !self.growable || !self.holder.resize(new_len) {
            let m = format!(
                "a buffer of {cap} bytes cannot become {new_len} (only a bytearray that \
                 nothing else exports can, memory permitting)"
            );
            return Err(Error::new(ErrorKind::BufferCannotGrow, m));
        }
        self.reread();
        let end = self.len.min(self.written_from);
        self.bytes_mut()[cap.min(end)..end].fill(0);
        Ok(())
    }
}

impl<H: Holder> ExpandBuffer for Held<H> {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `len <= region.len()`, and the region is valid (the contract of `new`).
        unsafe { std::slice::from_raw_parts(self.region.cast().as_ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; nothing else accesses the memory (the contract of `new`).
        unsafe { std::slice::from_raw_parts_mut(self.region.cast().as_ptr(), self.len) }
    }

    fn max_len(&self) -> usize {
        match self.growable {
            true => isize::MAX as usize,
            false => self.region.len(),
        }
    }

    fn capacity(&self) -> usize {
        self.region.len()
    }

    fn identity(&self) -> Option<usize> {
        self.holder.identity()
    }

    #[inline(always)]
    fn resize(&mut self, new_len: usize) -> Result<()> {
        let cap = self.region.len();
        if new_len > cap || (!self.sized && new_len != cap) {
            self.grow_to(new_len)?;
        }
        self.len = new_len;
        Ok(())
    }
}

impl<H: Holder> AsMut<[u8]> for Held<H> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.bytes_mut()
    }
}

thread_local! {
    /// The windows of [`on_windows`] and [`windows_over`], reused between calls.
    static WINDOWS: Cell<Vec<Window<'static>>> = const { Cell::new(Vec::new()) };
}

/// Whether `bufs` can serve again as buffers read with `mode` (`(sized, written_from)` as
/// [`Held::new`] takes them). With `reread` (their holders may have changed meanwhile: the
/// binding ran Python code), only if `keep(i, holder)` says each is still the one at its
/// place, and each is then read again. Where this is false the caller reads them anew.
pub fn reuse_held<H: Holder>(
    bufs: &mut [Held<H>],
    mode: (bool, usize),
    reread: bool,
    keep: impl Fn(usize, &H) -> bool,
) -> bool {
    let same = |(i, b): (usize, &Held<H>)| {
        (b.sized, b.written_from) == mode && (!reread || keep(i, &b.holder))
    };
    if !bufs.iter().enumerate().all(same) {
        return false;
    }
    if reread {
        bufs.iter_mut().for_each(Held::reread);
    }
    true
}

/// Runs `f` on windows of `bufs`' memory (each as long as its packet, able to grow to the
/// buffer's capacity); afterwards the buffers take the windows' order (work may swap
/// windows: each starts where its buffer does) and lengths.
///
/// # Safety
/// The memory of each buffer stays valid, and nothing else accesses it, until `f` returns
/// (the caller pins it), and the buffers share no memory.
pub unsafe fn on_windows<H: Holder, T>(
    bufs: &mut [Held<H>],
    f: impl for<'w> FnOnce(&mut [Window<'w>]) -> T,
) -> T {
    reuse(&WINDOWS, |w| {
        for b in bufs.iter() {
            // SAFETY: the caller's contract.
            w.push(unsafe { Window::from_raw(b.region.cast(), b.region.len(), b.len) });
        }
        let out = f(w);
        for (k, x) in w.iter().enumerate() {
            let start = |b: &Held<H>| b.region.cast::<u8>().as_ptr() as usize;
            if let Some(j) = (k..bufs.len()).find(|&j| start(&bufs[j]) == x.addr()) {
                bufs.swap(k, j);
            }
            // (Clamped: a window `f` put in that is not one of these buffers' cannot make a
            // buffer claim more than its region.)
            bufs[k].len = x.len().min(bufs[k].region.len());
        }
        out
    })
}

/// Runs `f` on windows of `regions` (each region whole, the memory of an object that owns
/// it), when each is there and at least `need(i)` bytes long and no two start at the same
/// address; `None` otherwise. `pin` runs once they are checked, before `f`, and what it
/// returns lives until `f` returns.
///
/// # Safety
/// Each region is valid, and nothing else accesses it, until `f` returns; two regions
/// share memory only if they are the same one.
pub unsafe fn windows_over<P, T, E>(
    regions: impl Iterator<Item = Option<NonNull<[u8]>>>,
    need: impl Fn(usize) -> usize,
    pin: impl FnOnce() -> std::result::Result<P, E>,
    f: impl for<'w> FnOnce(&mut [Window<'w>]) -> T,
) -> std::result::Result<Option<T>, E> {
    reuse(&WINDOWS, |w| {
        for (i, r) in regions.enumerate() {
            let Some(r) = r.filter(|r| r.len() >= need(i)) else {
                return Ok(None);
            };
            // SAFETY: the caller's contract; no byte is used before the windows are
            // checked distinct.
            w.push(unsafe { Window::from_raw(r.cast(), r.len(), r.len()) });
        }
        if !distinct_starts(w) {
            return Ok(None);
        }
        let _pins = pin()?;
        Ok(Some(f(w)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Vec` as a holder that may be told to refuse growing.
    struct VecHolder(Vec<u8>, bool);

    impl Holder for VecHolder {
        fn region(&self) -> NonNull<[u8]> {
            NonNull::from(&self.0[..])
        }
        fn resize(&mut self, new_len: usize) -> bool {
            self.0.resize(new_len, 0xee);
            self.1
        }
        fn identity(&self) -> Option<usize> {
            None
        }
    }

    fn held(v: Vec<u8>, growable: bool, sized: bool, written_from: usize) -> Held<VecHolder> {
        let mut h = VecHolder(v, true);
        let r = h.region();
        h.1 = growable;
        // SAFETY: the vector lives in the holder and is only touched through the buffer.
        unsafe { Held::new(h, r, growable, sized, written_from) }
    }

    #[test]
    fn exact_buffers_grow_and_shrink_with_their_packet() {
        let mut b = held(vec![1; 4], true, false, 6);
        b.resize(8).unwrap();
        // Zeroed up to where the caller writes, the rest left for it.
        assert_eq!(b.bytes(), &[1, 1, 1, 1, 0, 0, 0xee, 0xee]);
        b.resize(2).unwrap();
        assert_eq!((b.bytes().len(), b.capacity()), (2, 2));
        let mut fixed = held(vec![1; 4], false, false, 0);
        let e = fixed.resize(5).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BufferCannotGrow);
        assert!(
            fixed.resize(3).is_err(),
            "an exact fixed buffer keeps its length"
        );
        assert_eq!(fixed.max_len(), 4);
    }

    #[test]
    fn sized_buffers_move_their_end_within_the_memory() {
        let mut b = held(vec![1; 10], false, true, 0);
        b.resize(3).unwrap();
        assert_eq!((b.bytes().len(), b.capacity()), (3, 10));
        b.resize(10).unwrap();
        assert!(b.resize(11).is_err());
    }

    #[test]
    fn held_buffers_are_reused_only_as_read_and_where_kept() {
        let mut bufs = [
            held(vec![1; 4], true, false, 0),
            held(vec![2; 6], true, false, 0),
        ];
        bufs[1].resize(3).unwrap();
        let all = |_: usize, _: &VecHolder| true;
        type Keep<'a> = &'a dyn Fn(usize, &VecHolder) -> bool;
        // (mode, reread, keep) -> reused
        let cases: [(_, _, Keep<'_>, _); 4] = [
            ((false, 0), false, &all, true),
            ((true, 0), false, &all, false),
            ((false, 10), false, &all, false),
            ((false, 0), true, &|i, _| i == 0, false),
        ];
        for (mode, reread, keep, want) in cases {
            assert_eq!(
                reuse_held(&mut bufs, mode, reread, keep),
                want,
                "{mode:?} {reread}"
            );
            assert_eq!(bufs[1].bytes().len(), 3, "nothing read again");
        }
        // The holder changed behind the buffer (the binding's Python code ran): kept, it
        // is read again as it is now.
        bufs[0].holder.0 = vec![9; 7];
        assert!(reuse_held(&mut bufs, (false, 0), true, all));
        assert_eq!(bufs[0].bytes(), &[9; 7]);
        assert_eq!(bufs[1].bytes(), &[2; 3]);
    }

    #[test]
    fn windows_carry_their_order_and_lengths_back() {
        let mut bufs = [
            held(vec![1; 4], false, true, 0),
            held(vec![2; 6], false, true, 0),
        ];
        bufs[0].resize(2).unwrap();
        // SAFETY: the vectors are only touched through the windows while `f` runs.
        let n = unsafe {
            on_windows(&mut bufs, |w| {
                w.swap(0, 1);
                w[1].resize(4).unwrap();
                w.len()
            })
        };
        assert_eq!(n, 2);
        assert_eq!(bufs[0].bytes(), &[2; 6]);
        assert_eq!(bufs[1].bytes(), &[1; 4]);
    }

    #[test]
    fn windows_over_regions_only_when_each_is_there_and_distinct() {
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        let r = [NonNull::from(&mut a[..]), NonNull::from(&mut b[..])];
        let need = |_| 8;
        let pin = || Ok::<_, ()>(());
        // SAFETY: the arrays are only touched through the windows while `f` runs.
        unsafe {
            let f = |w: &mut [Window<'_>]| w.len();
            assert_eq!(
                windows_over(r.iter().map(|&r| Some(r)), need, pin, f),
                Ok(Some(2))
            );
            let twice = [Some(r[0]), Some(r[0])];
            assert_eq!(windows_over(twice.into_iter(), need, pin, f), Ok(None));
            let missing = [Some(r[0]), None];
            assert_eq!(windows_over(missing.into_iter(), need, pin, f), Ok(None));
            assert_eq!(
                windows_over(r.iter().map(|&r| Some(r)), |_| 9, pin, f),
                Ok(None)
            );
        }
    }
}
