//! Control messages with file descriptors over a Unix stream socket (`SCM_RIGHTS`). Each frame
//! is `u32 LE length, u32 LE descriptor count, payload`; the descriptors travel with the frame's
//! first bytes. Used only at connection set-up and on error paths, never on the data path.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Most descriptors in one frame (the kernel's `SCM_MAX_FD` is 253).
pub(crate) const MAX_FDS: usize = 240;

/// Sends one frame with `fds` attached.
pub(crate) fn send_frame(sock: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other("too many descriptors for one frame"));
    }
    let mut frame = Vec::with_capacity(8 + data.len());
    frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
    frame.extend_from_slice(&(fds.len() as u32).to_le_bytes());
    frame.extend_from_slice(data);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let fd_bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is `space` bytes, enough for one header with `raw`
        // (CMSG_SPACE); CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        }
    }
    // SAFETY: `msg` points at live buffers (`frame`, `cbuf`) for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut s = sock;
    s.write_all(&frame[n as usize..])?;
    Ok(())
}

/// Reads frames (and their descriptors) from a socket.
#[derive(Debug)]
pub(crate) struct FrameReader {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl FrameReader {
    pub(crate) fn new(sock: UnixStream) -> Self {
        Self {
            sock,
            buf: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    pub(crate) fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// The next frame; `None` at end of stream.
    pub(crate) fn next(&mut self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        loop {
            if self.buf.len() >= 8 {
                let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                let nfds = u32::from_le_bytes(self.buf[4..8].try_into().expect("4 bytes")) as usize;
                if self.buf.len() >= 8 + len {
                    if self.fds.len() < nfds {
                        return Err(io::Error::other("frame descriptors missing"));
                    }
                    let data = self.buf[8..8 + len].to_vec();
                    self.buf.drain(..8 + len);
                    let fds = self.fds.drain(..nfds).collect();
                    return Ok(Some((data, fds)));
                }
            }
            if self.recv()? == 0 {
                return Ok(None);
            }
        }
    }

    fn recv(&mut self) -> io::Result<usize> {
        let mut chunk = vec![0u8; 64 * 1024];
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((MAX_FDS * 4) as u32) } as usize;
        let mut cbuf = vec![0u64; space.div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: chunk.len(),
        };
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` points at live buffers of the stated sizes for the duration of the call.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return self.recv();
            }
            return Err(e);
        }
        // SAFETY: walks the control messages the kernel wrote into `cbuf` with the CMSG
        // macros; each SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / 4` descriptors that
        // are now ours.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let p = libc::CMSG_DATA(c).cast::<RawFd>();
                    for i in 0..bytes / 4 {
                        let fd = std::ptr::read_unaligned(p.add(i));
                        self.fds.push_back(OwnedFd::from_raw_fd(fd));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        self.buf.extend_from_slice(&chunk[..n as usize]);
        Ok(n as usize)
    }
}
