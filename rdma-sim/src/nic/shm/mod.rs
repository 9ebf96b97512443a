//! The cross-process data path over shared memory with direct placement.
//!
//! When a QP moves to RTR towards a QP of another process, the two fabrics attach over a
//! control socket (an abstract Unix socket per device GID, `rdma-sim-ctl.<gid>`): each side
//! passes (`SCM_RIGHTS`) the memfds of its protection domain's regions (with keys, addresses,
//! lengths and access), of its QP's shared words and receive ring ([`QpShared`]), of its
//! receive CQ's ring ([`CqRing`]) and its completion channel's eventfd, and maps the peer's.
//! From then on a send is executed entirely by the sender's thread: it takes the peer's next
//! posted receive from the peer's ring, checks keys, bounds and access against the peer's
//! region table, copies the payload straight into the peer's mapped memory, writes the receive
//! completion into the peer's CQ ring, and writes the peer's eventfd only if that CQ was armed.
//! No kernel crossing and no thread hop in steady state; the control socket carries only the
//! set-up, error notices (a remote error moves the peer QP to ERR) and, by reaching end of
//! stream, the peer's death or QP destruction.
//!
//! Either side falls back to the packet wire (`wire.rs`) when attaching is not possible:
//! regions without a memfd in the PD, injected faults, `RDMA_SIM_WIRE=socket`, or a peer that
//! refuses.

mod cq_ring;
mod fdpass;
mod place;
mod region;
mod rq_ring;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub(crate) use cq_ring::CqRing;
pub(crate) use place::{Source, Span, fetch, place};
pub(crate) use region::ShmMap;
pub(crate) use rq_ring::{QpShared, state as qp_state};

use super::packet::QpAddress;
use super::state::HashMap;
use super::{Effects, Fabric};
use crate::Gid;
use crate::sys::EventFd;
use crate::wr::Access;
use fdpass::{FrameReader, send_frame};

const REQUEST: u8 = 1;
const ACCEPT: u8 = 2;
const REFUSE: u8 = 3;
const ERROR: u8 = 4;
/// The sender destroyed (or reset) its QP: the link's end is then not a death.
const GONE: u8 = 5;

/// Most regions a PD may have to attach (each travels as one descriptor).
const MAX_REGIONS: usize = fdpass::MAX_FDS - 3;

static LINK_IDS: AtomicU64 = AtomicU64::new(1);

fn control_name(gid: &Gid) -> String {
    let hex: String = gid.0.iter().map(|b| format!("{b:02x}")).collect();
    format!("rdma-sim-ctl.{hex}")
}

/// A local QP's attachment: its own shared words and receive ring, and the peer once attached.
#[derive(Debug)]
pub(crate) struct Attach {
    pub own: QpShared,
    pub peer: Option<Peer>,
}

impl Drop for Attach {
    fn drop(&mut self) {
        self.own.set_state(qp_state::GONE);
        if let Some(p) = &self.peer {
            let mut m = Vec::new();
            header(&mut m, GONE, p.addr, p.addr.qpn);
            for (_, s) in &p.links {
                let _ = send_frame(s, &m, &[]);
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// The peer QP as mapped into this process.
#[derive(Debug)]
pub(crate) struct Peer {
    pub addr: QpAddress,
    pub qp: QpShared,
    pub cq: CqRing,
    pub doorbell: Option<Arc<EventFd>>,
    /// The peer PD's regions at attach time, by lkey; `rkeys` maps rkeys to lkeys.
    pub mrs: HashMap<u32, PeerMr>,
    pub rkeys: HashMap<u32, u32>,
    /// Control sockets to the peer (usually one; two if both sides attached at once).
    pub links: Vec<(u64, Arc<UnixStream>)>,
}

impl Peer {
    /// Tells the peer its QP must go to ERR (a remote error); best effort.
    pub(crate) fn notify_error(&self, me: QpAddress) {
        if let Some((_, s)) = self.links.first() {
            let mut m = Vec::new();
            header(&mut m, ERROR, me, self.addr.qpn);
            let _ = send_frame(s, &m, &[]);
        }
    }
}

/// A region of the peer process, mapped here.
#[derive(Debug)]
pub(crate) struct PeerMr {
    pub addr: u64,
    pub len: u64,
    pub access: Access,
    pub map: ShmMap,
}

impl PeerMr {
    /// The peer's `addr..addr+len` as a span of the mapping, if inside the region.
    pub(crate) fn span(&self, addr: u64, len: u64) -> Option<Span<'_>> {
        let end = addr.checked_add(len)?;
        if addr < self.addr || end > self.addr + self.len {
            return None;
        }
        Span::new(&self.map, (addr - self.addr) as usize, len as usize)
    }
}

/// What this side offers at attach time.
#[derive(Debug)]
pub(crate) struct LocalInfo {
    pub qpn: u32,
    pub rq_cap: u32,
    pub max_sge: u32,
    pub rq_fd: Arc<OwnedFd>,
    pub cq_cap: u32,
    pub cq_fd: Arc<OwnedFd>,
    pub efd: Option<OwnedFd>,
    pub mrs: Vec<MrInfo>,
}

/// One region as described to the peer.
#[derive(Debug)]
pub(crate) struct MrInfo {
    pub lkey: u32,
    pub rkey: u32,
    pub addr: u64,
    pub len: u64,
    pub access: Access,
    pub fd: Arc<OwnedFd>,
    pub offset: u64,
}

fn header(m: &mut Vec<u8>, kind: u8, from: QpAddress, to_qpn: u32) {
    m.push(kind);
    m.extend_from_slice(&from.gid.0);
    m.extend_from_slice(&from.qpn.to_le_bytes());
    m.extend_from_slice(&to_qpn.to_le_bytes());
}

impl LocalInfo {
    fn encode<'a>(&'a self, m: &mut Vec<u8>, fds: &mut Vec<BorrowedFd<'a>>) {
        for v in [self.qpn, self.rq_cap, self.max_sge, self.cq_cap] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.push(self.efd.is_some() as u8);
        m.extend_from_slice(&(self.mrs.len() as u32).to_le_bytes());
        fds.push(self.rq_fd.as_fd());
        fds.push(self.cq_fd.as_fd());
        if let Some(e) = &self.efd {
            fds.push(e.as_fd());
        }
        for r in &self.mrs {
            m.extend_from_slice(&r.lkey.to_le_bytes());
            m.extend_from_slice(&r.rkey.to_le_bytes());
            m.extend_from_slice(&r.addr.to_le_bytes());
            m.extend_from_slice(&r.len.to_le_bytes());
            m.push(r.access.bits());
            m.extend_from_slice(&r.offset.to_le_bytes());
            fds.push(r.fd.as_fd());
        }
    }
}

struct Dec<'a>(&'a [u8]);

impl Dec<'_> {
    fn take<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        if self.0.len() < N {
            return Err(io::Error::other("short control message"));
        }
        let (a, b) = self.0.split_at(N);
        self.0 = b;
        Ok(a.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

fn decode_header(d: &mut Dec<'_>) -> io::Result<(u8, QpAddress, u32)> {
    let kind = d.u8()?;
    let gid = Gid(d.take()?);
    let qpn = d.u32()?;
    let to = d.u32()?;
    Ok((kind, QpAddress { gid, qpn }, to))
}

/// Maps what the peer described (`from` is its address).
fn map_peer(from: QpAddress, d: &mut Dec<'_>, fds: Vec<OwnedFd>) -> io::Result<Peer> {
    let bad = |w: &str| io::Error::other(format!("bad attach message: {w}"));
    let (_qpn, rq_cap, max_sge, cq_cap) = (d.u32()?, d.u32()?, d.u32()?, d.u32()?);
    let has_efd = d.u8()? != 0;
    let nmrs = d.u32()? as usize;
    if rq_cap > crate::DEVICE_ATTR.max_qp_wr
        || max_sge > crate::DEVICE_ATTR.max_sge
        || cq_cap == 0
        || cq_cap > crate::DEVICE_ATTR.max_cqe
        || nmrs > MAX_REGIONS
    {
        return Err(bad("limits"));
    }
    if fds.len() != 2 + has_efd as usize + nmrs {
        return Err(bad("descriptor count"));
    }
    let mut fds = fds.into_iter().map(Arc::new);
    let mut next = || fds.next().ok_or_else(|| bad("descriptors"));
    let qp = QpShared::open(next()?, rq_cap as usize, max_sge as usize)?;
    let cq = CqRing::open(next()?, cq_cap as usize)?;
    let doorbell = if has_efd {
        let fd = Arc::try_unwrap(next()?).map_err(|_| bad("eventfd"))?;
        Some(Arc::new(EventFd::from_owned(fd)))
    } else {
        None
    };
    let mut mrs = HashMap::default();
    let mut rkeys = HashMap::default();
    for _ in 0..nmrs {
        let (lkey, rkey, addr, len) = (d.u32()?, d.u32()?, d.u64()?, d.u64()?);
        let access = Access::from_bits(d.u8()?);
        let offset = d.u64()?;
        let map = ShmMap::map(next()?, offset, len as usize)?;
        rkeys.insert(rkey, lkey);
        mrs.insert(
            lkey,
            PeerMr {
                addr,
                len,
                access,
                map,
            },
        );
    }
    Ok(Peer {
        addr: from,
        qp,
        cq,
        doorbell,
        mrs,
        rkeys,
        links: Vec::new(),
    })
}

/// Starts the control listeners of a cross-process fabric's devices.
pub(crate) fn start_control(fabric: Weak<Fabric>, gids: &[Gid]) -> io::Result<()> {
    for gid in gids {
        let addr = SocketAddr::from_abstract_name(control_name(gid).as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        let fabric = fabric.clone();
        std::thread::Builder::new()
            .name("rdma-sim-ctl".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let fabric = fabric.clone();
                    let _ = std::thread::Builder::new()
                        .name("rdma-sim-ctl-link".into())
                        .spawn(move || inbound(fabric, stream));
                }
            })?;
    }
    Ok(())
}

/// Answers a peer's attach request, then watches the link.
fn inbound(fabric: Weak<Fabric>, sock: UnixStream) {
    let Ok(write_half) = sock.try_clone() else {
        return;
    };
    let mut reader = FrameReader::new(sock);
    let Ok(Some((msg, fds))) = reader.next() else {
        return;
    };
    let Some(f) = fabric.upgrade() else { return };
    let mut d = Dec(&msg);
    let Ok((REQUEST, from, to_qpn)) = decode_header(&mut d) else {
        return;
    };
    let me = {
        let cell = f.lock();
        let Some(qp) = cell.0.qps.get(&to_qpn) else {
            return refuse(&write_half, from);
        };
        QpAddress {
            gid: cell.0.devices[qp.dev].gid,
            qpn: to_qpn,
        }
    };
    let info = if f.shm_enabled() {
        f.lock().0.shm_prepare(to_qpn, Some(from))
    } else {
        None
    };
    let Some(info) = info else {
        return refuse(&write_half, from);
    };
    let peer = match map_peer(from, &mut d, fds) {
        Ok(p) => p,
        Err(_) => {
            f.lock().0.shm_abandon(to_qpn);
            return refuse(&write_half, from);
        }
    };
    let link = LINK_IDS.fetch_add(1, Relaxed);
    let ctl = Arc::new(write_half);
    let mut m = Vec::new();
    let mut fdv = Vec::new();
    header(&mut m, ACCEPT, me, from.qpn);
    info.encode(&mut m, &mut fdv);
    // Install before answering: the requester may send as soon as it has the answer.
    if !f.lock().0.shm_install(to_qpn, peer, link, ctl.clone()) {
        f.lock().0.shm_abandon(to_qpn);
        return refuse(&ctl, from);
    }
    if send_frame(&ctl, &m, &fdv).is_err() {
        f.with_state(|st, now, fx| st.shm_link_lost(to_qpn, link, now, fx));
        return;
    }
    drop(fdv);
    drop(info);
    drop(f);
    watch(fabric, reader, to_qpn, link);
}

fn refuse(sock: &UnixStream, to: QpAddress) {
    let mut m = Vec::new();
    header(&mut m, REFUSE, to, 0);
    let _ = send_frame(sock, &m, &[]);
}

/// Blocks on the control link: an error notice, or the end of the stream without a notice
/// that the peer QP was destroyed (the peer process died), moves the local QP to ERR. A
/// destroyed peer QP is seen by senders in its shared state word (`RETRY_EXC_ERR`), as a real
/// requester would see it after its retries.
fn watch(fabric: Weak<Fabric>, mut reader: FrameReader, qpn: u32, link: u64) {
    let _ = reader.socket().set_read_timeout(None);
    let mut gone = false;
    loop {
        let frame = reader.next();
        let Some(f) = fabric.upgrade() else { return };
        match frame {
            Ok(Some((msg, _))) => match decode_header(&mut Dec(&msg)) {
                Ok((ERROR, _, _)) => {
                    f.with_state(|st, now, fx| st.shm_remote_error(qpn, link, now, fx))
                }
                Ok((GONE, _, _)) => gone = true,
                _ => {}
            },
            _ if gone => return,
            _ => {
                f.with_state(|st, now, fx| st.shm_link_lost(qpn, link, now, fx));
                return;
            }
        }
    }
}

impl Fabric {
    /// Attaches `qpn` to `remote` over shared memory if both sides can (best effort: on any
    /// failure the QP stays on the packet wire). Called before the QP moves to RTR.
    pub(crate) fn shm_connect(self: &Arc<Self>, qpn: u32, remote: QpAddress) {
        if !self.shm_enabled() {
            return;
        }
        let (me, info) = {
            let mut cell = self.lock();
            let st = &mut cell.0;
            if st.local_dev(&remote.gid).is_some() {
                return;
            }
            let Some(qp) = st.qps.get(&qpn) else { return };
            if qp
                .shm
                .as_ref()
                .and_then(|a| a.peer.as_ref())
                .is_some_and(|p| p.addr == remote)
            {
                return; // the peer attached first
            }
            let me = QpAddress {
                gid: st.devices[qp.dev].gid,
                qpn,
            };
            match st.shm_prepare(qpn, Some(remote)) {
                Some(i) => (me, i),
                None => return,
            }
        };
        match self.shm_request(me, remote, &info) {
            Ok(Some((peer, reader, link, ctl))) => {
                let installed = self.lock().0.shm_install(qpn, peer, link, ctl);
                if installed {
                    let fabric = Arc::downgrade(self);
                    let _ = std::thread::Builder::new()
                        .name("rdma-sim-ctl-link".into())
                        .spawn(move || watch(fabric, reader, qpn, link));
                }
            }
            _ => self.lock().0.shm_abandon(qpn),
        }
    }

    #[allow(clippy::type_complexity)]
    fn shm_request(
        &self,
        me: QpAddress,
        remote: QpAddress,
        info: &LocalInfo,
    ) -> io::Result<Option<(Peer, FrameReader, u64, Arc<UnixStream>)>> {
        let addr = SocketAddr::from_abstract_name(control_name(&remote.gid).as_bytes())?;
        let sock = UnixStream::connect_addr(&addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let ctl = Arc::new(sock.try_clone()?);
        let mut m = Vec::new();
        let mut fds = Vec::new();
        header(&mut m, REQUEST, me, remote.qpn);
        info.encode(&mut m, &mut fds);
        send_frame(&ctl, &m, &fds)?;
        let mut reader = FrameReader::new(sock);
        let Some((msg, fds)) = reader.next()? else {
            return Ok(None);
        };
        let mut d = Dec(&msg);
        let (kind, from, _) = decode_header(&mut d)?;
        if kind != ACCEPT || from != remote {
            return Ok(None);
        }
        let peer = map_peer(from, &mut d, fds)?;
        Ok(Some((peer, reader, LINK_IDS.fetch_add(1, Relaxed), ctl)))
    }

    /// A ring CQ whose overflow was flagged by the peer: put the CQ and its QPs in error once.
    pub(crate) fn shm_cq_overflowed(&self, cq: u32) {
        self.with_state(|st, now, fx: &mut Effects| st.cq_overflow(cq, now, fx));
    }
}
