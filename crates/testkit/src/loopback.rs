//! Distinct loopback addresses for workloads in loopback-tier tests.
//!
//! Linux routes the whole of `127.0.0.0/8` to `lo`, so a test can bind a "pod" to
//! `127.10.0.7` and a node proxy in shared mode can recognise it by source address. Each test
//! takes addresses from its own block so tests running in parallel in one process never collide.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

/// Next free /16 block of `127.0.0.0/8` for this process (blocks 10..=250 are used; lower ones
/// are left to anything that assumes `127.0.0.1`).
static NEXT_BLOCK: AtomicU32 = AtomicU32::new(10);

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
    /// When more than 240 blocks are requested in one process, which would mean a test leaks
    /// allocators in a loop.
    pub fn new() -> Self {
        let block = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
        let block = u8::try_from(block)
            .ok()
            .filter(|b| *b <= 250)
            .expect("loopback address blocks exhausted (more than 240 allocators in one process)");
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
}
