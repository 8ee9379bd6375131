//! The CLI's side of the admin API.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

/// Why a call to the daemon failed; the messages are what an operator reads.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody listening on it.
    #[error(
        "the ztag daemon is not running (nothing answers on {0}); start it with `ztag run`, or point --socket at its admin socket"
    )]
    NotRunning(PathBuf),
    /// The socket is root-only.
    #[error(
        "permission denied on {0}: the admin socket is root-only (mode 0600); run this command as root"
    )]
    Permission(PathBuf),
    /// Talking to the daemon failed midway.
    #[error("admin API at {path}: {why}")]
    Transport {
        /// Socket path.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// The daemon refused the request; its message says why.
    #[error("{message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The daemon's error text.
        message: String,
    },
}

/// A connection factory for one admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    /// A client for the socket at `socket`.
    pub fn new(socket: &Path) -> Self {
        AdminClient {
            socket: socket.to_path_buf(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the body of a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(self.socket.clone())
                }
                std::io::ErrorKind::PermissionDenied => {
                    ClientError::Permission(self.socket.clone())
                }
                _ => self.transport(e),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.transport(e))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "ztag")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| self.transport(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport(e))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("error")
                    .or_else(|| v.get("message"))
                    .and_then(|e| e.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(ClientError::Refused { status, message })
    }

    /// GET returning JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let b = self.call(Method::GET, path, Bytes::new()).await?;
        serde_json::from_slice(&b).map_err(|e| self.transport(format!("bad JSON answer: {e}")))
    }

    /// POST a JSON body, returning JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| self.transport(e))?;
        let b = self.call(Method::POST, path, Bytes::from(body)).await?;
        serde_json::from_slice(&b).map_err(|e| self.transport(format!("bad JSON answer: {e}")))
    }

    fn transport(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Transport {
            path: self.socket.clone(),
            why: e.to_string(),
        }
    }
}
