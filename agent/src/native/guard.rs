//! [`guarded_copy`]: reads memory that may not be mapped without faulting, for the trap handler
//! and the trampoline analysis alike (it is async-signal-safe: one `process_vm_readv` call).

/// Copies `dst.len()` bytes from `src` in this process, failing instead of faulting.
/// Async-signal-safe (one `process_vm_readv`).
pub(crate) fn guarded_copy(dst: &mut [u8], src: u64) -> bool {
    if dst.is_empty() {
        return true;
    }
    if src == 0 {
        return false;
    }
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    let remote = libc::iovec {
        iov_base: src as *mut libc::c_void,
        iov_len: dst.len(),
    };
    // SAFETY: reads into our own buffer; the kernel validates the remote range.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    n == dst.len() as isize
}
