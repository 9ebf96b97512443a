//! Sending: SEND_MESSAGE_V2 (batches as SEND_BATCH_MESSAGE) to a broker holding the topic,
//! failing over to the next one; FIFO groups hash to a stable queue.

use super::*;

/// A message ready to be sent: remoting properties already encoded.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Properties (`key\x01value\x02…`).
    pub properties: String,
    /// Body.
    pub body: Bytes,
    /// Producer timestamp (ms).
    pub born_ms: i64,
    /// FIFO message group: picks the queue.
    pub group: Option<String>,
}

/// Where a sent batch was stored.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Broker name.
    pub broker: String,
    /// Queue.
    pub queue: i32,
    /// Offset of the first message.
    pub offset: i64,
}

impl Cluster {
    /// Sends `messages` (one topic) as one batch: FIFO messages to the queue their group
    /// hashes to, others round-robin; an unreachable broker is skipped for the next one.
    pub async fn send(&self, topic: &str, messages: Vec<Outgoing>) -> ProxyResult<Sent> {
        let route = self.route(topic).await?;
        let total: u32 = route.brokers.iter().map(|b| b.write_queues).sum();
        if total == 0 {
            return Err(ProxyError::new(
                Code::Forbidden,
                format!("topic `{topic}` has no writable queue"),
            ));
        }
        let fifo_group = messages.iter().find_map(|m| m.group.clone());
        let start = match &fifo_group {
            Some(g) => {
                // The group's queue in the stable layout; its broker must be reachable now.
                let (name, queue) = self.fifo_queue(topic, g).ok_or_else(|| {
                    ProxyError::new(
                        Code::Forbidden,
                        format!("topic `{topic}` has no writable queue"),
                    )
                })?;
                let Some(ix) = route.brokers.iter().position(|b| b.name == name) else {
                    return Err(ProxyError::new(
                        Code::InternalServerError,
                        format!(
                            "broker {name} holding message group `{g}` of `{topic}` is unavailable; the group's order is kept by not sending elsewhere"
                        ),
                    ));
                };
                route.brokers[..ix]
                    .iter()
                    .map(|b| b.write_queues)
                    .sum::<u32>()
                    + queue
            }
            None => (self.next.fetch_add(1, Ordering::Relaxed) % total as usize) as u32,
        };
        let request = build_send(topic, &messages);
        let mut last_err = None;
        // FIFO messages must not move to another queue: one try.
        let tries = if fifo_group.is_some() {
            1
        } else {
            route.brokers.len()
        };
        let (mut broker_ix, mut queue) = locate(&route, start);
        for _ in 0..tries {
            let b = &route.brokers[broker_ix];
            let req = request.clone().with_field("e", queue.to_string());
            match self
                .call(&b.name, &b.endpoint, req, self.call_timeout)
                .await
            {
                Ok(resp) if resp.code == rc::SUCCESS => {
                    return Ok(Sent {
                        broker: b.name.clone(),
                        queue: resp
                            .field("queueId")
                            .and_then(|q| q.parse().ok())
                            .unwrap_or(queue as i32),
                        offset: resp
                            .field("queueOffset")
                            .and_then(|q| q.parse().ok())
                            .unwrap_or(-1),
                    });
                }
                Ok(resp) => {
                    if resp.code == rc::TOPIC_NOT_EXIST {
                        self.invalidate(topic);
                    }
                    return Err(ProxyError::from_broker(
                        &b.name,
                        resp.code,
                        resp.remark.as_deref(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(broker = %b.name, error = %e.message, "send failed; trying the next broker");
                    self.invalidate(topic);
                    last_err = Some(e);
                    broker_ix = (broker_ix + 1) % route.brokers.len();
                    queue = 0;
                }
            }
        }
        Err(last_err.expect("at least one try"))
    }

    /// The broker and queue message group `group` of `topic` maps to (stable across
    /// broker outages).
    fn fifo_queue(&self, topic: &str, group: &str) -> Option<(String, u32)> {
        let layouts = self.lock_layout();
        let layout = layouts.get(topic)?;
        let total: u32 = layout.iter().map(|(_, q)| q).sum();
        if total == 0 {
            return None;
        }
        let mut ix = (fnv1a(group.as_bytes()) % total as u64) as u32;
        for (name, q) in layout {
            if ix < *q {
                return Some((name.clone(), ix));
            }
            ix -= q;
        }
        None
    }
}

/// The broker and queue of global queue index `ix` (queues numbered across brokers).
fn locate(route: &TopicRoute, mut ix: u32) -> (usize, u32) {
    for (i, b) in route.brokers.iter().enumerate() {
        if ix < b.write_queues {
            return (i, ix);
        }
        ix -= b.write_queues;
    }
    (0, 0)
}

/// SEND_MESSAGE_V2 (one message) or SEND_BATCH_MESSAGE, without the queue id.
fn build_send(topic: &str, messages: &[Outgoing]) -> RemotingCommand {
    let first = &messages[0];
    let base = |code| {
        RemotingCommand::request(code)
            .with_field("a", PRODUCER_GROUP)
            .with_field("b", topic)
            .with_field("c", "TBW102")
            .with_field("d", "4")
            .with_field("f", "0")
            .with_field("g", first.born_ms.to_string())
            .with_field("h", "0")
            .with_field("j", "0")
            .with_field("k", "false")
    };
    if messages.len() == 1 {
        base(request_code::SEND_MESSAGE_V2)
            .with_field("i", &first.properties)
            .with_field("m", "false")
            .with_body(first.body.clone())
    } else {
        let entries: Vec<(i32, Bytes, String)> = messages
            .iter()
            .map(|m| (0, m.body.clone(), m.properties.clone()))
            .collect();
        base(request_code::SEND_BATCH_MESSAGE)
            .with_field("i", "")
            .with_field("m", "true")
            .with_body(message::encode_batch(&entries))
    }
}

/// FNV-1a: a stable hash of a message group (the same group always maps to the same queue).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
