//! What name servers, brokers and proxies exchange about cluster membership, in the JSON dialect
//! fastjson writes (bean properties in alphabetical order, nulls omitted, integer map keys
//! unquoted: `"brokerAddrs":{0:"host:port"}`), which RocketMQ's own clients and servers read:
//! `TopicRouteData`, `ClusterInfo`, `TopicList` and the body of REGISTER_BROKER.
//!
//! rdmq adds one optional field to `BrokerData`, `rdmqEndpoints`: the transport URLs a broker
//! serves (`rdma://…`, `rdma-sim://…`), written only when the asker sets the `rdmq` request
//! field, so foreign clients never see it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// Request field a proxy sets on GET_ROUTEINFO_BY_TOPIC to get the brokers' transport URLs.
pub const ENDPOINTS_FIELD: &str = "rdmq";
/// Extension field of REGISTER_BROKER carrying the broker's transport URLs, comma-separated.
pub const REGISTER_ENDPOINTS_FIELD: &str = "rdmqEndpoints";

/// A route, cluster or registration body that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RouteError(pub String);

fn bad(what: impl Into<String>) -> RouteError {
    RouteError(what.into())
}

/// One broker's queues of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueData {
    /// The broker (group) name.
    pub broker_name: String,
    /// Read queues.
    pub read_queues: u32,
    /// Write queues.
    pub write_queues: u32,
    /// Permission bits (2 read, 4 write).
    pub perm: u32,
    /// `topicSysFlag`.
    pub sys_flag: u32,
}

/// A broker group: its name, cluster and addresses by broker id (0 is the master).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerData {
    /// Cluster name.
    pub cluster: String,
    /// Broker name.
    pub name: String,
    /// `host:port` by broker id.
    pub addrs: BTreeMap<i64, String>,
    /// Transport URLs the master serves (rdmq extension; empty from foreign servers).
    pub endpoints: Vec<String>,
}

impl BrokerData {
    /// The master's `host:port`.
    pub fn master(&self) -> Option<&str> {
        self.addrs.get(&0).map(String::as_str)
    }
}

/// `TopicRouteData`: which brokers hold a topic and with how many queues.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicRoute {
    /// Brokers holding the topic.
    pub brokers: Vec<BrokerData>,
    /// Their queues.
    pub queues: Vec<QueueData>,
}

/// A topic's configuration as brokers register it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicEntry {
    /// Topic name.
    pub name: String,
    /// Read queues.
    pub read_queues: u32,
    /// Write queues.
    pub write_queues: u32,
    /// Permission bits.
    pub perm: u32,
    /// `topicSysFlag`.
    pub sys_flag: u32,
}

/// The body of REGISTER_BROKER: the broker's topics and their version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterBody {
    /// Every topic the broker holds.
    pub topics: Vec<TopicEntry>,
    /// Bumped whenever the topics change.
    pub version: i64,
    /// When the version was taken (ms).
    pub timestamp: i64,
}

/// `ClusterInfo`: every live broker group, and the groups of each cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterInfo {
    /// Broker groups by name.
    pub brokers: BTreeMap<String, BrokerData>,
    /// Broker names by cluster.
    pub clusters: BTreeMap<String, Vec<String>>,
}

/// A JSON string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list<T>(items: &[T], one: impl Fn(&mut String, &T)) -> String {
    let mut out = String::from("[");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        one(&mut out, it);
    }
    out.push(']');
    out
}

impl BrokerData {
    fn write(&self, out: &mut String, with_endpoints: bool) {
        out.push_str("{\"brokerAddrs\":{");
        for (i, (id, addr)) in self.addrs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{id}:{}", quote(addr));
        }
        let _ = write!(
            out,
            "}},\"brokerName\":{},\"cluster\":{},\"enableActingMaster\":false",
            quote(&self.name),
            quote(&self.cluster)
        );
        if with_endpoints && !self.endpoints.is_empty() {
            out.push_str(",\"rdmqEndpoints\":");
            out.push_str(&list(&self.endpoints, |o, e| o.push_str(&quote(e))));
        }
        out.push('}');
    }

    fn parse(v: &Value) -> Result<Self, RouteError> {
        let name = str_field(v, "brokerName")?;
        let mut addrs = BTreeMap::new();
        if let Some(a) = v.get("brokerAddrs").and_then(Value::as_object) {
            for (id, addr) in a {
                let id: i64 = id
                    .parse()
                    .map_err(|_| bad(format!("broker {name}: broker id `{id}` is not a number")))?;
                let addr = addr
                    .as_str()
                    .ok_or_else(|| bad(format!("broker {name}: address is not a string")))?;
                addrs.insert(id, addr.to_owned());
            }
        }
        let endpoints = v
            .get("rdmqEndpoints")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            cluster: v
                .get("cluster")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            name,
            addrs,
            endpoints,
        })
    }
}

fn str_field(v: &Value, key: &str) -> Result<String, RouteError> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("lacks `{key}`")))
}

fn num_field(v: &Value, key: &str, default: Option<u32>) -> Result<u32, RouteError> {
    match v.get(key) {
        Some(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(format!("`{key}` is not a count"))),
        None => default.ok_or_else(|| bad(format!("lacks `{key}`"))),
    }
}

/// Parses fastjson text (bare integer keys allowed) into a JSON value.
pub fn parse_json(body: &[u8], what: &str) -> Result<Value, RouteError> {
    let text = std::str::from_utf8(body).map_err(|_| bad(format!("{what} is not UTF-8")))?;
    serde_json::from_str(&quote_integer_keys(text))
        .map_err(|e| bad(format!("{what} is not JSON: {e}")))
}

impl QueueData {
    fn write(&self, out: &mut String) {
        let _ = write!(
            out,
            "{{\"brokerName\":{},\"perm\":{},\"readQueueNums\":{},\"topicSysFlag\":{},\"writeQueueNums\":{}}}",
            quote(&self.broker_name),
            self.perm,
            self.read_queues,
            self.sys_flag,
            self.write_queues
        );
    }

    fn parse(v: &Value) -> Result<Self, RouteError> {
        Ok(Self {
            broker_name: str_field(v, "brokerName")?,
            read_queues: num_field(v, "readQueueNums", None)?,
            write_queues: num_field(v, "writeQueueNums", None)?,
            perm: num_field(v, "perm", Some(6))?,
            sys_flag: num_field(v, "topicSysFlag", Some(0))?,
        })
    }
}

impl TopicRoute {
    /// The `TopicRouteData` text; `rdmqEndpoints` only `with_endpoints`.
    pub fn to_json(&self, with_endpoints: bool) -> String {
        let mut out = String::from("{\"brokerDatas\":");
        out.push_str(&list(&self.brokers, |o, b| b.write(o, with_endpoints)));
        out.push_str(",\"filterServerTable\":{},\"queueDatas\":");
        out.push_str(&list(&self.queues, |o, q| q.write(o)));
        out.push('}');
        out
    }

    /// Parses a `TopicRouteData` body.
    pub fn parse(body: &[u8]) -> Result<Self, RouteError> {
        let v = parse_json(body, "route")?;
        let arr = |key: &str| {
            v.get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("route lacks `{key}`")))
        };
        let brokers = arr("brokerDatas")?
            .iter()
            .map(BrokerData::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("route broker data {e}")))?;
        let queues = arr("queueDatas")?
            .iter()
            .map(QueueData::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("route queue data {e}")))?;
        Ok(Self { brokers, queues })
    }

    /// Each broker holding queues of the topic with its queue data, in name order; brokers
    /// without a master address are left out.
    pub fn masters(&self) -> Vec<(&BrokerData, &QueueData)> {
        let mut out: Vec<_> = self
            .queues
            .iter()
            .filter_map(|q| {
                let b = self.brokers.iter().find(|b| b.name == q.broker_name)?;
                b.master()?;
                Some((b, q))
            })
            .collect();
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out.dedup_by(|a, b| a.0.name == b.0.name);
        out
    }
}

impl RegisterBody {
    /// The `RegisterBrokerBody` text (uncompressed; no filter servers; the wrapper with the
    /// static-topic mapping fields RocketMQ 5 writes, empty).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"filterServerList\":[],\"topicConfigSerializeWrapper\":{");
        let _ = write!(
            out,
            "\"dataVersion\":{{\"counter\":{v},\"stateVersion\":0,\"timestamp\":{t}}},\"mappingDataVersion\":{{\"counter\":{v},\"stateVersion\":0,\"timestamp\":{t}}},\"topicConfigTable\":{{",
            v = self.version,
            t = self.timestamp
        );
        for (i, t) in self.topics.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{name}:{{\"attributes\":{{}},\"order\":false,\"perm\":{perm},\"readQueueNums\":{r},\"topicFilterType\":\"SINGLE_TAG\",\"topicName\":{name},\"topicSysFlag\":{flag},\"writeQueueNums\":{w}}}",
                name = quote(&t.name),
                perm = t.perm,
                r = t.read_queues,
                flag = t.sys_flag,
                w = t.write_queues,
            );
        }
        out.push_str("},\"topicQueueMappingDetailMap\":{},\"topicQueueMappingInfoMap\":{}}}");
        out
    }

    /// Parses a `RegisterBrokerBody` (uncompressed).
    pub fn parse(body: &[u8]) -> Result<Self, RouteError> {
        let v = parse_json(body, "registration")?;
        let wrapper = v
            .get("topicConfigSerializeWrapper")
            .ok_or_else(|| bad("registration lacks `topicConfigSerializeWrapper`"))?;
        let version = wrapper.get("dataVersion");
        let num = |k: &str| {
            version
                .and_then(|d| d.get(k))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        let mut topics = Vec::new();
        if let Some(table) = wrapper.get("topicConfigTable").and_then(Value::as_object) {
            for (name, t) in table {
                let field = |k: &str, d: Option<u32>| {
                    num_field(t, k, d).map_err(|e| bad(format!("registered topic `{name}` {e}")))
                };
                let entry = TopicEntry {
                    name: t
                        .get("topicName")
                        .and_then(Value::as_str)
                        .unwrap_or(name)
                        .to_owned(),
                    read_queues: field("readQueueNums", None)?,
                    write_queues: field("writeQueueNums", None)?,
                    perm: field("perm", Some(6))?,
                    sys_flag: field("topicSysFlag", Some(0))?,
                };
                topics.push(entry);
            }
        }
        Ok(Self {
            topics,
            version: num("counter"),
            timestamp: num("timestamp"),
        })
    }
}

impl ClusterInfo {
    /// The `ClusterInfo` text; `rdmqEndpoints` only `with_endpoints`.
    pub fn to_json(&self, with_endpoints: bool) -> String {
        let mut out = String::from("{\"brokerAddrTable\":{");
        for (i, (name, b)) in self.brokers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&quote(name));
            out.push(':');
            b.write(&mut out, with_endpoints);
        }
        out.push_str("},\"clusterAddrTable\":{");
        for (i, (cluster, names)) in self.clusters.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&quote(cluster));
            out.push(':');
            out.push_str(&list(names, |o, n| o.push_str(&quote(n))));
        }
        out.push_str("}}");
        out
    }

    /// Parses a `ClusterInfo` body.
    pub fn parse(body: &[u8]) -> Result<Self, RouteError> {
        let v = parse_json(body, "cluster info")?;
        let mut info = Self::default();
        if let Some(t) = v.get("brokerAddrTable").and_then(Value::as_object) {
            for (name, b) in t {
                let b = BrokerData::parse(b).map_err(|e| bad(format!("broker `{name}` {e}")))?;
                info.brokers.insert(name.clone(), b);
            }
        }
        if let Some(t) = v.get("clusterAddrTable").and_then(Value::as_object) {
            for (cluster, names) in t {
                let names = names
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                info.clusters.insert(cluster.clone(), names);
            }
        }
        Ok(info)
    }
}

/// The `TopicList` text.
pub fn topic_list_json(topics: &[String]) -> String {
    format!(
        "{{\"topicList\":{}}}",
        list(topics, |o, t| o.push_str(&quote(t)))
    )
}

/// Parses a `TopicList` body.
pub fn parse_topic_list(body: &[u8]) -> Result<Vec<String>, RouteError> {
    let v = parse_json(body, "topic list")?;
    Ok(v.get("topicList")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("topic list lacks `topicList`"))?
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect())
}

/// Name server addresses from RocketMQ's `host:port;host:port` form (commas work too).
pub fn parse_namesrv(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for a in list
        .split([';', ','])
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let ok = a
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(format!("name server `{a}` is not HOST:PORT"));
        }
        out.push(a.to_owned());
    }
    if out.is_empty() {
        return Err(format!("no name server in `{list}`"));
    }
    Ok(out)
}

/// Quotes the bare integer map keys fastjson writes (`{0:"a"}` → `{"0":"a"}`) so standard
/// JSON parsers accept the text.
pub fn quote_integer_keys(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 8);
    let mut in_string = false;
    let mut escaped = false;
    let mut after_open = false;
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if after_open && (c.is_ascii_digit() || c == '-') {
            let mut key = String::from(c);
            while let Some(&d) = chars.peek() {
                if d.is_ascii_digit() {
                    key.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            let mut rest = String::new();
            while let Some(&w) = chars.peek() {
                if w.is_whitespace() {
                    rest.push(w);
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.peek() == Some(&':') {
                out.push('"');
                out.push_str(&key);
                out.push('"');
            } else {
                out.push_str(&key);
            }
            out.push_str(&rest);
            after_open = false;
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                after_open = false;
            }
            '{' | ',' => after_open = true,
            c if c.is_whitespace() => {}
            _ => after_open = false,
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(name: &str, port: u16) -> BrokerData {
        BrokerData {
            cluster: "c1".into(),
            name: name.into(),
            addrs: [(0, format!("127.0.0.1:{port}"))].into(),
            endpoints: vec![format!("rdma-sim://127.0.0.1:{}", port + 1)],
        }
    }

    fn queues(name: &str, n: u32) -> QueueData {
        QueueData {
            broker_name: name.into(),
            read_queues: n,
            write_queues: n,
            perm: 6,
            sys_flag: 0,
        }
    }

    #[test]
    fn name_server_lists_take_rocketmq_form() {
        assert_eq!(
            parse_namesrv("a:9876;127.0.0.1:1, b:2").unwrap(),
            ["a:9876", "127.0.0.1:1", "b:2"]
        );
        for bad in ["a", "a:0", ":1", ""] {
            assert!(parse_namesrv(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bare_integer_keys_are_quoted_and_strings_left_alone() {
        assert_eq!(
            quote_integer_keys(r#"{"a":{0:"x",12 :"y"},"s":"{3:4}","n":[1,2]}"#),
            r#"{"a":{"0":"x","12" :"y"},"s":"{3:4}","n":[1,2]}"#
        );
    }

    #[test]
    fn a_route_is_written_as_fastjson_does_and_reads_back() {
        let r = TopicRoute {
            brokers: vec![broker("b", 10), broker("a", 20)],
            queues: vec![queues("b", 4), queues("a", 8)],
        };
        let plain = r.to_json(false);
        assert_eq!(
            plain,
            r#"{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:10"},"brokerName":"b","cluster":"c1","enableActingMaster":false},{"brokerAddrs":{0:"127.0.0.1:20"},"brokerName":"a","cluster":"c1","enableActingMaster":false}],"filterServerTable":{},"queueDatas":[{"brokerName":"b","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4},{"brokerName":"a","perm":6,"readQueueNums":8,"topicSysFlag":0,"writeQueueNums":8}]}"#
        );
        let back = TopicRoute::parse(r.to_json(true).as_bytes()).unwrap();
        assert_eq!(back, r);
        let without = TopicRoute::parse(plain.as_bytes()).unwrap();
        assert!(without.brokers.iter().all(|b| b.endpoints.is_empty()));
        let m = back.masters();
        assert_eq!(
            m.iter()
                .map(|(b, q)| (b.name.as_str(), q.write_queues))
                .collect::<Vec<_>>(),
            [("a", 8), ("b", 4)]
        );
    }

    #[test]
    fn malformed_routes_say_what_is_wrong() {
        assert!(TopicRoute::parse(b"\xff").unwrap_err().0.contains("UTF-8"));
        assert!(TopicRoute::parse(b"{").unwrap_err().0.contains("not JSON"));
        assert!(
            TopicRoute::parse(br#"{"brokerDatas":[]}"#)
                .unwrap_err()
                .0
                .contains("queueDatas")
        );
        let e = TopicRoute::parse(
            br#"{"brokerDatas":[],"queueDatas":[{"brokerName":"a","readQueueNums":-1,"writeQueueNums":1}]}"#,
        )
        .unwrap_err();
        assert!(e.0.contains("readQueueNums"), "{e}");
    }

    #[test]
    fn registration_and_cluster_bodies_round_trip() {
        let body = RegisterBody {
            topics: vec![
                TopicEntry {
                    name: "t\"1".into(),
                    read_queues: 4,
                    write_queues: 2,
                    perm: 6,
                    sys_flag: 0,
                },
                TopicEntry {
                    name: "t2".into(),
                    read_queues: 1,
                    write_queues: 1,
                    perm: 2,
                    sys_flag: 1,
                },
            ],
            version: 7,
            timestamp: 1_700_000_000_000,
        };
        let back = RegisterBody::parse(body.to_json().as_bytes()).unwrap();
        assert_eq!(back, body);
        assert!(RegisterBody::parse(b"{}").is_err());

        let mut info = ClusterInfo::default();
        info.brokers.insert("a".into(), broker("a", 1));
        info.clusters.insert("c1".into(), vec!["a".into()]);
        let back = ClusterInfo::parse(info.to_json(true).as_bytes()).unwrap();
        assert_eq!(back.clusters, info.clusters);
        assert_eq!(back.brokers, info.brokers);

        let topics = vec!["x".to_owned(), "y".to_owned()];
        assert_eq!(
            parse_topic_list(topic_list_json(&topics).as_bytes()).unwrap(),
            topics
        );
    }
}
