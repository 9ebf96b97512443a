//! Popping: POP_MESSAGE with long polling across the brokers of a topic, skipping brokers that
//! cannot be reached until they answer a route query again.

use super::*;

/// What to pop.
#[derive(Debug, Clone)]
pub struct PopArgs {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Tag expression.
    pub filter: String,
    /// Most messages.
    pub max: u32,
    /// Invisible time.
    pub invisible: Duration,
    /// Longest long poll.
    pub poll: Duration,
    /// When the answer must be back (the caller's deadline less a margin); every broker call
    /// of the pop, route lookup included, ends by then.
    pub answer_by: Instant,
    /// FIFO consumption.
    pub fifo: bool,
}

/// Messages popped from one broker.
#[derive(Debug, Clone)]
pub struct PoppedBatch {
    /// The broker.
    pub broker: String,
    /// Invisible time granted (ms).
    pub invisible_ms: i64,
    /// The records, decoded.
    pub messages: Vec<StoredMessage>,
}

/// The receipt handles of a popped batch.
pub fn handles_of(batch: &PoppedBatch) -> Vec<String> {
    batch
        .messages
        .iter()
        .filter_map(|m| {
            message::Properties::parse(&m.properties)
                .ok()?
                .get(message::prop::POP_CK)
                .map(str::to_owned)
        })
        .collect()
}

impl Cluster {
    /// Pops from the brokers holding the topic: a quick look at each (starting at a rotating
    /// one), then a long poll on one of them.
    pub async fn pop(&self, args: &PopArgs) -> ProxyResult<Option<PoppedBatch>> {
        let left = || args.answer_by.saturating_duration_since(Instant::now());
        let late = || {
            ProxyError::new(
                Code::ProxyTimeout,
                format!("no broker answered for `{}` in time", args.topic),
            )
        };
        let route = tokio::time::timeout(left(), self.route(&args.topic))
            .await
            .map_err(|_| late())??;
        let n = route.brokers.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut failed: Vec<usize> = Vec::new();
        let mut last_err = None;
        if n > 1 {
            for i in 0..n {
                let ix = (first + i) % n;
                let timeout = self.call_timeout.min(left());
                match self
                    .pop_one(&route.brokers[ix], args, Duration::ZERO, timeout)
                    .await
                {
                    Ok(Some(batch)) => return Ok(Some(batch)),
                    Ok(None) => {}
                    Err(e) if is_unavailable(&e) => {
                        // Later receives skip it until it answers a route query again.
                        self.invalidate(&args.topic);
                        failed.push(ix);
                        last_err = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let Some(ix) = (0..n)
            .map(|i| (first + i) % n)
            .find(|ix| !failed.contains(ix))
        else {
            return Err(last_err.expect("every broker failed"));
        };
        // The long poll ends early enough for the broker's answer to arrive by `answer_by`.
        let timeout = left();
        let poll = args.poll.min(timeout.saturating_sub(REPLY_MARGIN));
        match self.pop_one(&route.brokers[ix], args, poll, timeout).await {
            Err(e) if is_unavailable(&e) => {
                self.invalidate(&args.topic);
                Err(e)
            }
            other => other,
        }
    }

    async fn pop_one(
        &self,
        b: &BrokerQueues,
        args: &PopArgs,
        poll: Duration,
        timeout: Duration,
    ) -> ProxyResult<Option<PoppedBatch>> {
        let req = RemotingCommand::request(request_code::POP_MESSAGE)
            .with_field("consumerGroup", &args.group)
            .with_field("topic", &args.topic)
            .with_field("queueId", "-1")
            .with_field("maxMsgNums", args.max.to_string())
            .with_field("invisibleTime", args.invisible.as_millis().to_string())
            .with_field("pollTime", poll.as_millis().to_string())
            .with_field("bornTime", rdmq_protocol::now_ms().to_string())
            .with_field("initMode", "0")
            .with_field("expType", "TAG")
            .with_field("exp", &args.filter)
            .with_field("order", if args.fifo { "true" } else { "false" })
            .with_field(rdmq_protocol::handle::OWN_HANDLES_FIELD, "1");
        let resp = self.call(&b.name, &b.endpoint, req, timeout).await?;
        match resp.code {
            rc::SUCCESS => {
                let mut messages = message::decode_records(&resp.body).map_err(|e| {
                    ProxyError::new(
                        Code::InternalServerError,
                        format!("broker {} sent undecodable records: {e}", b.name),
                    )
                })?;
                give_foreign_handles(&mut messages, &resp, &b.name, args);
                Ok(Some(PoppedBatch {
                    broker: b.name.clone(),
                    invisible_ms: resp
                        .field("invisibleTime")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(args.invisible.as_millis() as i64),
                    messages,
                }))
            }
            rc::POLLING_TIMEOUT | rc::PULL_NOT_FOUND | rc::NO_MESSAGE => Ok(None),
            code => Err(ProxyError::from_broker(
                &b.name,
                code,
                resp.remark.as_deref(),
            )),
        }
    }
}

/// A RocketMQ broker puts no handle into the records of the topic itself: each message
/// without `POP_CK` gets one built from the answer's header, as RocketMQ's clients build
/// theirs; a retry copy's `POP_CK` is the broker's own `extraInfo`, acked naming the retry
/// topic its flag implies.
fn give_foreign_handles(
    messages: &mut [StoredMessage],
    resp: &RemotingCommand,
    broker: &str,
    args: &PopArgs,
) {
    let topic = args.topic.as_str();
    let num = |k: &str| resp.field(k).and_then(|v| v.parse::<i64>().ok());
    let starts: Vec<(u8, i32, i64)> = resp
        .field("startOffsetInfo")
        .unwrap_or("")
        .split(';')
        .filter_map(|e| {
            let mut p = e.split(' ');
            Some((
                p.next()?.parse().ok()?,
                p.next()?.parse().ok()?,
                p.next()?.parse().ok()?,
            ))
        })
        .collect();
    for m in messages {
        let Ok(mut props) = message::Properties::parse(&m.properties) else {
            continue;
        };
        if let Some(ck) = props.get(message::prop::POP_CK) {
            if ReceiptHandle::parse(ck).is_err()
                && let Ok(e) = rdmq_protocol::ExtraInfo::parse(ck)
            {
                let h = super::handle::foreign_handle(&e, &e.stored_topic(topic, &args.group));
                props.set(message::prop::POP_CK, h);
                m.properties = props.encode();
            }
            continue;
        }
        let retry = rdmq_protocol::ExtraInfo::retry_flag(&m.topic);
        let ck = starts
            .iter()
            .find(|(f, q, _)| *f == retry && *q == m.queue_id)
            .map_or(m.queue_offset, |s| s.2);
        let e = rdmq_protocol::ExtraInfo {
            ck_offset: ck,
            pop_time: num("popTime").unwrap_or(0),
            invisible: num("invisibleTime").unwrap_or(0),
            revive_qid: num("reviveQid").unwrap_or(0) as i32,
            retry,
            broker: broker.to_owned(),
            queue: m.queue_id,
            offset: m.queue_offset,
        };
        props.set(
            message::prop::POP_CK,
            super::handle::foreign_handle(&e, topic),
        );
        m.properties = props.encode();
    }
}

fn is_unavailable(e: &ProxyError) -> bool {
    e.broker_unavailable
}
