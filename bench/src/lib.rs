//! Shared measurement helpers of the rdmq benchmarks.
