//! `TopicRouteData` in the dialect fastjson writes: bean properties in alphabetical order,
//! nulls omitted, and integer map keys unquoted (`"brokerAddrs":{0:"host:port"}`), which both
//! real remoting clients parse; every `BrokerData` carries `enableActingMaster`.

use crate::store::meta::TopicConfig;

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The route of `topic` served by one broker (id 0, the master) at `addr`.
pub fn topic_route_json(
    topic: &TopicConfig,
    broker_name: &str,
    cluster: &str,
    addr: &str,
) -> String {
    format!(
        "{{\"brokerDatas\":[{{\"brokerAddrs\":{{0:{addr}}},\"brokerName\":{name},\"cluster\":{cluster},\"enableActingMaster\":false}}],\"filterServerTable\":{{}},\"queueDatas\":[{{\"brokerName\":{name},\"perm\":{perm},\"readQueueNums\":{r},\"topicSysFlag\":{flag},\"writeQueueNums\":{w}}}]}}",
        addr = quote(addr),
        name = quote(broker_name),
        cluster = quote(cluster),
        perm = topic.perm,
        r = topic.read_queues,
        w = topic.write_queues,
        flag = topic.sys_flag,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_fastjson_output() {
        let t = TopicConfig::new("TopicTest", 4);
        assert_eq!(
            topic_route_json(&t, "broker-a", "DefaultCluster", "127.0.0.1:10911"),
            r#"{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:10911"},"brokerName":"broker-a","cluster":"DefaultCluster","enableActingMaster":false}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4}]}"#
        );
    }
}
