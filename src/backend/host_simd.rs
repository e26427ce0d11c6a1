//! Explicit AVX-512 vectors for the host kernels that LLVM's loops run poorly: masked tails
//! instead of scalar ones (a 14x14 plane is 12 vectors and 4 scalar steps as a loop, 13
//! vectors here), masked products, and lanes gathered across vectors. A kernel is written
//! generic over [`Vector`], and [`with_vectors`] runs it when the chosen [`VectorIsa`] is
//! AVX-512. Only separate multiplies and adds are offered (no fused multiply-add), so a kernel
//! keeps the bits of its scalar loop. (An AVX2 implementation of the depthwise kernel, whose
//! masked products cost three more instructions there, ran slower than LLVM's AVX2 loop on the
//! Intel machine: 55x55 planes 0.47 against 0.41 ms; so AVX2 keeps the loops.)

use super::host_isa::VectorIsa;

/// A vector of `f32` lanes of one instruction set. Every method needs that instruction set on
/// the CPU, which [`with_vectors`] checks before a kernel runs.
pub(crate) trait Vector: Copy {
    /// Floats per vector.
    const LANES: usize;
    /// Every lane `value`.
    ///
    /// # Safety
    /// The CPU has the vector's instruction set.
    unsafe fn splat(value: f32) -> Self;
    /// `LANES` floats from `source`.
    ///
    /// # Safety
    /// As [`Vector::splat`]; `LANES` floats readable at `source`.
    unsafe fn load(source: *const f32) -> Self;
    /// The first `count` (1 to `LANES`) floats from `source`, zeros in the other lanes, which
    /// are not read.
    ///
    /// # Safety
    /// As [`Vector::splat`]; `count` floats readable at `source`.
    unsafe fn load_first(source: *const f32, count: usize) -> Self;
    /// Stores the first `count` (1 to `LANES`) lanes at `target`, leaving what follows.
    ///
    /// # Safety
    /// As [`Vector::splat`]; `count` floats writable at `target`.
    unsafe fn store_first(self, target: *mut f32, count: usize);
    /// Lane-wise `self + other`.
    ///
    /// # Safety
    /// As [`Vector::splat`].
    unsafe fn add(self, other: Self) -> Self;
    /// Lane-wise `self * other`.
    ///
    /// # Safety
    /// As [`Vector::splat`].
    unsafe fn mul(self, other: Self) -> Self;
    /// Lane-wise `self * other` in the lanes whose bit is set in `lanes` (bit `l` for lane
    /// `l`), +0 in the others.
    ///
    /// # Safety
    /// As [`Vector::splat`].
    unsafe fn mul_where(self, other: Self, lanes: u32) -> Self;
    /// Lane-wise `f32::max(self, other)` (NaN only where both are).
    ///
    /// # Safety
    /// As [`Vector::splat`].
    unsafe fn max(self, other: Self) -> Self;
    /// Lanes `0, 2, 4, ...` of the concatenation of `self` and `next`.
    ///
    /// # Safety
    /// As [`Vector::splat`].
    unsafe fn evens(self, next: Self) -> Self;
    /// Lanes `1, 3, 5, ...` of the concatenation of `self` and `next`.
    ///
    /// # Safety
    /// As [`Vector::splat`].
    unsafe fn odds(self, next: Self) -> Self;
    /// Lane-wise `max(self, 0)`, 0 for NaN: `f32::max(x, 0.0)`'s result.
    ///
    /// # Safety
    /// As [`Vector::splat`].
    unsafe fn relu(self) -> Self;
}

/// A kernel generic over [`Vector`], run by [`with_vectors`].
pub(crate) trait VectorKernel {
    /// What the kernel returns.
    type Output;
    /// Runs the kernel on vectors `V`.
    ///
    /// # Safety
    /// The CPU has `V`'s instruction set.
    unsafe fn run<V: Vector>(self) -> Self::Output;
}

/// Runs `kernel` on AVX-512 vectors if `isa` is AVX-512 and the CPU has it; otherwise gives
/// the kernel back (for the loop of `isa`).
pub(crate) fn with_vectors<K: VectorKernel>(isa: VectorIsa, kernel: K) -> Result<K::Output, K> {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<K: VectorKernel>(kernel: K) -> K::Output {
            // SAFETY: compiled for and (as the caller checked) running on AVX-512F.
            unsafe { kernel.run::<x86::Avx512>() }
        }
        match isa {
            // SAFETY: the CPU has AVX-512F, as just checked.
            VectorIsa::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => return Ok(unsafe { avx512(kernel) }),
            _ => {}
        }
    }
    let _ = isa;
    Err(kernel)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Vector;
    use std::arch::x86_64::*;

    /// 16 floats (AVX-512F).
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    /// The mask of the first `count` of 16 lanes.
    #[inline(always)]
    fn first16(count: usize) -> __mmask16 {
        (((1u32 << count.min(16)) - 1) & 0xffff) as __mmask16
    }

    impl Vector for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            Self(unsafe { _mm512_set1_ps(value) })
        }
        #[inline(always)]
        unsafe fn load(source: *const f32) -> Self {
            // SAFETY: the caller's.
            Self(unsafe { _mm512_loadu_ps(source) })
        }
        #[inline(always)]
        unsafe fn load_first(source: *const f32, count: usize) -> Self {
            // SAFETY: the caller's; masked-off lanes are not read.
            Self(unsafe { _mm512_maskz_loadu_ps(first16(count), source) })
        }
        #[inline(always)]
        unsafe fn store_first(self, target: *mut f32, count: usize) {
            // SAFETY: the caller's; masked-off lanes are not written.
            unsafe { _mm512_mask_storeu_ps(target, first16(count), self.0) }
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            Self(unsafe { _mm512_add_ps(self.0, other.0) })
        }
        #[inline(always)]
        unsafe fn mul(self, other: Self) -> Self {
            Self(unsafe { _mm512_mul_ps(self.0, other.0) })
        }
        #[inline(always)]
        unsafe fn mul_where(self, other: Self, lanes: u32) -> Self {
            Self(unsafe { _mm512_maskz_mul_ps(lanes as __mmask16, self.0, other.0) })
        }
        #[inline(always)]
        unsafe fn max(self, other: Self) -> Self {
            // maxps returns its second operand when either is NaN: where that is `other`, take
            // `self`.
            unsafe {
                let max = _mm512_max_ps(self.0, other.0);
                Self(_mm512_mask_mov_ps(max, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(other.0, other.0), self.0))
            }
        }
        #[inline(always)]
        unsafe fn evens(self, next: Self) -> Self {
            Self(unsafe { _mm512_permutex2var_ps(self.0, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), next.0) })
        }
        #[inline(always)]
        unsafe fn odds(self, next: Self) -> Self {
            Self(unsafe { _mm512_permutex2var_ps(self.0, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), next.0) })
        }
        #[inline(always)]
        unsafe fn relu(self) -> Self {
            // maxps returns its second operand when either is NaN.
            Self(unsafe { _mm512_max_ps(self.0, _mm512_setzero_ps()) })
        }
    }
}
