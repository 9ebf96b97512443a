//! ReceiveMessage: POP_MESSAGE with long polling bounded by the caller's deadline; the
//! stream carries a status, the messages, then the delivery timestamp.

use std::time::{Duration, Instant};

use tonic::Status as GrpcStatus;

use super::metadata::{client_id, deadline};
use super::service::{
    AUTO_RENEW_INVISIBLE, DEADLINE_MARGIN, MAX_BATCH, MAX_INVISIBLE, MessagingProxy,
    check_consumption, check_group, check_topic, resource_name,
};
use crate::cluster::PopArgs;
use crate::convert;
use crate::error::{ProxyError, ProxyResult, ok_status};
use crate::pb::{self, Code, receive_message_response};

impl MessagingProxy {
    fn fifo_for(&self, client: &str) -> bool {
        self.clients()
            .get(client)
            .and_then(|c| match &c.settings.pub_sub {
                Some(pb::settings::PubSub::Subscription(s)) => s.fifo,
                _ => None,
            })
            .unwrap_or(false)
    }

    pub(super) async fn receive_inner(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::ReceiveMessageRequest,
    ) -> ProxyResult<(Vec<pb::Message>, i64)> {
        let client = client_id(md)?;
        let _slot = self.admit()?;
        let group = resource_name(&req.group).to_owned();
        check_group(&group)?;
        let topic = req
            .message_queue
            .as_ref()
            .map(|q| resource_name(&q.topic).to_owned())
            .unwrap_or_default();
        check_topic(&topic, true)?;
        check_consumption(&group, &topic)?;
        if req.batch_size <= 0 || req.batch_size > MAX_BATCH {
            return Err(ProxyError::new(
                Code::BadRequest,
                format!(
                    "batch_size must be 1 to {MAX_BATCH}, got {}",
                    req.batch_size
                ),
            ));
        }
        let invisible = match (&req.invisible_duration, req.auto_renew) {
            (Some(d), _) => convert::std_duration(d)
                .filter(|d| d.as_millis() >= 1 && *d <= MAX_INVISIBLE)
                .ok_or_else(|| {
                    ProxyError::new(
                        Code::IllegalInvisibleTime,
                        format!(
                            "invisible_duration must be at least 1 ms and at most {} s",
                            MAX_INVISIBLE.as_secs()
                        ),
                    )
                })?,
            (None, true) => AUTO_RENEW_INVISIBLE,
            (None, false) => {
                return Err(ProxyError::new(
                    Code::IllegalInvisibleTime,
                    "invisible_duration is required unless auto_renew is set",
                ));
            }
        };
        let filter = match &req.filter_expression {
            None => "*".to_owned(),
            Some(f) if f.r#type == pb::FilterType::Sql as i32 => {
                return Err(ProxyError::new(
                    Code::IllegalFilterExpression,
                    "SQL92 filters are not supported; use a tag expression",
                ));
            }
            Some(f) if f.expression.trim().is_empty() => "*".to_owned(),
            Some(f) => f.expression.clone(),
        };
        // Long polling ends before the caller's deadline, with a margin for the answer.
        let wanted = match &req.long_polling_timeout {
            Some(d) => convert::std_duration(d).ok_or_else(|| {
                ProxyError::new(Code::IllegalPollingTime, "long_polling_timeout is negative")
            })?,
            None => self.shared.cfg.max_long_polling,
        }
        .min(self.shared.cfg.max_long_polling);
        let now = Instant::now();
        let answer_by = match deadline(md) {
            Some(left) if left <= DEADLINE_MARGIN => {
                return Err(ProxyError::new(
                    Code::IllegalPollingTime,
                    format!(
                        "the call's deadline ({} ms) leaves no time to poll",
                        left.as_millis()
                    ),
                ));
            }
            Some(left) => now + left - DEADLINE_MARGIN,
            None => now + wanted + Duration::from_secs(1),
        };
        let args = PopArgs {
            group: group.clone(),
            topic: topic.clone(),
            filter,
            max: req.batch_size as u32,
            invisible,
            poll: wanted,
            answer_by,
            fifo: self.fifo_for(&client),
        };
        // The pop runs in its own task: if this call goes away (client cancel, drain) before
        // the broker answers, whatever it popped is made visible again at once instead of
        // staying hidden for the whole invisible time.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cluster = self.shared.cluster.clone();
        tokio::spawn(async move {
            let r = cluster.pop(&args).await;
            if let Err(Ok(Some(batch))) = tx.send(r) {
                for h in crate::cluster::handles_of(&batch) {
                    if let Err(e) = cluster
                        .change_invisible(&args.group, &h, Duration::ZERO)
                        .await
                    {
                        tracing::debug!(error = %e.message, "releasing an undelivered message failed; it returns after its invisible time");
                    }
                }
            }
        });
        let mut shutdown = self.shared.shutdown.clone();
        let popped = tokio::select! {
            r = rx => r.map_err(|_| ProxyError::new(Code::InternalServerError, "the pop task ended without an answer"))??,
            _ = shutdown.wait_for(|s| *s) => None,
        };
        Ok(match popped {
            Some(batch) => {
                let msgs: Vec<pb::Message> = batch
                    .messages
                    .iter()
                    .map(|m| convert::delivered(m, batch.invisible_ms))
                    .collect();
                if req.auto_renew {
                    for m in &msgs {
                        if let Some(h) = m
                            .system_properties
                            .as_ref()
                            .and_then(|s| s.receipt_handle.as_deref())
                        {
                            self.shared.renewals.track(&client, &group, h, invisible);
                        }
                    }
                }
                (msgs, rdmq_protocol::now_ms())
            }
            None => (Vec::new(), rdmq_protocol::now_ms()),
        })
    }
    /// The ReceiveMessage stream: status, messages, delivery timestamp.
    pub(super) async fn receive_responses(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::ReceiveMessageRequest,
    ) -> Vec<Result<pb::ReceiveMessageResponse, GrpcStatus>> {
        use receive_message_response::Content;
        let r = self.receive_inner(md, req).await;
        let mut out = Vec::new();
        let now = rdmq_protocol::now_ms();
        match r {
            Ok((msgs, at)) if !msgs.is_empty() => {
                out.push(Content::Status(ok_status()));
                out.extend(msgs.into_iter().map(Content::Message));
                out.push(Content::DeliveryTimestamp(convert::timestamp(at)));
            }
            Ok((_, at)) => {
                out.push(Content::Status(
                    ProxyError::new(Code::MessageNotFound, "no new message").status(),
                ));
                out.push(Content::DeliveryTimestamp(convert::timestamp(at)));
            }
            Err(e) => {
                out.push(Content::Status(e.status()));
                out.push(Content::DeliveryTimestamp(convert::timestamp(now)));
            }
        }
        out.into_iter()
            .map(|c| Ok(pb::ReceiveMessageResponse { content: Some(c) }))
            .collect()
    }
}
