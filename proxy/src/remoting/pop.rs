//! Pop through the remoting endpoint. POP_MESSAGE for any queue (`queueId` -1) looks at each
//! broker of the topic once (starting at a rotating one), then long-polls one; for a virtual
//! queue it asks the broker behind it. The brokers answer as RocketMQ's do (no rdmq handles),
//! and the answer is rewritten into the virtual broker's terms: queue ids in the records and
//! in `startOffsetInfo`/`msgOffsetInfo`/`orderCountInfo`, and the broker name and queue of a
//! retry copy's `POP_CK`. ACK_MESSAGE, CHANGE_MESSAGE_INVISIBLETIME and BATCH_ACK_MESSAGE
//! carry the client's `extraInfo`, built from that answer; they go to the broker behind its
//! virtual queue with the real queue and broker name put back.
//!
//! A retry copy's queue is numbered in its topic's layout (`%RETRY%group+topic` queue `q` of
//! broker B is B's range start plus `q`), not in the retry topic's own route: retry topics
//! appear on brokers one by one, and a layout of their own would renumber queues between a
//! pop and its ack. Only RocketMQ's older `%RETRY%group` (flag 1), which does not name the
//! topic, is numbered in its own route.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rdmq_protocol::ExtraInfo;
use rdmq_protocol::message::{self, NewMessage, Properties, prop};
use rdmq_transport::RemotingCommand;
use rdmq_transport::protocol::response_code as code;

use super::layout::{Layout, Part};
use super::{Front, Refusal, VIRTUAL_BROKER, field, forwarded, refused, reply, set_field};

fn number<T: std::str::FromStr>(cmd: &RemotingCommand, key: &str) -> Result<Option<T>, Refusal> {
    match cmd.field(key) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            reply(
                code::SYSTEM_ERROR,
                format!("header field `{key}` is not a number: `{v}`"),
            )
        }),
    }
}

/// The layouts an answer's queue ids are translated with: the topic's, and (looked up when
/// an answer holds `%RETRY%group` copies) that retry topic's.
struct Layouts<'a> {
    front: &'a Front,
    topic: &'a str,
    group: &'a str,
    main: Layout,
    retry_v1: Option<Layout>,
}

/// The topic whose layout numbers the queues of `topic` (as an ack names it).
fn numbering_topic(topic: &str) -> &str {
    match topic.strip_prefix(rdmq_protocol::names::RETRY_PREFIX) {
        Some(rest) => rest.split_once('+').map_or(topic, |(_, t)| t),
        None => topic,
    }
}

impl Layouts<'_> {
    async fn of(&mut self, flag: u8) -> Result<&Layout, Refusal> {
        if flag != 1 {
            return Ok(&self.main);
        }
        if self.retry_v1.is_none() {
            let t = ExtraInfo::topic_of(1, self.topic, self.group);
            self.retry_v1 = Some(self.front.layout(&t).await?);
        }
        Ok(self.retry_v1.as_ref().expect("set above"))
    }

    async fn virtual_of(&mut self, flag: u8, broker: &str, q: i32) -> Result<i32, Refusal> {
        self.of(flag).await?.virtual_of(broker, q).ok_or_else(|| {
            reply(
                code::SYSTEM_ERROR,
                format!("broker {broker} answered queue {q}, which its route does not have"),
            )
        })
    }
}

/// `flag queue rest;…` entries with each queue made virtual.
async fn map_offset_info(
    info: &str,
    broker: &str,
    layouts: &mut Layouts<'_>,
) -> Result<String, Refusal> {
    let mut out = Vec::new();
    for e in info.split(';').filter(|e| !e.is_empty()) {
        let mut p = e.splitn(3, ' ');
        let (Some(flag), Some(q), rest) = (p.next(), p.next(), p.next()) else {
            return Err(reply(
                code::SYSTEM_ERROR,
                format!("broker {broker}: offset info entry `{e}`"),
            ));
        };
        let (Ok(f), Ok(q)) = (flag.parse::<u8>(), q.parse::<i32>()) else {
            return Err(reply(
                code::SYSTEM_ERROR,
                format!("broker {broker}: offset info entry `{e}`"),
            ));
        };
        let v = layouts.virtual_of(f.min(2), broker, q).await?;
        out.push(match rest {
            Some(r) => format!("{flag} {v} {r}"),
            None => format!("{flag} {v}"),
        });
    }
    Ok(out.join(";"))
}

impl Front {
    pub(super) async fn pop(&self, cmd: &RemotingCommand) -> Result<RemotingCommand, Refusal> {
        let topic = field(cmd, "topic", "topic")?.to_owned();
        let group = field(cmd, "consumerGroup", "consumerGroup")?.to_owned();
        let vq: i32 = number(cmd, "queueId")?.unwrap_or(-1);
        let poll_ms: u64 = number::<i64>(cmd, "pollTime")?.unwrap_or(0).max(0) as u64;
        let main = self.layout(&topic).await?;
        let targets: Vec<(Part, i32)> = if vq < 0 {
            let parts = main.parts();
            let first = self.next.fetch_add(1, Ordering::Relaxed) % parts.len();
            (0..parts.len())
                .map(|i| (parts[(first + i) % parts.len()].clone(), -1))
                .collect()
        } else {
            let (p, rq) = main.real(vq).ok_or_else(|| {
                reply(
                    code::SYSTEM_ERROR,
                    format!("queue {vq} of topic `{topic}` does not exist"),
                )
            })?;
            vec![(p.clone(), rq)]
        };
        let mut layouts = Layouts {
            front: self,
            topic: &topic,
            group: &group,
            main,
            retry_v1: None,
        };
        let mut reachable = Vec::new();
        if targets.len() > 1 {
            for (p, rq) in &targets {
                match self.pop_at(cmd, p, *rq, 0).await {
                    Ok(r) if r.code == code::SUCCESS => {
                        return self.virtual_answer(r, p, &mut layouts).await;
                    }
                    Ok(r) if matches!(r.code, code::PULL_NOT_FOUND | code::POLLING_TIMEOUT) => {
                        reachable.push((p, *rq));
                    }
                    Ok(r) => return Ok(r),
                    Err(e) if e.broker_unavailable => self.cluster.invalidate(&topic),
                    Err(e) => return Err(refused(&e)),
                }
            }
        } else {
            reachable.extend(targets.iter().map(|(p, rq)| (p, *rq)));
        }
        let Some((p, rq)) = reachable.first() else {
            return Err(reply(
                code::SYSTEM_ERROR,
                format!("no broker of topic `{topic}` could be reached"),
            ));
        };
        let r = self.pop_at(cmd, p, *rq, poll_ms).await.map_err(|e| {
            self.cluster.invalidate(&topic);
            refused(&e)
        })?;
        if r.code == code::SUCCESS {
            self.virtual_answer(r, p, &mut layouts).await
        } else {
            Ok(r)
        }
    }

    async fn pop_at(
        &self,
        cmd: &RemotingCommand,
        p: &Part,
        rq: i32,
        poll_ms: u64,
    ) -> Result<RemotingCommand, crate::error::ProxyError> {
        let mut req = forwarded(cmd);
        set_field(&mut req, "queueId", "queueId", &rq.to_string());
        set_field(&mut req, "pollTime", "pollTime", &poll_ms.to_string());
        let timeout = Duration::from_millis(poll_ms) + self.cluster.call_timeout();
        self.cluster
            .call_broker(&p.name, &p.endpoint, req, Some(timeout))
            .await
    }

    /// A broker's POP answer in the virtual broker's terms.
    async fn virtual_answer(
        &self,
        mut r: RemotingCommand,
        p: &Part,
        layouts: &mut Layouts<'_>,
    ) -> Result<RemotingCommand, Refusal> {
        for key in ["startOffsetInfo", "msgOffsetInfo", "orderCountInfo"] {
            if let Some(v) = r.field(key).map(str::to_owned) {
                let mapped = map_offset_info(&v, &p.name, layouts).await?;
                set_field(&mut r, key, key, &mapped);
            }
        }
        let bad = |e: String| reply(code::SYSTEM_ERROR, format!("broker {}: {e}", p.name));
        let records = message::decode_records(&r.body).map_err(|e| bad(e.to_string()))?;
        let mut body = BytesMut::with_capacity(r.body.len() + 64 * records.len());
        for m in records {
            let mut props = Properties::parse(&m.properties).map_err(|e| bad(e.to_string()))?;
            let retry_ck = props
                .get(prop::POP_CK)
                .and_then(|c| ExtraInfo::parse(c).ok());
            let q = match retry_ck {
                Some(mut e) => {
                    let v = layouts.virtual_of(e.retry, &p.name, e.queue).await?;
                    e.broker = VIRTUAL_BROKER.to_owned();
                    e.queue = v;
                    props.set(prop::POP_CK, e.to_string());
                    v
                }
                None => layouts.virtual_of(0, &p.name, m.queue_id).await?,
            };
            let nm = NewMessage::from_stored(&m, &m.topic, q, props.encode());
            message::encode_record_like(&nm, &m, &mut body);
        }
        r.body = body.freeze();
        Ok(r)
    }

    /// ACK_MESSAGE and CHANGE_MESSAGE_INVISIBLETIME: to the broker behind the virtual queue,
    /// with its queue and name in the header and the `extraInfo`.
    pub(super) async fn by_handle(
        &self,
        cmd: &RemotingCommand,
    ) -> Result<RemotingCommand, Refusal> {
        let topic = field(cmd, "topic", "topic")?.to_owned();
        let extra = field(cmd, "extraInfo", "extraInfo")?;
        let mut e = ExtraInfo::parse(extra)
            .map_err(|e| reply(code::INVALID_PARAMETER, format!("extraInfo `{extra}`: {e}")))?;
        let vq = number::<i32>(cmd, "queueId")?.unwrap_or(e.queue);
        let l = self.layout(numbering_topic(&topic)).await?;
        let (p, rq) = l.real(vq).ok_or_else(|| {
            reply(
                code::INVALID_PARAMETER,
                format!("queue {vq} of topic `{topic}` does not exist"),
            )
        })?;
        e.broker = p.name.clone();
        e.queue = rq;
        let mut req = forwarded(cmd);
        set_field(&mut req, "queueId", "queueId", &rq.to_string());
        set_field(&mut req, "extraInfo", "extraInfo", &e.to_string());
        self.cluster
            .call_broker(&p.name, &p.endpoint, req, None)
            .await
            .map_err(|e| refused(&e))
    }

    /// BATCH_ACK_MESSAGE with RocketMQ's body: the acks split by the broker behind each
    /// one's virtual queue, one call per broker; success when every broker acked.
    pub(super) async fn batch_ack(
        &self,
        cmd: &RemotingCommand,
    ) -> Result<RemotingCommand, Refusal> {
        let bad = |m: String| reply(code::INVALID_PARAMETER, format!("batch ack: {m}"));
        let v: serde_json::Value =
            serde_json::from_slice(&cmd.body).map_err(|e| bad(e.to_string()))?;
        let acks = v["acks"]
            .as_array()
            .ok_or_else(|| bad("`acks` is not a list".into()))?;
        let mut per_broker: Vec<(Part, Vec<serde_json::Value>)> = Vec::new();
        for a in acks {
            let e = rdmq_protocol::handle::BatchAckEntry::parse(a).map_err(bad)?;
            let (group, topic, flag, vq) = (e.group, e.topic, e.retry, e.queue);
            let q_key = if a.get("q").is_some() { "q" } else { "queueId" };
            let named = if flag == 1 {
                ExtraInfo::topic_of(flag, topic, group)
            } else {
                topic.to_owned()
            };
            let l = self.layout(&named).await?;
            let (p, rq) = l
                .real(vq)
                .ok_or_else(|| bad(format!("queue {vq} of topic `{topic}` does not exist")))?;
            let mut a = a.clone();
            a[q_key] = rq.into();
            match per_broker.iter_mut().find(|(b, _)| b.name == p.name) {
                Some((_, list)) => list.push(a),
                None => per_broker.push((p.clone(), vec![a])),
            }
        }
        if per_broker.is_empty() {
            return Err(bad("no acks".into()));
        }
        let calls = per_broker.iter().map(|(p, list)| {
            let body = serde_json::json!({ "brokerName": p.name, "acks": list }).to_string();
            let mut req = forwarded(cmd);
            req.body = Bytes::from(body.into_bytes());
            self.cluster.call_broker(&p.name, &p.endpoint, req, None)
        });
        for r in crate::cluster::join_all(calls).await {
            let r = r.map_err(|e| refused(&e))?;
            if r.code != code::SUCCESS {
                return Ok(r);
            }
        }
        Ok(RemotingCommand::response(code::SUCCESS, None))
    }
}
