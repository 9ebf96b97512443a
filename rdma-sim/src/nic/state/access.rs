//! Memory checks: gathering from and scattering into registered memory, remote key and bounds
//! checks.

use super::*;

impl State {
    // ----- memory checks ----------------------------------------------------------------------

    pub(super) fn gather(&self, sges: &[Sge], dev: usize, pd: u32) -> Result<Vec<u8>, WcStatus> {
        let total: usize = sges.iter().map(|s| s.length as usize).sum();
        let mut out = Vec::with_capacity(total);
        for s in sges {
            let mr = self
                .mrs
                .get(&s.lkey)
                .filter(|m| m.dev == dev && m.pd == pd && m.covers(s.addr, s.length as u64))
                .ok_or(WcStatus::LocProtErr)?;
            let _ = mr;
            read_registered(s.addr, s.length as usize, &mut out);
        }
        Ok(out)
    }

    pub(super) fn scatter(
        &self,
        sges: &[Sge],
        data: &[u8],
        dev: usize,
        pd: u32,
    ) -> Result<(), WcStatus> {
        let capacity: u64 = sges.iter().map(|s| s.length as u64).sum();
        if (data.len() as u64) > capacity {
            return Err(WcStatus::LocLenErr);
        }
        let mut rest = data;
        for s in sges {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(s.length as usize);
            self.mrs
                .get(&s.lkey)
                .filter(|m| {
                    m.dev == dev
                        && m.pd == pd
                        && m.access.contains(Access::LOCAL_WRITE)
                        && m.covers(s.addr, n as u64)
                })
                .ok_or(WcStatus::LocProtErr)?;
            write_registered(s.addr, &rest[..n]);
            rest = &rest[n..];
        }
        Ok(())
    }

    pub(super) fn remote_ok(
        &self,
        qp: &QpEntry,
        rkey: u32,
        addr: u64,
        len: u64,
        need: Access,
    ) -> bool {
        qp.access.contains(need)
            && self
                .rkeys
                .get(&rkey)
                .and_then(|l| self.mrs.get(l))
                .is_some_and(|m| {
                    m.dev == qp.dev
                        && m.pd == qp.pd
                        && m.access.contains(need)
                        && m.covers(addr, len)
                })
    }
}
