//! Fork detection without a system call: a process-wide generation that goes up in every child of `fork()`.
//!
//! State tied to a process (a background thread, a random id stream) compares the generation it was made in with
//! [`generation`] (one atomic load) instead of asking the kernel for the process id on every call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

#[cfg(unix)]
extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The fork generation of this process: 0 in the process that first called this, one more in each forked child
/// (and grandchild) made after that first call.
///
/// ```
/// let before = dspyo3_kernels::fork::generation();
/// assert_eq!(dspyo3_kernels::fork::generation(), before);
/// ```
pub fn generation() -> u64 {
    REGISTER.call_once(|| {
        #[cfg(unix)]
        // SAFETY: `in_child` only touches an atomic, which is async-signal-safe, as a child handler must be.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
    GENERATION.load(Ordering::Relaxed)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_sees_a_new_generation() {
        let parent = generation();
        // SAFETY: the child only reads an atomic and exits without running destructors.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = if generation() == parent + 1 { 0 } else { 1 };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child made above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child saw the parent's generation");
        assert_eq!(generation(), parent);
    }
}
