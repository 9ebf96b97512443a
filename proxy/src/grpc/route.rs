//! QueryRoute and QueryAssignment: every queue of every broker holding a topic, pointing
//! clients at this proxy.

use super::metadata::client_id;
use super::service::{MessagingProxy, check_group, check_topic, resource_name};
use crate::error::{ProxyError, ProxyResult};
use crate::pb::{self, Code, Permission};

impl MessagingProxy {
    pub(super) async fn query_route_inner(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: &pb::QueryRouteRequest,
    ) -> ProxyResult<Vec<pb::MessageQueue>> {
        client_id(md)?;
        let topic = resource_name(&req.topic);
        check_topic(topic, true)?;
        let route = self.shared.cluster.route(topic).await?;
        let eps = self.own_endpoints(req.endpoints.as_ref());
        let mut queues = Vec::new();
        for b in &route.brokers {
            for q in 0..b.read_queues.max(b.write_queues) {
                let perm = match (q < b.read_queues, q < b.write_queues) {
                    (true, true) => Permission::ReadWrite,
                    (true, false) => Permission::Read,
                    _ => Permission::Write,
                };
                queues.push(self.queue(topic, q as i32, perm, &b.name, &eps));
            }
        }
        Ok(queues)
    }

    pub(super) async fn assignment_inner(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: &pb::QueryAssignmentRequest,
    ) -> ProxyResult<Vec<pb::Assignment>> {
        client_id(md)?;
        let topic = resource_name(&req.topic);
        check_topic(topic, true)?;
        check_group(resource_name(&req.group))?;
        let route = self.shared.cluster.route(topic).await?;
        let eps = self.own_endpoints(req.endpoints.as_ref());
        // Pop is per broker: one assignment per broker, any queue (-1).
        let a: Vec<pb::Assignment> = route
            .brokers
            .iter()
            .filter(|b| b.read_queues > 0)
            .map(|b| pb::Assignment {
                message_queue: Some(self.queue(topic, -1, Permission::ReadWrite, &b.name, &eps)),
            })
            .collect();
        if a.is_empty() {
            return Err(ProxyError::new(
                Code::Forbidden,
                format!("topic `{topic}` has no readable queue"),
            ));
        }
        Ok(a)
    }
}
