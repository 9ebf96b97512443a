//! Direct placement: the simulated NIC's copies between local registered memory and the
//! peer's registered memory mapped from its memfds. The `unsafe` here relies on two rules:
//! spans of a peer mapping are bounds-checked when built ([`Span::new`]), and local addresses
//! were checked against a live registration under the fabric lock (the contract of
//! [`ProtectionDomain::register`](crate::ProtectionDomain::register), as in `memory.rs`).

#![allow(unsafe_code)]

use super::region::ShmMap;

/// A bounds-checked byte range of a shared mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span<'a> {
    map: &'a ShmMap,
    off: usize,
    len: usize,
}

impl<'a> Span<'a> {
    /// `len` bytes at `off` of `map`, if inside it.
    pub(crate) fn new(map: &'a ShmMap, off: usize, len: usize) -> Option<Span<'a>> {
        (off.checked_add(len)? <= map.len()).then_some(Span { map, off, len })
    }

    fn ptr(&self, at: usize) -> *mut u8 {
        debug_assert!(at <= self.len);
        // SAFETY: `off + at <= off + len <= map.len()` (checked in `new`).
        unsafe { self.map.ptr().add(self.off + at) }
    }
}

/// Where bytes come from: local registered memory (checked by the caller) or simulator-owned
/// bytes (inline data).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    Local { addr: u64, len: usize },
    Bytes(&'a [u8]),
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::Local { len, .. } => *len,
            Source::Bytes(b) => b.len(),
        }
    }
}

/// Copies the concatenation of `src` into the concatenation of `dst`, stopping at the shorter;
/// returns the bytes copied.
pub(crate) fn place(src: &[Source<'_>], dst: &[Span<'_>]) -> usize {
    let (mut si, mut so, mut di, mut doff, mut total) = (0, 0, 0, 0, 0);
    while si < src.len() && di < dst.len() {
        let n = (src[si].len() - so).min(dst[di].len - doff);
        if n > 0 {
            let to = dst[di].ptr(doff);
            match src[si] {
                // SAFETY: the source range lies in a live local registration (caller's check
                // under the fabric lock); the destination is inside the peer mapping (`Span`).
                // The two cannot overlap: one is this process's registration, the other a
                // mapping made for the peer's region.
                Source::Local { addr, .. } => unsafe {
                    std::ptr::copy((addr as usize as *const u8).add(so), to, n)
                },
                // SAFETY: `b[so..so+n]` is in bounds; the destination is inside the mapping.
                Source::Bytes(b) => unsafe {
                    std::ptr::copy_nonoverlapping(b.as_ptr().add(so), to, n)
                },
            }
        }
        total += n;
        so += n;
        doff += n;
        if so == src[si].len() {
            si += 1;
            so = 0;
        }
        if doff == dst[di].len {
            di += 1;
            doff = 0;
        }
    }
    total
}

/// Copies the concatenation of `src` (peer memory) into local registered ranges `(addr, len)`
/// (checked by the caller for local write access); returns the bytes copied.
pub(crate) fn fetch(src: &[Span<'_>], dst: &[(u64, usize)]) -> usize {
    let (mut si, mut so, mut di, mut doff, mut total) = (0, 0, 0, 0, 0);
    while si < src.len() && di < dst.len() {
        let n = (src[si].len - so).min(dst[di].1 - doff);
        if n > 0 {
            // SAFETY: the source is inside the peer mapping (`Span`); the destination lies in
            // a live local registration with local write access (caller's check).
            unsafe {
                std::ptr::copy(
                    src[si].ptr(so),
                    (dst[di].0 as usize as *mut u8).add(doff),
                    n,
                )
            }
        }
        total += n;
        so += n;
        doff += n;
        if so == src[si].len {
            si += 1;
            so = 0;
        }
        if doff == dst[di].1 {
            di += 1;
            doff = 0;
        }
    }
    total
}
