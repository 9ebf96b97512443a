//! The name server's state, without I/O or clock: which brokers are registered, with which
//! topics, until when. Every call takes `now`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdmq_protocol::route::{BrokerData, ClusterInfo, QueueData, TopicEntry, TopicRoute};

/// One REGISTER_BROKER, parsed.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Cluster name.
    pub cluster: String,
    /// Broker (group) name.
    pub name: String,
    /// Broker id (0 is the master).
    pub id: i64,
    /// `host:port` clients reach it at: the registration's key.
    pub addr: String,
    /// Transport URLs it serves (rdmq brokers only).
    pub endpoints: Vec<String>,
    /// Its topics.
    pub topics: Vec<TopicEntry>,
    /// Silence after which it is dropped.
    pub timeout: Duration,
}

#[derive(Debug)]
struct Live {
    reg: Registration,
    topics: BTreeMap<String, TopicEntry>,
    last_seen: Instant,
}

/// Registered brokers, by address.
#[derive(Debug, Default)]
pub struct Registry {
    brokers: HashMap<String, Live>,
}

impl Registry {
    /// Records a registration (a new broker, or a known one refreshing its topics); true when
    /// the broker was not registered before.
    pub fn register(&mut self, reg: Registration, now: Instant) -> bool {
        let topics = reg
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let addr = reg.addr.clone();
        self.brokers
            .insert(
                addr,
                Live {
                    reg,
                    topics,
                    last_seen: now,
                },
            )
            .is_none()
    }

    /// A heartbeat without topics; false when the broker is not registered (it must register).
    pub fn heartbeat(&mut self, addr: &str, now: Instant) -> bool {
        match self.brokers.get_mut(addr) {
            Some(l) => {
                l.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// Forgets the broker at `addr`; its name when it was registered.
    pub fn unregister(&mut self, addr: &str) -> Option<String> {
        self.brokers.remove(addr).map(|l| l.reg.name)
    }

    /// Drops brokers silent past their timeout; their `(name, addr)`.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let gone: Vec<String> = self
            .brokers
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_seen) > l.reg.timeout)
            .map(|(a, _)| a.clone())
            .collect();
        gone.into_iter()
            .filter_map(|a| self.brokers.remove(&a).map(|l| (l.reg.name, a)))
            .collect()
    }

    /// Live registrations of brokers, sorted by (name, id).
    fn sorted(&self) -> Vec<&Live> {
        let mut v: Vec<&Live> = self.brokers.values().collect();
        v.sort_by(|a, b| (&a.reg.name, a.reg.id).cmp(&(&b.reg.name, b.reg.id)));
        v
    }

    fn broker_data(lives: &[&Live]) -> BTreeMap<String, BrokerData> {
        let mut out: BTreeMap<String, BrokerData> = BTreeMap::new();
        for l in lives {
            let b = out.entry(l.reg.name.clone()).or_insert_with(|| BrokerData {
                cluster: l.reg.cluster.clone(),
                name: l.reg.name.clone(),
                ..BrokerData::default()
            });
            b.addrs.insert(l.reg.id, l.reg.addr.clone());
            if l.reg.id == 0 {
                b.endpoints = l.reg.endpoints.clone();
            }
        }
        out
    }

    /// The route of `topic`, `None` when no live broker holds it.
    pub fn route(&self, topic: &str) -> Option<TopicRoute> {
        let holders: Vec<&Live> = self
            .sorted()
            .into_iter()
            .filter(|l| l.topics.contains_key(topic))
            .collect();
        if holders.is_empty() {
            return None;
        }
        let mut queues: Vec<QueueData> = Vec::new();
        // The master's view of the topic wins over a slave's; `sorted` puts id 0 first.
        for l in &holders {
            if queues.iter().any(|q| q.broker_name == l.reg.name) {
                continue;
            }
            let t = &l.topics[topic];
            queues.push(QueueData {
                broker_name: l.reg.name.clone(),
                read_queues: t.read_queues,
                write_queues: t.write_queues,
                perm: t.perm,
                sys_flag: t.sys_flag,
            });
        }
        Some(TopicRoute {
            brokers: Self::broker_data(&holders).into_values().collect(),
            queues,
        })
    }

    /// Every live broker group and the groups of each cluster.
    pub fn cluster_info(&self) -> ClusterInfo {
        let lives = self.sorted();
        let mut clusters: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for l in &lives {
            clusters
                .entry(l.reg.cluster.clone())
                .or_default()
                .insert(l.reg.name.clone());
        }
        ClusterInfo {
            brokers: Self::broker_data(&lives),
            clusters: clusters
                .into_iter()
                .map(|(c, n)| (c, n.into_iter().collect()))
                .collect(),
        }
    }

    /// Every topic held by a live broker (of `cluster`, if given), sorted.
    pub fn topics(&self, cluster: Option<&str>) -> Vec<String> {
        let set: BTreeSet<&String> = self
            .brokers
            .values()
            .filter(|l| cluster.is_none_or(|c| l.reg.cluster == c))
            .flat_map(|l| l.topics.keys())
            .collect();
        set.into_iter().cloned().collect()
    }

    /// Forgets `topic` on every broker (of `cluster`, if given) until they register it again;
    /// true when some broker held it.
    pub fn delete_topic(&mut self, topic: &str, cluster: Option<&str>) -> bool {
        let mut any = false;
        for l in self.brokers.values_mut() {
            if cluster.is_none_or(|c| l.reg.cluster == c) {
                any |= l.topics.remove(topic).is_some();
            }
        }
        any
    }

    /// Number of live registrations.
    pub fn len(&self) -> usize {
        self.brokers.len()
    }

    /// True when no broker is registered.
    pub fn is_empty(&self) -> bool {
        self.brokers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, id: i64, port: u16, topics: &[(&str, u32)]) -> Registration {
        Registration {
            cluster: "c1".into(),
            name: name.into(),
            id,
            addr: format!("127.0.0.1:{port}"),
            endpoints: vec![format!("tcp://127.0.0.1:{port}")],
            topics: topics
                .iter()
                .map(|(t, q)| TopicEntry {
                    name: (*t).into(),
                    read_queues: *q,
                    write_queues: *q,
                    perm: 6,
                    sys_flag: 0,
                })
                .collect(),
            timeout: Duration::from_secs(120),
        }
    }

    #[test]
    fn routes_list_every_live_holder_in_name_order() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        assert!(r.register(reg("b", 0, 2, &[("orders", 4)]), t0));
        assert!(r.register(reg("a", 0, 1, &[("orders", 8), ("other", 1)]), t0));
        assert!(r.register(reg("a", 1, 3, &[("orders", 8)]), t0));
        assert!(!r.register(reg("b", 0, 2, &[("orders", 4), ("new", 2)]), t0));
        let route = r.route("orders").unwrap();
        let names: Vec<_> = route.brokers.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(route.brokers[0].addrs.len(), 2, "master and slave of a");
        assert_eq!(route.brokers[0].master(), Some("127.0.0.1:1"));
        assert_eq!(route.queues.len(), 2);
        assert_eq!(route.queues[0].write_queues, 8);
        assert!(r.route("new").is_some(), "a re-registration adds topics");
        assert!(r.route("nothing").is_none());
        assert_eq!(r.topics(None), ["new", "orders", "other"]);
        assert_eq!(r.topics(Some("c2")), Vec::<String>::new());
        let info = r.cluster_info();
        assert_eq!(info.clusters["c1"], ["a", "b"]);
    }

    #[test]
    fn silent_brokers_expire_and_unregistered_ones_leave_at_once() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.register(reg("a", 0, 1, &[("t", 1)]), t0);
        r.register(reg("b", 0, 2, &[("t", 1)]), t0);
        assert!(r.heartbeat("127.0.0.1:2", t0 + Duration::from_secs(100)));
        assert!(!r.heartbeat("127.0.0.1:9", t0));
        let gone = r.expire(t0 + Duration::from_secs(121));
        assert_eq!(gone, [("a".to_owned(), "127.0.0.1:1".to_owned())]);
        assert_eq!(r.route("t").unwrap().brokers.len(), 1);
        assert_eq!(r.unregister("127.0.0.1:2").as_deref(), Some("b"));
        assert!(r.route("t").is_none());
        assert!(r.is_empty());
    }

    #[test]
    fn deleting_a_topic_forgets_it_until_it_is_registered_again() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.register(reg("a", 0, 1, &[("t", 1)]), t0);
        assert!(r.delete_topic("t", None));
        assert!(!r.delete_topic("t", None));
        assert!(r.route("t").is_none());
        r.register(reg("a", 0, 1, &[("t", 1)]), t0);
        assert!(r.route("t").is_some());
    }
}
