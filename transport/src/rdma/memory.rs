//! Registered memory: one page-aligned [`Arena`] per link, allocated and registered when the
//! link is set up (optionally on hugepages), cut into fixed-size slots that are lent either to
//! the application (a send slot being filled, a received frame being read) or to the NIC
//! (posted). This is the backend's shared-memory module: every `unsafe` that touches slot
//! memory is here (the verbs bindings hold the FFI ones), and the slot check-out flags turn
//! "one owner per slot at a time" into a runtime-checked rule. What the device holds only the
//! caller knows, so the two ways to reach bytes the device may be using — checking out a slot
//! ([`SlotRegion::checkout`]) and taking a posted one back ([`PostedSlot::into_slot`]) — are
//! `unsafe fn`s, as is posting (`VerbsQp::post_send`/`post_recv`); the driver makes those
//! calls in one place (`driver/nic.rs`).

#![allow(unsafe_code)]

use crate::sync::Plain;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

const PAGE: usize = 4096;
const HUGE_PAGE: usize = 2 * 1024 * 1024;

#[derive(Debug)]
enum Backing {
    Heap,
    Mmap,
    /// A shared mapping of a memfd, which a peer process can map too (rdma-sim's
    /// shared-memory data path places payloads directly into it).
    Memfd(OwnedFd),
}

/// A block of page-aligned memory that never moves, for registration with a device.
///
/// Its bytes are reachable only through [`SlotRegion`]s carved from it (never overlapping) and
/// their checked-out [`Slot`]s; there is no raw access:
///
/// ```compile_fail
/// let arena = rdmq_transport::rdma::memory::Arena::new(4096);
/// arena.write(0, b"would alias a slot lent to the NIC or the application");
/// ```
#[derive(Debug)]
pub struct Arena {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
    /// Byte ranges already carved into slot regions.
    carved: Mutex<Vec<(usize, usize)>>,
}

// SAFETY: the arena exclusively owns its allocation; concurrent access to its bytes goes
// through slots, each owned by one party at a time (enforced by `SlotRegion`).
unsafe impl Send for Arena {}
// SAFETY: as above; shared references only expose the address and checked slot views.
unsafe impl Sync for Arena {}

impl Arena {
    /// `len` zeroed bytes on the heap, page aligned.
    pub fn new(len: usize) -> Arc<Arena> {
        let len = len.max(1).next_multiple_of(PAGE);
        let layout = std::alloc::Layout::from_size_align(len, PAGE).expect("layout");
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Arc::new(Arena {
            ptr,
            len,
            backing: Backing::Heap,
            carved: Mutex::new(Vec::new()),
        })
    }

    /// `len` bytes on 2 MiB hugepages (fails if the system has none reserved).
    pub fn with_hugepages(len: usize) -> std::io::Result<Arc<Arena>> {
        let len = len.max(1).next_multiple_of(HUGE_PAGE);
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(Arena {
            ptr: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
            backing: Backing::Mmap,
            carved: Mutex::new(Vec::new()),
        }))
    }

    /// `len` zeroed bytes in a fresh memfd, mapped shared (page aligned): memory another
    /// process can map from the descriptor ([`Arena::memfd`]).
    pub fn shared(len: usize) -> std::io::Result<Arc<Arena>> {
        let len = len.max(1).next_multiple_of(PAGE);
        // SAFETY: memfd_create reads a NUL-terminated literal; the result is checked.
        let fd = unsafe { libc::memfd_create(c"rdmq-arena".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        use std::os::fd::AsRawFd;
        // SAFETY: ftruncate on a descriptor we own; no memory is touched.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a shared mapping of the whole memfd with no address hint; checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(Arena {
            ptr: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
            backing: Backing::Memfd(fd),
            carved: Mutex::new(Vec::new()),
        }))
    }

    /// The memfd behind an [`Arena::shared`] arena (mapped from offset 0), if any.
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        match &self.backing {
            Backing::Memfd(fd) => Some(fd.as_fd()),
            _ => None,
        }
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as usize as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty arena (never: arenas have at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "arena access {offset}+{len} out of bounds ({})",
            self.len
        );
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        match self.backing {
            Backing::Heap => {
                let layout = std::alloc::Layout::from_size_align(self.len, PAGE).expect("layout");
                // SAFETY: allocated in `new` with this layout.
                unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
            }
            Backing::Mmap | Backing::Memfd(_) => {
                // SAFETY: mapped in `with_hugepages` or `shared` with this length.
                unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            }
        }
    }
}

/// `count` slots of `slot_size` bytes starting at `base` in an arena, each checked out to at
/// most one owner at a time.
///
/// Taking a slot is `unsafe` (the device may be writing a posted receive slot):
///
/// ```compile_fail
/// use rdmq_transport::rdma::memory::{Arena, SlotRegion};
/// let region = SlotRegion::new(Arena::new(4096), 0, 4096, 1);
/// let slot = region.checkout(0); // error[E0133]: call to unsafe function
/// ```
#[derive(Debug)]
pub struct SlotRegion {
    arena: Arc<Arena>,
    base: usize,
    slot_size: usize,
    out: Box<[AtomicBool]>,
    returned: Mutex<Vec<u32>>,
    returned_count: std::sync::atomic::AtomicUsize,
    /// Whether a dropped view wakes [`SlotRegion::returned_notify`]'s waiter.
    wake_on_return: AtomicBool,
    /// Woken when a view is dropped while [`SlotRegion::set_wake_on_return`] is on, so an idle
    /// driver re-posts the slot (and returns credit) when the peer needs it soon.
    pub(crate) returned_notify: tokio::sync::Notify,
}

impl SlotRegion {
    /// Carves the slots; panics if they do not fit the arena or overlap a region carved
    /// before (two regions over the same bytes would hand out aliasing slots).
    pub fn new(arena: Arc<Arena>, base: usize, slot_size: usize, count: usize) -> Arc<Self> {
        let len = slot_size * count;
        arena.check(base, len);
        {
            let mut carved = arena.carved.lock().plain();
            assert!(
                carved
                    .iter()
                    .all(|&(b, l)| base + len <= b || b + l <= base),
                "slot region {base}+{len} overlaps one carved before"
            );
            carved.push((base, len));
        }
        Arc::new(Self {
            arena,
            base,
            slot_size,
            out: (0..count).map(|_| AtomicBool::new(false)).collect(),
            returned: Mutex::new(Vec::new()),
            returned_count: std::sync::atomic::AtomicUsize::new(0),
            wake_on_return: AtomicBool::new(true),
            returned_notify: tokio::sync::Notify::new(),
        })
    }

    /// Slot size in bytes.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Number of slots.
    pub fn count(&self) -> usize {
        self.out.len()
    }

    /// The arena behind the slots.
    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// Address of slot `idx` (for SGEs and for the peer's remote writes).
    pub fn addr_of(&self, idx: u32) -> u64 {
        self.arena.addr() + (self.base + idx as usize * self.slot_size) as u64
    }

    /// Takes slot `idx` for exclusive use. Panics if it is already out: that would be a
    /// protocol bug letting two owners (or the NIC and an owner) share memory.
    ///
    /// # Safety
    /// The slot must not be posted to a device: no receive naming its bytes may be outstanding
    /// (its completion has been polled, or the QP flushed). The check-out flag catches two
    /// owners; only the caller knows what the device holds.
    pub unsafe fn checkout(self: &Arc<Self>, idx: u32) -> Slot {
        let flag = &self.out[idx as usize];
        assert!(
            !flag.swap(true, Ordering::Acquire),
            "slot {idx} checked out twice"
        );
        Slot {
            region: self.clone(),
            idx,
        }
    }

    /// True if views were dropped since the last [`SlotRegion::take_returned`].
    pub fn has_returned(&self) -> bool {
        self.returned_count.load(Ordering::Acquire) > 0
    }

    /// Whether dropping a received-frame view wakes the link's background task. Off while the
    /// peer has credits to spare: returned slots are then collected by the next poll, at no
    /// wake-up per message.
    pub fn set_wake_on_return(&self, on: bool) {
        self.wake_on_return.store(on, Ordering::Relaxed);
    }

    /// Slots whose received-frame views were dropped since the last call (to re-post).
    pub fn take_returned(&self, into: &mut Vec<u32>) {
        if self.returned_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut r = self.returned.lock().plain();
        self.returned_count.store(0, Ordering::Release);
        into.append(&mut r);
    }
}

/// Exclusive access to one slot.
#[derive(Debug)]
pub struct Slot {
    region: Arc<SlotRegion>,
    idx: u32,
}

impl Slot {
    /// The slot's index.
    pub fn index(&self) -> u32 {
        self.idx
    }

    /// The slot's address.
    pub fn addr(&self) -> u64 {
        self.region.addr_of(self.idx)
    }

    /// The whole slot, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let r = &self.region;
        // SAFETY: the slot lies inside the arena (checked in `SlotRegion::new`, which also
        // refuses overlapping regions), and the check-out flag guarantees this `Slot` is its
        // only owner. The NIC touches only posted slots: a posted receive slot is not checked
        // out, and a posted send slot is held as a `PostedSlot`, which gives no access.
        unsafe {
            std::slice::from_raw_parts_mut(
                r.arena
                    .ptr
                    .as_ptr()
                    .add(r.base + self.idx as usize * r.slot_size),
                r.slot_size,
            )
        }
    }

    /// The whole slot, readable.
    pub fn as_slice(&self) -> &[u8] {
        let r = &self.region;
        // SAFETY: as in `as_mut_slice`; shared access through `&self`.
        unsafe {
            std::slice::from_raw_parts(
                r.arena
                    .ptr
                    .as_ptr()
                    .add(r.base + self.idx as usize * r.slot_size),
                r.slot_size,
            )
        }
    }

    /// Hands the slot to the NIC: a posted slot's bytes cannot be reached until it comes back
    /// ([`PostedSlot::into_slot`], once its completion says the NIC is done).
    pub fn into_posted(self) -> PostedSlot {
        PostedSlot(self)
    }

    /// Turns the first `len` bytes into `Bytes` without copying. When the last clone drops,
    /// the slot is checked in and its index queued in [`SlotRegion::take_returned`].
    pub fn into_bytes(self, offset: usize, len: usize) -> Bytes {
        assert!(offset + len <= self.region.slot_size);
        Bytes::from_owner(ReceivedView {
            slot: Some(self),
            offset,
            len,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.region.out[self.idx as usize].store(false, Ordering::Release);
    }
}

/// A slot lent to the NIC (a posted send): still checked out, so nobody else can take it, and
/// with no access to its bytes while the device may read them.
#[derive(Debug)]
pub struct PostedSlot(Slot);

impl PostedSlot {
    /// The slot's index.
    pub fn index(&self) -> u32 {
        self.0.idx
    }

    /// Takes the slot back from the NIC.
    ///
    /// # Safety
    /// The work request that posted it must have completed (or the queue pair been flushed):
    /// the device may read the bytes until then.
    pub unsafe fn into_slot(self) -> Slot {
        self.0
    }
}

struct ReceivedView {
    slot: Option<Slot>,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for ReceivedView {
    fn as_ref(&self) -> &[u8] {
        match &self.slot {
            Some(s) => &s.as_slice()[self.offset..self.offset + self.len],
            None => &[],
        }
    }
}

impl Drop for ReceivedView {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        let (region, idx) = (slot.region.clone(), slot.idx);
        // Check the slot in before announcing it, so it can be checked out again at once.
        drop(slot);
        region.returned.lock().plain().push(idx);
        region.returned_count.fetch_add(1, Ordering::Release);
        if region.wake_on_return.load(Ordering::Relaxed) {
            region.returned_notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_arena_has_a_memfd_and_zeroed_pages() {
        let arena = Arena::shared(100).expect("memfd arena");
        assert!(arena.memfd().is_some());
        assert_eq!(arena.len(), PAGE);
        let region = SlotRegion::new(arena, 0, 64, 2);
        // SAFETY: no device holds this arena.
        let mut slot = unsafe { region.checkout(0) };
        assert_eq!(slot.as_slice()[0], 0);
        slot.as_mut_slice()[0] = 7;
        assert_eq!(slot.as_slice()[0], 7);
        assert!(Arena::new(10).memfd().is_none());
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn overlapping_slot_regions_are_refused() {
        let arena = Arena::new(4 * PAGE);
        let _a = SlotRegion::new(arena.clone(), 0, PAGE, 2);
        let _b = SlotRegion::new(arena, PAGE, PAGE, 2);
    }

    #[test]
    fn a_posted_slot_stays_checked_out_until_taken_back() {
        let arena = Arena::new(2 * PAGE);
        let region = SlotRegion::new(arena, 0, PAGE, 2);
        // No device holds this arena: "posted" is only the slot's state here.
        // SAFETY: no device holds this arena.
        let mut slot = unsafe { region.checkout(1) };
        slot.as_mut_slice()[0] = 42;
        let posted = slot.into_posted();
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: as above.
            unsafe { region.checkout(1) }
        }));
        assert!(again.is_err(), "a posted slot cannot be checked out twice");
        // SAFETY: as above.
        let slot = unsafe { posted.into_slot() };
        assert_eq!(slot.as_slice()[0], 42);
        drop(slot);
        // SAFETY: as above.
        assert_eq!(unsafe { region.checkout(1) }.as_slice()[0], 42);
    }
}
