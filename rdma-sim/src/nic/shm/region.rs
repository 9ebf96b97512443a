//! memfd-backed shared mappings: memory a peer process can map by receiving the descriptor.
//! All `unsafe` of mapping and viewing shared memory lives here; a [`ShmMap`] owns its mapping
//! and unmaps it on drop, and its views are bounded by its length.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

const PAGE: u64 = 4096;

/// A `MAP_SHARED` mapping of (part of) a memfd.
#[derive(Debug)]
pub(crate) struct ShmMap {
    /// Start of the bytes the owner asked for (inside the mapping).
    ptr: NonNull<u8>,
    len: usize,
    /// The whole mapping, page aligned, for `munmap`.
    base: NonNull<u8>,
    map_len: usize,
    fd: Arc<OwnedFd>,
    offset: u64,
}

// SAFETY: the mapping is owned by this value and only exposed as an address, bounds-checked
// copies (`place.rs`) and atomics; sharing it between threads adds nothing the peer process
// does not already do.
unsafe impl Send for ShmMap {}
// SAFETY: as above.
unsafe impl Sync for ShmMap {}

impl ShmMap {
    /// A new zeroed memfd of `len` bytes (rounded up to a page), mapped.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<ShmMap> {
        let cname = CString::new(name).map_err(|_| io::Error::other("memfd name has a NUL"))?;
        // SAFETY: memfd_create reads a NUL-terminated string that outlives the call.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let size = (len.max(1) as u64).next_multiple_of(PAGE);
        // SAFETY: ftruncate on a descriptor we own; no memory is touched.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd, 0, size as usize)
    }

    /// Maps `len` bytes at `offset` of the memfd `fd` (shared, read-write).
    pub(crate) fn map(fd: Arc<OwnedFd>, offset: u64, len: usize) -> io::Result<ShmMap> {
        // Mapping past the end of the file would turn accesses into SIGBUS: refuse.
        // SAFETY: an all-zero `stat` is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one `stat` into a live local.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if offset
            .checked_add(len as u64)
            .is_none_or(|e| e > st.st_size as u64)
        {
            return Err(io::Error::other("mapping beyond the end of the memfd"));
        }
        let start = offset - offset % PAGE;
        let delta = (offset - start) as usize;
        let map_len = (delta + len.max(1)).next_multiple_of(PAGE as usize);
        // SAFETY: a fresh shared mapping with no address hint; the result is checked. The
        // kernel refuses ranges the descriptor does not allow.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap null"))?;
        // SAFETY: `delta` is below one page and `map_len` covers `delta + len`.
        let ptr = unsafe { NonNull::new_unchecked(base.as_ptr().add(delta)) };
        Ok(ShmMap {
            ptr,
            len,
            base,
            map_len,
            fd,
            offset,
        })
    }

    /// Address of the first byte in this process.
    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as usize as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The memfd and the offset of this mapping in it (what a peer needs to map it).
    pub(crate) fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The mapping as 64-bit atomics (for rings and state words shared with a peer). The
    /// mapping is page aligned; a trailing partial word is not included.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        debug_assert_eq!(self.addr() % 8, 0);
        // SAFETY: the mapping is valid for `len` bytes while `self` lives, 8-byte aligned (rings
        // are mapped at offset 0 of their memfd), and `AtomicU64` has the layout of `u64` with
        // interior mutability, so shared references are sound even while the peer process
        // updates the same words (it does so only through atomics too).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }
}

impl Drop for ShmMap {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `map` with this base and length and is unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}
