//! What a request's gRPC metadata says: the client id and the call's deadline.

use std::time::Duration;

use tonic::metadata::MetadataMap;

use crate::error::ProxyError;
use crate::pb::Code;

/// The `x-mq-client-id` header, required on every call.
pub fn client_id(md: &MetadataMap) -> Result<String, ProxyError> {
    md.get("x-mq-client-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            ProxyError::new(
                Code::ClientIdRequired,
                "the x-mq-client-id header is required",
            )
        })
}

/// The time left before the caller's deadline (`grpc-timeout`), if it set one.
pub fn deadline(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_parse_in_every_unit_and_garbage_is_none() {
        let mut md = MetadataMap::new();
        for (v, d) in [
            ("8000m", Duration::from_millis(8000)),
            ("30S", Duration::from_secs(30)),
            ("1M", Duration::from_secs(60)),
            ("250000u", Duration::from_millis(250)),
        ] {
            md.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(deadline(&md), Some(d));
        }
        md.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(deadline(&md), None);
        assert!(client_id(&md).is_err());
        md.insert("x-mq-client-id", "c1".parse().unwrap());
        assert_eq!(client_id(&md).unwrap(), "c1");
    }
}
