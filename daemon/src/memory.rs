//! Hands back to the kernel what start-up (planning, recovery, connecting) used and a running
//! gateway does not: the pages of eddyd's binary (code, constants) that only start-up touched,
//! and heap pages the C allocator keeps after they were freed. Called a while after eddyd is
//! ready and after each reload or deploy, when planning is done.
//!
//! Of the binary, only read-only mappings holding no private (copied-on-write) page are released:
//! their pages are the file's bytes, so the kernel maps them again from the page cache on their
//! next use. It must never touch a writable or relocated (read-only after relocation) mapping,
//! whose contents exist nowhere else. Linux only; elsewhere it does nothing.

/// What was released, for the log.
#[derive(Debug, Default, PartialEq)]
pub struct Released {
    /// Resident bytes of the binary's mappings that were unmapped.
    pub binary_bytes: u64,
    /// Whether the allocator gave pages back.
    pub heap_trimmed: bool,
}

/// Releases the binary's start-up-only pages and free heap pages; never fails (what cannot be
/// released stays, and is logged at debug).
pub fn release_startup_memory() -> Released {
    let mut r = Released::default();
    match own_file_mappings() {
        Ok(maps) => {
            for m in maps {
                match m.release() {
                    Ok(()) => r.binary_bytes += m.rss_bytes,
                    Err(e) => tracing::debug!(error = %e, "binary pages not released"),
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot read /proc/self/smaps"),
    }
    r.heap_trimmed = trim_heap();
    r
}

/// A read-only mapping of the binary, as /proc/self/smaps describes it.
#[derive(Debug, PartialEq)]
struct FileMapping {
    start: usize,
    end: usize,
    rss_bytes: u64,
}

#[cfg(target_os = "linux")]
fn own_file_mappings() -> std::io::Result<Vec<FileMapping>> {
    use std::os::unix::fs::MetadataExt;
    // The inode names the binary even when a package upgrade has replaced its path.
    let inode = std::fs::metadata("/proc/self/exe")?.ino();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let maps = releasable_mappings_in(&smaps, inode);
    // The code running now must lie in what was found, or these are not our own addresses (an
    // emulator such as qemu-user shows its host's mappings): then nothing is released.
    let here = own_file_mappings as fn() -> std::io::Result<Vec<FileMapping>> as usize;
    if !maps.iter().any(|m| (m.start..m.end).contains(&here)) {
        return Ok(Vec::new());
    }
    Ok(maps)
}

#[cfg(not(target_os = "linux"))]
fn own_file_mappings() -> std::io::Result<Vec<FileMapping>> {
    Ok(Vec::new())
}

/// Finds, in smaps text, the private read-only (`r--p`, `r-xp`) mappings of the file with
/// `inode` that have no anonymous (copied) page.
fn releasable_mappings_in(smaps: &str, inode: u64) -> Vec<FileMapping> {
    let mut found: Vec<FileMapping> = Vec::new();
    // (mapping, anonymous kB) of the entry being read; an entry with copied pages is disqualified.
    let mut cur: Option<(FileMapping, u64)> = None;
    let finish = |cur: Option<(FileMapping, u64)>, found: &mut Vec<FileMapping>| {
        if let Some((m, 0)) = cur {
            found.push(m);
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            finish(cur.take(), &mut found);
            let (perms, _offset, _dev, ino) = (f.next(), f.next(), f.next(), f.next());
            let ours = matches!(perms, Some("r-xp" | "r--p")) && ino.and_then(|i| i.parse::<u64>().ok()) == Some(inode);
            if let (true, Ok(start), Ok(end)) = (ours, usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                cur = Some((FileMapping { start, end, rss_bytes: 0 }, 0));
            }
            continue;
        }
        let Some((m, anon_kb)) = cur.as_mut() else { continue };
        let kb = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match first {
            "Rss:" => m.rss_bytes = kb * 1024,
            // Anonymous: copied-on-write pages (relocations): releasing would lose them.
            "Anonymous:" => *anon_kb = kb,
            _ => {}
        }
    }
    finish(cur, &mut found);
    found
}

impl FileMapping {
    #[cfg(target_os = "linux")]
    fn release(&self) -> std::io::Result<()> {
        const MADV_DONTNEED: i32 = 4;
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        // SAFETY: the range is exactly one private, read-only mapping of our own binary with no
        // copied page (checked in `releasable_mappings_in`): every page of it equals the file's
        // bytes, so dropping the pages only makes the next access map them from the file again
        // (references into it stay valid: the addresses do not change).
        let rc = unsafe { madvise(self.start as *mut std::ffi::c_void, self.end - self.start, MADV_DONTNEED) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn release(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// glibc keeps freed heap pages in its arenas (planning frees many); `malloc_trim` returns them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() -> bool {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim takes no pointer and is thread-safe (it locks each arena).
    unsafe { malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_pointer_width = "64")]
    const SMAPS: &str = "\
55d0a0000000-55d0a1561000 r--p 00000000 08:01 4242 /usr/bin/eddyd
Rss:                7040 kB
Anonymous:             0 kB
55d0a1561000-55d0a593e000 r-xp 01560000 08:01 4242 /usr/bin/eddyd
Size:              69492 kB
Rss:               30952 kB
Anonymous:             0 kB
55d0a593f000-55d0a5c77000 r--p 0593e000 08:01 4242 /usr/bin/eddyd
Rss:                3284 kB
Anonymous:          3284 kB
7f0000000000-7f0000100000 r-xp 00000000 08:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1008 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Rss:                 412 kB
Anonymous:           412 kB
";

    /// The sample is an x86-64 process's: its addresses do not fit a 32-bit `usize`.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn only_the_binarys_own_unmodified_read_only_mappings_are_chosen() {
        let spans =
            |maps: Vec<FileMapping>| maps.iter().map(|m| (m.start, m.end, m.rss_bytes >> 10)).collect::<Vec<_>>();
        assert_eq!(
            spans(releasable_mappings_in(SMAPS, 4242)),
            [(0x55d0a0000000, 0x55d0a1561000, 7040), (0x55d0a1561000, 0x55d0a593e000, 30952)],
            "the relocated r--p mapping (copied pages) stays"
        );
        // Another file's mappings are not ours.
        assert_eq!(spans(releasable_mappings_in(SMAPS, 77)), [(0x7f0000000000, 0x7f0000100000, 1008)]);
        assert!(releasable_mappings_in(SMAPS, 1).is_empty());
        // Copied pages in the code mapping (text relocations): left alone.
        let relocated =
            SMAPS.replacen("Anonymous:             0 kB\n55d0a593f000", "Anonymous:             8 kB\n55d0a593f000", 1);
        assert_eq!(spans(releasable_mappings_in(&relocated, 4242)), [(0x55d0a0000000, 0x55d0a1561000, 7040)]);
    }

    /// On this process: the test binary's pages are released, and it keeps running (the pages
    /// come back from the file on use).
    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_this_processs_binary_pages_keeps_it_running() {
        let rss = |maps: &[FileMapping]| maps.iter().map(|m| m.rss_bytes).sum::<u64>();
        let before = own_file_mappings().unwrap();
        if before.is_empty() && std::env::var_os("EDDY_TEST_EMULATED").is_some() {
            eprintln!("under an emulator (scripts/cross.sh test): smaps is not this address space; nothing to release");
            return;
        }
        assert!(before.len() >= 2 && rss(&before) > 0, "{before:?}");
        let r = release_startup_memory();
        assert!(r.binary_bytes > 0, "{r:?}");
        // Code and constants are used again after the release.
        let after = own_file_mappings().unwrap();
        assert_eq!(
            after.iter().map(|m| m.start).collect::<Vec<_>>(),
            before.iter().map(|m| m.start).collect::<Vec<_>>()
        );
        assert!(rss(&after) < rss(&before), "{} then {}", rss(&before), rss(&after));
        #[cfg(target_pointer_width = "64")]
        assert_eq!(releasable_mappings_in(SMAPS, 4242).len(), 2);
    }
}
