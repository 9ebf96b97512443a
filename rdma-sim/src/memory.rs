//! Moving payload bytes in and out of registered memory — what a NIC's DMA engine does. The
//! simulator's only `unsafe` memory access lives here; it relies on the contract of
//! [`ProtectionDomain::register`](crate::ProtectionDomain::register): registered memory stays
//! valid until the region is dropped, and the application does not touch bytes the NIC is
//! writing (the same rule real hardware imposes).

#![allow(unsafe_code)]

/// Copies `len` bytes at `addr` into `out`.
///
/// Callers check `addr..addr+len` against a live registration first.
pub(crate) fn read_registered(addr: u64, len: usize, out: &mut Vec<u8>) {
    if len == 0 {
        return;
    }
    out.reserve(len);
    // SAFETY: the range lies inside a registered region (checked by the caller against the
    // region table under the fabric lock); registration guarantees the memory is valid for
    // reads until deregistered, and deregistration takes the same lock.
    unsafe {
        let dst = out.as_mut_ptr().add(out.len());
        std::ptr::copy_nonoverlapping(addr as usize as *const u8, dst, len);
        out.set_len(out.len() + len);
    }
}

/// Copies `data` to `addr`.
///
/// Callers check `addr..addr+data.len()` against a live registration with write access first.
pub(crate) fn write_registered(addr: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    // SAFETY: the range lies inside a registered region with local or remote write access
    // (checked by the caller under the fabric lock); registration guarantees the memory is
    // valid for writes until deregistered, which takes the same lock. `data` is simulator-owned
    // and cannot overlap application memory.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), addr as usize as *mut u8, data.len());
    }
}

/// Zeroed, page-aligned memory (heap, or a memfd mapping) that is never moved, for registering without `unsafe`
/// ([`ProtectionDomain::alloc_region`](crate::ProtectionDomain::alloc_region)).
#[derive(Debug)]
pub(crate) struct Buffer {
    ptr: *mut u8,
    len: usize,
    /// The memfd mapping behind the buffer, if shareable with another process.
    shm: Option<crate::nic::shm::ShmMap>,
}

// SAFETY: `Buffer` exclusively owns its allocation; the raw pointer is only an address.
unsafe impl Send for Buffer {}
// SAFETY: shared access only hands out the address or copies under the caller's discipline.
unsafe impl Sync for Buffer {}

const ALIGN: usize = 4096;

impl Buffer {
    pub(crate) fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(1), ALIGN).expect("layout");
        // SAFETY: the layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Self {
            ptr,
            len,
            shm: None,
        }
    }

    /// Zeroed memory in a fresh memfd, mappable by a peer process.
    pub(crate) fn shared(len: usize) -> std::io::Result<Self> {
        let map = crate::nic::shm::ShmMap::create("rdma-sim-mr", len)?;
        Ok(Self {
            ptr: map.ptr(),
            len,
            shm: Some(map),
        })
    }

    /// The memfd and offset behind the buffer, if it has one.
    pub(crate) fn memfd(&self) -> Option<(std::sync::Arc<std::os::fd::OwnedFd>, u64)> {
        self.shm.as_ref().map(|m| (m.fd().clone(), m.offset()))
    }

    pub(crate) fn addr(&self) -> u64 {
        self.ptr as usize as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `out.len()` bytes from `offset`.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(
            offset.checked_add(out.len()).is_some_and(|e| e <= self.len),
            "read out of bounds"
        );
        // SAFETY: bounds checked above; the allocation lives as long as `self`.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), out.len()) }
    }

    /// Copies `data` to `offset`.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) {
        assert!(
            offset
                .checked_add(data.len())
                .is_some_and(|e| e <= self.len),
            "write out of bounds"
        );
        // SAFETY: bounds checked above; the allocation lives as long as `self`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.shm.is_some() {
            return; // the mapping unmaps itself
        }
        let layout = std::alloc::Layout::from_size_align(self.len.max(1), ALIGN).expect("layout");
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}
