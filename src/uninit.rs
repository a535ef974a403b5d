//! Output buffers that the CPU kernels write once, element by element, without a zero fill
//! first.
//!
//! `vec![0.0; n]` writes every element before a kernel overwrites it: a second full pass over
//! memory, which in a training step's attention, norm and activation ops was about 2% of the
//! time. Here a kernel writes into a new vector's spare capacity through `MaybeUninit` slots,
//! and [`written`] hands the vector back once the kernel has written every slot, which its
//! caller promises. A buffer that is accumulated into, or whose every element is not written,
//! is zero-filled as before. This module must not know what the kernels compute.

use std::mem::MaybeUninit;

/// A new vector of `len` values, each written by `fill` through its slot.
///
/// # Safety
/// `fill` must write every one of the `len` slots it is lent (or panic: the vector is then
/// dropped empty).
pub unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller promises that `fill` wrote all `len` slots
    unsafe { v.set_len(len) };
    v
}

/// Writes `src` into the slots of `dst`, which must be as long (else this panics, having
/// written nothing).
pub fn copy(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "uninit::copy: {} slots for {} values", dst.len(), src.len());
    dst.iter_mut().zip(src).for_each(|(d, &s)| {
        d.write(s);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_holds_what_the_fill_wrote() {
        // SAFETY: the fill writes every slot
        let v = unsafe { written(5, |slots| copy(slots, &[1.0, 2.0, 3.0, 4.0, 5.0])) };
        assert_eq!(v, [1.0, 2.0, 3.0, 4.0, 5.0]);
        // SAFETY: no slots
        assert!(unsafe { written(0, |_| {}) }.is_empty());
    }
}
