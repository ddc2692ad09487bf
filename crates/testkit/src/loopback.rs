//! Distinct loopback addresses for workloads in loopback-tier tests.
//!
//! Linux routes the whole of `127.0.0.0/8` to `lo`, so a test can bind a "pod" to
//! `127.10.0.7` and a node proxy in shared mode can recognise it by source address. Each test
//! takes addresses from its own block, so tests never collide: neither tests running in
//! parallel in one process (a process-wide counter), nor test processes running side by side on
//! one machine (each block is held by a lock on `<temp dir>/ambit-loopback-127.<block>.lock`,
//! which the kernel releases when the process ends). Without the lock, two test binaries both
//! started at block 10 and one failed to bind `127.10.0.2:8080` ("Address already in use").

use std::fs::{File, OpenOptions, TryLockError};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

/// Next block of `127.0.0.0/8` this process tries (blocks 10..=250 are used; lower ones are
/// left to anything that assumes `127.0.0.1`).
static NEXT_BLOCK: AtomicU32 = AtomicU32::new(10);

/// The locks of the blocks this process holds, kept until it exits.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// A private block of loopback addresses: `127.<block>.x.y`.
#[derive(Debug)]
pub struct LoopbackAddrs {
    block: u8,
    next: AtomicU32,
}

impl LoopbackAddrs {
    /// Reserves a new block of 65,534 addresses for the calling test.
    ///
    /// # Panics
    /// When blocks 10..=250 are all taken (by this process or others running beside it), or the
    /// temp dir cannot hold the lock files.
    pub fn new() -> Self {
        let (block, lock) = reserve(&std::env::temp_dir(), &NEXT_BLOCK);
        HELD.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(lock);
        Self {
            block,
            next: AtomicU32::new(1),
        }
    }

    /// The next unused address of this block.
    ///
    /// # Panics
    /// When the block's 65,534 addresses are used up.
    pub fn next_addr(&self) -> Ipv4Addr {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < 0xffff,
            "loopback block 127.{}.0.0/16 exhausted",
            self.block
        );
        let [_, _, hi, lo] = n.to_be_bytes();
        Ipv4Addr::new(127, self.block, hi, lo)
    }
}

impl Default for LoopbackAddrs {
    fn default() -> Self {
        Self::new()
    }
}

/// The next block from `next` whose lock file in `dir` no other process holds, with its lock.
fn reserve(dir: &Path, next: &AtomicU32) -> (u8, File) {
    loop {
        let block = next.fetch_add(1, Ordering::Relaxed);
        let Some(block) = u8::try_from(block).ok().filter(|b| *b <= 250) else {
            panic!("loopback address blocks 127.10-250.0.0/16 are all taken");
        };
        let path = dir.join(format!("ambit-loopback-127.{block}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        match file.try_lock() {
            Ok(()) => return (block, file),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => panic!("cannot lock {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_bindable() {
        let a = LoopbackAddrs::new();
        let b = LoopbackAddrs::new();
        let (x, y, z) = (a.next_addr(), a.next_addr(), b.next_addr());
        assert_ne!(x, y);
        assert_ne!(x, z);
        assert!(x.is_loopback() && z.is_loopback());
        // Real sockets: every allocated address can be bound on this host.
        for ip in [x, y, z] {
            let listener = std::net::TcpListener::bind((ip, 0)).expect("bind loopback address");
            assert_eq!(listener.local_addr().unwrap().ip(), ip);
        }
    }

    #[test]
    fn a_block_locked_by_another_process_is_skipped() {
        let dir = std::env::temp_dir().join(format!("ambit-loopback-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Another process's hold on blocks 10 and 11 (a lock on its own open file).
        let others: Vec<File> = [10, 11]
            .iter()
            .map(|b| {
                let path = dir.join(format!("ambit-loopback-127.{b}.lock"));
                let file = File::create(path).unwrap();
                file.try_lock().unwrap();
                file
            })
            .collect();
        let next = AtomicU32::new(10);
        let (block, held) = reserve(&dir, &next);
        assert_eq!(block, 12);
        // Once that process is gone, its block can be had again.
        drop(others);
        let (again, _held) = reserve(&dir, &AtomicU32::new(10));
        assert_eq!(again, 10);
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
