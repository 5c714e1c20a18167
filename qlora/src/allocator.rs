//! Malloc settings for training and evaluation, which free and reallocate the same large
//! buffers many times. The train and evaluate stages call [`keep_freed_memory`] before they
//! load a model, and the op benchmark first thing. The data stages keep glibc's defaults: there
//! Arrow's growing buffers are reallocated in place by mremap when they are mmap-backed, and
//! with the heap settings below the JSON ingest's peak RSS rose from under half its input
//! (tests/memory.rs) to just over.
//!
//! A training step allocates and frees a few hundred activation-sized buffers (12 MB for one
//! of MiniLM's feed-forward activations at 2,048 tokens). glibc hands blocks above its mmap
//! threshold back to the kernel on `free` and trims the heap top above 128 KB, so every step
//! page-faults all of them in again, and with two threads each fault also costs a TLB
//! shootdown: perf put a quarter of a BC5CDR step in the kernel's fault path. Keeping freed
//! blocks up to 32 MiB in the heap cut the step from 2.6 s to 1.9 s with the same peak RSS
//! (jemalloc measured 3.3 s, mimalloc 2.2 s and +80 MB).

/// Keeps blocks up to 32 MiB (glibc's largest mmap threshold) in the heap after `free` and
/// returns the heap top to the kernel only above 1 GiB, so freed memory is reused without
/// faulting. Elsewhere than glibc this does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        const TOP_PAD: libc::c_int = 64 << 20;
        // SAFETY: mallopt only changes allocator parameters (under malloc's own lock); a value
        // it rejects leaves the default in place (it returns 0), which is harmless.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        }
    }
}
