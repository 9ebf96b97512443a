//! Why a proxied call failed, and the RocketMQ 5 status [`Code`] each reason maps to.
//!
//! Business failures travel in the response's `Status` with the gRPC status OK, as the
//! official proxy does; clients act on the code (retry, back off, give up).

use rdmq_transport::TransportError;
use rdmq_transport::protocol::response_code as rc;

use crate::pb::{Code, Status};

/// A failed call: a status code and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProxyError {
    /// The status code for the client.
    pub code: Code,
    /// What went wrong, for people.
    pub message: String,
    /// Set when a broker could not be reached or dropped the call (the route should skip
    /// that broker), as opposed to a broker's answer.
    pub broker_unavailable: bool,
}

impl ProxyError {
    /// An error with `code`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            broker_unavailable: false,
        }
    }

    /// A broker could not be reached or dropped the call.
    pub fn unavailable(broker: &str, e: &TransportError) -> Self {
        let code = match e {
            TransportError::Timeout(_) => Code::ProxyTimeout,
            _ => Code::InternalServerError,
        };
        Self {
            broker_unavailable: true,
            ..Self::new(code, format!("broker {broker} is unavailable: {e}"))
        }
    }

    /// A broker's refusal (remoting response code and remark) as the client's status.
    pub fn from_broker(broker: &str, code: i32, remark: Option<&str>) -> Self {
        let status = match code {
            rc::TOPIC_NOT_EXIST => Code::TopicNotFound,
            rc::SUBSCRIPTION_GROUP_NOT_EXIST => Code::ConsumerGroupNotFound,
            rc::NO_PERMISSION => Code::Forbidden,
            rc::SYSTEM_BUSY => Code::TooManyRequests,
            rc::FLUSH_DISK_TIMEOUT => Code::MasterPersistenceTimeout,
            rc::MESSAGE_ILLEGAL | rc::INVALID_PARAMETER => Code::BadRequest,
            rc::SUBSCRIPTION_NOT_EXIST => Code::IllegalFilterExpression,
            _ => Code::InternalServerError,
        };
        Self::new(
            status,
            format!(
                "broker {broker} refused (code {code}): {}",
                remark.unwrap_or("no remark")
            ),
        )
    }

    /// The response status.
    pub fn status(&self) -> Status {
        Status {
            code: self.code as i32,
            message: self.message.clone(),
        }
    }
}

/// `OK`.
pub fn ok_status() -> Status {
    Status {
        code: Code::Ok as i32,
        message: "OK".into(),
    }
}

/// Shorthand for a `Result` with [`ProxyError`].
pub type ProxyResult<T> = Result<T, ProxyError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailability_is_a_flag_not_a_phrase() {
        let e = ProxyError::unavailable(
            "b",
            &TransportError::Timeout(std::time::Duration::from_secs(1)),
        );
        assert!(e.broker_unavailable);
        assert_eq!(e.code, Code::ProxyTimeout);
        let answer = ProxyError::from_broker("b", rc::SYSTEM_ERROR, Some("store is unavailable"));
        assert!(
            !answer.broker_unavailable,
            "a broker's answer is not the broker being unreachable"
        );
    }
}

/// A refused remoting request (name server, remoting endpoint): the response code and a remark
/// saying what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Remoting response code.
    pub code: i32,
    /// Why.
    pub remark: String,
}

impl Refusal {
    /// A refusal with `code` and `remark`.
    pub fn new(code: i32, remark: impl Into<String>) -> Self {
        Self {
            code,
            remark: remark.into(),
        }
    }

    /// The response carrying it.
    pub fn into_response(self) -> rdmq_transport::RemotingCommand {
        rdmq_transport::RemotingCommand::response(self.code, Some(self.remark))
    }
}
