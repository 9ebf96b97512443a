//! `rdmq-admin`: operate a cluster through its name servers, in RocketMQ's own remoting
//! requests (so it also works against RocketMQ name servers and brokers): cluster list,
//! topics (list, route, status, create, update, delete), consumer groups (create, update,
//! delete), consumer progress and offset reset by time, messages by id and by key. Every
//! command prints an aligned table, or JSON with `--json`.

pub mod output;

use std::time::Duration;

use bytes::Bytes;
use rdmq_protocol::message::{self, Properties, StoredMessage, prop};
use rdmq_protocol::route::{BrokerData, ClusterInfo, TopicRoute};
use rdmq_transport::protocol::{request_code as rc, response_code as code};
use rdmq_transport::remoting::{Client, ClientConfig};
use rdmq_transport::{AnyTransport, Endpoint, RemotingCommand};
use serde_json::{Value, json};

use output::Table;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// A server could not be reached.
    #[error("{what} at {addr} is unreachable: {reason}")]
    Unreachable {
        /// Name server or broker.
        what: &'static str,
        /// Its address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A server refused the request.
    #[error("{what}: {remark} (code {code})")]
    Refused {
        /// The request, in words.
        what: String,
        /// Response code.
        code: i32,
        /// The server's remark.
        remark: String,
    },
    /// An answer did not parse.
    #[error("{0}")]
    Malformed(String),
}

type AdminResult<T> = Result<T, AdminError>;

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "rdmq-admin",
    about = "rdmq cluster administration over RocketMQ remoting (name servers and brokers)",
    disable_version_flag = true
)]
pub struct Cli {
    /// Name servers
    #[arg(
        long,
        value_name = "HOST:PORT;HOST:PORT",
        env = "RDMQ_ADMIN_NAMESRV",
        default_value = "127.0.0.1:9876",
        global = true
    )]
    namesrv: String,
    /// Print JSON instead of a table
    #[arg(long, global = true)]
    json: bool,
    /// Timeout of each request
    #[arg(long, value_name = "MS", default_value_t = 5000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Brokers and clusters
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Topics
    #[command(subcommand)]
    Topic(TopicCmd),
    /// Consumer groups
    #[command(subcommand)]
    Group(GroupCmd),
    /// Consumer progress and offsets
    #[command(subcommand)]
    Consumer(ConsumerCmd),
    /// Look messages up
    #[command(subcommand)]
    Message(MessageCmd),
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCmd {
    /// Every live broker, by cluster
    List,
}

#[derive(Debug, clap::Args)]
struct Placement {
    /// Only the brokers of this cluster
    #[arg(long)]
    cluster: Option<String>,
    /// Only this broker (by name)
    #[arg(long)]
    broker: Option<String>,
}

#[derive(Debug, clap::Args)]
struct TopicSpec {
    /// Topic name
    topic: String,
    /// Read and write queues per broker
    #[arg(long, default_value_t = 4)]
    queues: u32,
    /// Permission: 6 read-write, 4 write only, 2 read only
    #[arg(long, default_value_t = 6)]
    perm: u32,
    #[command(flatten)]
    placement: Placement,
}

#[derive(Debug, clap::Subcommand)]
enum TopicCmd {
    /// Every topic the name servers know
    List,
    /// Which brokers hold the topic, with how many queues
    Route {
        /// Topic name
        topic: String,
    },
    /// Min and max offsets of every queue
    Status {
        /// Topic name
        topic: String,
    },
    /// Create the topic on every broker (or those chosen)
    Create(TopicSpec),
    /// Change queues or permission on every broker (or those chosen)
    Update(TopicSpec),
    /// Delete the topic from its brokers and the name servers
    Delete {
        /// Topic name
        topic: String,
        /// Only in this cluster
        #[arg(long)]
        cluster: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct GroupSpec {
    /// Group name
    group: String,
    /// Deliveries before a message is dead-lettered
    #[arg(long, default_value_t = 16)]
    max_attempts: u32,
    /// FIFO consumption
    #[arg(long)]
    fifo: bool,
    #[command(flatten)]
    placement: Placement,
}

#[derive(Debug, clap::Subcommand)]
enum GroupCmd {
    /// Create the group on every broker (or those chosen)
    Create(GroupSpec),
    /// Change the group's settings
    Update(GroupSpec),
    /// Delete the group from every broker (or those chosen)
    Delete {
        /// Group name
        group: String,
        #[command(flatten)]
        placement: Placement,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ConsumerCmd {
    /// Consumer offset, broker offset and lag of every queue
    Progress {
        /// Consumer group
        group: String,
        /// Topic
        topic: String,
    },
    /// Move the group's committed offsets to the first message stored at or after a time
    Reset {
        /// Consumer group
        group: String,
        /// Topic
        topic: String,
        /// Milliseconds since the epoch, or relative to now: -30s, -10m, -2h, -1d, now
        #[arg(long, allow_hyphen_values = true)]
        time: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum MessageCmd {
    /// By message id: an offset id (32 hex digits), or a client id with --topic
    Id {
        /// Message id
        id: String,
        /// The topic (needed for client-assigned ids)
        #[arg(long)]
        topic: Option<String>,
    },
    /// By key
    Key {
        /// Topic
        topic: String,
        /// Key
        key: String,
        /// Most messages to show
        #[arg(long, default_value_t = 32)]
        max: u32,
    },
}

/// Parses `--time`: epoch milliseconds, `now`, or `-<n><s|m|h|d>` relative to `now_ms`.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ms);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let (n, unit) = rel.split_at(rel.len().saturating_sub(1));
        let mult = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("time `{s}`: expected a unit s, m, h or d")),
        };
        let n: i64 = n
            .parse()
            .map_err(|_| format!("time `{s}`: `{n}` is not a number"))?;
        return Ok(now_ms - n * mult);
    }
    s.parse::<i64>()
        .ok()
        .filter(|t| *t >= 0)
        .ok_or_else(|| format!("time `{s}`: expected epoch milliseconds, now, or -10m style"))
}

/// The target of an admin session.
struct Admin {
    client: Client<AnyTransport>,
    namesrv: Vec<String>,
    timeout: Duration,
}

fn tcp(addr: &str, what: &'static str) -> AdminResult<Endpoint> {
    format!("tcp://{addr}")
        .parse()
        .map_err(|e| AdminError::Unreachable {
            what,
            addr: addr.to_owned(),
            reason: format!("not HOST:PORT ({e})"),
        })
}

fn refused(what: impl Into<String>, r: &RemotingCommand) -> AdminError {
    AdminError::Refused {
        what: what.into(),
        code: r.code,
        remark: r.remark.clone().unwrap_or_default(),
    }
}

impl Admin {
    async fn call(
        &self,
        what: &'static str,
        addr: &str,
        req: RemotingCommand,
    ) -> AdminResult<RemotingCommand> {
        let ep = tcp(addr, what)?;
        self.client
            .invoke(&ep, req, Some(self.timeout))
            .await
            .map_err(|e| AdminError::Unreachable {
                what,
                addr: addr.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Asks the name servers in turn; the first answer wins.
    async fn namesrv(&self, req: RemotingCommand) -> AdminResult<RemotingCommand> {
        let mut last = None;
        for ns in &self.namesrv {
            match self.call("name server", ns, req.clone()).await {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one name server"))
    }

    async fn broker(&self, addr: &str, req: RemotingCommand) -> AdminResult<RemotingCommand> {
        self.call("broker", addr, req).await
    }

    async fn cluster(&self) -> AdminResult<ClusterInfo> {
        let r = self
            .namesrv(RemotingCommand::request(rc::GET_BROKER_CLUSTER_INFO))
            .await?;
        if r.code != code::SUCCESS {
            return Err(refused("cluster info", &r));
        }
        ClusterInfo::parse(&r.body).map_err(|e| AdminError::Malformed(e.to_string()))
    }

    /// Brokers chosen by `--cluster` / `--broker` (every live one by default).
    async fn chosen(&self, p: &Placement) -> AdminResult<Vec<BrokerData>> {
        let info = self.cluster().await?;
        let chosen: Vec<BrokerData> = info
            .brokers
            .into_values()
            .filter(|b| p.cluster.as_ref().is_none_or(|c| *c == b.cluster))
            .filter(|b| p.broker.as_ref().is_none_or(|n| *n == b.name))
            .filter(|b| b.master().is_some())
            .collect();
        if chosen.is_empty() {
            return Err(AdminError::Usage(match (&p.cluster, &p.broker) {
                (None, None) => "no live broker is registered with the name servers".into(),
                (c, b) => format!(
                    "no live broker matches{}{}",
                    c.as_ref()
                        .map(|c| format!(" cluster `{c}`"))
                        .unwrap_or_default(),
                    b.as_ref()
                        .map(|b| format!(" broker `{b}`"))
                        .unwrap_or_default()
                ),
            }));
        }
        Ok(chosen)
    }

    async fn route(&self, topic: &str) -> AdminResult<TopicRoute> {
        let r = self
            .namesrv(
                RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC).with_field("topic", topic),
            )
            .await?;
        match r.code {
            code::SUCCESS => {
                TopicRoute::parse(&r.body).map_err(|e| AdminError::Malformed(e.to_string()))
            }
            code::TOPIC_NOT_EXIST => Err(AdminError::Usage(format!(
                "topic `{topic}` does not exist on any live broker"
            ))),
            _ => Err(refused(format!("route of `{topic}`"), &r)),
        }
    }

    /// `(broker name, master address, read queues)` of every broker holding `topic`.
    async fn holders(&self, topic: &str) -> AdminResult<Vec<(String, String, u32)>> {
        let route = self.route(topic).await?;
        Ok(route
            .masters()
            .into_iter()
            .map(|(b, q)| {
                (
                    b.name.clone(),
                    b.master().unwrap_or_default().to_owned(),
                    q.read_queues.max(q.write_queues),
                )
            })
            .collect())
    }

    async fn offset(
        &self,
        addr: &str,
        req_code: i32,
        topic: &str,
        queue: u32,
        extra: &[(&str, String)],
    ) -> AdminResult<Option<i64>> {
        let mut req = RemotingCommand::request(req_code)
            .with_field("topic", topic)
            .with_field("queueId", queue.to_string());
        for (k, v) in extra {
            req = req.with_field(k, v);
        }
        let r = self.broker(addr, req).await?;
        match r.code {
            code::SUCCESS => Ok(r.field("offset").and_then(|o| o.parse().ok())),
            code::QUERY_NOT_FOUND => Ok(None),
            _ => Err(refused(format!("offset of {topic}@{queue} at {addr}"), &r)),
        }
    }
}

fn message_row(t: &mut Table, broker: &str, m: &StoredMessage) {
    let props = Properties::parse(&m.properties).unwrap_or_default();
    let id = props
        .get(prop::UNIQ_KEY)
        .map(str::to_owned)
        .unwrap_or_else(|| message::offset_msg_id(m.store_host, m.physical_offset));
    t.row(vec![
        json!(id),
        json!(m.topic),
        json!(broker),
        json!(m.queue_id),
        json!(m.queue_offset),
        json!(props.get(prop::TAGS)),
        json!(props.get(prop::KEYS)),
        json!(m.store_timestamp),
        json!(m.body.len()),
        json!(body_preview(&m.body)),
    ]);
}

/// The start of a body: text as is, anything else (control characters, invalid UTF-8) as
/// `0x` and hex, so a binary body never reaches the terminal raw.
fn body_preview(body: &[u8]) -> String {
    let head = &body[..body.len().min(64)];
    let text = match std::str::from_utf8(head) {
        Ok(t) => Some(t),
        // Cut inside a character: the whole ones before it.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    match text {
        Some(t) if !t.chars().any(char::is_control) => t.to_owned(),
        _ => {
            let mut out = String::from("0x");
            for b in &head[..head.len().min(32)] {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

const MESSAGE_COLUMNS: [&str; 10] = [
    "id",
    "topic",
    "broker",
    "queue",
    "offset",
    "tag",
    "keys",
    "stored_ms",
    "size",
    "body",
];

async fn run(cli: Cli) -> AdminResult<Table> {
    let namesrv = rdmq_protocol::route::parse_namesrv(&cli.namesrv)
        .map_err(|e| AdminError::Usage(format!("--namesrv: {e}")))?;
    let admin = Admin {
        client: Client::new(
            AnyTransport::default(),
            ClientConfig {
                connections_per_endpoint: 1,
                call_timeout: Duration::from_millis(cli.timeout_ms),
                ..ClientConfig::default()
            },
        ),
        namesrv,
        timeout: Duration::from_millis(cli.timeout_ms.max(1)),
    };
    let out = match cli.command {
        Command::Cluster(ClusterCmd::List) => {
            let info = admin.cluster().await?;
            let mut t = Table::new(&["cluster", "broker", "id", "addr", "endpoints"]);
            for (cluster, names) in &info.clusters {
                for n in names {
                    let Some(b) = info.brokers.get(n) else {
                        continue;
                    };
                    for (id, addr) in &b.addrs {
                        t.row(vec![
                            json!(cluster),
                            json!(n),
                            json!(id),
                            json!(addr),
                            json!(b.endpoints.join(",")),
                        ]);
                    }
                }
            }
            t
        }
        Command::Topic(TopicCmd::List) => {
            let r = admin
                .namesrv(RemotingCommand::request(
                    rc::GET_ALL_TOPIC_LIST_FROM_NAMESERVER,
                ))
                .await?;
            if r.code != code::SUCCESS {
                return Err(refused("topic list", &r));
            }
            let topics = rdmq_protocol::route::parse_topic_list(&r.body)
                .map_err(|e| AdminError::Malformed(e.to_string()))?;
            let mut t = Table::new(&["topic"]);
            for name in topics {
                t.row(vec![json!(name)]);
            }
            t
        }
        Command::Topic(TopicCmd::Route { topic }) => {
            let route = admin.route(&topic).await?;
            let mut t = Table::new(&["broker", "addr", "read_queues", "write_queues", "perm"]);
            for (b, q) in route.masters() {
                t.row(vec![
                    json!(b.name),
                    json!(b.master()),
                    json!(q.read_queues),
                    json!(q.write_queues),
                    json!(q.perm),
                ]);
            }
            t
        }
        Command::Topic(TopicCmd::Status { topic }) => {
            let mut t = Table::new(&["broker", "queue", "min_offset", "max_offset"]);
            for (name, addr, queues) in admin.holders(&topic).await? {
                for q in 0..queues {
                    let min = admin
                        .offset(&addr, rc::GET_MIN_OFFSET, &topic, q, &[])
                        .await?;
                    let max = admin
                        .offset(&addr, rc::GET_MAX_OFFSET, &topic, q, &[])
                        .await?;
                    t.row(vec![json!(name), json!(q), json!(min), json!(max)]);
                }
            }
            t
        }
        Command::Topic(TopicCmd::Create(spec)) | Command::Topic(TopicCmd::Update(spec)) => {
            if !(1..=1024).contains(&spec.queues) {
                return Err(AdminError::Usage(format!(
                    "--queues {} is outside 1..=1024",
                    spec.queues
                )));
            }
            if ![2, 4, 6].contains(&spec.perm) {
                return Err(AdminError::Usage(format!(
                    "--perm {} is not 2 (read), 4 (write) or 6 (read-write)",
                    spec.perm
                )));
            }
            rdmq_protocol::names::check_topic(&spec.topic)
                .map_err(|e| AdminError::Usage(e.to_string()))?;
            let mut t = Table::new(&["broker", "topic", "queues", "perm"]);
            for b in admin.chosen(&spec.placement).await? {
                let req = RemotingCommand::request(rc::UPDATE_AND_CREATE_TOPIC)
                    .with_field("topic", &spec.topic)
                    .with_field("defaultTopic", "TBW102")
                    .with_field("readQueueNums", spec.queues.to_string())
                    .with_field("writeQueueNums", spec.queues.to_string())
                    .with_field("perm", spec.perm.to_string())
                    .with_field("topicFilterType", "SINGLE_TAG")
                    .with_field("topicSysFlag", "0")
                    .with_field("order", "false");
                let addr = b.master().unwrap_or_default();
                let r = admin.broker(addr, req).await?;
                if r.code != code::SUCCESS {
                    return Err(refused(format!("topic `{}` on {}", spec.topic, b.name), &r));
                }
                t.row(vec![
                    json!(b.name),
                    json!(spec.topic),
                    json!(spec.queues),
                    json!(spec.perm),
                ]);
            }
            t
        }
        Command::Topic(TopicCmd::Delete { topic, cluster }) => {
            let route = admin.route(&topic).await?;
            let mut t = Table::new(&["broker", "topic", "deleted"]);
            for (b, _) in route.masters() {
                if cluster.as_ref().is_some_and(|c| *c != b.cluster) {
                    continue;
                }
                let r = admin
                    .broker(
                        b.master().unwrap_or_default(),
                        RemotingCommand::request(rc::DELETE_TOPIC_IN_BROKER)
                            .with_field("topic", &topic),
                    )
                    .await?;
                if r.code != code::SUCCESS && r.code != code::TOPIC_NOT_EXIST {
                    return Err(refused(format!("delete `{topic}` on {}", b.name), &r));
                }
                t.row(vec![
                    json!(b.name),
                    json!(topic),
                    json!(r.code == code::SUCCESS),
                ]);
            }
            let mut req =
                RemotingCommand::request(rc::DELETE_TOPIC_IN_NAMESRV).with_field("topic", &topic);
            if let Some(c) = &cluster {
                req = req.with_field("clusterName", c);
            }
            for ns in &admin.namesrv {
                let r = admin.call("name server", ns, req.clone()).await?;
                if r.code != code::SUCCESS {
                    return Err(refused(format!("delete `{topic}` at name server {ns}"), &r));
                }
            }
            t
        }
        Command::Group(GroupCmd::Create(spec)) | Command::Group(GroupCmd::Update(spec)) => {
            rdmq_protocol::names::check_group(&spec.group)
                .map_err(|e| AdminError::Usage(e.to_string()))?;
            if !(1..=1000).contains(&spec.max_attempts) {
                return Err(AdminError::Usage(format!(
                    "--max-attempts {} is outside 1..=1000",
                    spec.max_attempts
                )));
            }
            let body = json!({
                "groupName": spec.group,
                "retryMaxTimes": spec.max_attempts,
                "consumeMessageOrderly": spec.fifo,
                "consumeEnable": true,
                "consumeBroadcastEnable": true,
                "retryQueueNums": 1,
                "brokerId": 0,
                "whichBrokerWhenConsumeSlowly": 1,
            })
            .to_string();
            let mut t = Table::new(&["broker", "group", "max_attempts", "fifo"]);
            for b in admin.chosen(&spec.placement).await? {
                let req = RemotingCommand::request(rc::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP)
                    .with_body(Bytes::from(body.clone().into_bytes()));
                let r = admin.broker(b.master().unwrap_or_default(), req).await?;
                if r.code != code::SUCCESS {
                    return Err(refused(format!("group `{}` on {}", spec.group, b.name), &r));
                }
                t.row(vec![
                    json!(b.name),
                    json!(spec.group),
                    json!(spec.max_attempts),
                    json!(spec.fifo),
                ]);
            }
            t
        }
        Command::Group(GroupCmd::Delete { group, placement }) => {
            let mut t = Table::new(&["broker", "group", "deleted"]);
            let mut any = false;
            for b in admin.chosen(&placement).await? {
                let req = RemotingCommand::request(rc::DELETE_SUBSCRIPTIONGROUP)
                    .with_field("groupName", &group)
                    .with_field("cleanOffset", "false");
                let r = admin.broker(b.master().unwrap_or_default(), req).await?;
                if r.code != code::SUCCESS && r.code != code::SUBSCRIPTION_GROUP_NOT_EXIST {
                    return Err(refused(format!("delete group `{group}` on {}", b.name), &r));
                }
                any |= r.code == code::SUCCESS;
                t.row(vec![
                    json!(b.name),
                    json!(group),
                    json!(r.code == code::SUCCESS),
                ]);
            }
            if !any {
                return Err(AdminError::Usage(format!(
                    "consumer group `{group}` does not exist on any chosen broker"
                )));
            }
            t
        }
        Command::Consumer(ConsumerCmd::Progress { group, topic }) => {
            let mut t = Table::new(&["broker", "queue", "consumer_offset", "broker_offset", "lag"]);
            let g = [("consumerGroup", group.clone())];
            for (name, addr, queues) in admin.holders(&topic).await? {
                for q in 0..queues {
                    let min = admin
                        .offset(&addr, rc::GET_MIN_OFFSET, &topic, q, &[])
                        .await?;
                    let max = admin
                        .offset(&addr, rc::GET_MAX_OFFSET, &topic, q, &[])
                        .await?;
                    let consumed = admin
                        .offset(&addr, rc::QUERY_CONSUMER_OFFSET, &topic, q, &g)
                        .await?;
                    let lag = max.map(|m| m - consumed.or(min).unwrap_or(0).min(m));
                    t.row(vec![
                        json!(name),
                        json!(q),
                        json!(consumed),
                        json!(max),
                        json!(lag),
                    ]);
                }
            }
            t
        }
        Command::Consumer(ConsumerCmd::Reset { group, topic, time }) => {
            let at = parse_time(&time, rdmq_protocol::now_ms()).map_err(AdminError::Usage)?;
            let mut t = Table::new(&["broker", "queue", "old_offset", "new_offset"]);
            let g = [("consumerGroup", group.clone())];
            for (name, addr, queues) in admin.holders(&topic).await? {
                for q in 0..queues {
                    let old = admin
                        .offset(&addr, rc::QUERY_CONSUMER_OFFSET, &topic, q, &g)
                        .await?;
                    let new = admin
                        .offset(
                            &addr,
                            rc::SEARCH_OFFSET_BY_TIMESTAMP,
                            &topic,
                            q,
                            &[("timestamp", at.to_string())],
                        )
                        .await?
                        .unwrap_or(0);
                    // A reset moves a Pop group's cursor too; a broker without the request
                    // gets the committed offset updated.
                    let req = RemotingCommand::request(rc::INVOKE_BROKER_TO_RESET_OFFSET)
                        .with_field("group", &group)
                        .with_field("topic", &topic)
                        .with_field("queueId", q.to_string())
                        .with_field("offset", new.to_string())
                        .with_field("timestamp", at.to_string())
                        .with_field("isForce", "true");
                    let mut r = admin.broker(&addr, req).await?;
                    if r.code == code::REQUEST_CODE_NOT_SUPPORTED {
                        let req = RemotingCommand::request(rc::UPDATE_CONSUMER_OFFSET)
                            .with_field("consumerGroup", &group)
                            .with_field("topic", &topic)
                            .with_field("queueId", q.to_string())
                            .with_field("commitOffset", new.to_string());
                        r = admin.broker(&addr, req).await?;
                    }
                    if r.code != code::SUCCESS {
                        return Err(refused(format!("reset {topic}@{q} on {name}"), &r));
                    }
                    t.row(vec![json!(name), json!(q), json!(old), json!(new)]);
                }
            }
            t
        }
        Command::Message(MessageCmd::Id { id, topic }) => {
            let mut t = Table::new(&MESSAGE_COLUMNS);
            if let Some((host, off)) = message::offset_msg_id_parts(&id).filter(|_| topic.is_none())
            {
                let info = admin.cluster().await?;
                let b = info
                    .brokers
                    .values()
                    .find(|b| b.addrs.values().any(|a| *a == host))
                    .ok_or_else(|| {
                        AdminError::Usage(format!(
                            "message id `{id}` names store {host}, which is no live broker"
                        ))
                    })?;
                let r = admin
                    .broker(
                        &host,
                        RemotingCommand::request(rc::VIEW_MESSAGE_BY_ID)
                            .with_field("offset", off.to_string()),
                    )
                    .await?;
                if r.code != code::SUCCESS {
                    return Err(refused(format!("message `{id}`"), &r));
                }
                let m = message::decode_record(&r.body)
                    .map_err(|e| AdminError::Malformed(e.to_string()))?;
                message_row(&mut t, &b.name, &m);
            } else {
                let Some(topic) = topic else {
                    return Err(AdminError::Usage(format!(
                        "`{id}` is not an offset message id: give --topic to look a client id up"
                    )));
                };
                query(&admin, &mut t, &topic, &id, 32, true).await?;
                if t.is_empty() {
                    return Err(AdminError::Usage(format!(
                        "no message with id `{id}` in topic `{topic}`"
                    )));
                }
            }
            t
        }
        Command::Message(MessageCmd::Key { topic, key, max }) => {
            let mut t = Table::new(&MESSAGE_COLUMNS);
            query(&admin, &mut t, &topic, &key, max.clamp(1, 1000), false).await?;
            t
        }
    };
    admin.client.close(Duration::from_millis(100)).await;
    Ok(out)
}

/// QUERY_MESSAGE on every broker holding `topic`.
async fn query(
    admin: &Admin,
    t: &mut Table,
    topic: &str,
    key: &str,
    max: u32,
    unique: bool,
) -> AdminResult<()> {
    for (name, addr, _) in admin.holders(topic).await? {
        let mut req = RemotingCommand::request(rc::QUERY_MESSAGE)
            .with_field("topic", topic)
            .with_field("key", key)
            .with_field("maxNum", max.to_string())
            .with_field("beginTimestamp", "0")
            .with_field("endTimestamp", i64::MAX.to_string());
        if unique {
            req = req.with_field("_UNIQUE_KEY_QUERY", "true");
        }
        let r = admin.broker(&addr, req).await?;
        match r.code {
            code::SUCCESS => {
                for m in message::decode_records(&r.body)
                    .map_err(|e| AdminError::Malformed(e.to_string()))?
                {
                    if t.len() < max as usize {
                        message_row(t, &name, &m);
                    }
                }
            }
            code::QUERY_NOT_FOUND => {}
            _ => return Err(refused(format!("query `{key}` on {name}"), &r)),
        }
    }
    Ok(())
}

/// The `rdmq-admin` program: exit status 0, 1 when the command failed, 2 on a usage error.
pub fn admin_main(args: Vec<String>) -> std::process::ExitCode {
    use clap::Parser;
    let cli = match Cli::try_parse_from(std::iter::once("rdmq-admin".to_owned()).chain(args)) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rdmq-admin: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(t) => {
            if json {
                println!("{}", Value::to_string(&t.to_json()));
            } else {
                print!("{}", t.to_text());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rdmq-admin: {e}");
            std::process::ExitCode::from(if matches!(e, AdminError::Usage(_)) {
                2
            } else {
                1
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_show_as_text_or_hex() {
        assert_eq!(body_preview(b"hello"), "hello");
        assert_eq!(body_preview(&[7, 0, 255]), "0x0700ff");
        assert_eq!(body_preview(b"line\nbreak"), "0x6c696e650a627265616b");
        // 63 ASCII bytes and a two-byte character cut at byte 64: the text before it.
        let mut b = vec![b'a'; 63];
        b.extend_from_slice("é".as_bytes());
        assert_eq!(body_preview(&b), "a".repeat(63));
    }

    #[test]
    fn times_are_epoch_millis_or_relative() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("-10m", now), Ok(now - 600_000));
        assert_eq!(parse_time("-2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time("123", now), Ok(123));
        assert!(parse_time("-5x", now).unwrap_err().contains("unit"));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("-", now).is_err());
    }
}
