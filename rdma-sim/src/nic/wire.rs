//! The cross-process packet wire (the fallback when two processes cannot attach over shared
//! memory, or with `RDMA_SIM_WIRE=socket`): each device of a cross-process fabric listens on an abstract Unix
//! socket named after its GID; packets for a device of another process are framed
//! (`u32 BE length` + packet) and written to that socket by a per-peer writer thread; a reader
//! thread per inbound connection hands them to the local engine. These threads are the NIC's
//! own work and their CPU time is accounted as such.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::mpsc;
use std::sync::{Mutex, Weak};

use super::Fabric;
use super::packet::Packet;
use crate::Gid;
use crate::sys::thread_cpu_time;

fn socket_name(gid: &Gid) -> String {
    let hex: String = gid.0.iter().map(|b| format!("{b:02x}")).collect();
    format!("rdma-sim.{hex}")
}

#[derive(Debug)]
pub(crate) struct Wire {
    fabric: Weak<Fabric>,
    peers: Mutex<HashMap<Gid, mpsc::Sender<Vec<u8>>>>,
}

impl Wire {
    pub(crate) fn start(fabric: Weak<Fabric>, gids: &[Gid]) -> io::Result<Wire> {
        for gid in gids {
            let addr = SocketAddr::from_abstract_name(socket_name(gid).as_bytes())?;
            let listener = UnixListener::bind_addr(&addr)?;
            let fabric = fabric.clone();
            std::thread::Builder::new()
                .name("rdma-sim-accept".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        let Ok(stream) = stream else { continue };
                        let fabric = fabric.clone();
                        let _ = std::thread::Builder::new()
                            .name("rdma-sim-rx".into())
                            .spawn(move || reader(stream, fabric));
                    }
                })?;
        }
        Ok(Wire {
            fabric,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Queues packets for their destination processes.
    pub(crate) fn send(&self, packets: Vec<Packet>) {
        let mut peers = self
            .peers
            .lock()
            .expect("the cross-process wire peers was poisoned by a panic in the simulator");
        for pkt in packets {
            let mut frame = Vec::with_capacity(64 + pkt.payload_len());
            frame.extend_from_slice(&[0; 4]);
            pkt.encode(&mut frame);
            let len = (frame.len() - 4) as u32;
            frame[..4].copy_from_slice(&len.to_be_bytes());
            let gid = pkt.dst.gid;
            let tx = peers.entry(gid).or_insert_with(|| {
                let (tx, rx) = mpsc::channel();
                let fabric = self.fabric.clone();
                let _ = std::thread::Builder::new()
                    .name("rdma-sim-tx".into())
                    .spawn(move || writer(gid, rx, fabric));
                tx
            });
            let _ = tx.send(frame);
        }
    }
}

fn writer(gid: Gid, rx: mpsc::Receiver<Vec<u8>>, fabric: Weak<Fabric>) {
    let connect = || {
        SocketAddr::from_abstract_name(socket_name(&gid).as_bytes())
            .and_then(|a| UnixStream::connect_addr(&a))
            .ok()
    };
    let mut stream = connect();
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        let cpu0 = thread_cpu_time();
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < 1 << 20 {
            match rx.try_recv() {
                Ok(f) => batch.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        if stream.is_none() {
            stream = connect();
        }
        let sent = stream.as_mut().is_some_and(|s| s.write_all(&batch).is_ok());
        if !sent {
            // Unreachable peer: the packets are lost and the requester times out.
            stream = None;
        }
        if let Some(f) = fabric.upgrade() {
            f.add_thread_cpu(thread_cpu_time().saturating_sub(cpu0));
        } else {
            return;
        }
    }
}

fn reader(mut stream: UnixStream, fabric: Weak<Fabric>) {
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let cpu0 = thread_cpu_time();
        buf.extend_from_slice(&chunk[..n]);
        let Some(f) = fabric.upgrade() else { return };
        let mut at = 0;
        while buf.len() - at >= 4 {
            let len = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            if buf.len() - at - 4 < len {
                break;
            }
            match Packet::decode(&buf[at + 4..at + 4 + len]) {
                Some(pkt) => f.inject_remote(pkt),
                None => return, // a corrupt stream: drop the connection
            }
            at += 4 + len;
        }
        buf.drain(..at);
        f.add_thread_cpu(thread_cpu_time().saturating_sub(cpu0));
    }
}
