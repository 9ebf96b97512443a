//! Packets of the simulated RC transport and their encoding on the cross-process wire. One
//! packet carries one whole message (no MTU segmentation is modelled).

use crate::Gid;

/// A queue pair's network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QpAddress {
    /// Device address.
    pub gid: Gid,
    /// Queue pair number.
    pub qpn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NakKind {
    /// Receiver not ready: no receive posted. Carries the responder's RNR timer (ns).
    Rnr(u64),
    RemoteAccess,
    InvalidRequest,
    RemoteOperation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    Send {
        imm: Option<u32>,
        solicited: bool,
        data: Vec<u8>,
    },
    Write {
        raddr: u64,
        rkey: u32,
        imm: Option<u32>,
        solicited: bool,
        data: Vec<u8>,
    },
    ReadReq {
        raddr: u64,
        rkey: u32,
        len: u32,
    },
    /// Cumulative acknowledgement of every request up to `psn`.
    Ack,
    Nak(NakKind),
    ReadResp {
        data: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packet {
    pub src: QpAddress,
    pub dst: QpAddress,
    pub psn: u32,
    pub body: Body,
}

impl Packet {
    pub(crate) fn payload_len(&self) -> usize {
        match &self.body {
            Body::Send { data, .. } | Body::Write { data, .. } | Body::ReadResp { data } => {
                data.len()
            }
            _ => 0,
        }
    }

    /// Appends the wire encoding (without a length prefix).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        fn addr(out: &mut Vec<u8>, a: &QpAddress) {
            out.extend_from_slice(&a.gid.0);
            out.extend_from_slice(&a.qpn.to_be_bytes());
        }
        fn opt(out: &mut Vec<u8>, v: Option<u32>) {
            match v {
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_be_bytes());
                }
                None => out.push(0),
            }
        }
        fn data(out: &mut Vec<u8>, d: &[u8]) {
            out.extend_from_slice(&(d.len() as u32).to_be_bytes());
            out.extend_from_slice(d);
        }
        addr(out, &self.src);
        addr(out, &self.dst);
        out.extend_from_slice(&self.psn.to_be_bytes());
        match &self.body {
            Body::Send {
                imm,
                solicited,
                data: d,
            } => {
                out.push(0);
                opt(out, *imm);
                out.push(*solicited as u8);
                data(out, d);
            }
            Body::Write {
                raddr,
                rkey,
                imm,
                solicited,
                data: d,
            } => {
                out.push(1);
                out.extend_from_slice(&raddr.to_be_bytes());
                out.extend_from_slice(&rkey.to_be_bytes());
                opt(out, *imm);
                out.push(*solicited as u8);
                data(out, d);
            }
            Body::ReadReq { raddr, rkey, len } => {
                out.push(2);
                out.extend_from_slice(&raddr.to_be_bytes());
                out.extend_from_slice(&rkey.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            Body::Ack => out.push(3),
            Body::Nak(kind) => {
                out.push(4);
                match kind {
                    NakKind::Rnr(ns) => {
                        out.push(0);
                        out.extend_from_slice(&ns.to_be_bytes());
                    }
                    NakKind::RemoteAccess => out.push(1),
                    NakKind::InvalidRequest => out.push(2),
                    NakKind::RemoteOperation => out.push(3),
                }
            }
            Body::ReadResp { data: d } => {
                out.push(5);
                data(out, d);
            }
        }
    }

    /// Decodes one packet; `None` if malformed.
    pub(crate) fn decode(buf: &[u8]) -> Option<Packet> {
        let mut r = Reader(buf);
        let src = r.addr()?;
        let dst = r.addr()?;
        let psn = r.u32()?;
        let body = match r.u8()? {
            0 => Body::Send {
                imm: r.opt()?,
                solicited: r.u8()? != 0,
                data: r.data()?,
            },
            1 => Body::Write {
                raddr: r.u64()?,
                rkey: r.u32()?,
                imm: r.opt()?,
                solicited: r.u8()? != 0,
                data: r.data()?,
            },
            2 => Body::ReadReq {
                raddr: r.u64()?,
                rkey: r.u32()?,
                len: r.u32()?,
            },
            3 => Body::Ack,
            4 => Body::Nak(match r.u8()? {
                0 => NakKind::Rnr(r.u64()?),
                1 => NakKind::RemoteAccess,
                2 => NakKind::InvalidRequest,
                3 => NakKind::RemoteOperation,
                _ => return None,
            }),
            5 => Body::ReadResp { data: r.data()? },
            _ => return None,
        };
        r.0.is_empty().then_some(Packet {
            src,
            dst,
            psn,
            body,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn opt(&mut self) -> Option<Option<u32>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u32()?)),
            _ => None,
        }
    }
    fn data(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
    fn addr(&mut self) -> Option<QpAddress> {
        let gid = Gid(self.take(16)?.try_into().ok()?);
        Some(QpAddress {
            gid,
            qpn: self.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let a = QpAddress {
            gid: Gid([1; 16]),
            qpn: 7,
        };
        let b = QpAddress {
            gid: Gid([2; 16]),
            qpn: 9,
        };
        for body in [
            Body::Send {
                imm: Some(5),
                solicited: true,
                data: vec![1, 2, 3],
            },
            Body::Write {
                raddr: 99,
                rkey: 3,
                imm: None,
                solicited: false,
                data: vec![],
            },
            Body::ReadReq {
                raddr: 1,
                rkey: 2,
                len: 3,
            },
            Body::Ack,
            Body::Nak(NakKind::Rnr(1000)),
            Body::Nak(NakKind::RemoteAccess),
            Body::ReadResp { data: vec![9; 100] },
        ] {
            let p = Packet {
                src: a,
                dst: b,
                psn: 0xABCDEF,
                body,
            };
            let mut out = Vec::new();
            p.encode(&mut out);
            assert_eq!(Packet::decode(&out), Some(p));
            assert_eq!(Packet::decode(&out[..out.len() - 1]), None);
        }
    }
}
