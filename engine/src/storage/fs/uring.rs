//! Writes through io_uring: a write linked to an fdatasync in one submission. Only built for the
//! architectures the `io-uring` crate ships bindings for (64-bit); elsewhere (armhf) the parent
//! module's pwrite path is the only one.
//!
//! Must never return while the kernel may still read a caller's buffer: a failed wait aborts.

use std::io;

use super::StorageFile;

/// Whether the kernel lets us set up a ring (old kernels, seccomp and
/// `kernel.io_uring_disabled` refuse it).
pub(super) fn available() -> bool {
    io_uring::IoUring::new(4).is_ok()
}

/// `file` behind a ring of its own.
pub(super) fn open(file: std::fs::File) -> io::Result<Box<dyn StorageFile>> {
    Ok(Box::new(UringFile { ring: io_uring::IoUring::new(4)?, file }))
}

struct UringFile {
    ring: io_uring::IoUring,
    file: std::fs::File,
}

impl UringFile {
    /// Submits a write (when `data` is not empty) linked to an fdatasync (when `sync`), and waits.
    fn submit(&mut self, offset: u64, data: &[u8], sync: bool) -> io::Result<usize> {
        use io_uring::{opcode, squeue, types};
        use std::os::fd::AsRawFd;
        let fd = types::Fd(self.file.as_raw_fd());
        let mut n = 0;
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let write = opcode::Write::new(fd, data.as_ptr(), len).offset(offset).build().user_data(1);
        let fsync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(2);
        // SAFETY: `data` outlives the submission: we wait for every completion before returning.
        unsafe {
            let mut sq = self.ring.submission();
            if !data.is_empty() {
                let w = if sync { write.flags(squeue::Flags::IO_LINK) } else { write };
                sq.push(&w).map_err(|_| io::Error::other("io_uring submission queue full"))?;
                n += 1;
            }
            if sync {
                sq.push(&fsync).map_err(|_| io::Error::other("io_uring submission queue full"))?;
                n += 1;
            }
        }
        // From here on the kernel may be reading `data`: return only once every entry pushed
        // has completed, whatever interrupts the waiting (`reap` retries EINTR and never gives up).
        self.wait_for(n);
        let mut written = 0usize;
        let mut err = None;
        let mut seen = 0;
        while seen < n {
            let Some(cqe) = self.ring.completion().next() else {
                self.wait_for(1);
                continue;
            };
            seen += 1;
            let res = cqe.result();
            match cqe.user_data() {
                1 if res >= 0 => written = res as usize,
                2 if res >= 0 => {}
                // A short write cancels the linked fsync; the caller writes the rest and syncs.
                2 if res == -libc_ecanceled() => {}
                _ => err = Some(io::Error::from_raw_os_error(-res)),
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }
}

impl UringFile {
    /// Submits what is queued and waits until `want` completions are ready. A signal (EINTR) or
    /// a full completion queue (EBUSY, EAGAIN) only interrupts the wait, so it is retried. Any
    /// other failure leaves I/O in flight on a buffer we are about to free, which no error return
    /// can make safe: the process aborts (fail-stop; a restart recovers from what is durable).
    fn wait_for(&mut self, want: usize) {
        if let Err(e) = retry_interrupted(|| self.ring.submit_and_wait(want)) {
            tracing::error!(error = %e, "io_uring: waiting for a write in flight failed; stopping the process");
            std::process::abort();
        }
    }
}

/// Calls `wait` until it returns anything but an interruption (EINTR, or EBUSY / EAGAIN from a
/// full completion queue, after a yield); returns that.
fn retry_interrupted(mut wait: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match wait() {
            Err(e) if matches!(e.raw_os_error(), Some(c) if c == EINTR || c == EBUSY || c == EAGAIN) => {
                if e.raw_os_error() != Some(EINTR) {
                    std::thread::yield_now();
                }
            }
            r => return r,
        }
    }
}

const EINTR: i32 = rustix::io::Errno::INTR.raw_os_error();
const EBUSY: i32 = rustix::io::Errno::BUSY.raw_os_error();
const EAGAIN: i32 = rustix::io::Errno::AGAIN.raw_os_error();

fn libc_ecanceled() -> i32 {
    rustix::io::Errno::CANCELED.raw_os_error()
}

impl StorageFile for UringFile {
    fn write_at(&mut self, mut offset: u64, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.submit(offset, data, false)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "io_uring write wrote nothing"));
            }
            data = &data[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.submit(0, &[], true).map(|_| ())
    }

    fn write_sync(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let n = self.submit(offset, data, true)?;
        if n == data.len() {
            return Ok(());
        }
        // Short write: the linked fsync was cancelled; finish plainly.
        self.write_at(offset + n as u64, &data[n..])?;
        self.sync()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal during the wait (EINTR) or a full completion queue must not end it: the caller
    /// would free a buffer the kernel may still be reading (it used to return the error).
    #[test]
    fn interrupted_waits_are_retried_until_they_complete() {
        let mut calls = 0;
        let r = retry_interrupted(|| {
            calls += 1;
            match calls {
                1 | 2 => Err(io::Error::from_raw_os_error(EINTR)),
                3 => Err(io::Error::from_raw_os_error(EBUSY)),
                4 => Err(io::Error::from_raw_os_error(EAGAIN)),
                _ => Ok(2),
            }
        });
        assert_eq!(r.unwrap(), 2);
        assert_eq!(calls, 5);
        // Anything else is returned (the caller stops the process).
        let e = retry_interrupted(|| Err(io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error())))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::BADF.raw_os_error()));
    }
}
