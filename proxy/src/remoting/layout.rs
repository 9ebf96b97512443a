//! How the remoting endpoint presents a topic spread over several brokers as one broker's: the
//! brokers in name order, each owning a contiguous range of virtual queue ids
//! (`broker-a` 0..4, `broker-b` 4..8, …). Name order is the same on every proxy, and a broker
//! that joins with a later name only appends ids.

use rdmq_transport::Endpoint;

use crate::cluster::TopicRoute;

/// One broker's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Broker name.
    pub name: String,
    /// Where it is reached.
    pub endpoint: Endpoint,
    /// First virtual queue id.
    pub base: i32,
    /// Queues (the larger of its read and write counts).
    pub count: i32,
}

/// The virtual queues of one topic.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    parts: Vec<Part>,
}

impl Layout {
    /// The layout of `route`.
    pub fn of(route: &TopicRoute) -> Self {
        let mut brokers: Vec<_> = route
            .brokers
            .iter()
            .filter(|b| b.read_queues.max(b.write_queues) > 0)
            .collect();
        brokers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut base = 0;
        let parts = brokers
            .into_iter()
            .map(|b| {
                let count = b.read_queues.max(b.write_queues).min(i32::MAX as u32) as i32;
                let p = Part {
                    name: b.name.clone(),
                    endpoint: b.endpoint.clone(),
                    base,
                    count,
                };
                base = base.saturating_add(count);
                p
            })
            .collect();
        Self { parts }
    }

    /// Virtual queues in all.
    pub fn total(&self) -> i32 {
        self.parts.last().map_or(0, |p| p.base + p.count)
    }

    /// The broker and its queue id behind virtual queue `vq`.
    pub fn real(&self, vq: i32) -> Option<(&Part, i32)> {
        self.parts
            .iter()
            .find(|p| (p.base..p.base + p.count).contains(&vq))
            .map(|p| (p, vq - p.base))
    }

    /// The virtual id of broker `name`'s queue `rq`.
    pub fn virtual_of(&self, name: &str, rq: i32) -> Option<i32> {
        self.parts
            .iter()
            .find(|p| p.name == name)
            .filter(|p| (0..p.count).contains(&rq))
            .map(|p| p.base + rq)
    }

    /// The brokers.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::BrokerQueues;

    fn b(name: &str, w: u32, r: u32) -> BrokerQueues {
        BrokerQueues {
            name: name.into(),
            endpoint: "tcp://127.0.0.1:1".parse().unwrap(),
            write_queues: w,
            read_queues: r,
        }
    }

    #[test]
    fn brokers_own_contiguous_ranges_in_name_order() {
        let route = TopicRoute {
            topic: "t".into(),
            brokers: vec![b("c", 2, 2), b("a", 4, 4), b("gone", 0, 0), b("b", 1, 3)],
            learned: std::time::Instant::now(),
        };
        let l = Layout::of(&route);
        assert_eq!(l.total(), 9);
        let names: Vec<_> = l.parts().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(l.real(0).map(|(p, q)| (p.name.as_str(), q)), Some(("a", 0)));
        assert_eq!(l.real(4).map(|(p, q)| (p.name.as_str(), q)), Some(("b", 0)));
        assert_eq!(l.real(8).map(|(p, q)| (p.name.as_str(), q)), Some(("c", 1)));
        assert!(l.real(9).is_none() && l.real(-1).is_none());
        for vq in 0..9 {
            let (p, q) = l.real(vq).unwrap();
            assert_eq!(l.virtual_of(&p.name, q), Some(vq));
        }
        assert_eq!(l.virtual_of("a", 4), None);
        assert_eq!(l.virtual_of("zz", 0), None);
    }
}
