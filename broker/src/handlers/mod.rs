//! Remoting request handlers, registered on the generic [`Router`] so any transport serves
//! them. Bad input gets the response code upstream uses and a remark saying what is wrong.

mod admin;
mod pop;
mod pull;
mod route;
mod send;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rdmq_transport::RemotingCommand;
use rdmq_transport::protocol::{request_code as rc, response_code};
use rdmq_transport::remoting::{Request, Router};

use crate::pop::{PopConfig, PopService};
use crate::store::meta::TopicConfig;
use crate::store::{Store, StoreError};
use crate::timer::{TimerConfig, TimerService};

/// Broker identity and policies the handlers need.
#[derive(Debug, Clone)]
pub struct BrokerInfo {
    /// Broker name (in routes and receipt handles).
    pub broker_name: String,
    /// Cluster name.
    pub cluster_name: String,
    /// Address clients should use (`host:port`), returned in routes.
    pub advertise: String,
    /// Create unknown topics on first send or route query.
    pub auto_create_topics: bool,
    /// Queues of auto-created topics.
    pub default_queues: u32,
    /// Longest a PULL may be parked waiting for messages.
    pub max_long_poll: std::time::Duration,
    /// Pop consumption settings (`broker_name` is taken from above).
    pub pop: PopConfig,
    /// Timer settings.
    pub timer: TimerConfig,
}

impl Default for BrokerInfo {
    fn default() -> Self {
        Self {
            broker_name: "broker-a".into(),
            cluster_name: "DefaultCluster".into(),
            advertise: "127.0.0.1:10911".into(),
            auto_create_topics: true,
            default_queues: 4,
            max_long_poll: std::time::Duration::from_secs(30),
            pop: PopConfig::default(),
            timer: TimerConfig::default(),
        }
    }
}

/// A client seen through HEART_BEAT.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Producer groups.
    pub producer_groups: Vec<String>,
    /// Consumer groups.
    pub consumer_groups: Vec<String>,
    /// Last heartbeat (ms).
    pub last_seen: i64,
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct Broker {
    /// The store.
    pub store: Store,
    /// Identity and policies.
    pub info: BrokerInfo,
    /// Clients by id.
    pub clients: Mutex<HashMap<String, ClientInfo>>,
    /// Pop consumption.
    pub pop: PopService,
    /// Timed and delayed messages.
    pub timers: TimerService,
    /// When the broker started (ms).
    pub boot_ms: i64,
}

impl Broker {
    /// A broker over `store`: recovers and starts the pop and timer services (their state
    /// lives next to the store, in `pop/` and `timer/`).
    pub fn start(store: Store, info: BrokerInfo) -> Result<Arc<Broker>, StoreError> {
        let dir = store.config().dir.clone();
        let mut pop_cfg = info.pop.clone();
        pop_cfg.broker_name = info.broker_name.clone();
        let pop = PopService::start(store.clone(), &dir.join("pop"), pop_cfg)?;
        let timers = TimerService::start(store.clone(), &dir.join("timer"), info.timer.clone())?;
        Ok(Arc::new(Broker {
            store,
            info,
            clients: Mutex::new(HashMap::new()),
            pop,
            timers,
            boot_ms: crate::store::now_ms(),
        }))
    }

    /// Stops the services, then the store (flushed and checkpointed).
    pub fn shutdown(&self) {
        self.timers.shutdown();
        self.pop.shutdown();
        self.store.shutdown();
    }

    /// The topic, created with `queues` queues if unknown and auto-creation is on.
    pub async fn topic_or_create(
        &self,
        name: &str,
        queues: Option<u32>,
    ) -> Result<TopicConfig, Reject> {
        if let Some(t) = self.store.topic(name) {
            return Ok(t);
        }
        if !self.info.auto_create_topics {
            return Err(fail(
                response_code::TOPIC_NOT_EXIST,
                format!(
                    "topic `{name}` does not exist on broker {}; create it first",
                    self.info.broker_name
                ),
            ));
        }
        let n = queues
            .filter(|q| (1..=1024).contains(q))
            .unwrap_or(self.info.default_queues);
        let t = TopicConfig::new(name, n);
        self.store
            .put_topic_async(t.clone())
            .await
            .map_err(store_failure)?;
        tracing::info!(topic = name, queues = n, "topic auto-created");
        Ok(t)
    }
}

/// A refused request: the response code and a remark saying what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Response code.
    pub code: i32,
    /// Human-readable reason.
    pub remark: String,
}

impl Reject {
    /// The response carrying this refusal.
    pub fn into_response(self) -> RemotingCommand {
        reply(self.code, self.remark)
    }
}

/// A refusal with `code` and `remark`.
pub fn fail(code: i32, remark: impl Into<String>) -> Reject {
    Reject {
        code,
        remark: remark.into(),
    }
}

/// A response with `code` and `remark`.
pub fn reply(code: i32, remark: impl Into<String>) -> RemotingCommand {
    RemotingCommand::response(code, Some(remark.into()))
}

/// A SUCCESS response.
pub fn ok() -> RemotingCommand {
    RemotingCommand::response(response_code::SUCCESS, None)
}

/// The response for a store error.
pub fn store_failure(e: StoreError) -> Reject {
    let code = match &e {
        StoreError::TopicNotFound(_) => response_code::TOPIC_NOT_EXIST,
        StoreError::Illegal(_) => response_code::MESSAGE_ILLEGAL,
        StoreError::Busy(_) => response_code::SYSTEM_BUSY,
        StoreError::ShuttingDown => response_code::SERVICE_NOT_AVAILABLE,
        StoreError::QueueNotFound { .. } | StoreError::Io(_) => response_code::SYSTEM_ERROR,
    };
    fail(code, e.to_string())
}

/// Header field access with typed failures.
#[derive(Debug)]
pub struct Fields<'a>(pub &'a RemotingCommand);

impl<'a> Fields<'a> {
    /// A required string field.
    pub fn str(&self, key: &str) -> Result<&'a str, Reject> {
        self.0.field(key).ok_or_else(|| {
            fail(
                response_code::SYSTEM_ERROR,
                format!("missing header field `{key}`"),
            )
        })
    }

    /// A required string field known under two names (V2 one-letter and V1 long names).
    pub fn str2(&self, short: &str, long: &str) -> Result<&'a str, Reject> {
        self.0
            .field(short)
            .or_else(|| self.0.field(long))
            .ok_or_else(|| {
                fail(
                    response_code::SYSTEM_ERROR,
                    format!("missing header field `{long}`"),
                )
            })
    }

    /// An optional field (either name).
    pub fn opt2(&self, short: &str, long: &str) -> Option<&'a str> {
        self.0.field(short).or_else(|| self.0.field(long))
    }

    /// An optional integer field known under two names.
    pub fn opt_num2<T: std::str::FromStr>(
        &self,
        short: &str,
        long: &str,
    ) -> Result<Option<T>, Reject> {
        self.opt2(short, long)
            .map(|v| parse_num(long, v))
            .transpose()
    }

    /// A required integer field.
    pub fn num<T: std::str::FromStr>(&self, key: &str) -> Result<T, Reject> {
        parse_num(key, self.str(key)?)
    }

    /// An optional integer field.
    pub fn opt_num<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, Reject> {
        self.0.field(key).map(|v| parse_num(key, v)).transpose()
    }
}

/// Parses a numeric header value.
pub fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, Reject> {
    v.trim().parse::<T>().map_err(|_| {
        fail(
            response_code::SYSTEM_ERROR,
            format!("header field `{key}` is not a valid number: `{v}`"),
        )
    })
}

/// Turns a handler's `Result` into a response.
pub fn respond(r: Result<RemotingCommand, Reject>) -> RemotingCommand {
    r.unwrap_or_else(Reject::into_response)
}

/// The broker's routes.
pub fn router(broker: Arc<Broker>) -> Router {
    let mut r = Router::new();
    macro_rules! route {
        ($code:expr, $f:path) => {{
            let b = broker.clone();
            r.add($code, move |req: Request| {
                let b = b.clone();
                async move {
                    let request = req.command.code;
                    let r = $f(&b, req).await;
                    if let Err(e) = &r {
                        tracing::debug!(request, code = e.code, remark = %e.remark, "request refused");
                    }
                    respond(r)
                }
            });
        }};
    }
    route!(rc::SEND_MESSAGE, send::send);
    route!(rc::SEND_MESSAGE_V2, send::send);
    route!(rc::SEND_BATCH_MESSAGE, send::send);
    route!(rc::PULL_MESSAGE, pull::pull);
    route!(rc::LITE_PULL_MESSAGE, pull::pull);
    route!(rc::QUERY_CONSUMER_OFFSET, pull::query_consumer_offset);
    route!(rc::UPDATE_CONSUMER_OFFSET, pull::update_consumer_offset);
    route!(rc::INVOKE_BROKER_TO_RESET_OFFSET, pull::reset_offset);
    route!(rc::GET_MAX_OFFSET, pull::max_offset);
    route!(rc::GET_MIN_OFFSET, pull::min_offset);
    route!(
        rc::SEARCH_OFFSET_BY_TIMESTAMP,
        pull::search_offset_by_timestamp
    );
    route!(rc::UPDATE_AND_CREATE_TOPIC, admin::update_and_create_topic);
    route!(
        rc::UPDATE_AND_CREATE_TOPIC_LIST,
        admin::update_and_create_topic_list
    );
    route!(rc::DELETE_TOPIC_IN_BROKER, admin::delete_topic);
    route!(rc::VIEW_MESSAGE_BY_ID, admin::view_message_by_id);
    route!(rc::QUERY_MESSAGE, admin::query_message);
    route!(rc::HEART_BEAT, admin::heart_beat);
    route!(rc::UNREGISTER_CLIENT, admin::unregister_client);
    route!(
        rc::GET_CONSUMER_LIST_BY_GROUP,
        admin::consumer_list_by_group
    );
    route!(rc::GET_ROUTEINFO_BY_TOPIC, admin::route_info);
    route!(rc::GET_BROKER_RUNTIME_INFO, admin::runtime_info);
    route!(rc::GET_TOPIC_CONFIG, admin::topic_config);
    route!(rc::GET_SUBSCRIPTIONGROUP_CONFIG, pop::group_config);
    route!(rc::POP_MESSAGE, pop::pop);
    route!(rc::ACK_MESSAGE, pop::ack);
    route!(rc::BATCH_ACK_MESSAGE, pop::batch_ack);
    route!(rc::CHANGE_MESSAGE_INVISIBLETIME, pop::change_invisible);
    route!(rc::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP, pop::create_group);
    route!(rc::DELETE_SUBSCRIPTIONGROUP, pop::delete_group);
    route!(rc::CONSUMER_SEND_MSG_BACK, pop::send_back);
    r
}
