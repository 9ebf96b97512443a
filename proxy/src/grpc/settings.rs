//! Telemetry settings: what the proxy answers to a client's Settings command. The reply keeps
//! what the client said and fills in the server's side: the body-size limit and retry policy
//! for producers, batch size, long-polling timeout and delivery attempts (the brokers' dead-letter threshold) for consumers, and
//! metrics off.

use std::time::Duration;

use crate::convert::duration;
use crate::pb::{
    ExponentialBackoff, Metric, Publishing, RetryPolicy, Settings, Subscription, retry_policy,
    settings::PubSub,
};

/// The server-side values merged into client settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Largest body a producer may send.
    pub max_body_size: usize,
    /// Long-polling timeout announced to consumers.
    pub long_polling: Duration,
    /// Delivery attempts before dead-lettering.
    pub max_delivery_attempts: u32,
    /// Default receive batch size.
    pub receive_batch_size: i32,
}

/// Why settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSettings(pub String);

/// Merges `client` settings with the server's.
pub fn merge(client: &Settings, server: &ServerSettings) -> Result<Settings, BadSettings> {
    let mut out = client.clone();
    match &client.pub_sub {
        Some(PubSub::Publishing(p)) => {
            out.pub_sub = Some(PubSub::Publishing(Publishing {
                topics: p.topics.clone(),
                max_body_size: server.max_body_size.min(i32::MAX as usize) as i32,
                validate_message_type: p.validate_message_type,
            }));
            if out.backoff_policy.is_none() {
                out.backoff_policy = Some(RetryPolicy {
                    max_attempts: 3,
                    strategy: Some(retry_policy::Strategy::ExponentialBackoff(
                        ExponentialBackoff {
                            initial: Some(duration(10)),
                            max: Some(duration(1_000)),
                            multiplier: 2.0,
                        },
                    )),
                });
            }
        }
        Some(PubSub::Subscription(s)) => {
            out.pub_sub = Some(PubSub::Subscription(Subscription {
                group: s.group.clone(),
                subscriptions: s.subscriptions.clone(),
                fifo: Some(s.fifo.unwrap_or(false)),
                receive_batch_size: Some(
                    s.receive_batch_size
                        .filter(|n| *n > 0)
                        .unwrap_or(server.receive_batch_size)
                        .min(server.receive_batch_size),
                ),
                long_polling_timeout: Some(duration(server.long_polling.as_millis() as i64)),
                lite_subscription_quota: s.lite_subscription_quota,
                max_lite_topic_size: s.max_lite_topic_size,
            }));
            let strategy = client
                .backoff_policy
                .as_ref()
                .and_then(|b| b.strategy.clone())
                .unwrap_or(retry_policy::Strategy::ExponentialBackoff(
                    ExponentialBackoff {
                        initial: Some(duration(1_000)),
                        max: Some(duration(60_000)),
                        multiplier: 2.0,
                    },
                ));
            out.backoff_policy = Some(RetryPolicy {
                // Deliveries in all, the broker's dead-letter threshold.
                max_attempts: server.max_delivery_attempts as i32,
                strategy: Some(strategy),
            });
        }
        None => {
            return Err(BadSettings(
                "settings carry neither publishing nor subscription".into(),
            ));
        }
    }
    out.metric = Some(Metric {
        on: false,
        endpoints: None,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::Resource;

    const SERVER: ServerSettings = ServerSettings {
        max_body_size: 4 << 20,
        long_polling: Duration::from_secs(20),
        max_delivery_attempts: 16,
        receive_batch_size: 32,
    };

    #[test]
    fn producers_learn_the_body_limit_and_consumers_the_polling_timeout() {
        let producer = Settings {
            pub_sub: Some(PubSub::Publishing(Publishing {
                topics: vec![Resource {
                    resource_namespace: String::new(),
                    name: "t".into(),
                }],
                max_body_size: 0,
                validate_message_type: true,
            })),
            ..Default::default()
        };
        let m = merge(&producer, &SERVER).unwrap();
        let Some(PubSub::Publishing(p)) = &m.pub_sub else {
            panic!("publishing kept")
        };
        assert_eq!(p.max_body_size, 4 << 20);
        assert_eq!(p.topics.len(), 1);
        assert!(m.backoff_policy.is_some());
        assert_eq!(m.metric.as_ref().map(|x| x.on), Some(false));

        let consumer = Settings {
            pub_sub: Some(PubSub::Subscription(Subscription::default())),
            ..Default::default()
        };
        let m = merge(&consumer, &SERVER).unwrap();
        let Some(PubSub::Subscription(s)) = &m.pub_sub else {
            panic!("subscription kept")
        };
        assert_eq!(s.long_polling_timeout.as_ref().map(|d| d.seconds), Some(20));
        assert_eq!(s.receive_batch_size, Some(32));
        assert_eq!(m.backoff_policy.as_ref().map(|b| b.max_attempts), Some(16));
        assert!(merge(&Settings::default(), &SERVER).is_err());
    }
}
