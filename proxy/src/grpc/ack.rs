//! AckMessage, ChangeInvisibleDuration and ForwardMessageToDeadLetterQueue: operations on
//! a receipt handle, routed to the broker that issued it.

use super::metadata::client_id;
use super::service::{
    MAX_INVISIBLE, MessagingProxy, check_group, overall, require, resource_name, status_of,
};
use crate::convert;
use crate::error::{ProxyError, ProxyResult};
use crate::pb::{self, Code};

impl MessagingProxy {
    pub(super) async fn ack_inner(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: &pb::AckMessageRequest,
    ) -> pb::AckMessageResponse {
        let head: ProxyResult<String> = (|| {
            client_id(md)?;
            let group = resource_name(&req.group).to_owned();
            check_group(&group)?;
            require(resource_name(&req.topic), Code::IllegalTopic, "topic")?;
            if req.entries.is_empty() {
                return Err(ProxyError::new(Code::BadRequest, "no entry to ack"));
            }
            Ok(group)
        })();
        let group = match head {
            Ok(g) => g,
            Err(e) => {
                return pb::AckMessageResponse {
                    status: Some(e.status()),
                    entries: Vec::new(),
                };
            }
        };
        // Entries are acked concurrently: a slow broker costs one call timeout, not one per
        // entry.
        let group = &group;
        let entries = crate::cluster::join_all(req.entries.iter().map(|e| async move {
            let handle = self.shared.renewals.take(&e.receipt_handle).await;
            let r = self.shared.cluster.ack(group, &handle).await;
            pb::AckMessageResultEntry {
                message_id: e.message_id.clone(),
                receipt_handle: e.receipt_handle.clone(),
                status: Some(status_of(&r)),
            }
        }))
        .await;
        pb::AckMessageResponse {
            status: Some(overall(entries.iter().map(|e| e.status.as_ref()))),
            entries,
        }
    }
    pub(super) async fn change_inner(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: &pb::ChangeInvisibleDurationRequest,
    ) -> ProxyResult<String> {
        client_id(md)?;
        let group = resource_name(&req.group);
        check_group(group)?;
        require(resource_name(&req.topic), Code::IllegalTopic, "topic")?;
        let invisible = req
            .invisible_duration
            .as_ref()
            .and_then(convert::std_duration)
            .filter(|d| *d <= MAX_INVISIBLE)
            .ok_or_else(|| {
                ProxyError::new(
                    Code::IllegalInvisibleTime,
                    "invisible_duration must be 0 (visible now) to 12 h",
                )
            })?;
        Ok(self
            .shared
            .cluster
            .change_invisible(
                group,
                &self.shared.renewals.take(&req.receipt_handle).await,
                invisible,
            )
            .await?
            .handle)
    }
    pub(super) async fn forward_inner(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: &pb::ForwardMessageToDeadLetterQueueRequest,
    ) -> ProxyResult<()> {
        client_id(md)?;
        let group = resource_name(&req.group);
        check_group(group)?;
        require(resource_name(&req.topic), Code::IllegalTopic, "topic")?;
        self.shared
            .cluster
            .dead_letter(group, &self.shared.renewals.take(&req.receipt_handle).await)
            .await
    }
}
