//! Explicit AVX-512 and AVX2 vectors for the host kernels that LLVM's loops run poorly: masked
//! tails instead of scalar ones (a 14x14 plane is 12 vectors and 4 scalar steps as a loop, 13
//! vectors here), masked products, and lanes gathered across vectors. A kernel is written
//! generic over [`Vector`], and [`with_vectors`] runs it when the chosen [`VectorIsa`] is
//! AVX-512 or AVX2. Only separate multiplies and adds are offered (no fused multiply-add), so a
//! kernel keeps the bits of its scalar loop.

use super::host_isa::VectorIsa;

/// A vector of `f32` lanes of one instruction set. Every method needs that instruction set on
/// the CPU, which [`with_vectors`] checks before a kernel runs.
pub(crate) trait Vector: Copy {
    /// Floats per vector.
    const LANES: usize;
    /// Whether [`Vector::mul_where`] costs no more than [`Vector::mul`] (AVX-512's masked
    /// multiply); on AVX2 it takes four more instructions.
    const FREE_MASKED_PRODUCTS: bool;
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

/// Runs `kernel` on the vectors of `isa` if it is AVX-512 or AVX2 and the CPU has it;
/// otherwise gives the kernel back (for the baseline's loop).
pub(crate) fn with_vectors<K: VectorKernel>(isa: VectorIsa, kernel: K) -> Result<K::Output, K> {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<K: VectorKernel>(kernel: K) -> K::Output {
            // SAFETY: compiled for and (as the caller checked) running on AVX-512F.
            unsafe { kernel.run::<x86::Avx512>() }
        }
        #[target_feature(enable = "avx2")]
        fn avx2<K: VectorKernel>(kernel: K) -> K::Output {
            // SAFETY: compiled for and (as the caller checked) running on AVX2.
            unsafe { kernel.run::<x86::Avx2>() }
        }
        match isa {
            // SAFETY: the CPU has AVX-512F, as just checked.
            VectorIsa::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => return Ok(unsafe { avx512(kernel) }),
            // SAFETY: the CPU has AVX2, as just checked.
            VectorIsa::Avx2 if std::arch::is_x86_feature_detected!("avx2") => return Ok(unsafe { avx2(kernel) }),
            _ => {}
        }
    }
    let _ = isa;
    Err(kernel)
}

/// AVX2's loads and stores of the first `count` floats (all for 8 or more), shared by
/// [`Vector`]'s AVX2 vectors and the direct convolution's: masked only for a partial vector,
/// since `vmaskmovps` stores are slow on AMD's cores (on Zen 4 full vectors stored that way
/// made the depthwise convolution twice as slow).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2_partial {
    use std::arch::x86_64::*;

    /// The first `count` of 8 lanes as the sign bits AVX2's masked loads and stores read.
    #[inline(always)]
    unsafe fn first8(count: usize) -> __m256i {
        unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(count.min(8) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
    }

    /// The first `count` floats from `source`, zeros in the other lanes, which are not read.
    ///
    /// # Safety
    /// The CPU has AVX2; `count.min(8)` floats readable at `source`.
    #[inline(always)]
    pub(crate) unsafe fn load_first(source: *const f32, count: usize) -> __m256 {
        unsafe { if count >= 8 { _mm256_loadu_ps(source) } else { _mm256_maskload_ps(source, first8(count)) } }
    }

    /// Stores the first `count` lanes of `value` at `target`.
    ///
    /// # Safety
    /// The CPU has AVX2; `count.min(8)` floats writable at `target`.
    #[inline(always)]
    pub(crate) unsafe fn store_first(target: *mut f32, count: usize, value: __m256) {
        unsafe {
            if count >= 8 {
                _mm256_storeu_ps(target, value)
            } else {
                _mm256_maskstore_ps(target, first8(count), value)
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Vector;
    use std::arch::x86_64::*;

    /// 16 floats (AVX-512F).
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    /// 8 floats (AVX2).
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    impl Vector for Avx2 {
        const LANES: usize = 8;
        const FREE_MASKED_PRODUCTS: bool = false;
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            Self(unsafe { _mm256_set1_ps(value) })
        }
        #[inline(always)]
        unsafe fn load(source: *const f32) -> Self {
            // SAFETY: the caller's.
            Self(unsafe { _mm256_loadu_ps(source) })
        }
        #[inline(always)]
        unsafe fn load_first(source: *const f32, count: usize) -> Self {
            // SAFETY: the caller's; masked-off lanes are not read.
            Self(unsafe { super::avx2_partial::load_first(source, count) })
        }
        #[inline(always)]
        unsafe fn store_first(self, target: *mut f32, count: usize) {
            // SAFETY: the caller's; masked-off lanes are not written.
            unsafe { super::avx2_partial::store_first(target, count, self.0) }
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            Self(unsafe { _mm256_add_ps(self.0, other.0) })
        }
        #[inline(always)]
        unsafe fn mul(self, other: Self) -> Self {
            Self(unsafe { _mm256_mul_ps(self.0, other.0) })
        }
        #[inline(always)]
        unsafe fn mul_where(self, other: Self, lanes: u32) -> Self {
            // The product, and-ed with all ones in the chosen lanes and zeros (+0) elsewhere.
            unsafe {
                let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
                let chosen = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(lanes as i32), bits), bits);
                Self(_mm256_and_ps(_mm256_mul_ps(self.0, other.0), _mm256_castsi256_ps(chosen)))
            }
        }
        #[inline(always)]
        unsafe fn max(self, other: Self) -> Self {
            // maxps returns its second operand when either is NaN: where that is `other`, take
            // `self`.
            unsafe {
                let max = _mm256_max_ps(self.0, other.0);
                Self(_mm256_blendv_ps(max, self.0, _mm256_cmp_ps::<_CMP_UNORD_Q>(other.0, other.0)))
            }
        }
        #[inline(always)]
        unsafe fn evens(self, next: Self) -> Self {
            // Lanes 0, 2 of each half of both, then the halves in order.
            unsafe { Self(_mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(self.0, next.0))))) }
        }
        #[inline(always)]
        unsafe fn odds(self, next: Self) -> Self {
            unsafe { Self(_mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(self.0, next.0))))) }
        }
        #[inline(always)]
        unsafe fn relu(self) -> Self {
            // maxps returns its second operand when either is NaN.
            Self(unsafe { _mm256_max_ps(self.0, _mm256_setzero_ps()) })
        }
    }

    /// The mask of the first `count` of 16 lanes.
    #[inline(always)]
    fn first16(count: usize) -> __mmask16 {
        (((1u32 << count.min(16)) - 1) & 0xffff) as __mmask16
    }

    impl Vector for Avx512 {
        const LANES: usize = 16;
        const FREE_MASKED_PRODUCTS: bool = true;
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
