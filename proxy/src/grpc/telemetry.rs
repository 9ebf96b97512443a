//! Telemetry: the long-lived bidirectional stream on which clients send their settings and
//! the proxy answers the merged ones.

use std::time::Instant;

use tokio::sync::mpsc;
use tonic::{Status as GrpcStatus, Streaming};

use super::service::{ClientState, MessagingProxy};
use super::settings::merge;
use crate::error::ok_status;
use crate::pb::{self, telemetry_command};

impl MessagingProxy {
    /// Answers the client's settings commands until its stream ends (or a drain).
    pub(super) fn open_telemetry(
        &self,
        client: String,
        mut inbound: Streaming<pb::TelemetryCommand>,
    ) -> mpsc::Receiver<Result<pb::TelemetryCommand, GrpcStatus>> {
        let (tx, rx) = mpsc::channel::<Result<pb::TelemetryCommand, GrpcStatus>>(8);
        let this = self.clone();
        let mut shutdown = self.shared.shutdown.clone();
        tokio::spawn(async move {
            loop {
                // A drain ends telemetry streams, so the HTTP/2 connections can close.
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.wait_for(|s| *s) => break,
                };
                let cmd = match next {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(client, error = %e, "telemetry stream ended");
                        break;
                    }
                };
                let Some(telemetry_command::Command::Settings(s)) = cmd.command else {
                    // Thread dumps and verification results are accepted and ignored.
                    continue;
                };
                let reply = match merge(&s, &this.server_settings()) {
                    Ok(merged) => {
                        this.clients().insert(
                            client.clone(),
                            ClientState {
                                settings: merged.clone(),
                                seen: Instant::now(),
                            },
                        );
                        Ok(pb::TelemetryCommand {
                            status: Some(ok_status()),
                            command: Some(telemetry_command::Command::Settings(merged)),
                        })
                    }
                    Err(e) => Err(GrpcStatus::invalid_argument(e.0)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
            // The stream lives as long as the client: its settings go with it.
            this.clients().remove(&client);
            this.shared.renewals.forget_client(&client);
        });
        rx
    }
}
