//! Operations on a receipt handle: ACK_MESSAGE, CHANGE_MESSAGE_INVISIBLETIME and forwarding to
//! the dead-letter queue, at the broker that issued the handle.

use super::*;
use rdmq_protocol::ExtraInfo;

/// The new handle after a change of invisible time.
#[derive(Debug, Clone)]
pub struct Changed {
    /// New receipt handle.
    pub handle: String,
}

/// What a receipt handle names: the broker, the message, and the `extraInfo` to send.
struct Target {
    broker: String,
    topic: String,
    queue: i32,
    offset: i64,
    /// What the broker gets as `extraInfo`.
    extra: String,
    /// Set for a RocketMQ broker's handle (see [`foreign_handle`]).
    foreign: Option<ExtraInfo>,
}

/// The gRPC receipt handle of a message popped from a RocketMQ broker, which answers with
/// `startOffsetInfo` instead of handles in the records: its `extraInfo`, as RocketMQ's clients
/// build it, then the topic asked for (the ack must name it).
pub fn foreign_handle(e: &ExtraInfo, topic: &str) -> String {
    format!("{e} {topic}")
}

fn parse_target(handle: &str) -> ProxyResult<Target> {
    let own = match ReceiptHandle::parse(handle) {
        Ok(h) => {
            return Ok(Target {
                broker: h.broker,
                topic: h.topic,
                queue: h.queue,
                offset: h.offset,
                extra: handle.to_owned(),
                foreign: None,
            });
        }
        Err(e) => e,
    };
    let invalid = || ProxyError::new(Code::InvalidReceiptHandle, own.to_string());
    let e = ExtraInfo::parse(handle).map_err(|_| invalid())?;
    let topic = handle
        .split(' ')
        .nth(8)
        .filter(|t| !t.is_empty())
        .ok_or_else(invalid)?;
    Ok(Target {
        broker: e.broker.clone(),
        topic: topic.to_owned(),
        queue: e.queue,
        offset: e.offset,
        extra: e.to_string(),
        foreign: Some(e),
    })
}

impl Cluster {
    /// The broker a receipt handle names. A proxy is stateless: a handle issued through
    /// another proxy (or before a restart) names a broker not seen yet, so the brokers are
    /// asked for their names first (through the route of the pop log, which every broker
    /// has: a forged handle's topic is never looked up, so it cannot auto-create one).
    async fn handle_target(&self, handle: &str) -> ProxyResult<(Target, Endpoint)> {
        let h = parse_target(handle)?;
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
            .with_field("extraInfo", &h.extra);
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
            .with_field("extraInfo", &h.extra)
            .with_field("invisibleTime", invisible.as_millis().to_string());
        let resp = self.call(&h.broker, &ep, req, self.call_timeout).await?;
        handle_result(&h.broker, resp.code, resp.remark.as_deref())?;
        if let Some(old) = &h.foreign {
            // A RocketMQ broker answers the new pop time; the handle is rebuilt from it.
            let num = |k: &str| resp.field(k).and_then(|v| v.parse::<i64>().ok());
            let (Some(pop_time), Some(invisible)) = (num("popTime"), num("invisibleTime")) else {
                return Err(ProxyError::new(
                    Code::InternalServerError,
                    format!("broker {} answered no new pop time", h.broker),
                ));
            };
            let e = ExtraInfo {
                ck_offset: h.offset,
                pop_time,
                invisible,
                revive_qid: num("reviveQid").unwrap_or(old.revive_qid as i64) as i32,
                ..old.clone()
            };
            return Ok(Changed {
                handle: foreign_handle(&e, &h.topic),
            });
        }
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
            .with_field("extraInfo", &h.extra);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_and_rocketmq_handles_name_their_broker_and_message() {
        let own = ReceiptHandle {
            pop_time: 1,
            invisible: 2,
            seq: 3,
            queue: 4,
            offset: 5,
            broker: "broker-a".into(),
            topic: "t".into(),
        }
        .to_string();
        let t = parse_target(&own).unwrap();
        assert_eq!((t.broker.as_str(), t.queue, t.offset), ("broker-a", 4, 5));
        assert_eq!(t.extra, own);
        let e = ExtraInfo::parse("7 100 30000 1 0 rmq-b 2 9").unwrap();
        let t = parse_target(&foreign_handle(&e, "orders")).unwrap();
        assert_eq!((t.broker.as_str(), t.topic.as_str()), ("rmq-b", "orders"));
        assert_eq!(
            t.extra, "7 100 30000 1 0 rmq-b 2 9",
            "eight fields to the broker"
        );
        assert!(
            parse_target("7 100 30000 1 0 rmq-b 2 9").is_err(),
            "no topic"
        );
        assert!(parse_target("garbage").is_err());
    }
}
