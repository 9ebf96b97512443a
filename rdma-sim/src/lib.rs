//! rdma-sim will own a userspace simulation of RDMA verbs (devices, memory regions, completion
//! queues, RC queue pairs) so the RDMA transport runs and is tested on any machine; it is filled
//! by the rdma-sim issue.
