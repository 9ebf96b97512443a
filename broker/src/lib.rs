//! rdmq-broker will own the storage engine (CommitLog, consume queues, Pop state, timers) and its
//! remoting request handlers; it is filled by the broker issues.
