//! Operations on a receipt handle: ACK_MESSAGE, CHANGE_MESSAGE_INVISIBLETIME and forwarding to
//! the dead-letter queue, at the broker that issued the handle.

use super::*;

/// The new handle after a change of invisible time.
#[derive(Debug, Clone)]
pub struct Changed {
    /// New receipt handle.
    pub handle: String,
}

impl Cluster {
    /// The broker a receipt handle names. A proxy is stateless: a handle issued through
    /// another proxy (or before a restart) names a broker not seen yet, so the brokers are
    /// asked for their names first (through the route of the pop log, which every broker
    /// has: a forged handle's topic is never looked up, so it cannot auto-create one).
    async fn handle_target(&self, handle: &str) -> ProxyResult<(ReceiptHandle, Endpoint)> {
        let h = ReceiptHandle::parse(handle)
            .map_err(|e| ProxyError::new(Code::InvalidReceiptHandle, e.to_string()))?;
        if self.endpoint_of(&h.broker).is_none() {
            let _ = self.route(rdmq_protocol::POP_LOG_TOPIC).await;
        }
        let ep = self.endpoint_of(&h.broker).ok_or_else(|| {
            ProxyError::new(
                Code::InvalidReceiptHandle,
                format!("receipt handle names unknown broker `{}`", h.broker),
            )
        })?;
        Ok((h, ep))
    }

    /// Acks one message by its receipt handle.
    pub async fn ack(&self, group: &str, handle: &str) -> ProxyResult<()> {
        let (h, ep) = self.handle_target(handle).await?;
        let req = RemotingCommand::request(request_code::ACK_MESSAGE)
            .with_field("consumerGroup", group)
            .with_field("topic", &h.topic)
            .with_field("queueId", h.queue.to_string())
            .with_field("offset", h.offset.to_string())
            .with_field("extraInfo", handle);
        let resp = self.call(&h.broker, &ep, req, self.call_timeout).await?;
        handle_result(&h.broker, resp.code, resp.remark.as_deref())
    }

    /// Changes a message's invisible time; the old handle stops working.
    pub async fn change_invisible(
        &self,
        group: &str,
        handle: &str,
        invisible: Duration,
    ) -> ProxyResult<Changed> {
        let (h, ep) = self.handle_target(handle).await?;
        let req = RemotingCommand::request(request_code::CHANGE_MESSAGE_INVISIBLETIME)
            .with_field("consumerGroup", group)
            .with_field("topic", &h.topic)
            .with_field("queueId", h.queue.to_string())
            .with_field("offset", h.offset.to_string())
            .with_field("extraInfo", handle)
            .with_field("invisibleTime", invisible.as_millis().to_string());
        let resp = self.call(&h.broker, &ep, req, self.call_timeout).await?;
        handle_result(&h.broker, resp.code, resp.remark.as_deref())?;
        let handle = resp.field("receiptHandle").ok_or_else(|| {
            ProxyError::new(
                Code::InternalServerError,
                format!("broker {} returned no new receipt handle", h.broker),
            )
        })?;
        Ok(Changed {
            handle: handle.to_owned(),
        })
    }

    /// Moves the message of `handle` to the group's dead-letter topic now.
    pub async fn dead_letter(&self, group: &str, handle: &str) -> ProxyResult<()> {
        let (h, ep) = self.handle_target(handle).await?;
        let req = RemotingCommand::request(request_code::CONSUMER_SEND_MSG_BACK)
            .with_field("group", group)
            .with_field("offset", h.offset.to_string())
            .with_field("delayLevel", "-1")
            .with_field("originTopic", &h.topic)
            .with_field("extraInfo", handle);
        let resp = self.call(&h.broker, &ep, req, self.call_timeout).await?;
        handle_result(&h.broker, resp.code, resp.remark.as_deref())
    }
}

/// An ack or change answer: stale, expired and foreign handles are the client's
/// INVALID_RECEIPT_HANDLE.
fn handle_result(broker: &str, code: i32, remark: Option<&str>) -> ProxyResult<()> {
    match code {
        rc::SUCCESS => Ok(()),
        rc::NO_MESSAGE | rc::INVALID_PARAMETER => Err(ProxyError::new(
            Code::InvalidReceiptHandle,
            remark.unwrap_or("receipt handle refused").to_owned(),
        )),
        code => Err(ProxyError::from_broker(broker, code, remark)),
    }
}
