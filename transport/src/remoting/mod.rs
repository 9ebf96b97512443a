//! The remoting Client (connection pools with reconnect backoff) and Server (dispatch by request
//! code), both generic over the [`Transport`](crate::Transport), so the broker and the proxy run
//! on any backend.

mod client;
mod server;

pub use client::{CallMetrics, Client, ClientConfig};
pub use server::{
    Handler, HandlerFuture, MAX_REQUEST_FIELDS, Request, Router, Server, ServerConfig, ServerHandle,
};
