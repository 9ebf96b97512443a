//! Topic routes learned from the brokers: which brokers hold a topic and with how many queues.

use std::time::Instant;

use rdmq_transport::Endpoint;

/// One broker's share of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerQueues {
    /// Broker name (receipt handles name it).
    pub name: String,
    /// Where the proxy reaches it (the configured endpoint, over the configured transport).
    pub endpoint: Endpoint,
    /// Write queues.
    pub write_queues: u32,
    /// Read queues.
    pub read_queues: u32,
}

/// Every broker holding a topic.
#[derive(Debug, Clone)]
pub struct TopicRoute {
    /// The topic.
    pub topic: String,
    /// Brokers, in configuration order.
    pub brokers: Vec<BrokerQueues>,
    /// When the route was learned.
    pub learned: Instant,
}

/// What a broker's GET_ROUTEINFO_BY_TOPIC answer says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAnswer {
    /// The broker's name.
    pub name: String,
    /// Write queues.
    pub write_queues: u32,
    /// Read queues.
    pub read_queues: u32,
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

/// Parses a route body for the entry of the answering broker (routes from rdmq brokers name
/// only themselves; with several entries the first queue data wins).
pub fn parse_route(body: &[u8]) -> Result<RouteAnswer, String> {
    let text = std::str::from_utf8(body).map_err(|_| "route is not UTF-8".to_owned())?;
    let v: serde_json::Value = serde_json::from_str(&quote_integer_keys(text))
        .map_err(|e| format!("route is not JSON: {e}"))?;
    let q = v
        .get("queueDatas")
        .and_then(|q| q.as_array())
        .and_then(|q| q.first())
        .ok_or("route has no queueDatas")?;
    let num = |k: &str| {
        q.get(k)
            .and_then(|n| n.as_u64())
            .map(|n| n as u32)
            .ok_or_else(|| format!("route queue data lacks {k}"))
    };
    Ok(RouteAnswer {
        name: q
            .get("brokerName")
            .and_then(|n| n.as_str())
            .ok_or("route queue data lacks brokerName")?
            .to_owned(),
        write_queues: num("writeQueueNums")?,
        read_queues: num("readQueueNums")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_integer_keys_are_quoted_and_strings_left_alone() {
        assert_eq!(
            quote_integer_keys(r#"{"a":{0:"x",12 :"y"},"s":"{3:4}","n":[1,2]}"#),
            r#"{"a":{"0":"x","12" :"y"},"s":"{3:4}","n":[1,2]}"#
        );
    }

    #[test]
    fn a_broker_route_parses() {
        let body = br#"{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:10911"},"brokerName":"broker-a","cluster":"c","enableActingMaster":false}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":8}]}"#;
        assert_eq!(
            parse_route(body).unwrap(),
            RouteAnswer {
                name: "broker-a".into(),
                write_queues: 8,
                read_queues: 4
            }
        );
        assert!(parse_route(b"{\"queueDatas\":[]}").is_err());
        assert!(parse_route(b"\xff").is_err());
    }
}
