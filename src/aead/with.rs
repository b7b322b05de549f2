//! Sealing and opening on a caller's buffers and hooks (the Python binding's list of
//! buffers, its GIL): the same [`Sealer::seal`] and [`Opener::open`], run on the buffers
//! pinned and through [`Hooks::work`] when the batch is large enough to be worth it.

use super::seal::cannot_grow;
use super::{check_batch, padded_len, Opened, Opener, Sealer, HEADER_LEN, TAG_LEN};
use crate::engine::buffer::batch_len;
use crate::engine::{Buffers, Error, ExpandBuffer};
use crate::hooks::Hooks;

impl Sealer {
    /// [`seal`](Self::seal) on a caller's [`Buffers`]: the first `sizes.len()` buffers,
    /// each grown first where its message needs more room than it has (so that the work
    /// itself never resizes), then sealed through [`Hooks::work`] on the buffers pinned
    /// when [`Hooks::worth_releasing`] says so. Errors are the caller's (its buffers') or
    /// the seal's refusals, converted.
    pub fn seal_with<E, L, H>(
        &self,
        bufs: &mut L,
        offset: usize,
        sizes: &mut [usize],
        pad_mtu: Option<usize>,
        hooks: &mut H,
    ) -> Result<usize, E>
    where
        E: From<Error>,
        L: Buffers<E> + ?Sized,
        H: Hooks<E> + ?Sized,
    {
        let n = batch_of(bufs, sizes.len())?;
        let b = bufs.bufs(n, true, usize::MAX)?;
        check_batch(b, offset, sizes, HEADER_LEN, "packet")?;
        self.check_room(n)?; // before any buffer grows
        let bytes = make_room(b, offset, sizes, pad_mtu)?;
        if hooks.worth_releasing(bytes) {
            return bufs
                .pinned(n, |w| hooks.work(|| self.seal(w, offset, sizes, pad_mtu)))?
                .map_err(E::from);
        }
        Ok(self.seal(bufs.bufs(n, true, usize::MAX)?, offset, sizes, pad_mtu)?)
    }
}

impl Opener {
    /// [`open`](Self::open) on a caller's [`Buffers`], through [`Hooks::work`] on the
    /// buffers pinned when worth it; afterwards the caller's entries are put in the order
    /// the opening left them ([`Buffers::reorder`]).
    pub fn open_with<E, L, H>(
        &self,
        bufs: &mut L,
        offset: usize,
        sizes: &mut [usize],
        hooks: &mut H,
    ) -> Result<Opened, E>
    where
        E: From<Error>,
        L: Buffers<E> + ?Sized,
        H: Hooks<E> + ?Sized,
    {
        let n = batch_of(bufs, sizes.len())?;
        let b = bufs.bufs(n, true, usize::MAX)?;
        check_batch(b, offset, sizes, 0, "message")?;
        let opened = if hooks.worth_releasing(sizes.iter().sum()) {
            bufs.pinned(n, |w| hooks.work(|| self.open(w, offset, sizes)))?
        } else {
            self.open(bufs.bufs(n, true, usize::MAX)?, offset, sizes)
        }?;
        bufs.reorder()?;
        Ok(opened)
    }
}

/// Grows each of `bufs` whose room is short of its message (the packet at
/// `bufs[i][offset..offset + sizes[i]]`, padded within `pad_mtu`, then the tag), so that
/// sealing in place, pinned, never resizes; one that cannot grow is refused
/// (`out_buf_too_small`, with its index). Returns the packets' bytes. For the callers
/// that seal on [`Buffers`] (the checks of [`check_batch`] made first).
pub fn make_room<B: ExpandBuffer>(
    bufs: &mut [B],
    offset: usize,
    sizes: &[usize],
    pad_mtu: Option<usize>,
) -> Result<usize, Error> {
    let mut bytes = 0;
    for (i, (b, &size)) in bufs.iter_mut().zip(sizes).enumerate() {
        let need = (offset.saturating_add(padded_len(size, pad_mtu))).saturating_add(TAG_LEN);
        if b.capacity() < need {
            if b.max_len() < need {
                return Err(cannot_grow(i, b.bytes().len(), need, offset));
            }
            b.resize(need)?;
        }
        bytes += size;
    }
    Ok(bytes)
}

/// `n`, when the caller has that many buffers (the refusal of more sizes than buffers is
/// [`batch_len`]'s).
fn batch_of<E: From<Error>, L: Buffers<E> + ?Sized>(bufs: &L, n: usize) -> Result<usize, E> {
    Ok(batch_len(bufs.count(), Some(n), None)?)
}
