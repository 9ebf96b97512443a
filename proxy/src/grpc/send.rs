//! SendMessage: checks every message, then one SEND_MESSAGE_V2 or SEND_BATCH_MESSAGE.

use super::metadata::client_id;
use super::service::{MessagingProxy, check_topic, resource_name};
use crate::convert::{self, Limits};
use crate::error::{ProxyError, ProxyResult, ok_status};
use crate::pb::{self, Code};

impl MessagingProxy {
    pub(super) async fn send_inner(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::SendMessageRequest,
    ) -> ProxyResult<Vec<pb::SendResultEntry>> {
        client_id(md)?;
        let _slot = self.admit()?;
        let first = req
            .messages
            .first()
            .ok_or_else(|| ProxyError::new(Code::BadRequest, "no message to send"))?;
        let topic = resource_name(&first.topic).to_owned();
        check_topic(&topic, false)?;
        let limits = Limits {
            max_body: self.shared.cfg.max_body_size,
            max_properties: 16 << 10,
            max_delay_ms: 40 * 24 * 3600 * 1000,
        };
        let now = rdmq_protocol::now_ms();
        let out = req
            .messages
            .iter()
            .map(|m| convert::outgoing(m, &topic, &limits, now))
            .collect::<ProxyResult<Vec<_>>>()?;
        let groups: Vec<_> = out.iter().map(|o| o.group.clone()).collect();
        if groups.iter().any(|g| g != &groups[0]) {
            return Err(ProxyError::new(
                Code::IllegalMessageGroup,
                "messages of one request must share their message group",
            ));
        }
        let sent = self.shared.cluster.send(&topic, out).await?;
        Ok(req
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| pb::SendResultEntry {
                status: Some(ok_status()),
                message_id: m
                    .system_properties
                    .as_ref()
                    .map(|s| s.message_id.clone())
                    .unwrap_or_default(),
                transaction_id: String::new(),
                offset: sent.offset + i as i64,
                recall_handle: String::new(),
            })
            .collect())
    }
}
